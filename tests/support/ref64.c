/*
 * ref64.c - see ref64.h. Formulas: METHOD.md §2.2 (bs), §3.1 (LPI), §3.2
 * (which vector, which context). Nothing here is shared with src/analysis.
 */
#include "ref64.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

struct ref64 {
    const resid_model *m;
    const resid_trace *tr;
    int V, D, L, H, Hkv, dh, N, T, last;
    bool gpt2, exact;
    int32_t w;
    double s;     /* σ_f or rms of x_L */
    double *wu;   /* [V][D] */
    double *beta; /* [V] W_U·β_f, or NULL */
    double **wo;  /* [L] lazily: W_O as [D][H·d_h] */
    double **wd;  /* [L] lazily: W_down as [D][N] */
    double **bx;  /* [2L] lazily: bs of context x_in[l] (2l) / x_mid[l] (2l+1) */
};

/* A whole logical matrix as double, read with rs_tensor_rows. */
static double *matrix64(const rs_tensor *t) {
    float *row = malloc(sizeof(float) * (size_t)t->n_cols);
    double *m = malloc(sizeof(double) * (size_t)(t->n_rows * t->n_cols));
    for (int64_t r = 0; r < t->n_rows; r++) {
        rs_tensor_rows(t, r, 1, row);
        for (int64_t c = 0; c < t->n_cols; c++) m[r * t->n_cols + c] = row[c];
    }
    free(row);
    return m;
}

static double wo_at(ref64 *r, int l, int d, int c) {
    if (!r->wo[l]) r->wo[l] = matrix64(r->m->layers[l].wo);
    return r->wo[l][(size_t)d * r->H * r->dh + c];
}

static double wd_at(ref64 *r, int l, int d, int k) {
    if (!r->wd[l]) r->wd[l] = matrix64(r->m->layers[l].w_down);
    return r->wd[l][(size_t)d * r->N + k];
}

static const float *row_at(const ref64 *r, const float *base, int l) {
    return base + ((size_t)l * r->tr->n_cap + (size_t)r->last) * r->D;
}

ref64 *ref64_new(const resid_model *m, const resid_trace *tr, bool exact_lens,
                 int32_t target) {
    ref64 *r = calloc(1, sizeof *r);
    r->m = m, r->tr = tr;
    r->V = m->hp.n_vocab, r->D = m->hp.d_model, r->L = m->hp.n_layer;
    r->H = m->hp.n_head, r->Hkv = m->hp.n_kv_head, r->dh = m->hp.d_head;
    r->N = m->hp.d_ffn, r->T = tr->n_tokens, r->last = tr->n_cap - 1;
    r->gpt2 = m->hp.arch == RESID_ARCH_GPT2;
    r->exact = exact_lens;
    r->w = target;
    r->wo = calloc((size_t)r->L, sizeof(double *));
    r->wd = calloc((size_t)r->L, sizeof(double *));
    r->bx = calloc((size_t)r->L * 2, sizeof(double *));
    float *row = malloc(sizeof(float) * (size_t)r->D);
    r->wu = malloc(sizeof(double) * (size_t)r->V * r->D);
    for (int t = 0; t < r->V; t++) {
        rs_tensor_rows(m->w_out, t, 1, row);
        for (int d = 0; d < r->D; d++) r->wu[(size_t)t * r->D + d] = row[d];
    }
    free(row);
    if (m->out_norm_b) {
        r->beta = malloc(sizeof(double) * (size_t)r->V);
        for (int t = 0; t < r->V; t++) {
            double a = 0;
            for (int d = 0; d < r->D; d++) a += r->wu[(size_t)t * r->D + d] * m->out_norm_b[d];
            r->beta[t] = a;
        }
    }
    /* the lens scale from x_L = x_in[L][t*] */
    const float *xl = row_at(r, tr->x_in, r->L);
    double mean = 0, var = 0;
    if (r->gpt2) {
        for (int d = 0; d < r->D; d++) mean += xl[d];
        mean /= r->D;
    }
    for (int d = 0; d < r->D; d++) var += (xl[d] - mean) * (xl[d] - mean);
    r->s = sqrt(var / r->D + m->hp.norm_eps);
    return r;
}

void ref64_free(ref64 *r) {
    if (!r) return;
    free(r->wu);
    free(r->beta);
    for (int l = 0; l < r->L; l++) free(r->wo[l]), free(r->wd[l]);
    for (int i = 0; i < 2 * r->L; i++) free(r->bx[i]);
    free(r->wo), free(r->wd), free(r->bx);
    free(r);
}

double ref64_scale(const ref64 *r) { return r->s; }

void ref64_bs(const ref64 *r, const double *v, double *out) {
    double mean = 0;
    if (r->gpt2) {
        for (int d = 0; d < r->D; d++) mean += v[d];
        mean /= r->D;
    }
    for (int t = 0; t < r->V; t++) {
        double a = 0;
        for (int d = 0; d < r->D; d++)
            a += r->wu[(size_t)t * r->D + d] * r->m->out_norm_w[d] * (v[d] - mean);
        out[t] = a / r->s;
    }
}

/* log softmax_w of b (+ β in the exact lens). */
static double logp_of(const ref64 *r, const double *b) {
    double mx = -INFINITY;
    for (int t = 0; t < r->V; t++) {
        double z = b[t] + (r->exact && r->beta ? r->beta[t] : 0);
        if (z > mx) mx = z;
    }
    double s = 0;
    for (int t = 0; t < r->V; t++) s += exp(b[t] + (r->exact && r->beta ? r->beta[t] : 0) - mx);
    return b[r->w] + (r->exact && r->beta ? r->beta[r->w] : 0) - mx - log(s);
}

