/*
 * lens.c - reading vectors in vocabulary space (METHOD.md §2.2) and the
 * explainer's per-context precomputation (§3.1, §10).
 *
 * The paper's lens is the final norm frozen at x_L's scale s and made
 * linear: bs(v) = W_U·(γ ⊙ centre(v))/s. Every context x the units are
 * added to gets log p(·|x), p(w|x) and the Jensen bound vector g here, once,
 * so that scoring a unit costs one projection row plus one pass over V.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"

/* ---------------------------------------------------------------------- */
/* Names                                                                  */
/* ---------------------------------------------------------------------- */

const char *resid_lens_name(resid_lens lens) {
    switch (lens) {
    case RESID_LENS_PAPER: return "paper";
    case RESID_LENS_EXACT: return "exact";
    case RESID_LENS_LOGIT: return "logit-lens";
    }
    return "?";
}

resid_status resid_lens_parse(const char *s, resid_lens *out, resid_error *err) {
    static const resid_lens all[] = {RESID_LENS_PAPER, RESID_LENS_EXACT, RESID_LENS_LOGIT};
    for (size_t i = 0; s && i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, resid_lens_name(all[i])) == 0) {
            *out = all[i];
            return RESID_OK;
        }
    if (s && strcmp(s, "logit") == 0) {
        *out = RESID_LENS_LOGIT;
        return RESID_OK;
    }
    return rs_err(err, RESID_E_ARG, "lens '%s': expected paper, exact or logit-lens",
                  s ? s : "(null)");
}

resid_explain_opts resid_explain_defaults(void) {
    resid_explain_opts o = {RESID_LENS_PAPER, -1, -1};
    return o;
}

/* ---------------------------------------------------------------------- */
/* Kernels                                                                */
/* ---------------------------------------------------------------------- */

double rs_dot(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

void rs_lensmap(const resid_explainer *e, const float *v, float *y) {
    const int D = e->D;
    double mean = 0;
    if (e->centre) {
        for (int d = 0; d < D; d++) mean += v[d];
        mean /= D;
    }
    const double inv = 1.0 / e->s;
    for (int d = 0; d < D; d++) y[d] = (float)((double)e->gamma[d] * (v[d] - mean) * inv);
}

void rs_project(resid_explainer *e, const float *y, int n, float *pad, float *c) {
    const int D = e->D, V = e->V;
    memcpy(pad, y, (size_t)n * D * sizeof(float));
    if (n < RS_PROJ_ROWS)
        memset(pad + (size_t)n * D, 0, (size_t)(RS_PROJ_ROWS - n) * D * sizeof(float));
    /* The output is written for all RS_PROJ_ROWS rows only when c has room;
     * callers pass c[RS_PROJ_ROWS][V]. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, RS_PROJ_ROWS, V, D, 1.0f, pad, D,
                e->wu, D, 0.0f, c, V);
    e->n_proj += n;
}

/* The canonical dot product: 8 lanes accumulated in order over d, then a
 * fixed reduction tree, then the tail. Every exact score goes through this
 * exact sequence of float operations, whatever the batch or tile. */
typedef float v8f __attribute__((vector_size(32)));
#define RS_HOT_DECL __attribute__((optimize("O2")))

/* (macros, not functions: vector arguments would change the ABI without AVX) */
#define reduce8(a) ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])))
#define load8(p) (*(const v8f_u *)(p))
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));

