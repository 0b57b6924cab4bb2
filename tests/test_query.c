/*
 * test_query.c - the exact pre-activation split and the query analyses
 * (src/analysis/query.c) against
 *   - METHOD.md §8 item 9: the LN/RMS expansion equals the pre-activation
 *     recomputed here from the trace's x_mid / x_in and the weights (read
 *     with rs_tensor_get), which in turn reproduces the model's own FFN
 *     coefficients m and value vectors v_j (GQA: the kv head of h)
 *   - §8 item 10: Σ_j Q_j = Σ LPI of the value neurons (SwiGLU: gate and up
 *     shares each), and the shares of one neuron by a naive recomputation
 *   - Q3: every q[i][k] by a naive loop; the set algebra query-value ∪
 *     query-only = query, disjoint, with per-layer counts
 *   - bad input: missing positions, gate key on GPT-2, ids out of range.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "model/model.h"
#include "testutil.h"

static const float *trow(const resid_trace *tr, const float *base, int l, int row) {
    return base + ((size_t)l * tr->n_cap + (size_t)row) * tr->d_model;
}

/* norm(x)·w + b in double, w read element by element: the ordinary route. */
static double ref_preact(const resid_model *m, const float *x, const float *gamma,
                         const float *beta, const rs_tensor *w, int64_t row, double b) {
    const int D = m->hp.d_model;
    double mean = 0, ss = 0;
    if (m->hp.arch == RESID_ARCH_GPT2) {
        for (int d = 0; d < D; d++) mean += x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) ss += (x[d] - mean) * (x[d] - mean);
    double sig = sqrt(ss / D + m->hp.norm_eps), acc = b;
    for (int d = 0; d < D; d++)
        acc += ((gamma ? gamma[d] : 1.0) * (x[d] - mean) / sig + (beta ? beta[d] : 0.0)) *
               rs_tensor_get(w, row, d);
    return acc;
}

