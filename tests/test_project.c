/*
 * test_project.c - vocabulary projections, distribution change and the lens
 * grid (src/analysis/project.c) against
 *   - brute force: bs(v) by a naive double loop over V with rs_tensor_get,
 *     sorted in the test, for parameter rows (fc2, W_O) and unit subvalues
 *   - exact identities: bs(−v) = −bs(v) swaps top and bottom; the ranking
 *     does not depend on the scale; p(t|x+v) rises iff bs_t(v) exceeds
 *     log E_p[exp bs(v)] (so the largest bs always rises, the smallest falls)
 *   - the model: the lens grid at x_L, t* reproduces the model's probability
 *     (Llama paper lens; every model in the exact and logit lenses) and its
 *     argmax, at every captured position.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "model/model.h"
#include "testutil.h"

typedef struct setup {
    resid_model *m;
    resid_trace *tr;
    resid_explainer *e;
    double *wu; /* [V][D] unembedding in double, read with rs_tensor_get */
} setup;

/* A fixture opened (every position) with W_U in double for the brute
 * projections. */
static setup open_fixture(const tu_fixture *f, resid_lens lens) {
    resid_explain_opts eo = resid_explain_defaults();
    eo.lens = lens;
    tu_setup b = tu_setup_open(f, RESID_POS_ALL, &eo);
    setup s = {b.m, b.tr, b.e, NULL};
    const int V = s.m->hp.n_vocab, D = s.m->hp.d_model;
    s.wu = malloc(sizeof(double) * (size_t)V * D);
    for (int t = 0; t < V; t++)
        for (int d = 0; d < D; d++) s.wu[(size_t)t * D + d] = rs_tensor_get(s.m->w_out, t, d);
    return s;
}

static void close_fixture(setup *s) {
    tu_setup_close(&(tu_setup){s->m, s->tr, s->e});
    free(s->wu);
}

/* Naive bs(v) = W_U·(γ ⊙ centre(v))/scale in double. */
static void brute_bs(const setup *s, const double *v, double scale, double *out) {
    const int V = s->m->hp.n_vocab, D = s->m->hp.d_model;
    double mean = 0, y[4096];
    if (s->m->hp.arch == RESID_ARCH_GPT2) {
        for (int d = 0; d < D; d++) mean += v[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++)
        y[d] = (s->m->out_norm_w ? s->m->out_norm_w[d] : 1.0) * (v[d] - mean) / scale;
    for (int t = 0; t < V; t++) {
        double acc = 0;
        for (int d = 0; d < D; d++) acc += s->wu[(size_t)t * D + d] * y[d];
        out[t] = acc;
    }
}

static const double *g_sort_vals;
static int cmp_desc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    if (g_sort_vals[x] != g_sort_vals[y]) return g_sort_vals[x] > g_sort_vals[y] ? -1 : 1;
    return x - y;
}

/* Sorted ids of vals[n], highest first. */
static int *sorted_desc(const double *vals, int n) {
    int *ix = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) ix[i] = i;
    g_sort_vals = vals;
    qsort(ix, (size_t)n, sizeof(int), cmp_desc);
    return ix;
}

/* The library's list (top or bottom) against a brute-force reference:
 * values at each rank agree within tol, each listed id's reference value
 * equals the listed value within tol, and ids agree wherever the reference
 * values at that rank are separated from their neighbours by more than
 * 2·tol. Returns the max difference seen. */