RS_HOT_DECL static float dot_canon(const float *a, const float *b, int D) {
    v8f acc = {0};
    int d = 0;
    for (; d + 8 <= D; d += 8) acc += load8(a + d) * load8(b + d);
    float s = reduce8(acc);
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

/* Tokens per block: a block of W_U rows stays in cache while every row of
 * y passes over it. */
#define CANON_TOKEN_BLOCK 64

/* The two hot loops are optimised even in Debug builds (the test suite
 * scores hundreds of thousands of units through them). */
#define RS_HOT __attribute__((optimize("O2")))

RS_HOT void rs_project_canon(resid_explainer *e, const float *y, int n, float *c) {
    const int D = e->D, V = e->V, D8 = D / 8 * 8;
    const float *wu = e->wu;
    const int nblk = (V + CANON_TOKEN_BLOCK - 1) / CANON_TOKEN_BLOCK;
#pragma omp parallel for schedule(dynamic) if ((int64_t)n * V * D >= RS_PAR_MIN_WORK)
    for (int b = 0; b < nblk; b++) {
        const int t0 = b * CANON_TOKEN_BLOCK;
        const int t1 = t0 + CANON_TOKEN_BLOCK < V ? t0 + CANON_TOKEN_BLOCK : V;
        int r = 0;
        /* 4 rows x 2 tokens: eight independent accumulators, each doing the
         * same operations as dot_canon */
        for (; r + 4 <= n; r += 4) {
            const float *y0 = y + (size_t)r * D, *y1 = y0 + D, *y2 = y1 + D, *y3 = y2 + D;
            int t = t0;
            for (; t + 2 <= t1; t += 2) {
                const float *w0 = wu + (size_t)t * D, *w1 = w0 + D;
                v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};
                v8f a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
                for (int d = 0; d < D8; d += 8) {
                    v8f x0 = load8(w0 + d), x1 = load8(w1 + d);
                    v8f z0 = load8(y0 + d), z1 = load8(y1 + d);
                    v8f z2 = load8(y2 + d), z3 = load8(y3 + d);
                    a00 += z0 * x0, a01 += z0 * x1, a10 += z1 * x0, a11 += z1 * x1;
                    a20 += z2 * x0, a21 += z2 * x1, a30 += z3 * x0, a31 += z3 * x1;
                }
                float s[8] = {reduce8(a00), reduce8(a01), reduce8(a10), reduce8(a11),
                              reduce8(a20), reduce8(a21), reduce8(a30), reduce8(a31)};
                const float *yy[4] = {y0, y1, y2, y3};
                for (int q = 0; q < 4; q++)
                    for (int d = D8; d < D; d++) {
                        s[2 * q] += yy[q][d] * w0[d];
                        s[2 * q + 1] += yy[q][d] * w1[d];
                    }
                for (int q = 0; q < 4; q++) {
                    c[(size_t)(r + q) * V + t] = s[2 * q];
                    c[(size_t)(r + q) * V + t + 1] = s[2 * q + 1];
                }
            }
            for (; t < t1; t++)
                for (int q = 0; q < 4; q++)
                    c[(size_t)(r + q) * V + t] = dot_canon(y + (size_t)(r + q) * D, wu + (size_t)t * D, D);
        }
        for (; r < n; r++)
            for (int t = t0; t < t1; t++)
                c[(size_t)r * V + t] = dot_canon(y + (size_t)r * D, wu + (size_t)t * D, D);
    }
    e->n_proj += n;
}

RS_HOT double rs_lse_shift(const resid_explainer *e, const rs_context *cx, const float *c,
                    float kappa, double cmax) {
    const int V = e->V;
    const float *lp = cx->logp;
    float M;
    if (isnan(cmax)) {
        M = -INFINITY;
        for (int t = 0; t < V; t++) {
            float z = lp[t] + kappa * c[t];
            if (z > M) M = z;
        }
    } else {
        /* max_t (log p_t + κc_t) <= max κc (log p <= 0): a valid shift */
        M = (float)cmax;
    }
    double sum = 0;
    for (int t = 0; t < V; t++) sum += expf(lp[t] + kappa * c[t] - M);
    return (double)M + log(sum);
}

double rs_lpi_from(const resid_explainer *e, const rs_context *cx, const float *c,
                   float kappa) {
    return (double)(kappa * c[e->target]) - rs_lse_shift(e, cx, c, kappa, NAN);
}

/* ---------------------------------------------------------------------- */
/* The explainer                                                          */
/* ---------------------------------------------------------------------- */

