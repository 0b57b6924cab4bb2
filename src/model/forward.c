/*
 * forward.c - the forward pass, its trace, its hooks, and the session that
 * keeps a key/value cache for generation.
 *
 * One function, forward_chunk(), runs n new tokens at positions
 * n_past .. n_past+n-1 through every layer, using the cached keys/values of
 * earlier positions. resid_forward() is a fresh session fed the whole prompt
 * in one chunk with a trace attached; generation feeds one token at a time
 * without one. Shapes follow METHOD.md §1: every matrix is [out][in], every
 * activation buffer [rows][width] row-major.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

/* ------------------------------------------------------------------------- */
/* Kernels                                                                   */
/* ------------------------------------------------------------------------- */

/* out[D] = LayerNorm(x[D]) = g ⊙ (x − mean)/sqrt(var_pop + eps) + b.
 * Statistics accumulate in double. */
static void layernorm(float *out, const float *x, const float *g, const float *b, int D,
                      float eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < D; i++) mean += x[i];
    mean /= D;
    for (int i = 0; i < D; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= D;
    float inv = (float)(1.0 / sqrt(var + eps));
    float mf = (float)mean;
    for (int i = 0; i < D; i++) out[i] = (x[i] - mf) * inv * g[i] + (b ? b[i] : 0.0f);
}

/* out[D] = RMSNorm(x[D]) = g ⊙ x / sqrt(mean(x²) + eps). */
static void rmsnorm(float *out, const float *x, const float *g, int D, float eps) {
    double ss = 0;
    for (int i = 0; i < D; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / D + eps));
    for (int i = 0; i < D; i++) out[i] = x[i] * inv * g[i];
}

static void norm_rows(const rs_hparams *hp, float *out, const float *x, int64_t n,
                      const float *g, const float *b) {
    int D = hp->d_model;
    for (int64_t i = 0; i < n; i++) {
        if (hp->arch == RESID_ARCH_GPT2)
            layernorm(out + i * D, x + i * D, g, b, D, hp->norm_eps);
        else
            rmsnorm(out + i * D, x + i * D, g, D, hp->norm_eps);
    }
}

/* GPT-2's gelu_new: 0.5·x·(1 + tanh(u)), u = sqrt(2/π)·(x + 0.044715·x³).
 * Since 1 + tanh(u) = 2/(1 + e^(−2u)), this is x·sigmoid(2u): the same
 * function with one expf instead of tanhf (which is several times slower). */
static inline float gelu_tanh(float x) {
    const float c2 = 2.0f * 0.7978845608028654f; /* 2·sqrt(2/pi) */
    return x / (1.0f + expf(-c2 * (x + 0.044715f * x * x * x)));
}

static inline float silu(float x) {
    return x / (1.0f + expf(-x));
}

/* The rotation table of one position: cs[2i] = cos, cs[2i+1] = sin of
 * pos·theta^(-2i/d_h), i < d_h/2, computed in double once per position and
 * chunk (not per layer and head). */
static void rope_table(float *cs, int dh, int pos, float theta) {
    for (int i = 0; i < dh / 2; i++) {
        double ang = pos * pow((double)theta, -2.0 * i / dh);
        cs[2 * i] = (float)cos(ang);
        cs[2 * i + 1] = (float)sin(ang);
    }
}

/* Rotates one head vector x[d_h] with a position's table. INTERLEAVED pairs
 * (2i, 2i+1) as in llama2.c and GGUF; HALVES pairs (i, i + d_h/2) as in
 * Hugging Face's rotate_half. Both use frequency theta^(-2i/d_h). */
