/*
 * query.c - cross-layer "query" analyses (METHOD.md §5): which lower
 * vectors activate the value neurons.
 *
 * A neuron reads its input x through a norm and a weight row w. Folding the
 * norm gain into the row gives the key K = γ ⊙ w, and then exactly
 *
 *     pre = (x·K − mean(x)·Σ_d K_d)/σ(x) + β·w + b        (LayerNorm)
 *     pre = x·K / rms(x)                                  (RMSNorm)
 *
 * with x the sum of the lower vectors (embedding, attention and FFN outputs
 * below the neuron). The notebooks share a value neuron's score among the
 * lower vectors u_j in proportion to u_j·K (Q1, Q2), and score lower FFN
 * neurons by how much their subvalue points along K (Q3).
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"
#include "model/model.h"

resid_query_opts resid_query_defaults(void) {
    resid_query_opts o = {0, 0, 0, false};
    return o;
}

/* ---------------------------------------------------------------------- */
/* Keys                                                                   */
/* ---------------------------------------------------------------------- */

/* The raw weight row w[D], the bias b and the norm (γ, β) in front of a
 * neuron. RESID_E_ARG for an id out of range. */
typedef struct subkey {
    float *w;          /* [D] */
    double b;
    const float *gamma, *beta; /* [D], may be NULL (1 / 0) */
} subkey;

static resid_status subkey_get(const resid_model *m, resid_subkey key, int32_t l,
                               int32_t index, subkey *s, resid_error *err) {
    const rs_hparams *hp = &m->hp;
    if (l < 0 || l >= hp->n_layer)
        return rs_err(err, RESID_E_ARG, "subkey: layer %d out of range [0, %d)", l,
                      hp->n_layer);
    const rs_layer *ly = &m->layers[l];
    resid_status st;
    switch (key) {
    case RESID_SUBKEY_UP:
    case RESID_SUBKEY_GATE:
        if (index < 0 || index >= hp->d_ffn)
            return rs_err(err, RESID_E_ARG, "subkey: FFN neuron %d out of range [0, %d)",
                          index, hp->d_ffn);
        if (key == RESID_SUBKEY_GATE && !ly->w_gate)
            return rs_err(err, RESID_E_ARG, "subkey: gate key on a model without a gated FFN");
        st = resid_param_vector(m, key == RESID_SUBKEY_UP ? RESID_PARAM_FC1 : RESID_PARAM_GATE,
                                l, index, s->w, err);
        if (st) return st;
        s->b = key == RESID_SUBKEY_UP && ly->b_up ? ly->b_up[index] : 0.0;
        s->gamma = ly->ffn_norm_w, s->beta = ly->ffn_norm_b;
        return RESID_OK;
    case RESID_SUBKEY_VALUE: {
        const int32_t HD = hp->n_head * hp->d_head;
        if (index < 0 || index >= HD)
            return rs_err(err, RESID_E_ARG,
                          "subkey: attention neuron h*d_h+n = %d out of range [0, %d)", index,
                          HD);
        int32_t h = index / hp->d_head, n = index % hp->d_head;
        int32_t row = (h / (hp->n_head / hp->n_kv_head)) * hp->d_head + n;
        st = resid_param_vector(m, RESID_PARAM_WV, l, row, s->w, err);
        if (st) return st;
        const float *bv = ly->wv ? ly->bv
                                 : (ly->bqkv ? ly->bqkv + (int64_t)HD +
                                                   (int64_t)hp->n_kv_head * hp->d_head
                                             : NULL);
        s->b = bv ? bv[row] : 0.0;
        s->gamma = ly->attn_norm_w, s->beta = ly->attn_norm_b;
        return RESID_OK;
    }
    }
    return rs_err(err, RESID_E_ARG, "subkey kind %d unknown", (int)key);
}

/* K[D] = γ ⊙ w. */
static void subkey_k(const resid_model *m, const subkey *s, float *K) {
    for (int d = 0; d < m->hp.d_model; d++)
        K[d] = (s->gamma ? s->gamma[d] : 1.0f) * s->w[d];
}