static double check_list(const char *what, const resid_token_value *lib, int k,
                         const double *ref, int V, bool bottom, double tol) {
    double *neg = NULL;
    const double *vals = ref;
    if (bottom) {
        neg = malloc(sizeof(double) * V);
        for (int t = 0; t < V; t++) neg[t] = -ref[t];
        vals = neg;
    }
    int *ix = sorted_desc(vals, V);
    double md = 0;
    for (int r = 0; r < k; r++) {
        double want = ref[ix[r]];
        md = fmax(md, fabs(lib[r].value - want));
        md = fmax(md, fabs(lib[r].value - ref[lib[r].id]));
        bool separated = (r == 0 || fabs(vals[ix[r - 1]] - vals[ix[r]]) > 2 * tol) &&
                         (r + 1 >= V || fabs(vals[ix[r + 1]] - vals[ix[r]]) > 2 * tol);
        if (separated && lib[r].id != ix[r]) {
            print_error("%s rank %d: id %d (%.8g) vs reference %d (%.8g)\n", what, r,
                        lib[r].id, lib[r].value, ix[r], want);
            fail();
        }
    }
    if (md > tol) {
        print_error("%s: maxdiff %.3e > tol %.1e\n", what, md, tol);
        fail();
    }
    free(ix), free(neg);
    return md;
}