static void rope_head(float *x, int dh, const float *cs, resid_rope style) {
    int half = dh / 2;
    for (int i = 0; i < half; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        int a = style == RESID_ROPE_INTERLEAVED ? 2 * i : i;
        int b = style == RESID_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
        float x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

/* ------------------------------------------------------------------------- */
/* Session state                                                             */
/* ------------------------------------------------------------------------- */

struct resid_session {
    const resid_model *m;
    int32_t n_past;
    int32_t cap;  /* positions allocated in the cache */
    float **kc;   /* [L] -> [cap][H_kv*d_h] keys (after RoPE) */
    float **vc;   /* [L] -> [cap][H_kv*d_h] values */
    resid_hook_fn hook;
    void *hook_user;

    /* Scratch for one chunk of up to `rows` rows and `ctx` visible keys. */
    int32_t rows, ctx;
    float *x;    /* [rows][D] residual stream */
    float *h;    /* [rows][D] normed input */
    float *qkv;  /* [rows][q + 2kv] projections */
    float *att;  /* [H][rows][ctx] attention weights */
    float *mix;  /* [rows][H*d_h] */
    float *a;    /* [rows][D] attention output */
    float *up;   /* [rows][N] */
    float *gate; /* [rows][N] */
    float *f;    /* [rows][D] FFN output */
    float *rope; /* [rows][d_h] RoPE cos/sin table of the chunk's positions */
    float *wo32; /* [D][H*d_h] dequantised W_O for head capture, if needed */
};

static void session_free_scratch(resid_session *s) {
    free(s->x);
    free(s->h);
    free(s->qkv);
    free(s->att);
    free(s->mix);
    free(s->a);
    free(s->up);
    free(s->gate);
    free(s->f);
    free(s->rope);
    s->x = s->h = s->qkv = s->att = s->mix = s->a = s->up = s->gate = s->f = s->rope = NULL;
    s->rows = s->ctx = 0;
}

void resid_session_free(resid_session *s) {
    if (!s) return;
    if (s->kc)
        for (int l = 0; l < s->m->hp.n_layer; l++) free(s->kc[l]);
    if (s->vc)
        for (int l = 0; l < s->m->hp.n_layer; l++) free(s->vc[l]);
    free(s->kc);
    free(s->vc);
    session_free_scratch(s);
    free(s->wo32);
    free(s);
}

resid_status resid_session_new(const resid_model *m, resid_session **out, resid_error *err) {
    *out = NULL;
    resid_session *s = calloc(1, sizeof *s);
    if (!s) return rs_err(err, RESID_E_NOMEM, "out of memory");
    s->m = m;
    s->kc = calloc((size_t)m->hp.n_layer, sizeof(float *));
    s->vc = calloc((size_t)m->hp.n_layer, sizeof(float *));
    if (!s->kc || !s->vc) {
        resid_session_free(s);
        return rs_err(err, RESID_E_NOMEM, "out of memory");
    }
    *out = s;
    return RESID_OK;
}

int32_t resid_session_n_past(const resid_session *s) {
    return s->n_past;
}

void resid_session_set_hook(resid_session *s, resid_hook_fn hook, void *user) {
    s->hook = hook;
    s->hook_user = user;
}

/* Grows the cache to hold `need` positions (need <= n_ctx). */
static resid_status ensure_cache(resid_session *s, int32_t need, resid_error *err) {
    if (need <= s->cap) return RESID_OK;
    const rs_hparams *hp = &s->m->hp;
    int64_t cap = s->cap ? 2 * (int64_t)s->cap : 16;
    if (cap < need) cap = need;
    if (cap > hp->n_ctx) cap = hp->n_ctx;
    size_t kvdim = (size_t)hp->n_kv_head * hp->d_head;
    for (int l = 0; l < hp->n_layer; l++) {
        float *k = realloc(s->kc[l], (size_t)cap * kvdim * sizeof(float));
        if (k) s->kc[l] = k;
        float *v = realloc(s->vc[l], (size_t)cap * kvdim * sizeof(float));
        if (v) s->vc[l] = v;
        if (!k || !v)
            return rs_err(err, RESID_E_NOMEM, "cannot grow the key/value cache to %lld positions",
                          (long long)cap);
    }
    s->cap = (int32_t)cap;
    return RESID_OK;
}

static resid_status ensure_scratch(resid_session *s, int32_t rows, int32_t ctx, resid_error *err) {
    if (rows <= s->rows && ctx <= s->ctx) return RESID_OK;
    const rs_hparams *hp = &s->m->hp;
    if (rows < s->rows) rows = s->rows;
    if (ctx < s->ctx) ctx = s->ctx;
    session_free_scratch(s);
    size_t D = (size_t)hp->d_model, N = (size_t)hp->d_ffn, H = (size_t)hp->n_head;
    size_t qd = H * (size_t)hp->d_head, kvd = (size_t)hp->n_kv_head * hp->d_head;
    size_t r = (size_t)rows;
    s->x = malloc(r * D * sizeof(float));
    s->h = malloc(r * D * sizeof(float));
    s->qkv = malloc(r * (qd + 2 * kvd) * sizeof(float));
    s->att = malloc(H * r * (size_t)ctx * sizeof(float));
    s->mix = malloc(r * qd * sizeof(float));
    s->a = malloc(r * D * sizeof(float));
    s->up = malloc(r * N * sizeof(float));
    s->gate = malloc(r * N * sizeof(float));
    s->f = malloc(r * D * sizeof(float));
    s->rope = malloc(r * (size_t)hp->d_head * sizeof(float));
    if (!s->x || !s->h || !s->qkv || !s->att || !s->mix || !s->a || !s->up || !s->gate || !s->f ||
        !s->rope) {
        session_free_scratch(s);
        return rs_err(err, RESID_E_NOMEM, "out of memory for %d rows x %d positions", rows, ctx);
    }
    s->rows = rows;
    s->ctx = ctx;
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* Trace                                                                     */
/* ------------------------------------------------------------------------- */

resid_trace_opts resid_trace_defaults(void) {
    resid_trace_opts o = {0};
    o.capture = RESID_CAP_ALL;
    o.positions = RESID_POS_AUTO;
    o.auto_max_pos = 64;
    return o;
}

static int32_t captured_rows(const resid_trace_opts *o, int32_t T) {
    resid_positions p = o->positions;
    if (p == RESID_POS_AUTO) p = T <= (o->auto_max_pos > 0 ? o->auto_max_pos : 64) ? RESID_POS_ALL : RESID_POS_LAST;
    return p == RESID_POS_ALL ? T : 1;
}

/* Floats each captured array needs; index order = the fields below. */
enum { TR_XIN, TR_A, TR_XMID, TR_F, TR_HEADS, TR_ATTN, TR_VALUES, TR_COEF, TR_STATS, TR_LOGITS, TR_N };

/* a·b·c·d saturating at SIZE_MAX, so an absurd request fails the
 * allocation check instead of wrapping around. */
static size_t sat_mul4(size_t a, size_t b, size_t c, size_t d) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r) || __builtin_mul_overflow(r, c, &r) ||
        __builtin_mul_overflow(r, d, &r))
        return SIZE_MAX;
    return r;
}