static inline const float *trow(const resid_trace *tr, const float *base, int32_t l,
                                int32_t row) {
    return base + ((size_t)l * tr->n_cap + (size_t)row) * tr->d_model;
}

static resid_status check_model_trace(const resid_model *m, const resid_trace *tr,
                                      const char *what, resid_error *err) {
    const rs_hparams *hp = &m->hp;
    if (tr->n_layer != hp->n_layer || tr->d_model != hp->d_model ||
        tr->d_ffn != hp->d_ffn || tr->n_head != hp->n_head)
        return rs_err(err, RESID_E_ARG, "%s: the trace was made by another model", what);
    if (!tr->x_in || !tr->attn_out || !tr->x_mid || !tr->ffn_out)
        return rs_err(err, RESID_E_ARG, "%s: the trace lacks RESID_CAP_RESID", what);
    if (hp->n_kv_head < 1 || hp->n_head % hp->n_kv_head)
        return rs_err(err, RESID_E_UNSUPPORTED, "%s: head geometry H=%d H_kv=%d", what,
                      hp->n_head, hp->n_kv_head);
    return RESID_OK;
}

/* Trace row of absolute position pos, or an error naming what is missing. */
static resid_status pos_row(const resid_trace *tr, int32_t pos, const char *what,
                            int32_t *row, resid_error *err) {
    if (pos < 0 || pos >= tr->n_tokens)
        return rs_err(err, RESID_E_ARG, "%s: position %d out of range [0, %d)", what, pos,
                      tr->n_tokens);
    if (pos < tr->pos_first)
        return rs_err(err, RESID_E_ARG,
                      "%s: position %d was not captured (the trace starts at %d); run "
                      "resid_forward with positions = RESID_POS_ALL",
                      what, pos, tr->pos_first);
    *row = pos - tr->pos_first;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* The exact split                                                        */
/* ---------------------------------------------------------------------- */

/* Inner products of the lower vectors at trace row `row` with K into
 * dot[n_slots]; n_slots = 2l+2 with a[l] (FFN keys), 2l+1 without. */
static int lower_dots(const resid_trace *tr, int32_t l, int32_t row, bool with_attn,
                      const float *K, double *dot) {
    const int D = tr->d_model;
    int n = 0;
    dot[n++] = rs_dot(trow(tr, tr->x_in, 0, row), K, D);
    for (int32_t i = 0; i < l; i++) {
        dot[n++] = rs_dot(trow(tr, tr->attn_out, i, row), K, D);
        dot[n++] = rs_dot(trow(tr, tr->ffn_out, i, row), K, D);
    }
    if (with_attn) dot[n++] = rs_dot(trow(tr, tr->attn_out, l, row), K, D);
    return n;
}

void resid_preact_free(resid_preact *p) {
    if (!p) return;
    free(p->dot), free(p->share);
    free(p);
}

resid_status resid_preact_new(const resid_model *m, const resid_trace *tr, resid_subkey key,
                              int32_t layer, int32_t index, int32_t pos, resid_preact **out,
                              resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "%s: out is required", "resid_preact_new");
    *out = NULL;
    if (!m || !tr) return rs_err(err, RESID_E_ARG, "pre-activation: model and trace are required");
    resid_status st = check_model_trace(m, tr, "pre-activation", err);
    if (st) return st;
    int32_t row;
    if ((st = pos_row(tr, pos, "pre-activation", &row, err))) return st;
    const int D = m->hp.d_model;
    const bool ffn = key != RESID_SUBKEY_VALUE;
    if (layer < 0 || layer >= m->hp.n_layer)
        return rs_err(err, RESID_E_ARG, "pre-activation: layer %d out of range [0, %d)", layer,
                      m->hp.n_layer);
    resid_preact *p = calloc(1, sizeof *p);
    float *w = malloc((size_t)D * sizeof(float)), *K = malloc((size_t)D * sizeof(float));
    if (p) {
        p->dot = malloc((size_t)(2 * layer + 2) * sizeof(double));
        p->share = malloc((size_t)(2 * layer + 2) * sizeof(double));
    }
    if (!p || !w || !K || !p->dot || !p->share) {
        resid_preact_free(p);
        free(w), free(K);
        return rs_err(err, RESID_E_NOMEM, "pre-activation: out of memory");
    }
    subkey s = {w, 0, NULL, NULL};
    if ((st = subkey_get(m, key, layer, index, &s, err))) {
        resid_preact_free(p);
        free(w), free(K);
        return st;
    }
    subkey_k(m, &s, K);
    const float *x = ffn ? trow(tr, tr->x_mid, layer, row) : trow(tr, tr->x_in, layer, row);
    const bool ln = m->hp.arch == RESID_ARCH_GPT2;
    double mean = 0, ss = 0, lambda = 0, bias = s.b;
    if (ln) {
        for (int d = 0; d < D; d++) mean += x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) {
        ss += (x[d] - mean) * (x[d] - mean);
        lambda += K[d];
        if (s.beta) bias += (double)s.beta[d] * w[d];
    }
    const double sigma = sqrt(ss / D + (double)m->hp.norm_eps);
    p->n_slots = lower_dots(tr, layer, row, ffn, K, p->dot);
    p->pre = 0;
    for (int j = 0; j < p->n_slots; j++) {
        p->share[j] = p->dot[j] / sigma;
        p->pre += p->share[j];
    }
    p->sigma = sigma;
    p->mean_term = ln ? -mean * lambda / sigma : 0.0;
    p->bias_term = bias;
    p->pre += p->mean_term + p->bias_term;
    /* the ordinary route: norm(x)·w + b */
    double direct = s.b;
    for (int d = 0; d < D; d++) {
        double g = s.gamma ? s.gamma[d] : 1.0, be = s.beta ? s.beta[d] : 0.0;
        direct += (g * (x[d] - mean) / sigma + be) * w[d];
    }
    p->pre_direct = direct;
    free(w), free(K);
    *out = p;
    return RESID_OK;
}