static const float *trace_row(const resid_explainer *e, const float *base, int32_t l) {
    return base + ((size_t)l * e->tr->n_cap + (size_t)e->tstar) * e->D;
}

/* x of context ci: x_in[l], x_mid[l] or x_L. */
static const float *ctx_vector(const resid_explainer *e, int ci) {
    if (ci == 2 * e->L) return trace_row(e, e->tr->x_in, e->L);
    return ci % 2 == 0 ? trace_row(e, e->tr->x_in, ci / 2)
                       : trace_row(e, e->tr->x_mid, ci / 2);
}

static resid_status check_trace(const resid_model *m, const resid_trace *tr,
                                resid_error *err) {
    const rs_hparams *hp = &m->hp;
    if (tr->n_layer != hp->n_layer || tr->d_model != hp->d_model ||
        tr->n_head != hp->n_head || tr->n_kv_head != hp->n_kv_head ||
        tr->d_head != hp->d_head || tr->d_ffn != hp->d_ffn || tr->n_vocab != hp->n_vocab)
        return rs_err(err, RESID_E_ARG, "%s: the trace was made by another model",
                      m->info.path ? m->info.path : "model");
    if (!tr->x_in || !tr->attn_out || !tr->x_mid || !tr->ffn_out || !tr->attn ||
        !tr->values || !tr->ffn_coef)
        return rs_err(err, RESID_E_ARG,
                      "trace lacks captures the explainer needs "
                      "(RESID_CAP_RESID|ATTN|VALUES|COEF)");
    if (tr->n_cap < 1 || tr->n_tokens < 1 || tr->pos_first + tr->n_cap != tr->n_tokens)
        return rs_err(err, RESID_E_ARG, "trace does not cover the last position");
    if (hp->n_kv_head < 1 || hp->n_head % hp->n_kv_head != 0 ||
        hp->n_head * hp->d_head != (int32_t)m->layers[0].wo->n_cols)
        return rs_err(err, RESID_E_UNSUPPORTED, "%s: head geometry H=%d H_kv=%d d_h=%d",
                      m->info.path ? m->info.path : "model", hp->n_head, hp->n_kv_head,
                      hp->d_head);
    return RESID_OK;
}

void resid_explainer_free(resid_explainer *e) {
    if (!e) return;
    free(e->wu_own);
    free(e->gamma);
    free(e->wu_beta);
    if (e->ctx)
        for (int i = 0; i <= 2 * e->L; i++) {
            free(e->ctx[i].logp);
            free(e->ctx[i].g);
        }
    free(e->ctx);
    free(e->gw);
    free(e->gc);
    for (int pass = 0; pass < 2; pass++) {
        rs_dirstats *ds = pass ? e->attn_dirs : e->ffn_dirs;
        if (!ds) continue;
        for (int l = 0; l < e->L; l++) {
            free(ds[l].dg), free(ds[l].dw), free(ds[l].dc), free(ds[l].nd);
            free(ds[l].pmax), free(ds[l].pmin);
        }
        free(ds);
    }
    if (e->wo_t)
        for (int l = 0; l < e->L; l++) free(e->wo_t[l]);
    free(e->wo_t);
    free(e);
}