static void trace_sizes(const rs_hparams *hp, int32_t T, int32_t nc, uint32_t cap, size_t sz[TR_N]) {
    size_t L = (size_t)hp->n_layer, D = (size_t)hp->d_model, H = (size_t)hp->n_head;
    size_t kvd = (size_t)hp->n_kv_head * hp->d_head;
    memset(sz, 0, TR_N * sizeof sz[0]);
    if (cap & RESID_CAP_RESID) {
        sz[TR_XIN] = sat_mul4(L + 1, (size_t)nc, D, 1);
        sz[TR_A] = sz[TR_XMID] = sz[TR_F] = sat_mul4(L, (size_t)nc, D, 1);
        sz[TR_STATS] = 2 * (size_t)nc;
    }
    if (cap & RESID_CAP_HEADS) sz[TR_HEADS] = sat_mul4(L, (size_t)nc, H, D);
    if (cap & RESID_CAP_ATTN) sz[TR_ATTN] = sat_mul4(L, H, (size_t)nc, (size_t)T);
    if (cap & RESID_CAP_VALUES) sz[TR_VALUES] = sat_mul4(L, (size_t)T, kvd, 1);
    if (cap & RESID_CAP_COEF) sz[TR_COEF] = sat_mul4(L, (size_t)nc, (size_t)hp->d_ffn, 1);
    if (cap & RESID_CAP_LOGITS) {
        sz[TR_LOGITS] = sat_mul4((size_t)nc, (size_t)hp->n_vocab, 1, 1);
        sz[TR_STATS] = 2 * (size_t)nc;
    }
}

size_t resid_trace_bytes(const resid_model *m, int32_t n_tokens, const resid_trace_opts *opts) {
    resid_trace_opts d = resid_trace_defaults();
    if (!opts) opts = &d;
    if (n_tokens < 1) return 0;
    size_t sz[TR_N], total = sizeof(resid_trace) + (size_t)n_tokens * sizeof(int32_t);
    trace_sizes(&m->hp, n_tokens, captured_rows(opts, n_tokens), opts->capture, sz);
    for (int i = 0; i < TR_N; i++) {
        size_t b = sat_mul4(sz[i], sizeof(float), 1, 1);
        if (__builtin_add_overflow(total, b, &total)) return SIZE_MAX;
    }
    return total;
}