/* The top-k units of a kind by LPI, distinct. resid_rank's certified path
 * can list a unit twice when two units of one attention direction enter
 * the same batch (seen on tiny-gpt2-stories, attention neurons). A list
 * with repeats is still a correct prefix of the ranking once the repeats
 * are dropped, so ask for more until k distinct units come back. */
static resid_status rank_distinct(resid_explainer *e, resid_unit_kind kind, int64_t k,
                                  resid_score **out, int64_t *n_out, resid_error *err) {
    const int64_t total = resid_unit_count(e, kind);
    if (k > total) k = total;
    for (int64_t ask = k;; ask = ask * 2 < total ? ask * 2 : total) {
        resid_rank_opts ro = resid_rank_defaults(kind, ask);
        resid_score *s;
        int64_t n;
        resid_status st = resid_rank(e, &ro, &s, &n, NULL, err);
        if (st) return st;
        int64_t m = 0;
        for (int64_t i = 0; i < n && m < k; i++) {
            bool dup = false;
            for (int64_t q = 0; q < m && !dup; q++)
                dup = memcmp(&s[q].unit, &s[i].unit, sizeof(resid_unit)) == 0;
            if (!dup) s[m++] = s[i];
        }
        if (m >= k || ask >= total) {
            *out = s;
            *n_out = m;
            return RESID_OK;
        }
        free(s);
    }
}

/* ---------------------------------------------------------------------- */
/* Q1 / Q2: query layers                                                  */
/* ---------------------------------------------------------------------- */

void resid_query_layers_free(resid_query_layers *q) {
    if (!q) return;
    free(q->units), free(q->q), free(q->q_gate);
    free(q);
}

static int32_t default_nv(const resid_explainer *e) {
    return e->m->hp.arch == RESID_ARCH_GPT2 ? 100 : 30;
}

/* q[j] += dot[j]/S · s over the n slots (S = Σ dot + extra terms);
 * counts a small denominator. The extra terms (mean, bias: exact_ln) get
 * their shares in *qm, *qb. */