static double maxabs(const double *x, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* ---------------------------------------------------------------------- */
/* Parameter rows                                                         */
/* ---------------------------------------------------------------------- */

#define K 10

static void test_param_projection(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        setup s = open_fixture(&tu_fixtures[fi], RESID_LENS_PAPER);
        const rs_hparams *hp = &s.m->hp;
        const int V = hp->n_vocab, D = hp->d_model, L = hp->n_layer;
        double *ref = malloc(sizeof(double) * V), v[4096];
        float vf[4096];
        resid_token_value top[K], bot[K], top2[K], bot2[K];
        double worst = 0;
        int n_rows = 0;
        for (int pi = 0; pi < 2; pi++) {
            resid_param p = pi ? RESID_PARAM_WO : RESID_PARAM_FC2;
            const int64_t nr = pi ? (int64_t)hp->n_head * hp->d_head : hp->d_ffn;
            for (int l = 0; l < L; l += (L > 2 ? L - 1 : 1)) {
                for (int64_t row = 0; row < nr; row += nr / 3 + 1) {
                    /* the row, independently: fc2_k = column k of w_down, W_O^h[n,:] =
                     * column h·d_h+n of wo */
                    const rs_tensor *w = pi ? s.m->layers[l].wo : s.m->layers[l].w_down;
                    for (int d = 0; d < D; d++) v[d] = rs_tensor_get(w, d, row);
                    resid_error err;
                    assert_int_equal(resid_param_vector(s.m, p, l, row, vf, &err), RESID_OK);
                    for (int d = 0; d < D; d++) assert_true(vf[d] == (float)v[d]);
                    brute_bs(&s, v, 1.0, ref);
                    const double tol = 2e-5 * fmax(1, maxabs(ref, V));
                    int32_t k;
                    assert_int_equal(resid_project_param(s.m, p, l, row, 1, 0, K, top, bot, &k,
                                                         &err),
                                     RESID_OK);
                    assert_int_equal(k, K);
                    char what[96];
                    snprintf(what, sizeof what, "%s %s %d_%lld top", tu_fixtures[fi].path,
                             resid_param_name(p), l, (long long)row);
                    worst = fmax(worst, check_list(what, top, K, ref, V, false, tol));
                    worst = fmax(worst, check_list(what, bot, K, ref, V, true, tol));
                    /* the sign flips top and bottom exactly */
                    assert_int_equal(resid_project_param(s.m, p, l, row, -1, 0, K, top2, bot2,
                                                         NULL, &err),
                                     RESID_OK);
                    for (int r = 0; r < K; r++) {
                        assert_int_equal(top2[r].id, bot[r].id);
                        assert_int_equal(bot2[r].id, top[r].id);
                        assert_true(top2[r].value == -bot[r].value);
                    }
                    /* the scale changes values, not the ranking */
                    assert_int_equal(resid_project_param(s.m, p, l, row, 1, 4.0, K, top2, bot2,
                                                         NULL, &err),
                                     RESID_OK);
                    for (int r = 0; r < K; r++) {
                        assert_int_equal(top2[r].id, top[r].id);
                        assert_true(fabs(top2[r].value - top[r].value / 4) <= 1e-6 * fabs(top[r].value) + 1e-7);
                    }
                    n_rows++;
                }
            }
        }
        printf("  param %-34s %2d rows (fc2, W_O): top/bottom-%d vs brute force maxdiff %.2e\n",
               tu_fixtures[fi].path, n_rows, K, worst);
        /* bad input */
        resid_error err;
        assert_int_equal(resid_param_vector(s.m, RESID_PARAM_FC2, L, 0, vf, &err), RESID_E_ARG);
        assert_int_equal(resid_param_vector(s.m, RESID_PARAM_FC2, 0, hp->d_ffn, vf, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_param_vector(s.m, RESID_PARAM_WO, 0, -1, vf, &err), RESID_E_ARG);
        assert_int_equal(resid_param_vector(s.m, (resid_param)99, 0, 0, vf, &err), RESID_E_ARG);
        if (hp->arch == RESID_ARCH_GPT2)
            assert_int_equal(resid_param_vector(s.m, RESID_PARAM_GATE, 0, 0, vf, &err),
                             RESID_E_ARG);
        assert_int_equal(resid_project_vector(s.m, vf, 1, -1, top, bot, NULL, &err), RESID_E_ARG);
        /* k larger than V is clamped */
        int32_t k = 0;
        resid_token_value *big = malloc(sizeof *big * (V + 5));
        assert_int_equal(resid_project_param(s.m, RESID_PARAM_FC2, 0, 0, 1, 0, V + 5, big, NULL,
                                             &k, &err),
                         RESID_OK);
        assert_int_equal(k, V);
        for (int r = 1; r < V; r++) assert_true(big[r - 1].value >= big[r].value);
        free(big);
        free(ref);
        close_fixture(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* Unit subvalues: m_k·fc2_k with the coefficient's sign                  */
/* ---------------------------------------------------------------------- */

static void test_unit_projection(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        setup s = open_fixture(&tu_fixtures[fi], RESID_LENS_PAPER);
        resid_explainer *e = s.e;
        const int V = e->V, D = e->D;
        const double sc = resid_explainer_scale(e);
        double *ref = malloc(sizeof(double) * V), v[4096];
        float *lib = malloc(sizeof(float) * V);
        resid_token_value top[K], bot[K], ptop[K], pbot[K];
        resid_error err;
        /* the top FFN neuron by LPI and the top attention neuron */
        for (int kind = 0; kind < 2; kind++) {
            resid_rank_opts ro = resid_rank_defaults(
                kind ? RESID_UNIT_ATTN_NEURON : RESID_UNIT_FFN_NEURON, 3);
            resid_score *best;
            int64_t n;
            assert_int_equal(resid_rank(e, &ro, &best, &n, NULL, &err), RESID_OK);
            for (int64_t i = 0; i < n; i++) {
                const resid_unit *u = &best[i].unit;
                double a = best[i].coef;
                int64_t row = kind ? (int64_t)u->head * e->dh + u->index : u->index;
                const rs_tensor *w = kind ? s.m->layers[u->layer].wo
                                          : s.m->layers[u->layer].w_down;
                for (int d = 0; d < D; d++) v[d] = a * rs_tensor_get(w, d, row);
                brute_bs(&s, v, sc, ref);
                assert_int_equal(resid_unit_bs(e, u, lib, &err), RESID_OK);
                double md = 0, mx = maxabs(ref, V);
                for (int t = 0; t < V; t++) md = fmax(md, fabs(lib[t] - ref[t]));
                assert_true(md <= 2e-5 * fmax(1, mx));
                assert_int_equal(resid_project_unit(e, u, K, top, bot, NULL, &err), RESID_OK);
                char id[64];
                resid_unit_format(u, id, sizeof id);
                check_list(id, top, K, ref, V, false, 2e-5 * fmax(1, mx));
                check_list(id, bot, K, ref, V, true, 2e-5 * fmax(1, mx));
                /* reading the raw row the other way round when the coefficient
                 * is negative gives the subvalue's own top tokens */
                assert_int_equal(resid_project_param(s.m, kind ? RESID_PARAM_WO : RESID_PARAM_FC2,
                                                     u->layer, row, a, sc, K, ptop, pbot, NULL,
                                                     &err),
                                 RESID_OK);
                int same = 0;
                for (int r = 0; r < K; r++) same += ptop[r].id == top[r].id;
                printf("  unit %-34s %-10s coef %+9.4f: bs maxdiff %.2e, top-%d ids equal to "
                       "sign-read row: %d/%d\n",
                       tu_fixtures[fi].path, id, a, md, K, same, K);
                assert_true(same >= K - 1); /* float ties only */
            }
            free(best);
        }
        free(ref), free(lib);
        close_fixture(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* Distribution change                                                    */
/* ---------------------------------------------------------------------- */

static void test_dist_change(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        for (int li = 0; li < 2; li++) {
            resid_lens lens = li ? RESID_LENS_EXACT : RESID_LENS_PAPER;
            setup s = open_fixture(&tu_fixtures[fi], lens);
            resid_explainer *e = s.e;
            const int V = e->V, D = e->D, T1 = s.tr->n_cap - 1;
            const double sc = resid_explainer_scale(e);
            double *bx = malloc(sizeof(double) * V), *bv = malloc(sizeof(double) * V);
            double *dp = malloc(sizeof(double) * V), x[4096], v[4096];
            resid_error err;
            /* units: the top FFN neuron, the FFN layer and the attention layer with
             * the largest |LPI| */
            resid_unit units[3];
            resid_rank_opts ro = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 1);
            resid_score *best;
            int64_t n;
            assert_int_equal(resid_rank(e, &ro, &best, &n, NULL, &err), RESID_OK);
            units[0] = best[0].unit;
            free(best);
            for (int kind = 0; kind < 2; kind++) {
                resid_score *all;
                assert_int_equal(resid_score_all(e, kind ? RESID_UNIT_FFN_LAYER
                                                         : RESID_UNIT_ATTN_LAYER,
                                                 &all, &n, &err),
                                 RESID_OK);
                int64_t bi = 0;
                for (int64_t i = 1; i < n; i++)
                    if (fabs(all[i].lpi) > fabs(all[bi].lpi)) bi = i;
                units[1 + kind] = all[bi].unit;
                free(all);
            }
            for (int ui = 0; ui < 3; ui++) {
                const resid_unit *u = &units[ui];
                const int l = u->layer;
                bool ffn = u->kind != RESID_UNIT_ATTN_LAYER;
                const float *xr = (ffn ? s.tr->x_mid : s.tr->x_in) +
                                  ((size_t)l * s.tr->n_cap + T1) * D;
                for (int d = 0; d < D; d++) x[d] = xr[d];
                if (u->kind == RESID_UNIT_FFN_NEURON) {
                    double a = s.tr->ffn_coef[((size_t)l * s.tr->n_cap + T1) * e->N + u->index];
                    for (int d = 0; d < D; d++)
                        v[d] = a * rs_tensor_get(s.m->layers[l].w_down, d, u->index);
                } else {
                    const float *vr = (ffn ? s.tr->ffn_out : s.tr->attn_out) +
                                      ((size_t)l * s.tr->n_cap + T1) * D;
                    for (int d = 0; d < D; d++) v[d] = vr[d];
                }
                brute_bs(&s, x, sc, bx);
                brute_bs(&s, v, sc, bv);
                if (lens == RESID_LENS_EXACT && s.m->out_norm_b)
                    for (int t = 0; t < V; t++) {
                        double b = 0;
                        for (int d = 0; d < D; d++)
                            b += s.wu[(size_t)t * D + d] * s.m->out_norm_b[d];
                        bx[t] += b;
                    }
                double m0 = -INFINITY, m1 = -INFINITY, z0 = 0, z1 = 0;
                for (int t = 0; t < V; t++) {
                    m0 = fmax(m0, bx[t]);
                    m1 = fmax(m1, bx[t] + bv[t]);
                }
                for (int t = 0; t < V; t++) {
                    z0 += exp(bx[t] - m0);
                    z1 += exp(bx[t] + bv[t] - m1);
                }
                for (int t = 0; t < V; t++)
                    dp[t] = exp(bx[t] + bv[t] - m1) / z1 - exp(bx[t] - m0) / z0;
                /* the shift: p rises iff bs_t(v) > log E_p[exp bs(v)] */
                double shift = 0;
                for (int t = 0; t < V; t++) shift += exp(bx[t] - m0) / z0 * exp(bv[t]);
                shift = log(shift);
                resid_dist_change *dc;
                assert_int_equal(resid_dist_change_new(e, u, K, &dc, &err), RESID_OK);
                char id[64];
                resid_unit_format(u, id, sizeof id);
                double md = check_list(id, dc->rise, K, dp, V, false, 1e-6);
                md = fmax(md, check_list(id, dc->fall, K, dp, V, true, 1e-6));
                double tolb = 2e-5 * fmax(1, maxabs(bv, V));
                check_list(id, dc->bs_top, K, bv, V, false, tolb);
                check_list(id, dc->bs_bottom, K, bv, V, true, tolb);
                for (int r = 0; r < K; r++) {
                    if (dc->rise[r].value > 1e-6) assert_true(bv[dc->rise[r].id] > shift - tolb);
                    if (dc->fall[r].value < -1e-6) assert_true(bv[dc->fall[r].id] < shift + tolb);
                }
                /* the largest bs always gains, the smallest always loses */
                if (dc->bs_range > 1e-3) {
                    assert_true(dp[dc->bs_top[0].id] > 0);
                    assert_true(dp[dc->bs_bottom[0].id] < 0);
                }
                /* the overlap figures are what they say */
                int ov = 0;
                for (int i = 0; i < K; i++)
                    for (int j = 0; j < K; j++) ov += dc->rise[i].id == dc->bs_top[j].id;
                assert_int_equal(ov, dc->overlap_top);
                assert_true(fabs(dc->jaccard_top - (double)ov / (2 * K - ov)) < 1e-12);
                double lpi_ref = (bx[e->target] + bv[e->target] - m1 - log(z1)) -
                                 (bx[e->target] - m0 - log(z0));
                assert_true(fabs(dc->lpi - lpi_ref) <= 1e-4 * fmax(1, fabs(lpi_ref)));
                printf("  dist %-34s %-5s %-7s range(bs) %7.3f: rise/fall maxdiff %.1e, "
                       "overlap top %2d/%d (J %.2f) bottom %2d/%d (J %.2f)\n",
                       tu_fixtures[fi].path, resid_lens_name(lens), id, dc->bs_range, md,
                       dc->overlap_top, K, dc->jaccard_top, dc->overlap_bottom, K,
                       dc->jaccard_bottom);
                resid_dist_change_free(dc);
            }
            /* bad input */
            resid_dist_change *dc;
            resid_unit bad = {RESID_UNIT_FFN_NEURON, 0, -1, e->N, -1};
            assert_int_equal(resid_dist_change_new(e, &bad, K, &dc, &err), RESID_E_ARG);
            assert_int_equal(resid_dist_change_new(e, &units[0], 0, &dc, &err), RESID_E_ARG);
            free(bx), free(bv), free(dp);
            close_fixture(&s);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Lens grid                                                              */
/* ---------------------------------------------------------------------- */

static void test_lens_grid(void **state) {
    (void)state;
    for (int fi = 0; fi < TU_N_FIXTURES; fi++) {
        setup s = open_fixture(&tu_fixtures[fi], RESID_LENS_PAPER);
        const resid_trace *tr = s.tr;
        const int V = tr->n_vocab, D = tr->d_model, L = tr->n_layer, P = tr->n_cap;
        const bool gpt2 = s.m->hp.arch == RESID_ARCH_GPT2;
        double *bs = malloc(sizeof(double) * V), x[4096];
        for (int li = 0; li < 3; li++) {
            resid_lens lens = (resid_lens)li;
            resid_lens_grid *g;
            resid_error err;
            assert_int_equal(resid_lens_grid_new(s.m, tr, lens, -1, &g, &err), RESID_OK);
            assert_int_equal(g->target, resid_explainer_target(s.e));
            assert_int_equal(g->n_pos, P);
            double md = 0, mdp = 0;
            for (int t = 0; t < P; t++) {
                /* the model at position t */
                const float *lg = tr->logits + (size_t)t * V;
                int am = 0;
                for (int v = 1; v < V; v++)
                    if (lg[v] > lg[am]) am = v;
                double mx = lg[am], z = 0;
                for (int v = 0; v < V; v++) z += exp(lg[v] - mx);
                double pw = exp(lg[g->target] - mx) / z;
                const resid_lens_cell *c = &g->in[(size_t)L * P + t];
                bool model_exact = lens != RESID_LENS_PAPER || !gpt2;
                if (model_exact) {
                    assert_int_equal(c->top1, am);
                    md = fmax(md, fabs(c->p_target - pw));
                    md = fmax(md, fabs(c->p_top1 - 1 / z));
                } else {
                    mdp = fmax(mdp, fabs(c->p_target - pw));
                }
            }
            if (lens != RESID_LENS_PAPER || !gpt2) assert_true(md <= 1e-5);
            /* one inner cell by brute force in the paper lens: x_mid at the middle
             * layer and the first position, scale from x_L at that position */
            if (lens == RESID_LENS_PAPER) {
                const int l = L / 2, t = 0;
                const float *xl = tr->x_in + ((size_t)L * P + t) * D;
                double mean = 0, ss = 0;
                if (gpt2) {
                    for (int d = 0; d < D; d++) mean += xl[d];
                    mean /= D;
                }
                for (int d = 0; d < D; d++) ss += (xl[d] - mean) * (xl[d] - mean);
                double scl = sqrt(ss / D + s.m->hp.norm_eps);
                const float *xm = tr->x_mid + ((size_t)l * P + t) * D;
                for (int d = 0; d < D; d++) x[d] = xm[d];
                brute_bs(&s, x, scl, bs);
                int am = 0;
                for (int v = 1; v < V; v++)
                    if (bs[v] > bs[am]) am = v;
                double z = 0;
                for (int v = 0; v < V; v++) z += exp(bs[v] - bs[am]);
                const resid_lens_cell *c = &g->mid[(size_t)l * P + t];
                assert_int_equal(c->top1, am);
                assert_true(fabs(c->p_target - exp(bs[g->target] - bs[am]) / z) <= 1e-5);
                int rank = 0;
                for (int v = 0; v < V; v++) rank += bs[v] > bs[g->target];
                assert_int_equal(c->rank_target, rank);
            }
            printf("  grid %-34s %-10s %d x %d: x_L vs model p(w)/p(top1) maxdiff %.2e%s",
                   tu_fixtures[fi].path, resid_lens_name(lens), 2 * L + 1, P, md,
                   lens == RESID_LENS_PAPER && gpt2 ? " (not compared)" : "");
            if (lens == RESID_LENS_PAPER && gpt2)
                printf("; GPT-2 paper lens differs from the model by up to %.3f (no beta_f)",
                       mdp);
            printf("\n");
            resid_lens_grid_free(g);
        }
        resid_lens_grid *g;
        resid_error err;
        assert_int_equal(resid_lens_grid_new(s.m, tr, RESID_LENS_PAPER, V, &g, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_lens_grid_new(s.m, tr, (resid_lens)7, -1, &g, &err), RESID_E_ARG);
        free(bs);
        close_fixture(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* Batched top/bottom-k against the per-vector API                        */
/* ---------------------------------------------------------------------- */

/* b (batched) against a (per vector), k entries: values within tol at each
 * rank; ids equal except where values tie within `tie` (then the id must
 * appear in a at a tied value, or tie with a's last value at the cut).
 * Returns the max value difference; counts the tie reorders. */
static double same_list(const char *what, const resid_token_value *a,
                        const resid_token_value *b, int k, double tol, double tie,
                        int *n_reordered) {
    double md = 0;
    for (int r = 0; r < k; r++) {
        md = fmax(md, fabs(a[r].value - b[r].value));
        if (a[r].id == b[r].id) continue;
        int rr = -1;
        for (int j = 0; j < k; j++)
            if (a[j].id == b[r].id) rr = j;
        bool tied = rr >= 0 ? fabs(a[rr].value - b[r].value) <= tie
                            : fabs(a[k - 1].value - b[r].value) <= tie;
        if (!tied) {
            print_error("%s rank %d: batched id %d (%.9g) vs per-vector id %d (%.9g)\n", what,
                        r, b[r].id, b[r].value, a[r].id, a[r].value);
            fail();
        }
        (*n_reordered)++;
    }
    if (md > tol) {
        print_error("%s: maxdiff %.3e > tol %.1e\n", what, md, tol);
        fail();
    }
    return md;
}

#define NB 70 /* > 64: two GEMM blocks */

static void test_project_many(void **state) {
    (void)state;
    const int fis[] = {0, 1}; /* stories260K, tiny-gpt2-stories */
    for (size_t q = 0; q < sizeof fis / sizeof fis[0]; q++) {
        const tu_fixture *f = &tu_fixtures[fis[q]];
        setup s = open_fixture(f, RESID_LENS_PAPER);
        const rs_hparams *hp = &s.m->hp;
        const int V = hp->n_vocab, D = hp->d_model, L = hp->n_layer;
        float *v = malloc(sizeof(float) * (size_t)NB * D);
        float *y = malloc(sizeof(float) * (size_t)NB * D);
        double scale[NB];
        resid_token_value *bt = malloc(sizeof *bt * (size_t)NB * K);
        resid_token_value *bb = malloc(sizeof *bb * (size_t)NB * K);
        resid_token_value top[K], bot[K];
        resid_error err;
        /* parameter rows (fc2, W_O) of every layer with both signs, one row
         * twice, and pseudo-random vectors, at scales 1 and 2.5 */
        uint32_t rng = 12345u;
        for (int i = 0; i < NB; i++) {
            float *vi = v + (size_t)i * D;
            scale[i] = i % 3 ? 1.0 : 2.5;
            if (i < 48) {
                resid_param p = i % 2 ? RESID_PARAM_WO : RESID_PARAM_FC2;
                const int64_t nr = p == RESID_PARAM_WO ? (int64_t)hp->n_head * hp->d_head
                                                       : hp->d_ffn;
                const int l = (i / 2) % L;
                const int64_t row = ((int64_t)i * 7919) % nr;
                assert_int_equal(resid_param_vector(s.m, p, l, row, vi, &err), RESID_OK);
                if (i % 4 >= 2)
                    for (int d = 0; d < D; d++) vi[d] = -vi[d];
            } else if (i == 48) {
                memcpy(vi, v, sizeof(float) * (size_t)D);
                scale[i] = scale[0];
            } else {
                for (int d = 0; d < D; d++) {
                    rng = rng * 1664525u + 1013904223u;
                    vi[d] = (float)((rng >> 8) * (1.0 / 16777216.0) - 0.5);
                }
            }
            assert_int_equal(resid_lens_vector(s.m, RESID_LENS_PAPER, scale[i], vi,
                                               y + (size_t)i * D, &err),
                             RESID_OK);
        }
        int32_t k = -1;
        assert_int_equal(resid_project_many_topk(s.m, y, NB, K, bt, bb, &k, &err), RESID_OK);
        assert_int_equal(k, K);
        double worst = 0;
        int n_reordered = 0;
        for (int i = 0; i < NB; i++) {
            assert_int_equal(resid_project_vector(s.m, v + (size_t)i * D, scale[i], K, top, bot,
                                                  NULL, &err),
                             RESID_OK);
            const double mx = fmax(1, fmax(fabs(top[0].value), fabs(bot[0].value)));
            char what[96];
            snprintf(what, sizeof what, "%s vector %d", f->path, i);
            worst = fmax(worst, same_list(what, top, bt + (size_t)i * K, K, 1e-5 * mx,
                                          1e-6 * mx, &n_reordered));
            worst = fmax(worst, same_list(what, bot, bb + (size_t)i * K, K, 1e-5 * mx,
                                          1e-6 * mx, &n_reordered));
        }
        /* the duplicate row gives the same lists */
        for (int r = 0; r < K; r++) assert_int_equal(bt[48 * K + r].id, bt[r].id);
        printf("  many %-34s %d vectors: batched top/bottom-%d vs resid_project_vector "
               "maxdiff %.2e, %d tie reorders\n",
               f->path, NB, K, worst, n_reordered);

        /* units through the explainer: resid_unit_lens_vector + batch vs
         * resid_project_unit (the heads and head x positions of explain) */
        resid_rank_opts ro = resid_rank_defaults(RESID_UNIT_HEAD_POS, 6);
        resid_score *best;
        int64_t nu;
        assert_int_equal(resid_rank(s.e, &ro, &best, &nu, NULL, &err), RESID_OK);
        assert_true(nu > 0 && nu <= NB);
        for (int64_t i = 0; i < nu; i++)
            assert_int_equal(resid_unit_lens_vector(s.e, &best[i].unit, y + (size_t)i * D, &err),
                             RESID_OK);
        assert_int_equal(resid_project_many_topk(s.m, y, nu, K, bt, bb, NULL, &err), RESID_OK);
        double wu = 0;
        for (int64_t i = 0; i < nu; i++) {
            assert_int_equal(resid_project_unit(s.e, &best[i].unit, K, top, bot, NULL, &err),
                             RESID_OK);
            const double mx = fmax(1, fmax(fabs(top[0].value), fabs(bot[0].value)));
            char what[96];
            resid_unit_format(&best[i].unit, what, sizeof what);
            wu = fmax(wu, same_list(what, top, bt + (size_t)i * K, K, 1e-5 * mx, 1e-6 * mx,
                                    &n_reordered));
            wu = fmax(wu, same_list(what, bot, bb + (size_t)i * K, K, 1e-5 * mx, 1e-6 * mx,
                                    &n_reordered));
        }
        printf("  many %-34s %lld head x position units: vs resid_project_unit maxdiff %.2e\n",
               f->path, (long long)nu, wu);
        free(best);

        /* k > V is clamped; bad input */
        resid_token_value *big = malloc(sizeof *big * (size_t)(V + 3));
        assert_int_equal(resid_project_many_topk(s.m, y, 1, V + 3, big, NULL, &k, &err),
                         RESID_OK);
        assert_int_equal(k, V);
        for (int r = 1; r < V; r++) assert_true(big[r - 1].value >= big[r].value);
        free(big);
        assert_int_equal(resid_project_many_topk(s.m, y, NB, -1, bt, bb, NULL, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_project_many_topk(s.m, y, -1, K, bt, bb, NULL, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_project_many_topk(NULL, y, NB, K, bt, bb, NULL, &err),
                         RESID_E_ARG);
        assert_int_equal(resid_lens_vector(s.m, (resid_lens)9, 1, v, y, &err), RESID_E_ARG);
        assert_int_equal(resid_project_many_topk(s.m, y, 0, K, bt, bb, &k, &err), RESID_OK);
        free(v), free(y), free(bt), free(bb);
        close_fixture(&s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_param_projection),
        cmocka_unit_test(test_unit_projection),
        cmocka_unit_test(test_dist_change),
        cmocka_unit_test(test_lens_grid),
        cmocka_unit_test(test_project_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