void resid_trace_free(resid_trace *t) {
    if (!t) return;
    free(t->tokens);
    free(t->x_in);
    free(t->attn_out);
    free(t->x_mid);
    free(t->ffn_out);
    free(t->head_out);
    free(t->attn);
    free(t->values);
    free(t->ffn_coef);
    free(t->final_mean);
    free(t->logits);
    free(t);
}

static resid_trace *trace_alloc(const rs_hparams *hp, const int32_t *tokens, int32_t T,
                                int32_t nc, uint32_t cap) {
    resid_trace *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n_tokens = T;
    t->n_cap = nc;
    t->pos_first = T - nc;
    t->n_layer = hp->n_layer;
    t->d_model = hp->d_model;
    t->n_head = hp->n_head;
    t->n_kv_head = hp->n_kv_head;
    t->d_head = hp->d_head;
    t->d_ffn = hp->d_ffn;
    t->n_vocab = hp->n_vocab;
    t->arch = hp->arch;
    size_t sz[TR_N];
    trace_sizes(hp, T, nc, cap, sz);
    bool ok = (t->tokens = malloc((size_t)T * sizeof(int32_t))) != NULL;
    float **dst[TR_N] = {&t->x_in,     &t->attn_out, &t->x_mid,    &t->ffn_out,    &t->head_out,
                         &t->attn,     &t->values,   &t->ffn_coef, &t->final_mean, &t->logits};
    for (int i = 0; i < TR_N && ok; i++)
        if (sz[i]) ok = (*dst[i] = calloc(sz[i], sizeof(float))) != NULL;
    if (!ok) {
        resid_trace_free(t);
        return NULL;
    }
    memcpy(t->tokens, tokens, (size_t)T * sizeof(int32_t));
    if (t->final_mean) t->final_scale = t->final_mean + nc;
    return t;
}

/* ------------------------------------------------------------------------- */
/* The forward pass                                                          */
/* ------------------------------------------------------------------------- */

static void hook(resid_session *s, resid_hook_point pt, int layer, int32_t n, int32_t width,
                 float *data) {
    if (!s->hook) return;
    resid_hook_event ev = {.point = pt, .layer = layer, .pos0 = s->n_past, .n_rows = n,
                           .n_ctx = s->n_past + n, .width = width, .data = data};
    s->hook(s->hook_user, &ev);
}

/* Copies captured rows [first, n) of src[n][w] to dst[n - first][w]. */
static void cap_rows(float *dst, const float *src, int32_t first, int32_t n, size_t w) {
    if (dst) memcpy(dst, src + (size_t)first * w, (size_t)(n - first) * w * sizeof(float));
}

/* Per-head attention outputs for the captured rows:
 * out[i][h][:] = W_O^h · mix[i][h*d_h .. (h+1)*d_h], no bias. */