double ref64_logp(const ref64 *r, const double *x) {
    double *b = malloc(sizeof(double) * (size_t)r->V);
    ref64_bs(r, x, b);
    double lp = logp_of(r, b);
    free(b);
    return lp;
}

static double alpha(const ref64 *r, int l, int h, int j) {
    const resid_trace *tr = r->tr;
    return tr->attn[(((size_t)l * r->H + h) * tr->n_cap + r->last) * r->T + j];
}

static double value(const ref64 *r, int l, int h, int j, int n) {
    int kvh = h / (r->H / r->Hkv);
    return r->tr->values[(((size_t)l * r->T + j) * r->Hkv + kvh) * r->dh + n];
}

double ref64_coef(const ref64 *r, const resid_unit *u) {
    switch (u->kind) {
    case RESID_UNIT_FFN_NEURON:
        return r->tr->ffn_coef[((size_t)u->layer * r->tr->n_cap + r->last) * r->N + u->index];
    case RESID_UNIT_HEAD_POS: return alpha(r, u->layer, u->head, u->pos);
    case RESID_UNIT_ATTN_NEURON:
        return alpha(r, u->layer, u->head, u->pos) * value(r, u->layer, u->head, u->pos, u->index);
    default: return NAN;
    }
}

void ref64_unit_vector(const ref64 *r, const resid_unit *u, double *v) {
    const int l = u->layer, D = r->D;
    memset(v, 0, sizeof(double) * (size_t)D);
    switch (u->kind) {
    case RESID_UNIT_ATTN_LAYER: {
        const float *a = row_at(r, r->tr->attn_out, l);
        for (int d = 0; d < D; d++) v[d] = a[d];
        return;
    }
    case RESID_UNIT_FFN_LAYER: {
        const float *f = row_at(r, r->tr->ffn_out, l);
        for (int d = 0; d < D; d++) v[d] = f[d];
        return;
    }
    case RESID_UNIT_FFN_NEURON: {
        double mk = ref64_coef(r, u);
        for (int d = 0; d < D; d++) v[d] = mk * wd_at((ref64 *)r, l, d, u->index);
        return;
    }
    default: break;
    }
    /* attention: Σ over heads h, positions j, dims n of α v_j[n] W_O[:, h·d_h+n] */
    for (int h = 0; h < r->H; h++) {
        if (u->kind != RESID_UNIT_POS && h != u->head) continue;
        for (int j = 0; j < r->T; j++) {
            if (u->kind != RESID_UNIT_HEAD && j != u->pos) continue;
            for (int n = 0; n < r->dh; n++) {
                if (u->kind == RESID_UNIT_ATTN_NEURON && n != u->index) continue;
                double c = alpha(r, l, h, j) * value(r, l, h, j, n);
                for (int d = 0; d < D; d++) v[d] += c * wo_at((ref64 *)r, l, d, h * r->dh + n);
            }
        }
    }
}

void ref64_unit_context(const ref64 *r, const resid_unit *u, double *x) {
    bool ffn = u->kind == RESID_UNIT_FFN_LAYER || u->kind == RESID_UNIT_FFN_NEURON;
    const float *src = row_at(r, ffn ? r->tr->x_mid : r->tr->x_in, u->layer);
    for (int d = 0; d < r->D; d++) x[d] = src[d];
}

/* bs of the unit's context, computed once. */
static const double *ctx_bs(const ref64 *r, const resid_unit *u) {
    bool ffn = u->kind == RESID_UNIT_FFN_LAYER || u->kind == RESID_UNIT_FFN_NEURON;
    double **slot = &r->bx[2 * u->layer + (ffn ? 1 : 0)];
    if (!*slot) {
        double *x = malloc(sizeof(double) * (size_t)r->D);
        *slot = malloc(sizeof(double) * (size_t)r->V);
        ref64_unit_context(r, u, x);
        ref64_bs(r, x, *slot);
        free(x);
    }
    return *slot;
}

double ref64_context_logp(const ref64 *r, const resid_unit *u) {
    return logp_of(r, ctx_bs(r, u));
}

double ref64_lpi(const ref64 *r, const resid_unit *u) {
    double *v = malloc(sizeof(double) * (size_t)r->D);
    double *x = malloc(sizeof(double) * (size_t)r->D);
    double *bv = malloc(sizeof(double) * (size_t)r->V);
    ref64_unit_vector(r, u, v);
    ref64_unit_context(r, u, x);
    double before = logp_of(r, ctx_bs(r, u));
    for (int d = 0; d < r->D; d++) x[d] += v[d];
    ref64_bs(r, x, bv); /* bs(x + v), straight from the definition */
    double after = logp_of(r, bv);
    free(v), free(x), free(bv);
    return after - before;
}

double ref64_bs_target(const ref64 *r, const resid_unit *u) {
    double *v = malloc(sizeof(double) * (size_t)r->D);
    ref64_unit_vector(r, u, v);
    double mean = 0, a = 0;
    if (r->gpt2) {
        for (int d = 0; d < r->D; d++) mean += v[d];
        mean /= r->D;
    }
    for (int d = 0; d < r->D; d++)
        a += r->wu[(size_t)r->w * r->D + d] * r->m->out_norm_w[d] * (v[d] - mean);
    free(v);
    return a / r->s;
}
