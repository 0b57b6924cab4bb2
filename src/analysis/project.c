/*
 * project.c - vectors and parameters in vocabulary space (METHOD.md §2.2,
 * §7 items 1-3), the distribution change a unit causes (§2.3), and the
 * layer × position lens grid.
 *
 * Everything goes through one map: y = lens(v) in model space, then
 * bs = W_U·y through rs_matmul, which reads any weight dtype panel by panel
 * (no dequantised copy of the unembedding is kept here). Unit vectors read
 * through an explainer use its own linear map and float32 W_U instead, so
 * their bs-values are the ones the scores were computed from.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"
#include "model/model.h"

/* ---------------------------------------------------------------------- */
/* The lens of one vector                                                 */
/* ---------------------------------------------------------------------- */

/* y[D] = the model-space image of v under the lens (W_U·y = bs(v)). */
static void lens_y(const resid_model *m, resid_lens lens, double scale, const float *v,
                   float *y) {
    const int D = m->hp.d_model;
    const bool ln = m->hp.arch == RESID_ARCH_GPT2;
    double mean = 0;
    if (ln) {
        for (int d = 0; d < D; d++) mean += v[d];
        mean /= D;
    }
    double inv;
    if (lens == RESID_LENS_LOGIT) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (v[d] - mean) * (v[d] - mean);
        inv = 1.0 / sqrt(ss / D + (double)m->hp.norm_eps);
    } else {
        inv = 1.0 / (scale > 0 ? scale : 1.0);
    }
    const bool beta = lens != RESID_LENS_PAPER && m->out_norm_b;
    for (int d = 0; d < D; d++) {
        double g = m->out_norm_w ? m->out_norm_w[d] : 1.0;
        y[d] = (float)(g * (v[d] - mean) * inv + (beta ? m->out_norm_b[d] : 0.0));
    }
}

static bool lens_ok(resid_lens lens) {
    return lens == RESID_LENS_PAPER || lens == RESID_LENS_EXACT || lens == RESID_LENS_LOGIT;
}