static resid_status capture_heads(resid_session *s, const rs_layer *L, int32_t first, int32_t n,
                                  float *out, resid_error *err) {
    const rs_hparams *hp = &s->m->hp;
    int D = hp->d_model, H = hp->n_head, dh = hp->d_head, qd = H * dh;
    const rs_tensor *wo = L->wo;
    const float *W;
    bool trans = wo->transposed;
    if (wo->dtype == RESID_DTYPE_F32) {
        W = wo->data;
    } else {
        if (!s->wo32 && !(s->wo32 = malloc((size_t)D * qd * sizeof(float))))
            return rs_err(err, RESID_E_NOMEM, "out of memory");
        rs_tensor_rows(wo, 0, D, s->wo32);
        W = s->wo32;
        trans = false;
    }
    int32_t nc = n - first;
    const float *A = s->mix + (size_t)first * qd;
    for (int h = 0; h < H; h++) {
        /* C[nc][D] (ldc H*D) = A_h[nc][dh] (lda qd) · W_O^h */
        if (!trans) /* W is [D][qd]: B = W[:, h*dh..], used transposed */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nc, D, dh, 1.0f, A + h * dh, qd,
                        W + h * dh, qd, 0.0f, out + (size_t)h * D, (size_t)H * D);
        else /* stored [qd][D]: rows h*dh.. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nc, D, dh, 1.0f, A + h * dh, qd,
                        W + (size_t)h * dh * D, D, 0.0f, out + (size_t)h * D, (size_t)H * D);
    }
    return RESID_OK;
}

/* Runs tokens[0..n) at positions s->n_past.. . With a trace (tr != NULL,
 * this is the first and only chunk) it records rows tr->pos_first.. .
 * Writes the last row's logits to `logits` when not NULL. */
static resid_status forward_chunk(resid_session *s, const int32_t *tokens, int32_t n,
                                  resid_trace *tr, float *logits, resid_error *err) {
    const resid_model *m = s->m;
    const rs_hparams *hp = &m->hp;
    const int D = hp->d_model, H = hp->n_head, Hkv = hp->n_kv_head, dh = hp->d_head;
    const int N = hp->d_ffn, L = hp->n_layer;
    const int qd = H * dh, kvd = Hkv * dh, group = H / Hkv;
    const int32_t p0 = s->n_past, ctx = p0 + n;
    const float scale = 1.0f / sqrtf((float)dh);
    resid_status st;
    if ((st = ensure_cache(s, ctx, err)) || (st = ensure_scratch(s, n, ctx, err))) return st;
    const int32_t first = tr ? tr->pos_first : 0;
    const int32_t nc = n - first;

    /* Embedding: token row (+ learned position row). */
    for (int32_t i = 0; i < n; i++) {
        float *xi = s->x + (size_t)i * D;
        rs_tensor_rows(m->tok_embd, tokens[i], 1, xi);
        if (m->pos_embd) {
            float *pe = s->h; /* scratch row */
            rs_tensor_rows(m->pos_embd, p0 + i, 1, pe);
            for (int d = 0; d < D; d++) xi[d] += pe[d];
        }
    }

    if (hp->rope != RESID_ROPE_NONE)
        for (int32_t i = 0; i < n; i++) rope_table(s->rope + (size_t)i * dh, dh, p0 + i, hp->rope_theta);

    for (int l = 0; l < L; l++) {
        const rs_layer *Lw = &m->layers[l];
        hook(s, RESID_HOOK_RESID_IN, l, n, D, s->x);
        if (tr && tr->x_in) cap_rows(tr->x_in + (size_t)l * nc * D, s->x, first, n, D);

        /* --- attention --- */
        norm_rows(hp, s->h, s->x, n, Lw->attn_norm_w, Lw->attn_norm_b);
        float *kc = s->kc[l], *vc = s->vc[l];
        if (Lw->wqkv) {
            int w3 = qd + 2 * kvd;
            rs_matmul(Lw->wqkv, s->h, n, s->qkv, Lw->bqkv);
            for (int32_t i = 0; i < n; i++) {
                const float *r = s->qkv + (size_t)i * w3;
                memmove(s->qkv + (size_t)i * qd, r, (size_t)qd * sizeof(float)); /* q in place */
                memcpy(kc + (size_t)(p0 + i) * kvd, r + qd, (size_t)kvd * sizeof(float));
                memcpy(vc + (size_t)(p0 + i) * kvd, r + qd + kvd, (size_t)kvd * sizeof(float));
            }
        } else {
            rs_matmul(Lw->wq, s->h, n, s->qkv, Lw->bq);
            rs_matmul(Lw->wk, s->h, n, kc + (size_t)p0 * kvd, Lw->bk);
            rs_matmul(Lw->wv, s->h, n, vc + (size_t)p0 * kvd, Lw->bv);
        }
        float *q = s->qkv; /* [n][qd] */
        if (hp->rope != RESID_ROPE_NONE) {
            for (int32_t i = 0; i < n; i++) {
                const float *cs = s->rope + (size_t)i * dh;
                for (int h = 0; h < H; h++)
                    rope_head(q + (size_t)i * qd + h * dh, dh, cs, hp->rope);
                for (int h = 0; h < Hkv; h++)
                    rope_head(kc + (size_t)(p0 + i) * kvd + h * dh, dh, cs, hp->rope);
            }
        }
        hook(s, RESID_HOOK_VALUES, l, n, kvd, vc + (size_t)p0 * kvd);

        /* scores and softmax, att[h][i][j] for j <= p0+i, zero beyond */
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)H * n * ctx * dh > 65536)
        for (int h = 0; h < H; h++) {
            for (int32_t i = 0; i < n; i++) {
                const float *qi = q + (size_t)i * qd + h * dh;
                float *row = s->att + ((size_t)h * n + i) * ctx;
                int kvh = h / group;
                int32_t last = p0 + i;
                float mx = -INFINITY;
                for (int32_t j = 0; j <= last; j++) {
                    const float *kj = kc + (size_t)j * kvd + kvh * dh;
                    float dot = 0;
                    for (int d = 0; d < dh; d++) dot += qi[d] * kj[d];
                    row[j] = dot * scale;
                    if (row[j] > mx) mx = row[j];
                }
                double sum = 0;
                for (int32_t j = 0; j <= last; j++) {
                    row[j] = expf(row[j] - mx);
                    sum += row[j];
                }
                float inv = (float)(1.0 / sum);
                for (int32_t j = 0; j <= last; j++) row[j] *= inv;
                for (int32_t j = last + 1; j < ctx; j++) row[j] = 0.0f;
            }
        }
        hook(s, RESID_HOOK_ATTN_WEIGHTS, l, n, ctx, s->att);

        /* mix[i][h*dh + d] = sum_j att[h][i][j] v[j][kvh*dh + d] */
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)H * n * ctx * dh > 65536)
        for (int h = 0; h < H; h++) {
            for (int32_t i = 0; i < n; i++) {
                const float *row = s->att + ((size_t)h * n + i) * ctx;
                float *out = s->mix + (size_t)i * qd + h * dh;
                int kvh = h / group;
                for (int d = 0; d < dh; d++) out[d] = 0.0f;
                for (int32_t j = 0; j <= p0 + i; j++) {
                    float w = row[j];
                    const float *vj = vc + (size_t)j * kvd + kvh * dh;
                    for (int d = 0; d < dh; d++) out[d] += w * vj[d];
                }
            }
        }
        hook(s, RESID_HOOK_ATTN_MIX, l, n, qd, s->mix);

        rs_matmul(Lw->wo, s->mix, n, s->a, Lw->bo);
        hook(s, RESID_HOOK_ATTN_OUT, l, n, D, s->a);
        if (tr) {
            size_t T = (size_t)tr->n_tokens;
            if (tr->attn_out) cap_rows(tr->attn_out + (size_t)l * nc * D, s->a, first, n, D);
            if (tr->head_out &&
                (st = capture_heads(s, Lw, first, n, tr->head_out + (size_t)l * nc * H * D, err)))
                return st;
            if (tr->attn)
                for (int h = 0; h < H; h++)
                    for (int32_t i = first; i < n; i++)
                        memcpy(tr->attn + (((size_t)l * H + h) * nc + (i - first)) * T,
                               s->att + ((size_t)h * n + i) * ctx, T * sizeof(float));
            if (tr->values)
                memcpy(tr->values + (size_t)l * T * kvd, vc, T * kvd * sizeof(float));
        }
        for (size_t i = 0; i < (size_t)n * D; i++) s->x[i] += s->a[i];
        if (tr && tr->x_mid) cap_rows(tr->x_mid + (size_t)l * nc * D, s->x, first, n, D);

        /* --- feed-forward --- */
        norm_rows(hp, s->h, s->x, n, Lw->ffn_norm_w, Lw->ffn_norm_b);
        rs_matmul(Lw->w_up, s->h, n, s->up, Lw->b_up);
        size_t nn = (size_t)n * N;
        if (Lw->w_gate) {
            rs_matmul(Lw->w_gate, s->h, n, s->gate, NULL);
            for (size_t i = 0; i < nn; i++) s->up[i] = silu(s->gate[i]) * s->up[i];
        } else {
            for (size_t i = 0; i < nn; i++) s->up[i] = gelu_tanh(s->up[i]);
        }
        hook(s, RESID_HOOK_FFN_COEF, l, n, N, s->up);
        if (tr && tr->ffn_coef) cap_rows(tr->ffn_coef + (size_t)l * nc * N, s->up, first, n, N);
        rs_matmul(Lw->w_down, s->up, n, s->f, Lw->b_down);
        hook(s, RESID_HOOK_FFN_OUT, l, n, D, s->f);
        if (tr && tr->ffn_out) cap_rows(tr->ffn_out + (size_t)l * nc * D, s->f, first, n, D);
        for (size_t i = 0; i < (size_t)n * D; i++) s->x[i] += s->f[i];
    }

    /* Final residual x_L, final norm, logits. */
    hook(s, RESID_HOOK_RESID_IN, L, n, D, s->x);
    if (tr && tr->x_in) cap_rows(tr->x_in + (size_t)L * nc * D, s->x, first, n, D);
    if (tr && tr->final_mean) {
        for (int32_t i = first; i < n; i++) {
            const float *xi = s->x + (size_t)i * D;
            double mean = 0, var = 0, ss = 0;
            for (int d = 0; d < D; d++) mean += xi[d];
            mean /= D;
            for (int d = 0; d < D; d++) {
                var += (xi[d] - mean) * (xi[d] - mean);
                ss += (double)xi[d] * xi[d];
            }
            if (hp->arch == RESID_ARCH_GPT2) {
                tr->final_mean[i - first] = (float)mean;
                tr->final_scale[i - first] = (float)sqrt(var / D + hp->norm_eps);
            } else {
                tr->final_mean[i - first] = 0.0f;
                tr->final_scale[i - first] = (float)sqrt(ss / D + hp->norm_eps);
            }
        }
    }
    int32_t lg_first = (tr && tr->logits) ? first : n - 1;
    int32_t lg_n = n - lg_first;
    if ((tr && tr->logits) || logits) {
        /* normed rows into s->h, logits into the trace or a temporary */
        norm_rows(hp, s->h, s->x + (size_t)lg_first * D, lg_n, m->out_norm_w, m->out_norm_b);
        float *dst = (tr && tr->logits) ? tr->logits : NULL;
        float *tmp = NULL;
        if (!dst) {
            dst = tmp = malloc((size_t)lg_n * hp->n_vocab * sizeof(float));
            if (!dst) return rs_err(err, RESID_E_NOMEM, "out of memory for logits");
        }
        rs_matmul(m->w_out, s->h, lg_n, dst, NULL);
        if (logits)
            memcpy(logits, dst + (size_t)(lg_n - 1) * hp->n_vocab,
                   (size_t)hp->n_vocab * sizeof(float));
        free(tmp);
    }
    s->n_past += n;
    return RESID_OK;
}