static double gelu_tanh(double x) {
    return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
static double silu(double x) { return x / (1 + exp(-x)); }

/* ---------------------------------------------------------------------- */
/* §8 item 9                                                              */
/* ---------------------------------------------------------------------- */

static void check_split(const resid_preact *p, double ref, const char *what, double *worst) {
    double sum = p->mean_term + p->bias_term;
    for (int j = 0; j < p->n_slots; j++) sum += p->share[j];
    double tol = 1e-4 * fmax(1, fabs(ref));
    double d = fmax(fabs(p->pre - ref), fabs(p->pre_direct - ref));
    d = fmax(d, fabs(sum - p->pre));
    if (d > tol) {
        print_error("%s: split %.8g direct %.8g vs reference %.8g\n", what, p->pre,
                    p->pre_direct, ref);
        fail();
    }
    *worst = fmax(*worst, d / fmax(1, fabs(ref)));
}

static void test_preact_split(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        tu_setup s = tu_setup_open(&tu_fixtures[fi], RESID_POS_ALL, NULL);
        const resid_model *m = s.m;
        const resid_trace *tr = s.tr;
        const rs_hparams *hp = &m->hp;
        const int L = hp->n_layer, N = hp->d_ffn, T = tr->n_tokens, D = hp->d_model;
        const bool gpt2 = hp->arch == RESID_ARCH_GPT2;
        double worst = 0, worst_m = 0, worst_v = 0;
        int n_checked = 0;
        resid_error err;
        for (int l = 0; l < L; l++) {
            const rs_layer *ly = &m->layers[l];
            for (int pos = 0; pos < T; pos += T - 1) {
                for (int k = 0; k < N; k += N / 5 + 1) {
                    const float *x = trow(tr, tr->x_mid, l, pos);
                    double up = ref_preact(m, x, ly->ffn_norm_w, ly->ffn_norm_b, ly->w_up, k,
                                           ly->b_up ? ly->b_up[k] : 0);
                    char what[96];
                    snprintf(what, sizeof what, "%s up %d_%d @%d", tu_fixtures[fi].path, l, k, pos);
                    resid_preact *p;
                    assert_int_equal(resid_preact_new(m, tr, RESID_SUBKEY_UP, l, k, pos, &p, &err),
                                     RESID_OK);
                    assert_int_equal(p->n_slots, 2 * l + 2);
                    check_split(p, up, what, &worst);
                    /* Σ dot = x·K */
                    double xk = 0, sd = 0;
                    for (int d = 0; d < D; d++)
                        xk += (double)x[d] * (ly->ffn_norm_w ? ly->ffn_norm_w[d] : 1.0) *
                              rs_tensor_get(ly->w_up, k, d);
                    for (int j = 0; j < p->n_slots; j++) sd += p->dot[j];
                    assert_true(fabs(sd - xk) <= 1e-4 * fmax(1, fabs(xk)));
                    resid_preact_free(p);
                    double coef = tr->ffn_coef[((size_t)l * tr->n_cap + pos) * N + k], mk;
                    if (gpt2) {
                        mk = gelu_tanh(up);
                        assert_int_equal(
                            resid_preact_new(m, tr, RESID_SUBKEY_GATE, l, k, pos, &p, &err),
                            RESID_E_ARG);
                    } else {
                        double gt = ref_preact(m, x, ly->ffn_norm_w, NULL, ly->w_gate, k, 0);
                        snprintf(what, sizeof what, "%s gate %d_%d @%d", tu_fixtures[fi].path, l, k,
                                 pos);
                        assert_int_equal(
                            resid_preact_new(m, tr, RESID_SUBKEY_GATE, l, k, pos, &p, &err),
                            RESID_OK);
                        check_split(p, gt, what, &worst);
                        assert_true(p->mean_term == 0 && p->bias_term == 0);
                        resid_preact_free(p);
                        mk = silu(gt) * up;
                    }
                    /* the recomputation is the model's: m = act(pre) */
                    worst_m = fmax(worst_m, fabs(mk - coef) / fmax(1, fabs(coef)));
                    assert_true(fabs(mk - coef) <= 1e-4 * fmax(1, fabs(coef)));
                    n_checked++;
                }
            }
            /* value neurons: every query head h (GQA: its kv head), some n */
            for (int h = 0; h < hp->n_head; h++) {
                int kvh = h / (hp->n_head / hp->n_kv_head);
                for (int n = 0; n < hp->d_head; n += hp->d_head / 2 + 1) {
                    int pos = (h + n) % T;
                    const float *x = trow(tr, tr->x_in, l, pos);
                    const rs_tensor *wv = ly->wv ? ly->wv : ly->wqkv;
                    int64_t off = ly->wv ? 0 : (int64_t)(hp->n_head + hp->n_kv_head) * hp->d_head;
                    int64_t row = off + (int64_t)kvh * hp->d_head + n;
                    const float *bv = ly->wv ? ly->bv : ly->bqkv;
                    double ref = ref_preact(m, x, ly->attn_norm_w, ly->attn_norm_b, wv, row,
                                            bv ? bv[row] : 0);
                    double model_v = tr->values[(((size_t)l * T + pos) * hp->n_kv_head + kvh) *
                                                    hp->d_head +
                                                n];
                    worst_v = fmax(worst_v, fabs(ref - model_v) / fmax(1, fabs(model_v)));
                    assert_true(fabs(ref - model_v) <= 1e-4 * fmax(1, fabs(model_v)));
                    resid_preact *p;
                    assert_int_equal(resid_preact_new(m, tr, RESID_SUBKEY_VALUE, l,
                                                      h * hp->d_head + n, pos, &p, &err),
                                     RESID_OK);
                    assert_int_equal(p->n_slots, 2 * l + 1);
                    char what[96];
                    snprintf(what, sizeof what, "%s value %d_%d_%d @%d", tu_fixtures[fi].path, l, h,
                             n, pos);
                    check_split(p, ref, what, &worst);
                    resid_preact_free(p);
                    n_checked++;
                }
            }
        }
        printf("  split %-34s %3d neurons: pre (split, direct) vs recompute rel maxdiff %.2e; "
               "act(pre) vs model m %.2e; value vs model v %.2e\n",
               tu_fixtures[fi].path, n_checked, worst, worst_m, worst_v);
        /* bad input */
        resid_preact *p;
        assert_int_equal(resid_preact_new(m, tr, RESID_SUBKEY_UP, L, 0, 0, &p, &err), RESID_E_ARG);
        assert_int_equal(resid_preact_new(m, tr, RESID_SUBKEY_UP, 0, N, 0, &p, &err), RESID_E_ARG);
        assert_int_equal(resid_preact_new(m, tr, RESID_SUBKEY_UP, 0, 0, T, &p, &err), RESID_E_ARG);
        assert_int_equal(resid_preact_new(m, tr, RESID_SUBKEY_VALUE, 0,
                                          hp->n_head * hp->d_head, 0, &p, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_preact_new(m, tr, (resid_subkey)9, 0, 0, 0, &p, &err), RESID_E_ARG);
        tu_setup_close(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* §8 item 10: Q1, Q2                                                     */
/* ---------------------------------------------------------------------- */

static double sum_of(const double *q, int n, double *abs_sum) {
    double s = 0, a = 0;
    for (int j = 0; j < n; j++) s += q[j], a += fabs(q[j]);
    if (abs_sum) *abs_sum = a;
    return s;
}

/* The inner products of the lower vectors of one neuron, naively. */
static void naive_dots(const tu_setup *s, const float *K, int l, int row, bool with_attn,
                       double *dot, int *n) {
    const resid_trace *tr = s->tr;
    const int D = tr->d_model;
    int c = 0;
    const float *vs[1 + 2 * 64];
    vs[c++] = trow(tr, tr->x_in, 0, row);
    for (int i = 0; i < l; i++) {
        vs[c++] = trow(tr, tr->attn_out, i, row);
        vs[c++] = trow(tr, tr->ffn_out, i, row);
    }
    if (with_attn) vs[c++] = trow(tr, tr->attn_out, l, row);
    for (int j = 0; j < c; j++) {
        double a = 0;
        for (int d = 0; d < D; d++) a += (double)vs[j][d] * K[d];
        dot[j] = a;
    }
    *n = c;
}

static void test_query_layers(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        tu_setup s = tu_setup_open(&tu_fixtures[fi], RESID_POS_ALL, NULL);
        resid_explainer *e = s.e;
        const rs_hparams *hp = &s.m->hp;
        const int L = hp->n_layer, D = hp->d_model;
        const bool gpt2 = hp->arch == RESID_ARCH_GPT2;
        resid_error err;
        for (int kind = 0; kind < 2; kind++) {
            resid_unit_kind uk = kind ? RESID_UNIT_ATTN_NEURON : RESID_UNIT_FFN_NEURON;
            resid_query_layers *q;
            assert_int_equal(resid_query_layers_new(e, uk, NULL, &q, &err), RESID_OK);
            const int64_t cnt = resid_unit_count(e, uk);
            const int nv_def = gpt2 ? 100 : 30;
            assert_int_equal(q->n_units, nv_def < cnt ? nv_def : cnt);
            assert_int_equal(q->n_slots, 2 * L + 1);
            /* the units are the top-N_v by LPI, distinct: against the exhaustive
             * ranking where the vocabulary is small (the certified path is
             * tested against it in test_rank), else their order and scores */
            double lsum = 0, lay = 0;
            if (hp->n_vocab <= 4096) {
                resid_rank_opts ro = resid_rank_defaults(uk, q->n_units);
                ro.exhaustive = true;
                resid_score *ex;
                int64_t nex;
                assert_int_equal(resid_rank(e, &ro, &ex, &nex, NULL, &err), RESID_OK);
                for (int i = 0; i < q->n_units; i++)
                    assert_true(memcmp(&q->units[i].unit, &ex[i].unit, sizeof(resid_unit)) ==
                                    0 ||
                                q->units[i].lpi == ex[i].lpi);
                free(ex);
            }
            for (int i = 0; i < q->n_units; i++) {
                for (int j = 0; j < i; j++)
                    assert_false(memcmp(&q->units[i].unit, &q->units[j].unit,
                                        sizeof(resid_unit)) == 0);
                if (i) assert_true(q->units[i - 1].lpi >= q->units[i].lpi);
                resid_score sc;
                assert_int_equal(resid_score_units(e, &q->units[i].unit, 1, &sc, &err), RESID_OK);
                assert_true(fabs(sc.lpi - q->units[i].lpi) <= 1e-6 * fmax(1, fabs(sc.lpi)));
                lsum += q->units[i].lpi;
                lay += q->units[i].unit.layer;
            }
            assert_true(fabs(q->lpi_sum - lsum) <= 1e-9 * fmax(1, fabs(lsum)));
            assert_true(fabs(q->mean_layer - lay / q->n_units) <= 1e-12);
            double abs_q, sq = sum_of(q->q, q->n_slots, &abs_q);
            double tol = 1e-9 * fmax(1, abs_q);
            assert_true(fabs(sq - q->lpi_sum) <= tol);
            double dg = 0;
            if (uk == RESID_UNIT_FFN_NEURON && !gpt2) {
                assert_non_null(q->q_gate);
                double ag, sg = sum_of(q->q_gate, q->n_slots, &ag);
                dg = fabs(sg - q->lpi_sum);
                assert_true(dg <= 1e-9 * fmax(1, ag));
            } else {
                assert_null(q->q_gate);
            }
            /* slots above the highest unit stay empty */
            int top_slot = 0;
            for (int i = 0; i < q->n_units; i++) {
                int sl = 2 * q->units[i].unit.layer + (uk == RESID_UNIT_FFN_NEURON ? 1 : 0);
                if (sl > top_slot) top_slot = sl;
            }
            for (int j = top_slot + 1; j < q->n_slots; j++) assert_true(q->q[j] == 0);
            printf("  Q%d %-34s N_v=%3d: sum Q_j %+.6f = sum LPI %+.6f (|diff| %.1e%s), "
                   "mean layer %.2f, small den %d\n",
                   kind + 1, tu_fixtures[fi].path, q->n_units, sq, q->lpi_sum,
                   fabs(sq - q->lpi_sum), !gpt2 && !kind ? ", gate too" : "", q->mean_layer,
                   q->n_small_den);
            assert_true(q->q_mean == 0 && q->q_bias == 0);

            /* exact_ln: Σ q + q_mean + q_bias = Σ LPI; RMSNorm: the same shares */
            resid_query_opts ox = resid_query_defaults();
            ox.exact_ln = true;
            resid_query_layers *qx;
            assert_int_equal(resid_query_layers_new(e, uk, &ox, &qx, &err), RESID_OK);
            double ax, sx = sum_of(qx->q, qx->n_slots, &ax) + qx->q_mean + qx->q_bias;
            assert_true(fabs(sx - qx->lpi_sum) <= 1e-9 * fmax(1, ax + fabs(qx->q_mean) +
                                                                    fabs(qx->q_bias)));
            if (qx->q_gate) {
                double ag, sg = sum_of(qx->q_gate, qx->n_slots, &ag) + qx->q_gate_mean +
                                qx->q_gate_bias;
                assert_true(fabs(sg - qx->lpi_sum) <= 1e-9 * fmax(1, ag));
            }
            double dx = 0;
            for (int j = 0; j < q->n_slots; j++) dx = fmax(dx, fabs(qx->q[j] - q->q[j]));
            if (!gpt2) {
                assert_true(qx->q_mean == 0 && qx->q_bias == 0);
                assert_true(dx <= 1e-6 * fmax(1, abs_q));
            }
            printf("      exact_ln: sum Q_j + mean %+.4f + bias %+.4f = %+.6f; max |Q_j - "
                   "Q_j(raw)| %.2e\n",
                   qx->q_mean, qx->q_bias, sx, dx);
            resid_query_layers_free(qx);
            resid_query_layers_free(q);

            /* one neuron by hand: N_v = 1 */
            resid_query_opts o = resid_query_defaults();
            o.n_value = 1;
            assert_int_equal(resid_query_layers_new(e, uk, &o, &q, &err), RESID_OK);
            assert_int_equal(q->n_units, 1);
            const resid_unit *u = &q->units[0].unit;
            const rs_layer *ly = &s.m->layers[u->layer];
            float K[4096];
            double dot[1 + 2 * 64];
            int nd;
            for (int g = 0; g < (uk == RESID_UNIT_FFN_NEURON && !gpt2 ? 2 : 1); g++) {
                int row = s.tr->n_cap - 1;
                if (uk == RESID_UNIT_FFN_NEURON) {
                    const rs_tensor *w = g ? ly->w_gate : ly->w_up;
                    for (int d = 0; d < D; d++)
                        K[d] = (ly->ffn_norm_w ? ly->ffn_norm_w[d] : 1.0f) *
                               rs_tensor_get(w, u->index, d);
                } else {
                    int kvh = u->head / (hp->n_head / hp->n_kv_head);
                    const rs_tensor *wv = ly->wv ? ly->wv : ly->wqkv;
                    int64_t r = (ly->wv ? 0 : (int64_t)(hp->n_head + hp->n_kv_head) * hp->d_head) +
                                (int64_t)kvh * hp->d_head + u->index;
                    for (int d = 0; d < D; d++)
                        K[d] = (ly->attn_norm_w ? ly->attn_norm_w[d] : 1.0f) *
                               rs_tensor_get(wv, r, d);
                    row = u->pos;
                }
                naive_dots(&s, K, u->layer, row, uk == RESID_UNIT_FFN_NEURON, dot, &nd);
                double S = 0;
                for (int j = 0; j < nd; j++) S += dot[j];
                const double *qq = g ? q->q_gate : q->q;
                double md = 0;
                for (int j = 0; j < nd; j++)
                    md = fmax(md, fabs(qq[j] - dot[j] / S * q->units[0].lpi));
                double scale = 0;
                for (int j = 0; j < nd; j++) scale = fmax(scale, fabs(dot[j] / S));
                assert_true(md <= 1e-5 * fmax(1, scale) * fmax(1e-3, fabs(q->units[0].lpi)));
            }
            resid_query_layers_free(q);
        }
        resid_query_layers *bad;
        assert_int_equal(resid_query_layers_new(e, RESID_UNIT_HEAD, NULL, &bad, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_query_layers_new(e, RESID_UNIT_FFN_NEURON, NULL, NULL, &err),
                         RESID_E_ARG);
        tu_setup_close(&s);
    }
}

/* Q2 on a trace of the last position only: an error naming RESID_POS_ALL
 * exactly when a value neuron sits at an earlier source position. */
static void test_q2_needs_positions(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        tu_setup all = tu_setup_open(&tu_fixtures[fi], RESID_POS_ALL, NULL);
        resid_query_layers *q;
        resid_error err;
        assert_int_equal(resid_query_layers_new(all.e, RESID_UNIT_ATTN_NEURON, NULL, &q, &err),
                         RESID_OK);
        bool early = false;
        for (int i = 0; i < q->n_units; i++) early |= q->units[i].unit.pos < all.tr->n_tokens - 1;
        resid_query_layers_free(q);
        tu_setup_close(&all);
        tu_setup last = tu_setup_open(&tu_fixtures[fi], RESID_POS_LAST, NULL);
        resid_status st = resid_query_layers_new(last.e, RESID_UNIT_ATTN_NEURON, NULL, &q, &err);
        if (early) {
            assert_int_equal(st, RESID_E_ARG);
            assert_non_null(strstr(err.msg, "RESID_POS_ALL"));
        } else {
            assert_int_equal(st, RESID_OK);
            resid_query_layers_free(q);
        }
        /* Q1 needs t* only */
        assert_int_equal(resid_query_layers_new(last.e, RESID_UNIT_FFN_NEURON, NULL, &q, &err),
                         RESID_OK);
        resid_query_layers_free(q);
        /* Q3 always needs every position */
        resid_query_neurons *qn;
        assert_int_equal(resid_query_neurons_new(last.e, NULL, &qn, &err), RESID_E_ARG);
        assert_non_null(strstr(err.msg, "RESID_POS_ALL"));
        tu_setup_close(&last);
    }
}

/* ---------------------------------------------------------------------- */
/* Q3                                                                     */
/* ---------------------------------------------------------------------- */

static void test_query_neurons(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        tu_setup s = tu_setup_open(&tu_fixtures[fi], RESID_POS_ALL, NULL);
        resid_explainer *e = s.e;
        const resid_trace *tr = s.tr;
        const rs_hparams *hp = &s.m->hp;
        const int L = hp->n_layer, N = hp->d_ffn, D = hp->d_model;
        resid_error err;
        for (int pass = 0; pass < 2; pass++) {
            /* defaults (N_a 30, top 300), then a small run; with a large
             * vocabulary (Debug-build time) the value ranking stops at 100 */
            resid_query_opts o = resid_query_defaults();
            if (pass) o.n_attn = 3, o.n_top = 20;
            if (!pass && hp->n_vocab > 4096) o.n_top = 100;
            resid_query_neurons *q;
            assert_int_equal(resid_query_neurons_new(e, &o, &q, &err), RESID_OK);
            const int64_t LN = (int64_t)L * N;
            const int ntop = pass ? 20 : o.n_top > 0 ? o.n_top : 300;
            assert_int_equal(q->n_query, ntop < LN ? ntop : LN);
            assert_int_equal(q->n_value, ntop < LN ? ntop : LN);
            assert_int_equal(q->n_attn, pass ? 3 : 30);
            /* naive q[i][k] */
            double *ref = calloc((size_t)LN, sizeof(double));
            /* fc2 of every layer, [L][N][D], element by element */
            double *fc2 = malloc(sizeof(double) * (size_t)LN * D);
            for (int i = 0; i < L; i++)
                for (int d = 0; d < D; d++)
                    for (int k = 0; k < N; k++)
                        fc2[((size_t)i * N + k) * D + d] =
                            rs_tensor_get(s.m->layers[i].w_down, d, k);
            for (int a = 0; a < q->n_attn; a++) {
                const resid_unit *u = &q->attn[a].unit;
                const rs_layer *ly = &s.m->layers[u->layer];
                int kvh = u->head / (hp->n_head / hp->n_kv_head);
                const rs_tensor *wv = ly->wv ? ly->wv : ly->wqkv;
                int64_t r = (ly->wv ? 0 : (int64_t)(hp->n_head + hp->n_kv_head) * hp->d_head) +
                            (int64_t)kvh * hp->d_head + u->index;
                double K[4096], den = 0;
                const float *x = trow(tr, tr->x_in, u->layer, u->pos);
                for (int d = 0; d < D; d++) {
                    K[d] = (ly->attn_norm_w ? ly->attn_norm_w[d] : 1.0) * rs_tensor_get(wv, r, d);
                    den += x[d] * K[d];
                }
                for (int i = 0; i < u->layer; i++)
                    for (int k = 0; k < N; k++) {
                        double fk = 0;
                        for (int d = 0; d < D; d++)
                            fk += fc2[((size_t)i * N + k) * D + d] * K[d];
                        double mk = tr->ffn_coef[((size_t)i * tr->n_cap + u->pos) * N + k];
                        ref[(size_t)i * N + k] += mk * fk / den * q->attn[a].lpi;
                    }
            }
            double md = 0, mx = 0;
            for (int64_t i = 0; i < LN; i++) {
                md = fmax(md, fabs(q->q[i] - ref[i]));
                mx = fmax(mx, fabs(ref[i]));
            }
            assert_true(md <= 1e-4 * fmax(1e-3, mx));
            free(ref), free(fc2);
            /* set algebra */
            bool *in_value = calloc((size_t)LN, 1), *seen = calloc((size_t)LN, 1);
            for (int v = 0; v < q->n_value; v++) {
                int64_t i = (int64_t)q->value[v].unit.layer * N + q->value[v].unit.index;
                assert_false(in_value[i]); /* distinct */
                in_value[i] = true;
            }
            int nqv = 0, nqo = 0;
            int *pl = calloc((size_t)L, sizeof(int)), *plv = calloc((size_t)L, sizeof(int));
            for (int r = 0; r < q->n_query; r++) {
                const resid_query_neuron *qn = &q->query[r];
                int64_t i = (int64_t)qn->layer * N + qn->index;
                assert_false(seen[i]);
                seen[i] = true;
                assert_true(qn->score == q->q[i]);
                if (r) assert_true(q->query[r - 1].score >= qn->score);
                assert_int_equal(qn->is_value, in_value[i]);
                if (qn->is_value)
                    nqv++, plv[qn->layer]++;
                else
                    nqo++;
                pl[qn->layer]++;
            }
            /* nothing outside the query set scores above its last member */
            if (q->n_query < LN)
                for (int64_t i = 0; i < LN; i++)
                    if (!seen[i]) assert_true(q->q[i] <= q->query[q->n_query - 1].score);
            assert_int_equal(q->n_query_value, nqv);
            assert_int_equal(q->n_query_only, nqo);
            assert_int_equal(nqv + nqo, q->n_query);
            int sq = 0, sv = 0, so = 0;
            for (int l = 0; l < L; l++) {
                assert_int_equal(q->per_layer_query[l], pl[l]);
                assert_int_equal(q->per_layer_query_value[l], plv[l]);
                assert_int_equal(q->per_layer_query_only[l], pl[l] - plv[l]);
                sq += q->per_layer_query[l], sv += q->per_layer_query_value[l];
                so += q->per_layer_query_only[l];
            }
            assert_int_equal(sq, q->n_query);
            assert_int_equal(sv + so, sq);
            printf("  Q3 %-34s N_a=%2d top %3d: q vs naive maxdiff %.2e (max |q| %.3g); "
                   "query %d = query-value %d + query-only %d; per layer query:",
                   tu_fixtures[fi].path, q->n_attn, ntop, md, mx, q->n_query, q->n_query_value,
                   q->n_query_only);
            for (int l = 0; l < L; l++) printf(" %d", q->per_layer_query[l]);
            printf("\n");
            free(in_value), free(seen), free(pl), free(plv);
            resid_query_neurons_free(q);
        }
        tu_setup_close(&s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preact_split),
        cmocka_unit_test(test_query_layers),
        cmocka_unit_test(test_q2_needs_positions),
        cmocka_unit_test(test_query_neurons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