resid_status resid_lens_apply(const resid_model *m, resid_lens lens, double scale,
                              const float *v, float *out, resid_error *err) {
    if (!m || !v || !out) return rs_err(err, RESID_E_ARG, "lens: model, v and out are required");
    if (!lens_ok(lens)) return rs_err(err, RESID_E_ARG, "lens: unknown lens %d", (int)lens);
    float *y = malloc((size_t)m->hp.d_model * sizeof(float));
    if (!y) return rs_err(err, RESID_E_NOMEM, "lens: out of memory");
    lens_y(m, lens, scale, v, y);
    rs_matmul(m->w_out, y, 1, out, NULL);
    free(y);
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Top / bottom                                                           */
/* ---------------------------------------------------------------------- */

typedef struct iv {
    float v;
    int32_t id;
} iv;

/* a before b in "highest first, lower id on ties" */
static inline bool iv_before(iv a, iv b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

/* The k best of x[n] under `better` (a min-heap of the kept ones, root the
 * weakest), written sorted into out. O(n log k). */
static void select_k(const float *x, int32_t n, int32_t k, bool lowest, resid_token_value *out) {
    iv *h = malloc((size_t)(k ? k : 1) * sizeof *h);
    if (!h) {
        /* fall back to a quadratic scan: never fails */
        bool *used = calloc((size_t)n, 1);
        for (int32_t r = 0; r < k; r++) {
            int32_t best = -1;
            for (int32_t t = 0; t < n; t++) {
                if (used && used[t]) continue;
                iv a = {lowest ? -x[t] : x[t], t};
                if (best < 0 || iv_before(a, (iv){lowest ? -x[best] : x[best], best})) best = t;
            }
            if (used) used[best] = true;
            out[r] = (resid_token_value){best, x[best]};
        }
        free(used);
        return;
    }
    int32_t hn = 0;
    for (int32_t t = 0; t < n; t++) {
        iv a = {lowest ? -x[t] : x[t], t};
        if (hn < k) {
            int32_t i = hn++;
            h[i] = a;
            while (i > 0) {
                int32_t p = (i - 1) / 2;
                if (!iv_before(h[p], h[i])) break;
                iv tmp = h[i];
                h[i] = h[p], h[p] = tmp;
                i = p;
            }
        } else if (iv_before(a, h[0])) {
            h[0] = a;
            int32_t i = 0;
            for (;;) {
                int32_t l = 2 * i + 1, r = l + 1, w = i;
                if (l < hn && iv_before(h[w], h[l])) w = l;
                if (r < hn && iv_before(h[w], h[r])) w = r;
                if (w == i) break;
                iv tmp = h[i];
                h[i] = h[w], h[w] = tmp;
                i = w;
            }
        }
    }
    /* pop the weakest repeatedly into the back of out */
    for (int32_t r = hn - 1; r >= 0; r--) {
        iv a = h[0];
        out[r] = (resid_token_value){a.id, lowest ? -(double)a.v : (double)a.v};
        h[0] = h[--hn];
        int32_t i = 0;
        for (;;) {
            int32_t l = 2 * i + 1, rr = l + 1, w = i;
            if (l < hn && iv_before(h[w], h[l])) w = l;
            if (rr < hn && iv_before(h[w], h[rr])) w = rr;
            if (w == i) break;
            iv tmp = h[i];
            h[i] = h[w], h[w] = tmp;
            i = w;
        }
    }
    free(h);
}

int32_t resid_top_bottom(const float *x, int32_t n, int32_t k, resid_token_value *top,
                         resid_token_value *bottom) {
    if (!x || n <= 0 || k <= 0) return 0;
    if (k > n) k = n;
    if (top) select_k(x, n, k, false, top);
    if (bottom) select_k(x, n, k, true, bottom);
    return k;
}

resid_status resid_project_vector(const resid_model *m, const float *v, double scale,
                                  int32_t k, resid_token_value *top,
                                  resid_token_value *bottom, int32_t *k_out,
                                  resid_error *err) {
    if (!m || !v) return rs_err(err, RESID_E_ARG, "projection: model and vector are required");
    if (k < 0) return rs_err(err, RESID_E_ARG, "projection: k = %d is negative", k);
    const int32_t V = m->hp.n_vocab;
    float *bs = malloc((size_t)V * sizeof(float));
    if (!bs) return rs_err(err, RESID_E_NOMEM, "projection: out of memory (V=%d)", V);
    resid_status st = resid_lens_apply(m, RESID_LENS_PAPER, scale, v, bs, err);
    if (!st) {
        int32_t kk = resid_top_bottom(bs, V, k, top, bottom);
        if (k_out) *k_out = kk;
    }
    free(bs);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Parameter rows                                                         */
/* ---------------------------------------------------------------------- */

const char *resid_param_name(resid_param p) {
    switch (p) {
    case RESID_PARAM_FC2: return "fc2";
    case RESID_PARAM_WO: return "wo";
    case RESID_PARAM_FC1: return "fc1";
    case RESID_PARAM_GATE: return "gate";
    case RESID_PARAM_WV: return "wv";
    }
    return "?";
}

/* The value-projection tensor of a layer and the row offset of its V part
 * (GPT-2 fused QKV: rows H·d_h + H_kv·d_h ..). */
static const rs_tensor *value_weight(const resid_model *m, int32_t l, int64_t *off,
                                     const float **bias) {
    const rs_layer *ly = &m->layers[l];
    const rs_hparams *hp = &m->hp;
    if (ly->wv) {
        *off = 0;
        *bias = ly->bv;
        return ly->wv;
    }
    *off = (int64_t)hp->n_head * hp->d_head + (int64_t)hp->n_kv_head * hp->d_head;
    *bias = ly->bqkv ? ly->bqkv + *off : NULL;
    return ly->wqkv;
}

resid_status resid_param_vector(const resid_model *m, resid_param p, int32_t layer,
                                int64_t row, float *v, resid_error *err) {
    if (!m || !v) return rs_err(err, RESID_E_ARG, "parameter: model and v are required");
    const rs_hparams *hp = &m->hp;
    if (layer < 0 || layer >= hp->n_layer)
        return rs_err(err, RESID_E_ARG, "parameter %s: layer %d out of range [0, %d)",
                      resid_param_name(p), layer, hp->n_layer);
    const rs_layer *ly = &m->layers[layer];
    int64_t n;
    switch (p) {
    case RESID_PARAM_FC2:
    case RESID_PARAM_FC1:
    case RESID_PARAM_GATE: n = hp->d_ffn; break;
    case RESID_PARAM_WO: n = (int64_t)hp->n_head * hp->d_head; break;
    case RESID_PARAM_WV: n = (int64_t)hp->n_kv_head * hp->d_head; break;
    default: return rs_err(err, RESID_E_ARG, "parameter kind %d unknown", (int)p);
    }
    if (row < 0 || row >= n)
        return rs_err(err, RESID_E_ARG, "parameter %s: row %lld out of range [0, %lld)",
                      resid_param_name(p), (long long)row, (long long)n);
    switch (p) {
    case RESID_PARAM_FC2: rs_tensor_col(ly->w_down, row, v); break;
    case RESID_PARAM_WO: rs_tensor_col(ly->wo, row, v); break;
    case RESID_PARAM_FC1: rs_tensor_rows(ly->w_up, row, 1, v); break;
    case RESID_PARAM_GATE:
        if (!ly->w_gate)
            return rs_err(err, RESID_E_ARG, "parameter gate: the model has no gated FFN");
        rs_tensor_rows(ly->w_gate, row, 1, v);
        break;
    case RESID_PARAM_WV: {
        int64_t off;
        const float *b;
        const rs_tensor *w = value_weight(m, layer, &off, &b);
        rs_tensor_rows(w, off + row, 1, v);
        break;
    }
    }
    return RESID_OK;
}

resid_status resid_project_param(const resid_model *m, resid_param p, int32_t layer,
                                 int64_t row, double sign, double scale, int32_t k,
                                 resid_token_value *top, resid_token_value *bottom,
                                 int32_t *k_out, resid_error *err) {
    if (!m) return rs_err(err, RESID_E_ARG, "projection: model is required");
    const int D = m->hp.d_model;
    float *v = malloc((size_t)D * sizeof(float));
    if (!v) return rs_err(err, RESID_E_NOMEM, "projection: out of memory");
    resid_status st = resid_param_vector(m, p, layer, row, v, err);
    if (!st) {
        if (sign < 0)
            for (int d = 0; d < D; d++) v[d] = -v[d];
        st = resid_project_vector(m, v, scale, k, top, bottom, k_out, err);
    }
    free(v);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Units                                                                  */
/* ---------------------------------------------------------------------- */

resid_status resid_unit_bs(resid_explainer *e, const resid_unit *u, float *out,
                           resid_error *err) {
    if (!e || !u || !out) return rs_err(err, RESID_E_ARG, "unit bs: explainer, unit and out are required");
    resid_status st = rs_units_prepare(e, u, 1, err);
    if (st) return st;
    float *v = malloc((size_t)e->D * sizeof(float));
    float *y = malloc((size_t)e->D * sizeof(float));
    if (!v || !y) {
        free(v), free(y);
        return rs_err(err, RESID_E_NOMEM, "unit bs: out of memory");
    }
    rs_unit_vector(e, u, v);
    rs_lensmap(e, v, y);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, e->V, e->D, 1.0f, e->wu, e->D, y, 1, 0.0f, out,
                1);
    free(v), free(y);
    return RESID_OK;
}

resid_status resid_project_unit(resid_explainer *e, const resid_unit *u, int32_t k,
                                resid_token_value *top, resid_token_value *bottom,
                                int32_t *k_out, resid_error *err) {
    if (!e) return rs_err(err, RESID_E_ARG, "projection: explainer is required");
    if (k < 0) return rs_err(err, RESID_E_ARG, "projection: k = %d is negative", k);
    float *bs = malloc((size_t)e->V * sizeof(float));
    if (!bs) return rs_err(err, RESID_E_NOMEM, "projection: out of memory");
    resid_status st = resid_unit_bs(e, u, bs, err);
    if (!st) {
        int32_t kk = resid_top_bottom(bs, e->V, k, top, bottom);
        if (k_out) *k_out = kk;
    }
    free(bs);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Many vectors at once                                                   */
/* ---------------------------------------------------------------------- */

resid_status resid_lens_vector(const resid_model *m, resid_lens lens, double scale,
                               const float *v, float *y, resid_error *err) {
    if (!m || !v || !y) return rs_err(err, RESID_E_ARG, "lens: model, v and y are required");
    if (!lens_ok(lens)) return rs_err(err, RESID_E_ARG, "lens: unknown lens %d", (int)lens);
    lens_y(m, lens, scale, v, y);
    return RESID_OK;
}

resid_status resid_unit_lens_vector(resid_explainer *e, const resid_unit *u, float *y,
                                    resid_error *err) {
    if (!e || !u || !y)
        return rs_err(err, RESID_E_ARG, "unit lens: explainer, unit and y are required");
    resid_status st = rs_units_prepare(e, u, 1, err);
    if (st) return st;
    float *v = malloc((size_t)e->D * sizeof(float));
    if (!v) return rs_err(err, RESID_E_NOMEM, "unit lens: out of memory");
    rs_unit_vector(e, u, v);
    rs_lensmap(e, v, y);
    free(v);
    return RESID_OK;
}

/* Rows per unembedding GEMM of resid_project_many_topk (scratch: rows × V
 * floats, 12.9 MB at V = 50257). */
#define TOPK_ROWS 64

resid_status resid_project_many_topk(const resid_model *m, const float *y, int64_t n,
                                     int32_t k, resid_token_value *top,
                                     resid_token_value *bottom, int32_t *k_out,
                                     resid_error *err) {
    if (!m || (!y && n > 0))
        return rs_err(err, RESID_E_ARG, "projection: model and vectors are required");
    if (n < 0) return rs_err(err, RESID_E_ARG, "projection: n = %lld is negative", (long long)n);
    if (k < 0) return rs_err(err, RESID_E_ARG, "projection: k = %d is negative", k);
    const int32_t V = m->hp.n_vocab, D = m->hp.d_model;
    const int32_t kk = k < V ? k : V;
    if (k_out) *k_out = kk;
    if (n == 0 || kk == 0 || (!top && !bottom)) return RESID_OK;
    size_t nv, ny, nk;
    const int64_t rows = n < TOPK_ROWS ? n : TOPK_ROWS;
    if (!rs_mul_size((size_t)rows, (size_t)V, &nv) || !rs_mul_size(nv, sizeof(float), &nv) ||
        !rs_mul_size((size_t)n, (size_t)D, &ny) || !rs_mul_size((size_t)n, (size_t)k, &nk))
        return rs_err(err, RESID_E_ARG, "projection: %lld vectors x k=%d overflow the size",
                      (long long)n, k);
    float *bs = malloc(nv);
    if (!bs) return rs_err(err, RESID_E_NOMEM, "projection: out of memory (%lld rows x V=%d)",
                           (long long)rows, V);
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t nb = n - r0 < rows ? n - r0 : rows;
        rs_matmul(m->w_out, y + (size_t)r0 * D, nb, bs, NULL);
#pragma omp parallel for schedule(dynamic, 1) if (nb * (int64_t)V >= RS_PAR_MIN_WORK)
        for (int64_t b = 0; b < nb; b++) {
            const float *x = bs + (size_t)b * V;
            const size_t o = (size_t)(r0 + b) * (size_t)k;
            resid_top_bottom(x, V, kk, top ? top + o : NULL, bottom ? bottom + o : NULL);
        }
    }
    free(bs);
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Distribution change                                                    */
/* ---------------------------------------------------------------------- */

void resid_dist_change_free(resid_dist_change *d) {
    if (!d) return;
    free(d->rise), free(d->fall), free(d->bs_top), free(d->bs_bottom);
    free(d);
}

/* |a ∩ b| for two id lists of length k (k small: quadratic is fine). */
static int32_t overlap(const resid_token_value *a, const resid_token_value *b, int32_t k) {
    int32_t c = 0;
    for (int32_t i = 0; i < k; i++)
        for (int32_t j = 0; j < k; j++)
            if (a[i].id == b[j].id) {
                c++;
                break;
            }
    return c;
}

resid_status resid_dist_change_new(resid_explainer *e, const resid_unit *u, int32_t k,
                                   resid_dist_change **out, resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "%s: out is required", "resid_dist_change_new");
    *out = NULL;
    if (!e || !u) return rs_err(err, RESID_E_ARG, "distribution change: explainer and unit are required");
    if (e->lens == RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG,
                      "distribution change: the logit lens is not linear (use paper or exact)");
    if (k < 1) return rs_err(err, RESID_E_ARG, "distribution change: k = %d must be >= 1", k);
    const int32_t V = e->V;
    if (k > V) k = V;
    resid_dist_change *d = calloc(1, sizeof *d);
    float *c = malloc((size_t)V * sizeof(float));
    float *dp = malloc((size_t)V * sizeof(float));
    if (d) {
        d->rise = malloc((size_t)k * sizeof(resid_token_value));
        d->fall = malloc((size_t)k * sizeof(resid_token_value));
        d->bs_top = malloc((size_t)k * sizeof(resid_token_value));
        d->bs_bottom = malloc((size_t)k * sizeof(resid_token_value));
    }
    if (!d || !c || !dp || !d->rise || !d->fall || !d->bs_top || !d->bs_bottom) {
        resid_dist_change_free(d);
        free(c), free(dp);
        return rs_err(err, RESID_E_NOMEM, "distribution change: out of memory (V=%d)", V);
    }
    resid_status st = resid_unit_bs(e, u, c, err);
    if (st) {
        resid_dist_change_free(d);
        free(c), free(dp);
        return st;
    }
    const float *lp = e->ctx[rs_unit_ctx(u)].logp;
    double mx = -INFINITY, cmx = -INFINITY, cmn = INFINITY;
    for (int32_t t = 0; t < V; t++) {
        double z = (double)lp[t] + c[t];
        if (z > mx) mx = z;
        if (c[t] > cmx) cmx = c[t];
        if (c[t] < cmn) cmn = c[t];
    }
    double sum = 0;
    for (int32_t t = 0; t < V; t++) sum += exp((double)lp[t] + c[t] - mx);
    const double lse = mx + log(sum);
    for (int32_t t = 0; t < V; t++)
        dp[t] = (float)(exp((double)lp[t] + c[t] - lse) - exp((double)lp[t]));
    d->unit = *u;
    d->k = k;
    resid_top_bottom(dp, V, k, d->rise, d->fall);
    resid_top_bottom(c, V, k, d->bs_top, d->bs_bottom);
    d->overlap_top = overlap(d->rise, d->bs_top, k);
    d->overlap_bottom = overlap(d->fall, d->bs_bottom, k);
    d->jaccard_top = (double)d->overlap_top / (2.0 * k - d->overlap_top);
    d->jaccard_bottom = (double)d->overlap_bottom / (2.0 * k - d->overlap_bottom);
    d->lpi = (double)lp[e->target] + c[e->target] - lse - (double)lp[e->target];
    d->bs_range = cmx - cmn;
    free(c), free(dp);
    *out = d;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Lens grid                                                              */
/* ---------------------------------------------------------------------- */

void resid_lens_grid_free(resid_lens_grid *g) {
    if (!g) return;
    free(g->in), free(g->mid);
    free(g);
}

/* Scale of the final norm of x (σ or rms, with eps). */
static double final_scale(const resid_model *m, const float *x) {
    const int D = m->hp.d_model;
    double mean = 0, ss = 0;
    if (m->hp.arch == RESID_ARCH_GPT2) {
        for (int d = 0; d < D; d++) mean += x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) ss += (x[d] - mean) * (x[d] - mean);
    return sqrt(ss / D + (double)m->hp.norm_eps);
}

static void fill_cell(const float *bs, int32_t V, int32_t w, resid_lens_cell *c) {
    int32_t best = 0;
    for (int32_t t = 1; t < V; t++)
        if (bs[t] > bs[best]) best = t;
    double sum = 0;
    for (int32_t t = 0; t < V; t++) sum += exp((double)bs[t] - bs[best]);
    int32_t rank = 0;
    for (int32_t t = 0; t < V; t++)
        if (bs[t] > bs[w] || (bs[t] == bs[w] && t < w)) rank++;
    c->top1 = best;
    c->p_top1 = 1.0 / sum;
    c->p_target = exp((double)bs[w] - bs[best]) / sum;
    c->rank_target = rank;
}

#define GRID_BATCH 32

resid_status resid_lens_grid_new(const resid_model *m, const resid_trace *tr,
                                 resid_lens lens, int32_t target, resid_lens_grid **out,
                                 resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "%s: out is required", "resid_lens_grid_new");
    *out = NULL;
    if (!m || !tr) return rs_err(err, RESID_E_ARG, "lens grid: model and trace are required");
    if (!lens_ok(lens)) return rs_err(err, RESID_E_ARG, "lens grid: unknown lens %d", (int)lens);
    const rs_hparams *hp = &m->hp;
    if (tr->n_layer != hp->n_layer || tr->d_model != hp->d_model || tr->n_vocab != hp->n_vocab)
        return rs_err(err, RESID_E_ARG, "lens grid: the trace was made by another model");
    if (!tr->x_in || !tr->x_mid)
        return rs_err(err, RESID_E_ARG, "lens grid: the trace lacks RESID_CAP_RESID");
    const int32_t L = hp->n_layer, D = hp->d_model, V = hp->n_vocab, P = tr->n_cap;
    if (target < -1 || target >= V)
        return rs_err(err, RESID_E_ARG, "lens grid: target token %d out of range [0, %d)",
                      target, V);
    resid_lens_grid *g = calloc(1, sizeof *g);
    float *y = malloc((size_t)GRID_BATCH * D * sizeof(float));
    float *bs = malloc((size_t)GRID_BATCH * V * sizeof(float));
    double *sc = malloc((size_t)P * sizeof(double));
    if (g) {
        g->in = malloc((size_t)(L + 1) * P * sizeof(resid_lens_cell));
        g->mid = malloc((size_t)L * P * sizeof(resid_lens_cell));
    }
    if (!g || !y || !bs || !sc || !g->in || !g->mid) {
        resid_lens_grid_free(g);
        free(y), free(bs), free(sc);
        return rs_err(err, RESID_E_NOMEM, "lens grid: out of memory");
    }
    g->lens = lens, g->n_layer = L, g->pos_first = tr->pos_first, g->n_pos = P;
    const float *xl = tr->x_in + (size_t)L * P * D;
    for (int32_t t = 0; t < P; t++) sc[t] = final_scale(m, xl + (size_t)t * D);
    if (target < 0) {
        /* the model's argmax at t* */
        const float *lg = tr->logits ? tr->logits + (size_t)(P - 1) * V : NULL;
        if (!lg) {
            lens_y(m, RESID_LENS_EXACT, sc[P - 1], xl + (size_t)(P - 1) * D, y);
            rs_matmul(m->w_out, y, 1, bs, NULL);
            lg = bs;
        }
        target = 0;
        for (int32_t t = 1; t < V; t++)
            if (lg[t] > lg[target]) target = t;
    }
    g->target = target;
    /* rows: (2L+1)·P vectors; index r -> (which, l, t) */
    const int64_t n_rows = (int64_t)(2 * L + 1) * P;
    for (int64_t r0 = 0; r0 < n_rows; r0 += GRID_BATCH) {
        int nb = (int)(n_rows - r0 < GRID_BATCH ? n_rows - r0 : GRID_BATCH);
        for (int b = 0; b < nb; b++) {
            int64_t r = r0 + b;
            int32_t t = (int32_t)(r % P), slot = (int32_t)(r / P); /* 0..2L */
            const float *x = slot <= L ? tr->x_in + ((size_t)slot * P + t) * D
                                       : tr->x_mid + ((size_t)(slot - L - 1) * P + t) * D;
            lens_y(m, lens, sc[t], x, y + (size_t)b * D);
        }
        rs_matmul(m->w_out, y, nb, bs, NULL);
        for (int b = 0; b < nb; b++) {
            int64_t r = r0 + b;
            int32_t t = (int32_t)(r % P), slot = (int32_t)(r / P);
            resid_lens_cell *c = slot <= L ? &g->in[(size_t)slot * P + t]
                                           : &g->mid[(size_t)(slot - L - 1) * P + t];
            fill_cell(bs + (size_t)b * V, V, target, c);
        }
    }
    free(y), free(bs), free(sc);
    *out = g;
    return RESID_OK;
}