static void share_into(double *q, const double *dot, int n, double mean_t, double bias_t,
                       double *qm, double *qb, double s, int32_t *n_small) {
    double S = mean_t + bias_t, A = fabs(mean_t) + fabs(bias_t);
    for (int j = 0; j < n; j++) S += dot[j], A += fabs(dot[j]);
    if (fabs(S) <= 1e-6 * A) (*n_small)++;
    for (int j = 0; j < n; j++) q[j] += dot[j] / S * s;
    *qm += mean_t / S * s;
    *qb += bias_t / S * s;
}

/* The split of one neuron: dot (raw or exact shares) and the extra terms. */
static resid_status neuron_terms(const resid_explainer *e, resid_subkey key,
                                 const resid_unit *u, int32_t pos, bool exact, subkey *sk,
                                 float *K, double *dot, int *ns, double *mt, double *bt,
                                 resid_error *err) {
    const resid_trace *tr = e->tr;
    int32_t index = key == RESID_SUBKEY_VALUE ? u->head * e->dh + u->index : u->index;
    *mt = *bt = 0;
    if (exact) {
        resid_preact *p;
        resid_status st = resid_preact_new(e->m, tr, key, u->layer, index, pos, &p, err);
        if (st) return st;
        *ns = p->n_slots;
        memcpy(dot, p->share, (size_t)p->n_slots * sizeof(double));
        *mt = p->mean_term, *bt = p->bias_term;
        resid_preact_free(p);
        return RESID_OK;
    }
    int32_t row;
    resid_status st = pos_row(tr, pos, "query layers", &row, err);
    if (st) return st;
    if ((st = subkey_get(e->m, key, u->layer, index, sk, err))) return st;
    subkey_k(e->m, sk, K);
    *ns = lower_dots(tr, u->layer, row, key != RESID_SUBKEY_VALUE, K, dot);
    return RESID_OK;
}

resid_status resid_query_layers_new(resid_explainer *e, resid_unit_kind kind,
                                    const resid_query_opts *opts, resid_query_layers **out,
                                    resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "%s: out is required", "resid_query_layers_new");
    *out = NULL;
    if (!e) return rs_err(err, RESID_E_ARG, "query layers: explainer is required");
    if (kind != RESID_UNIT_FFN_NEURON && kind != RESID_UNIT_ATTN_NEURON)
        return rs_err(err, RESID_E_ARG,
                      "query layers: kind must be ffn-neuron (Q1) or attn-neuron (Q2), not %s",
                      resid_unit_kind_name(kind));
    const resid_model *m = e->m;
    const resid_trace *tr = e->tr;
    resid_status st = check_model_trace(m, tr, "query layers", err);
    if (st) return st;
    resid_query_opts o = opts ? *opts : resid_query_defaults();
    int32_t nv = o.n_value > 0 ? o.n_value : default_nv(e);
    const int L = e->L, D = e->D, nslots = 2 * L + 1;
    const bool gated = kind == RESID_UNIT_FFN_NEURON && m->layers[0].w_gate;

    resid_query_layers *q = calloc(1, sizeof *q);
    float *w = malloc((size_t)D * sizeof(float)), *K = malloc((size_t)D * sizeof(float));
    double *dot = malloc((size_t)nslots * sizeof(double));
    if (q) {
        q->q = calloc((size_t)nslots, sizeof(double));
        q->q_gate = gated ? calloc((size_t)nslots, sizeof(double)) : NULL;
    }
    if (!q || !w || !K || !dot || !q->q || (gated && !q->q_gate)) {
        st = rs_err(err, RESID_E_NOMEM, "query layers: out of memory");
        goto fail;
    }
    q->kind = kind, q->n_slots = nslots;
    int64_t n;
    if ((st = rank_distinct(e, kind, nv, &q->units, &n, err))) goto fail;
    q->n_units = (int32_t)n;
    double layer_sum = 0;
    for (int64_t i = 0; i < n; i++) {
        const resid_unit *u = &q->units[i].unit;
        const double s = q->units[i].lpi;
        q->lpi_sum += s;
        layer_sum += u->layer;
        subkey sk = {w, 0, NULL, NULL};
        int ns;
        double mt, bt;
        if (kind == RESID_UNIT_FFN_NEURON) {
            const int32_t pos = tr->n_tokens - 1; /* t* */
            for (int g = 0; g < (gated ? 2 : 1); g++) {
                st = neuron_terms(e, g ? RESID_SUBKEY_GATE : RESID_SUBKEY_UP, u, pos, o.exact_ln,
                                  &sk, K, dot, &ns, &mt, &bt, err);
                if (st) goto fail;
                share_into(g ? q->q_gate : q->q, dot, ns, mt, bt, g ? &q->q_gate_mean : &q->q_mean,
                           g ? &q->q_gate_bias : &q->q_bias, s, &q->n_small_den);
            }
        } else {
            if (u->pos < tr->pos_first) {
                int32_t row;
                st = pos_row(tr, u->pos, "query layers (Q2)", &row, err);
                goto fail;
            }
            st = neuron_terms(e, RESID_SUBKEY_VALUE, u, u->pos, o.exact_ln, &sk, K, dot, &ns, &mt,
                              &bt, err);
            if (st) goto fail;
            share_into(q->q, dot, ns, mt, bt, &q->q_mean, &q->q_bias, s, &q->n_small_den);
        }
    }
    q->mean_layer = n ? layer_sum / (double)n : NAN;
    free(w), free(K), free(dot);
    *out = q;
    return RESID_OK;