/* centre(γ ⊙ u)/s into g (u in double). */
static void gvec(const resid_explainer *e, const double *u, float *g) {
    const int D = e->D;
    double mean = 0;
    if (e->centre) {
        for (int d = 0; d < D; d++) mean += e->gamma[d] * u[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) g[d] = (float)((e->gamma[d] * u[d] - mean) / e->s);
}

resid_status resid_explainer_new(const resid_model *m, const resid_trace *tr,
                                 const resid_explain_opts *opts, resid_explainer **out,
                                 resid_error *err) {
    *out = NULL;
    resid_explain_opts o = opts ? *opts : resid_explain_defaults();
    if (!m || !tr) return rs_err(err, RESID_E_ARG, "explainer: model and trace are required");
    resid_status st = check_trace(m, tr, err);
    if (st) return st;
    if (o.lens != RESID_LENS_PAPER && o.lens != RESID_LENS_EXACT && o.lens != RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG, "explainer: unknown lens %d", (int)o.lens);
    const rs_hparams *hp = &m->hp;
    const int32_t V = hp->n_vocab, D = hp->d_model, L = hp->n_layer;
    if (o.target < -1 || o.target >= V)
        return rs_err(err, RESID_E_ARG, "target token %d out of range [0, %d)", o.target, V);
    if (o.contrast < -1 || o.contrast >= V)
        return rs_err(err, RESID_E_ARG, "contrast token %d out of range [0, %d)", o.contrast,
                      V);
    size_t vd;
    if (!rs_mul_size((size_t)V, (size_t)D, &vd) || vd > (size_t)INT32_MAX * 4)
        return rs_err(err, RESID_E_NOMEM, "unembedding %d x %d too large", V, D);

    resid_explainer *e = calloc(1, sizeof *e);
    if (!e) return rs_err(err, RESID_E_NOMEM, "explainer: out of memory");
    e->m = m, e->tr = tr, e->lens = o.lens, e->contrast = o.contrast;
    e->L = L, e->D = D, e->H = hp->n_head, e->Hkv = hp->n_kv_head, e->dh = hp->d_head;
    e->N = hp->d_ffn, e->V = V, e->T = tr->n_tokens, e->tstar = tr->n_cap - 1;
    e->centre = hp->arch == RESID_ARCH_GPT2;
    const int nctx = 2 * L + 1;

    const rs_tensor *wo = m->w_out;
    if (wo->dtype == RESID_DTYPE_F32 && !wo->transposed) {
        e->wu = wo->data;
    } else {
        e->wu_own = malloc(vd * sizeof(float));
        if (!e->wu_own) goto nomem;
        rs_tensor_rows(wo, 0, V, e->wu_own);
        e->wu = e->wu_own;
    }
    e->gamma = malloc((size_t)D * sizeof(float));
    e->gw = calloc((size_t)D, sizeof(float));
    e->ctx = calloc((size_t)nctx, sizeof(rs_context));
    e->ffn_dirs = calloc((size_t)L, sizeof(rs_dirstats));
    e->attn_dirs = calloc((size_t)L, sizeof(rs_dirstats));
    e->wo_t = calloc((size_t)L, sizeof(float *));
    if (!e->gamma || !e->gw || !e->ctx || !e->ffn_dirs || !e->attn_dirs || !e->wo_t)
        goto nomem;
    for (int d = 0; d < D; d++) e->gamma[d] = m->out_norm_w ? m->out_norm_w[d] : 1.0f;

    /* The lens scale, from x_L. */
    {
        const float *xl = ctx_vector(e, 2 * L);
        double mean = 0, ss = 0;
        if (e->centre) {
            for (int d = 0; d < D; d++) mean += xl[d];
            mean /= D;
        }
        for (int d = 0; d < D; d++) ss += (xl[d] - mean) * (xl[d] - mean);
        e->s = sqrt(ss / D + (double)hp->norm_eps);
    }
    if (m->out_norm_b) {
        e->wu_beta = malloc((size_t)V * sizeof(double));
        if (!e->wu_beta) goto nomem;
        for (int t = 0; t < V; t++) {
            double acc = 0;
            const float *row = e->wu + (size_t)t * D;
            for (int d = 0; d < D; d++) acc += (double)row[d] * m->out_norm_b[d];
            e->wu_beta[t] = acc;
        }
    }
    {
        double mx = 0;
        for (int t = 0; t < V; t++) {
            const float *row = e->wu + (size_t)t * D;
            double ss = 0;
            for (int d = 0; d < D; d++) ss += (double)row[d] * row[d];
            if (ss > mx) mx = ss;
        }
        /* a hair above the true value so the bounds stay valid */
        e->mnorm = sqrt(mx) * (1 + 1e-6);
    }

    /* Lens values of every context: b = W_U·lensmap(x) (+ W_U·β_f in the
     * exact lens). */
    float *y = malloc((size_t)nctx * D * sizeof(float));
    float *b = malloc((size_t)nctx * V * sizeof(float));
    double *q = malloc((size_t)D * sizeof(double));
    float *pq = malloc((size_t)nctx * D * sizeof(float));
    if (!y || !b || !q || !pq) {
        free(y), free(b), free(q), free(pq);
        goto nomem;
    }
    for (int ci = 0; ci < nctx; ci++) rs_lensmap(e, ctx_vector(e, ci), y + (size_t)ci * D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nctx, V, D, 1.0f, y, D, e->wu, D,
                0.0f, b, V);
    bool add_beta = e->wu_beta && o.lens == RESID_LENS_EXACT;
    /* Target: the model's argmax at t* (its own logits when captured; else
     * the exact lens of x_L, which equals them). */
    if (o.target < 0) {
        const float *bl = b + (size_t)(2 * L) * V;
        const float *lg = tr->logits ? tr->logits + (size_t)e->tstar * V : NULL;
        int best = 0;
        double bv = -INFINITY;
        for (int t = 0; t < V; t++) {
            double z = lg ? lg[t] : bl[t] + (e->wu_beta ? e->wu_beta[t] : 0);
            if (z > bv) bv = z, best = t;
        }
        o.target = best;
    }
    e->target = o.target;
    for (int ci = 0; ci < nctx; ci++) {
        rs_context *cx = &e->ctx[ci];
        float *bc = b + (size_t)ci * V;
        cx->logp = malloc((size_t)V * sizeof(float));
        cx->g = malloc((size_t)D * sizeof(float));
        if (!cx->logp || !cx->g) {
            free(y), free(b), free(q), free(pq);
            goto nomem;
        }
        double mx = -INFINITY;
        for (int t = 0; t < V; t++) {
            double z = bc[t] + (add_beta ? e->wu_beta[t] : 0);
            if (z > mx) mx = z;
        }
        double sum = 0;
        for (int t = 0; t < V; t++) sum += exp(bc[t] + (add_beta ? e->wu_beta[t] : 0) - mx);
        double lse = mx + log(sum);
        for (int t = 0; t < V; t++) {
            double lp = bc[t] + (add_beta ? e->wu_beta[t] : 0) - lse;
            cx->logp[t] = (float)lp;
            bc[t] = (float)exp(lp); /* b now holds p, for W_Uᵀp below */
        }
        cx->logpw = (double)cx->logp[e->target];
        cx->pw = exp(cx->logpw);
    }
    /* Jensen vectors g = centre(γ ⊙ (W_U[w] − W_Uᵀp))/s. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nctx, D, V, 1.0f, b, V, e->wu, D,
                0.0f, pq, D);
    const float *wrow = e->wu + (size_t)e->target * D;
    for (int ci = 0; ci < nctx; ci++) {
        for (int d = 0; d < D; d++) q[d] = (double)wrow[d] - pq[(size_t)ci * D + d];
        gvec(e, q, e->ctx[ci].g);
    }
    for (int d = 0; d < D; d++) q[d] = wrow[d];
    gvec(e, q, e->gw);
    if (e->contrast >= 0) {
        e->gc = malloc((size_t)D * sizeof(float));
        if (!e->gc) {
            free(y), free(b), free(q), free(pq);
            goto nomem;
        }
        const float *crow = e->wu + (size_t)e->contrast * D;
        for (int d = 0; d < D; d++) q[d] = crow[d];
        gvec(e, q, e->gc);
    }
    free(y), free(b), free(q), free(pq);
    *out = e;
    return RESID_OK;
nomem:
    resid_explainer_free(e);
    return rs_err(err, RESID_E_NOMEM, "explainer: out of memory (V=%d, D=%d)", V, D);
}

int32_t resid_explainer_target(const resid_explainer *e) { return e->target; }
int32_t resid_explainer_contrast(const resid_explainer *e) { return e->contrast; }
resid_lens resid_explainer_lens(const resid_explainer *e) { return e->lens; }
double resid_explainer_scale(const resid_explainer *e) { return e->s; }
double resid_explainer_target_prob(const resid_explainer *e) {
    return e->ctx[2 * e->L].pw;
}

/* ---------------------------------------------------------------------- */
/* Layer table                                                            */
/* ---------------------------------------------------------------------- */

/* log p(w | W_U·LN_f(x)) with x normalised by its own statistics (the usual
 * logit lens, final-norm bias included). */
static double logit_lens_logp(const resid_explainer *e, const float *x, float *y,
                              float *c) {
    const int D = e->D, V = e->V;
    double mean = 0, ss = 0;
    if (e->centre) {
        for (int d = 0; d < D; d++) mean += x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) ss += (x[d] - mean) * (x[d] - mean);
    double inv = 1.0 / sqrt(ss / D + (double)e->m->hp.norm_eps);
    for (int d = 0; d < D; d++)
        y[d] = (float)(e->gamma[d] * (x[d] - mean) * inv +
                       (e->m->out_norm_b ? e->m->out_norm_b[d] : 0));
    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, D, 1.0f, e->wu, D, y, 1, 0.0f, c, 1);
    double mx = -INFINITY;
    for (int t = 0; t < V; t++)
        if (c[t] > mx) mx = c[t];
    double sum = 0;
    for (int t = 0; t < V; t++) sum += exp(c[t] - mx);
    return c[e->target] - mx - log(sum);
}

resid_status resid_layer_table(resid_explainer *e, resid_layer_row *out, resid_error *err) {
    const int L = e->L, D = e->D, V = e->V;
    if (e->lens == RESID_LENS_LOGIT) {
        float *y = malloc((size_t)D * sizeof(float)), *c = malloc((size_t)V * sizeof(float));
        if (!y || !c) {
            free(y), free(c);
            return rs_err(err, RESID_E_NOMEM, "layer table: out of memory");
        }
        double lp_prev = logit_lens_logp(e, ctx_vector(e, 0), y, c);
        for (int l = 0; l < L; l++) {
            double lp_in = lp_prev;
            double lp_mid = logit_lens_logp(e, ctx_vector(e, 2 * l + 1), y, c);
            double lp_out = logit_lens_logp(e, ctx_vector(e, l + 1 < L ? 2 * l + 2 : 2 * L),
                                            y, c);
            out[l].attn_lpi = lp_mid - lp_in;
            out[l].ffn_lpi = lp_out - lp_mid;
            out[l].p_in = exp(lp_in);
            out[l].p_mid = exp(lp_mid);
            out[l].attn_bs_target = NAN;
            out[l].ffn_bs_target = NAN;
            lp_prev = lp_out;
        }
        free(y), free(c);
        return RESID_OK;
    }
    resid_unit *u = calloc((size_t)2 * L + 1, sizeof *u);
    resid_score *sc = malloc((size_t)2 * L * sizeof *sc);
    if (!u || !sc) {
        free(u), free(sc);
        return rs_err(err, RESID_E_NOMEM, "layer table: out of memory");
    }
    for (int l = 0; l < L; l++) {
        u[2 * l] = (resid_unit){RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
        u[2 * l + 1] = (resid_unit){RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
    }
    resid_status st = resid_score_units(e, u, 2 * L, sc, err);
    if (st == RESID_OK)
        for (int l = 0; l < L; l++) {
            out[l].attn_lpi = sc[2 * l].lpi;
            out[l].ffn_lpi = sc[2 * l + 1].lpi;
            out[l].attn_bs_target = sc[2 * l].bs_target;
            out[l].ffn_bs_target = sc[2 * l + 1].bs_target;
            out[l].p_in = e->ctx[2 * l].pw;
            out[l].p_mid = e->ctx[2 * l + 1].pw;
        }
    free(u), free(sc);
    return st;
}