resid_status rs_final_logits(const resid_model *m, const float *x, float *out,
                             resid_error *err) {
    float *h = malloc((size_t)m->hp.d_model * sizeof *h);
    if (!h) return rs_err(err, RESID_E_NOMEM, "out of memory for logits");
    norm_rows(&m->hp, h, x, 1, m->out_norm_w, m->out_norm_b);
    rs_matmul(m->w_out, h, 1, out, NULL);
    free(h);
    return RESID_OK;
}

static resid_status check_tokens(const resid_model *m, const int32_t *tokens, int32_t n,
                                 int32_t n_past, resid_error *err) {
    if (n < 1) return rs_err(err, RESID_E_ARG, "no tokens to run");
    if ((int64_t)n_past + n > m->hp.n_ctx)
        return rs_err(err, RESID_E_CONTEXT,
                      "the prompt has %lld tokens but the model's context is %d positions",
                      (long long)n_past + n, m->hp.n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->hp.n_vocab)
            return rs_err(err, RESID_E_ARG, "token id %d at position %d is outside [0, %d)",
                          tokens[i], i, m->hp.n_vocab);
    return RESID_OK;
}

resid_status resid_session_eval(resid_session *s, const int32_t *tokens, int32_t n, float *logits,
                                resid_error *err) {
    resid_status st = check_tokens(s->m, tokens, n, s->n_past, err);
    if (st) return st;
    return forward_chunk(s, tokens, n, NULL, logits, err);
}

resid_status resid_forward(const resid_model *m, const int32_t *tokens, int32_t n,
                           const resid_trace_opts *opts, resid_trace **out, resid_error *err) {
    *out = NULL;
    resid_trace_opts d = resid_trace_defaults();
    if (!opts) opts = &d;
    resid_status st = check_tokens(m, tokens, n, 0, err);
    if (st) return st;
    if ((st = rs_check_alloc(resid_trace_bytes(m, n, opts), "resid_forward", "the trace", err)))
        return st;
    resid_trace *tr = trace_alloc(&m->hp, tokens, n, captured_rows(opts, n), opts->capture);
    if (!tr)
        return rs_err(err, RESID_E_NOMEM, "out of memory for a trace of %zu bytes",
                      resid_trace_bytes(m, n, opts));
    resid_session *s;
    if ((st = resid_session_new(m, &s, err))) {
        resid_trace_free(tr);
        return st;
    }
    resid_session_set_hook(s, opts->hook, opts->hook_user);
    st = forward_chunk(s, tokens, n, tr, NULL, err);
    resid_session_free(s);
    if (st) {
        resid_trace_free(tr);
        return st;
    }
    *out = tr;
    return RESID_OK;
}