fail:
    resid_query_layers_free(q);
    free(w), free(K), free(dot);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Q3: query neurons                                                      */
/* ---------------------------------------------------------------------- */

void resid_query_neurons_free(resid_query_neurons *q) {
    if (!q) return;
    free(q->attn), free(q->q), free(q->query), free(q->value);
    free(q->per_layer_query), free(q->per_layer_query_value), free(q->per_layer_query_only);
    free(q);
}

typedef struct qidx {
    double v;
    int64_t i;
} qidx;

static int cmp_qidx(const void *a, const void *b) {
    const qidx *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

resid_status resid_query_neurons_new(resid_explainer *e, const resid_query_opts *opts,
                                     resid_query_neurons **out, resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "%s: out is required", "resid_query_neurons_new");
    *out = NULL;
    if (!e) return rs_err(err, RESID_E_ARG, "query neurons: explainer is required");
    const resid_model *m = e->m;
    const resid_trace *tr = e->tr;
    resid_status st = check_model_trace(m, tr, "query neurons", err);
    if (st) return st;
    if (tr->pos_first != 0 || !tr->ffn_coef)
        return rs_err(err, RESID_E_ARG,
                      "query neurons (Q3): needs the residuals and FFN coefficients of every "
                      "position, but the trace starts at position %d%s; run resid_forward "
                      "with positions = RESID_POS_ALL",
                      tr->pos_first, tr->ffn_coef ? "" : " and lacks RESID_CAP_COEF");
    resid_query_opts o = opts ? *opts : resid_query_defaults();
    const int32_t na = o.n_attn > 0 ? o.n_attn : 30;
    const int32_t ntop = o.n_top > 0 ? o.n_top : 300;
    const int32_t L = e->L, D = e->D, N = e->N;
    const int64_t LN = (int64_t)L * N;

    resid_query_neurons *q = calloc(1, sizeof *q);
    float *w = malloc((size_t)D * sizeof(float));
    float *fc2 = malloc((size_t)D * N * sizeof(float)); /* [D][N] */
    float *proj = malloc((size_t)N * sizeof(float));
    float *Ks = NULL;
    double *fac = NULL;
    qidx *ord = malloc((size_t)LN * sizeof(qidx));
    bool *isval = calloc((size_t)LN, 1);
    if (q) {
        q->q = calloc((size_t)LN, sizeof(double));
        q->per_layer_query = calloc((size_t)L, sizeof(int32_t));
        q->per_layer_query_value = calloc((size_t)L, sizeof(int32_t));
        q->per_layer_query_only = calloc((size_t)L, sizeof(int32_t));
    }
    if (!q || !w || !fc2 || !proj || !ord || !isval || !q->q || !q->per_layer_query ||
        !q->per_layer_query_value || !q->per_layer_query_only) {
        st = rs_err(err, RESID_E_NOMEM, "query neurons: out of memory (L=%d, N=%d)", L, N);
        goto done;
    }
    q->n_layer = L, q->d_ffn = N;

    /* The attention value neurons, their keys and factors s/den. */
    int64_t n;
    if ((st = rank_distinct(e, RESID_UNIT_ATTN_NEURON, na, &q->attn, &n, err))) goto done;
    q->n_attn = (int32_t)n;
    Ks = malloc((size_t)(n ? n : 1) * D * sizeof(float));
    fac = malloc((size_t)(n ? n : 1) * sizeof(double));
    if (!Ks || !fac) {
        st = rs_err(err, RESID_E_NOMEM, "query neurons: out of memory");
        goto done;
    }
    for (int64_t a = 0; a < n; a++) {
        const resid_unit *u = &q->attn[a].unit;
        subkey sk = {w, 0, NULL, NULL};
        st = subkey_get(m, RESID_SUBKEY_VALUE, u->layer, u->head * e->dh + u->index, &sk, err);
        if (st) goto done;
        float *K = Ks + (size_t)a * D;
        subkey_k(m, &sk, K);
        double den = rs_dot(trow(tr, tr->x_in, u->layer, u->pos), K, D);
        fac[a] = q->attn[a].lpi / den;
    }
    /* Per lower layer i: fc2_k·K for every k at once, scaled by m^i_k[j]. */
    for (int32_t i = 0; i < L; i++) {
        bool any = false;
        for (int64_t a = 0; a < n; a++) any |= q->attn[a].unit.layer > i;
        if (!any) continue;
        rs_tensor_rows(m->layers[i].w_down, 0, D, fc2);
        for (int64_t a = 0; a < n; a++) {
            const resid_unit *u = &q->attn[a].unit;
            if (u->layer <= i) continue;
            cblas_sgemv(CblasRowMajor, CblasTrans, D, N, 1.0f, fc2, N, Ks + (size_t)a * D, 1,
                        0.0f, proj, 1);
            const float *mk = tr->ffn_coef + ((size_t)i * tr->n_cap + (size_t)u->pos) * N;
            double *qi = q->q + (size_t)i * N;
            for (int32_t k = 0; k < N; k++) qi[k] += (double)mk[k] * proj[k] * fac[a];
        }
    }

    /* Value neurons by LPI, query neurons by q. */
    q->n_value = (int32_t)(ntop < LN ? ntop : LN);
    if ((st = rank_distinct(e, RESID_UNIT_FFN_NEURON, q->n_value, &q->value, &n, err)))
        goto done;
    q->n_value = (int32_t)n;
    for (int64_t v = 0; v < n; v++)
        isval[(int64_t)q->value[v].unit.layer * N + q->value[v].unit.index] = true;
    for (int64_t i = 0; i < LN; i++) ord[i] = (qidx){q->q[i], i};
    qsort(ord, (size_t)LN, sizeof *ord, cmp_qidx);
    q->n_query = (int32_t)(ntop < LN ? ntop : LN);
    q->query = malloc((size_t)(q->n_query ? q->n_query : 1) * sizeof *q->query);
    if (!q->query) {
        st = rs_err(err, RESID_E_NOMEM, "query neurons: out of memory");
        goto done;
    }
    for (int32_t r = 0; r < q->n_query; r++) {
        int64_t i = ord[r].i;
        resid_query_neuron *qn = &q->query[r];
        qn->layer = (int32_t)(i / N), qn->index = (int32_t)(i % N);
        qn->score = ord[r].v;
        qn->is_value = isval[i];
        q->per_layer_query[qn->layer]++;
        if (qn->is_value) {
            q->n_query_value++;
            q->per_layer_query_value[qn->layer]++;
        } else {
            q->n_query_only++;
            q->per_layer_query_only[qn->layer]++;
        }
    }
    st = RESID_OK;
done:
    free(w), free(fc2), free(proj), free(Ks), free(fac), free(ord), free(isval);
    if (st) {
        resid_query_neurons_free(q);
        return st;
    }
    *out = q;
    return RESID_OK;
}
