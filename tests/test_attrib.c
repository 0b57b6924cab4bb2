/*
 * test_attrib.c - the attribution core (src/analysis) against
 *   - an independent float64 reference (tests/support/ref64.c) on a sample of
 *     units of every kind, on every fixture model, in the paper and exact lenses
 *   - METHOD.md §8 identities 4-8 at every layer of every fixture model
 *   - the exact sums of §3.2 (heads, head×positions, attention neurons, FFN
 *     neurons, per-position subvalues) in bs space
 *   - bad input: target out of range, bad unit ids, missing captures.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "model/model.h"
#include "ref64.h"
#include "testutil.h"

/* Every fixture model: tu_fixtures' four and tiny-gpt2, a Q4_K_M GGUF. */
static const tu_fixture fixtures[] = {
    {"tinyllamas/stories260K.bin", {1, 403, 407, 261, 378, 432, 383, 286, 261, 376}, 10},
    {"tiny-random-llama-2", {1, 42, 99, 7}, 4},
    {"tiny-gpt2", {464, 3139, 286, 4881, 318}, 5},
    {"tiny-gpt2-stories", {7454, 2402, 257, 640, 11, 612, 373}, 7},
    {"quant/tiny-llama-256.q4_k_m.gguf", {1, 300, 301, 302, 403, 407}, 6},
    {"quant/tiny-llama-256.q8_0.gguf", {1, 403, 407, 261, 378}, 5},
};
#define N_FIXTURES (int)(sizeof fixtures / sizeof fixtures[0])

static tu_setup open_fixture(const tu_fixture *f, resid_lens lens, int32_t target) {
    resid_explain_opts eo = resid_explain_defaults();
    eo.lens = lens;
    eo.target = target;
    return tu_setup_open(f, RESID_POS_AUTO, &eo);
}

/* bs(v)[V] through the library's own projection (internal API). */
static void lib_bs(resid_explainer *e, const float *v, double *out) {
    float *y = malloc(sizeof(float) * RS_PROJ_ROWS * e->D);
    float *pad = malloc(sizeof(float) * RS_PROJ_ROWS * e->D);
    float *c = malloc(sizeof(float) * RS_PROJ_ROWS * (size_t)e->V);
    rs_lensmap(e, v, y);
    rs_project(e, y, 1, pad, c);
    for (int t = 0; t < e->V; t++) out[t] = c[t];
    free(y), free(pad), free(c);
}

static const float *trow(const resid_trace *tr, const float *base, int l) {
    return base + ((size_t)l * tr->n_cap + (size_t)(tr->n_cap - 1)) * tr->d_model;
}

static double softmax_logp(const float *logits, int V, int w, double *p_out) {
    double mx = -INFINITY, s = 0;
    for (int t = 0; t < V; t++)
        if (logits[t] > mx) mx = logits[t];
    for (int t = 0; t < V; t++) s += exp(logits[t] - mx);
    if (p_out)
        for (int t = 0; t < V; t++) p_out[t] = exp(logits[t] - mx) / s;
    return logits[w] - mx - log(s);
}

/* ---------------------------------------------------------------------- */
/* Against ref64                                                          */
/* ---------------------------------------------------------------------- */

static void test_ref64(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        for (int li = 0; li < 2; li++) {
            resid_lens lens = li ? RESID_LENS_EXACT : RESID_LENS_PAPER;
            tu_setup s = open_fixture(&fixtures[fi], lens, -1);
            const int32_t w = resid_explainer_target(s.e);
            /* the default target is the model's argmax */
            const float *lg = s.tr->logits + (size_t)(s.tr->n_cap - 1) * s.tr->n_vocab;
            for (int t = 0; t < s.tr->n_vocab; t++) assert_true(lg[t] <= lg[w]);
            ref64 *r = ref64_new(s.m, s.tr, lens == RESID_LENS_EXACT, w);
            assert_true(fabs(ref64_scale(r) - resid_explainer_scale(s.e)) <=
                        1e-6 * ref64_scale(r));
            double worst = 0;
            int n_checked = 0;
            for (int k = 0; k < RESID_UNIT_KIND_COUNT; k++) {
                int64_t n = resid_unit_count(s.e, (resid_unit_kind)k);
                int ns = n < 10 ? (int)n : 10;
                resid_unit u[10];
                resid_score sc[10];
                for (int i = 0; i < ns; i++) {
                    int64_t idx = ns > 1 ? (int64_t)i * (n - 1) / (ns - 1) : 0;
                    assert_int_equal(resid_unit_at(s.e, (resid_unit_kind)k, idx, &u[i], NULL),
                                     RESID_OK);
                }
                resid_error err;
                if (resid_score_units(s.e, u, ns, sc, &err) != RESID_OK) {
                    print_error("%s\n", err.msg);
                    fail();
                }
                for (int i = 0; i < ns; i++) {
                    double lp0 = ref64_context_logp(r, &u[i]);
                    double lpi = ref64_lpi(r, &u[i]);
                    double bst = ref64_bs_target(r, &u[i]);
                    double coef = ref64_coef(r, &u[i]);
                    double pinc = exp(lp0) * expm1(lpi);
                    double d1 = fabs(sc[i].lpi - lpi) / fmax(1, fabs(lpi));
                    double d2 = fabs(sc[i].bs_target - bst) / fmax(1, fabs(bst));
                    double d3 = fabs(sc[i].prob_inc - pinc);
                    double d4 = isnan(coef) ? (isnan(sc[i].coef) ? 0 : 1) : fabs(sc[i].coef - coef);
                    double d = fmax(fmax(d1, d2), fmax(d3, d4));
                    if (d > 1e-4) {
                        char id[64];
                        resid_unit_format(&u[i], id, sizeof id);
                        print_error("%s %s unit %s: lpi %.8g vs %.8g, bs_w %.8g vs %.8g, "
                                    "coef %.8g vs %.8g\n",
                                    fixtures[fi].path, resid_lens_name(lens), id, sc[i].lpi, lpi,
                                    sc[i].bs_target, bst, sc[i].coef, coef);
                        fail();
                    }
                    worst = fmax(worst, d);
                    n_checked++;
                }
            }
            printf("  ref64 %-36s %-5s target %5d: %3d units, maxdiff %.2e\n",
                   fixtures[fi].path, resid_lens_name(lens), w, n_checked, worst);
            ref64_free(r);
            tu_setup_close(&s);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* §8 identity 4: decomposition of the logits; linearity                  */
/* ---------------------------------------------------------------------- */

static void test_identity4(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        tu_setup s = open_fixture(&fixtures[fi], RESID_LENS_PAPER, -1);
        resid_explainer *e = s.e;
        const int V = e->V, D = e->D, L = e->L;
        double *sum = calloc((size_t)V, sizeof(double));
        double *b = malloc(sizeof(double) * V), *b2 = malloc(sizeof(double) * V);
        float *v = malloc(sizeof(float) * D);
        /* components: x_in[0], then a[l], f[l] for every layer */
        lib_bs(e, trow(s.tr, s.tr->x_in, 0), b);
        for (int t = 0; t < V; t++) sum[t] = b[t];
        for (int l = 0; l < L; l++) {
            lib_bs(e, trow(s.tr, s.tr->attn_out, l), b);
            for (int t = 0; t < V; t++) sum[t] += b[t];
            lib_bs(e, trow(s.tr, s.tr->ffn_out, l), b);
            for (int t = 0; t < V; t++) sum[t] += b[t];
        }
        const float *lg = s.tr->logits + (size_t)(s.tr->n_cap - 1) * V;
        double md = 0, mx = 0;
        for (int t = 0; t < V; t++) {
            double z = sum[t] + (e->wu_beta ? e->wu_beta[t] : 0);
            md = fmax(md, fabs(z - lg[t]));
            mx = fmax(mx, fabs(lg[t]));
        }
        printf("  id4 %-36s sum bs(components)%s = logits: maxdiff %.2e (|logit| <= %.1f)\n",
               fixtures[fi].path, e->wu_beta ? " + W_U.beta" : "", md, mx);
        assert_true(md <= 2e-4 * fmax(1, mx));
        /* linearity: bs(x + v) = bs(x) + bs(v), bs(c v) = c bs(v) */
        const float *x = trow(s.tr, s.tr->x_in, L / 2);
        const float *a = trow(s.tr, s.tr->attn_out, L / 2);
        double lin = 0, scl = 0;
        for (int d = 0; d < D; d++) v[d] = x[d] + a[d];
        lib_bs(e, v, sum);
        lib_bs(e, x, b);
        lib_bs(e, a, b2);
        for (int t = 0; t < V; t++) lin = fmax(lin, fabs(sum[t] - b[t] - b2[t]));
        for (int d = 0; d < D; d++) v[d] = -2.5f * a[d];
        lib_bs(e, v, sum);
        for (int t = 0; t < V; t++) scl = fmax(scl, fabs(sum[t] + 2.5 * b2[t]));
        assert_true(lin <= 1e-4 && scl <= 1e-4);
        if (s.m->hp.arch == RESID_ARCH_GPT2) {
            for (int d = 0; d < D; d++) v[d] = 3.75f;
            lib_bs(e, v, sum);
            double z = 0;
            for (int t = 0; t < V; t++) z = fmax(z, fabs(sum[t]));
            printf("      GPT-2 bs(3.75*1) max %.2e\n", z);
            assert_true(z <= 1e-5);
        }
        free(sum), free(b), free(b2), free(v);
        tu_setup_close(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* §8 identity 5: telescoping layer LPIs, at every layer                  */
/* ---------------------------------------------------------------------- */

static void test_identity5(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        for (int li = 0; li < 3; li++) {
            resid_lens lens = (resid_lens)li;
            tu_setup s = open_fixture(&fixtures[fi], lens, -1);
            const int L = s.e->L;
            resid_layer_row *rows = malloc(sizeof *rows * L);
            resid_error err;
            assert_int_equal(resid_layer_table(s.e, rows, &err), RESID_OK);
            double run = 0, md = 0;
            for (int l = 0; l < L; l++) {
                run += rows[l].attn_lpi;
                md = fmax(md, fabs(run - (log(rows[l].p_mid) - log(rows[0].p_in))));
                run += rows[l].ffn_lpi;
                double end = l + 1 < L ? rows[l + 1].p_in : resid_explainer_target_prob(s.e);
                if (lens == RESID_LENS_LOGIT && l + 1 == L) {
                    /* the logit lens of x_L is the model itself */
                    double pm = exp(softmax_logp(s.tr->logits + (size_t)(s.tr->n_cap - 1) *
                                                                    s.tr->n_vocab,
                                                 s.tr->n_vocab, s.e->target, NULL));
                    end = exp(run + log(rows[0].p_in));
                    assert_true(fabs(end - pm) <= 1e-5);
                }
                md = fmax(md, fabs(run - (log(end) - log(rows[0].p_in))));
            }
            printf("  id5 %-36s %-10s sum of layer LPIs %.6f, telescoping maxdiff %.2e\n",
                   fixtures[fi].path, resid_lens_name(lens), run, md);
            assert_true(md <= 1e-4);
            free(rows);
            tu_setup_close(&s);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* §8 identity 6: softmax(bs(x_L)) vs the model                           */
/* ---------------------------------------------------------------------- */

static void test_identity6(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        for (int li = 0; li < 2; li++) {
            resid_lens lens = li ? RESID_LENS_EXACT : RESID_LENS_PAPER;
            tu_setup s = open_fixture(&fixtures[fi], lens, -1);
            const int V = s.e->V;
            double *p = malloc(sizeof(double) * V);
            float *nob = malloc(sizeof(float) * V);
            const float *lg = s.tr->logits + (size_t)(s.tr->n_cap - 1) * V;
            softmax_logp(lg, V, 0, p);
            const rs_context *cx = &s.e->ctx[2 * s.e->L];
            double md = 0, mdb = 0;
            for (int t = 0; t < V; t++) md = fmax(md, fabs(exp(cx->logp[t]) - p[t]));
            bool gpt2 = s.m->hp.arch == RESID_ARCH_GPT2;
            if (gpt2) {
                /* the paper's probabilities are those of logits − W_U·β_f */
                for (int t = 0; t < V; t++) nob[t] = (float)(lg[t] - s.e->wu_beta[t]);
                softmax_logp(nob, V, 0, p);
                for (int t = 0; t < V; t++) mdb = fmax(mdb, fabs(exp(cx->logp[t]) - p[t]));
            }
            printf("  id6 %-36s %-5s max|p_lens - p_model| %.2e%s", fixtures[fi].path,
                   resid_lens_name(lens), md, gpt2 ? "" : "\n");
            if (gpt2) printf(", vs softmax(logits - W_U.beta) %.2e\n", mdb);
            if (gpt2 && lens == RESID_LENS_PAPER) {
                assert_true(md > 1e-3); /* differs: β_f is dropped */
                assert_true(mdb <= 1e-5);
            } else {
                assert_true(md <= 1e-5);
            }
            free(p), free(nob);
            tu_setup_close(&s);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* §8 identity 7: LPI(0) = 0, shift invariance, LPI(v;x) = −LPI(−v;x+v)    */
/* ---------------------------------------------------------------------- */

/* The library's LPI of κ·c in context cx, with c's range as the explainer
 * passes it (the one-pass log-sum-exp). */
static double lpi_ranged(resid_explainer *e, const rs_context *cx, const float *c, float kappa) {
    float mx, mn;
    rs_minmax(c, e->V, &mx, &mn);
    return rs_lpi_from(e, cx, c, kappa, mx, mn);
}

static double lib_lpi_vec(resid_explainer *e, int ci, const float *v) {
    float *y = malloc(sizeof(float) * RS_PROJ_ROWS * e->D);
    float *pad = malloc(sizeof(float) * RS_PROJ_ROWS * e->D);
    float *c = malloc(sizeof(float) * RS_PROJ_ROWS * (size_t)e->V);
    rs_lensmap(e, v, y);
    rs_project(e, y, 1, pad, c);
    double r = lpi_ranged(e, &e->ctx[ci], c, 1.0f);
    free(y), free(pad), free(c);
    return r;
}

static void test_identity7(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        tu_setup s = open_fixture(&fixtures[fi], RESID_LENS_PAPER, -1);
        resid_explainer *e = s.e;
        const int D = e->D, V = e->V;
        float *v = malloc(sizeof(float) * D);
        float *c = malloc(sizeof(float) * V);
        double z0 = 0, shift = 0, anti = 0;
        for (int l = 0; l < e->L; l++) {
            memset(v, 0, sizeof(float) * D);
            z0 = fmax(z0, fabs(lib_lpi_vec(e, 2 * l, v)));
            /* shift: the same bs values plus a constant give the same LPI */
            resid_unit u = {RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
            resid_score sc;
            assert_int_equal(resid_score_units(e, &u, 1, &sc, NULL), RESID_OK);
            float *y = malloc(sizeof(float) * RS_PROJ_ROWS * D);
            float *pad = malloc(sizeof(float) * RS_PROJ_ROWS * D);
            float *cc = malloc(sizeof(float) * RS_PROJ_ROWS * (size_t)V);
            rs_lensmap(e, trow(s.tr, s.tr->attn_out, l), y);
            rs_project(e, y, 1, pad, cc);
            for (int t = 0; t < V; t++) c[t] = cc[t] + 7.0f;
            shift = fmax(shift, fabs(lpi_ranged(e, &e->ctx[2 * l], c, 1.0f) - sc.lpi));
            /* anti-symmetry: context x_mid[l] = x_in[l] + a[l] */
            const float *a = trow(s.tr, s.tr->attn_out, l);
            for (int d = 0; d < D; d++) v[d] = -a[d];
            anti = fmax(anti, fabs(sc.lpi + lib_lpi_vec(e, 2 * l + 1, v)));
            free(y), free(pad), free(cc);
        }
        printf("  id7 %-36s |LPI(0)| %.1e, shift %.1e, LPI(v;x)+LPI(-v;x+v) %.1e\n",
               fixtures[fi].path, z0, shift, anti);
        assert_true(z0 <= 1e-6 && shift <= 1e-4 && anti <= 1e-4);
        free(v), free(c);
        tu_setup_close(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* §8 identity 8: single-token boost (synthetic)                          */
/* ---------------------------------------------------------------------- */

/* A bare explainer (V, target w) and a context of logits b[V] (max mx):
 * lp = log softmax(b) in float, and cx's logp and lpmax. */
static void synthetic_context(resid_explainer *e, rs_context *cx, int V, int w, const double *b,
                              double mx, float *lp) {
    memset(e, 0, sizeof *e);
    e->V = V;
    e->target = w;
    memset(cx, 0, sizeof *cx);
    double sum = 0;
    for (int t = 0; t < V; t++) sum += exp(b[t] - mx);
    for (int t = 0; t < V; t++) lp[t] = (float)(b[t] - mx - log(sum));
    cx->logp = lp;
    float lpmin;
    rs_minmax(lp, V, &cx->lpmax, &lpmin);
}

static void test_identity8(void **state) {
    (void)state;
    enum { V = 1000, W = 17 };
    resid_explainer e;
    rs_context cx;
    float *lp = malloc(sizeof(float) * V), *c = calloc(V, sizeof(float));
    double b[V], mx = -INFINITY;
    uint32_t rng = 12345;
    for (int t = 0; t < V; t++) {
        rng = rng * 1664525u + 1013904223u;
        b[t] = 6.0 * (rng >> 8) / (double)(1u << 24) - 3.0;
        mx = fmax(mx, b[t]);
    }
    synthetic_context(&e, &cx, V, W, b, mx, lp);
    double A = exp(b[W]), B = 0;
    for (int t = 0; t < V; t++)
        if (t != W) B += exp(b[t]);
    double md = 0, mdd = 0, m12 = 0;
    for (double l = -4; l <= 8; l += 0.5) {
        c[W] = (float)l;
        double lpi = lpi_ranged(&e, &cx, c, 1.0f);
        /* the one-pass sum (shift from c's range) and the two-pass one */
        m12 = fmax(m12, fabs(lpi - rs_lpi_from(&e, &cx, c, 1.0f, NAN, NAN)));
        double F = A * exp(l) / (A * exp(l) + B), F0 = A / (A + B);
        md = fmax(md, fabs(lpi - (log(F) - log(F0))));
        const double h = 1e-2;
        c[W] = (float)(l + h);
        double up = lpi_ranged(&e, &cx, c, 1.0f);
        c[W] = (float)(l - h);
        double dn = lpi_ranged(&e, &cx, c, 1.0f);
        mdd = fmax(mdd, fabs((up - dn) / (2 * h) - (1 - F)));
    }
    /* A shift bound far above the largest term (a big boost of a token
     * the context all but rules out: M' − max z ≈ 150) must fall back to
     * the two-pass sum rather than lose every term to underflow. */
    memset(c, 0, sizeof(float) * V);
    lp[3] = -150.0f;
    c[3] = 150.0f;
    const double far = lpi_ranged(&e, &cx, c, 1.0f), two = rs_lpi_from(&e, &cx, c, 1.0f, NAN, NAN);
    printf("  id8 LPI = log F(l) - log F(0): maxdiff %.2e; dLPI/dl = 1-p: maxdiff %.2e; "
           "one-pass vs two-pass %.1e; far shift %.9g vs %.9g\n",
           md, mdd, m12, far, two);
    assert_true(md <= 1e-5 && mdd <= 1e-3 && m12 <= 1e-6);
    assert_true(isfinite(far) && fabs(far - two) <= 1e-6);
    free(lp), free(c);
}

/* ---------------------------------------------------------------------- */
/* The series path of the log-sum-exp (rs_lpi_row) vs float64             */
/* ---------------------------------------------------------------------- */

/* LPI of κ·c in the context of the float log-probabilities lp, in double:
 * κ c_w − (log Σ e^(lp + κc) − log Σ e^lp). */
static double lpi_ref64(const float *lp, const float *c, float kappa, int V, int w) {
    double m1 = -INFINITY, m0 = -INFINITY, s1 = 0, s0 = 0;
    for (int t = 0; t < V; t++) {
        m1 = fmax(m1, (double)lp[t] + (double)kappa * c[t]);
        m0 = fmax(m0, (double)lp[t]);
    }
    for (int t = 0; t < V; t++) {
        s1 += exp((double)lp[t] + (double)kappa * c[t] - m1);
        s0 += exp((double)lp[t] - m0);
    }
    return (double)kappa * c[w] - ((m1 + log(s1)) - (m0 + log(s0)));
}

static void test_series(void **state) {
    (void)state;
    enum { V = 5003, W = 101 }; /* not a multiple of 128: the kernels' tails */
    resid_explainer e;
    rs_context cx;
    float *lp = malloc(sizeof(float) * V), *p = malloc(sizeof(float) * V);
    float *c = malloc(sizeof(float) * V);
    double *b = malloc(sizeof(double) * V), mx = -INFINITY;
    uint32_t rng = 777;
#define RNG01() ((rng = rng * 1664525u + 1013904223u), (rng >> 8) / (double)(1u << 24))
    for (int t = 0; t < V; t++) {
        b[t] = 12.0 * RNG01() - 6.0;
        if (t % 97 == 0) b[t] = -120.0; /* p_t below FLT_MIN */
        mx = fmax(mx, b[t]);
    }
    synthetic_context(&e, &cx, V, W, b, mx, lp);
    static const double rhos[] = {1e-7, 1e-4, 3e-3, 0.05, 0.2, 0.2499, 0.25, 0.2501, 0.6, 3.0};
    const int nr = (int)(sizeof rhos / sizeof rhos[0]);
    for (int generic = 0; generic < 2; generic++) {
        rs_kernels_set_generic(generic);
        rs_context_series(&e, &cx, p);
        double worst_series = 0, worst_direct = 0;
        for (int shape = 0; shape < 4; shape++) {
            /* ±A (every |c_t/m| = 1: the top term at full weight), uniform
             * in [−A, A], one outlier among small values, and uniform in
             * [−A, A] with A subnormal (1/A overflows a float) */
            const float A = shape == 2 ? 40.0f : shape == 3 ? 3e-39f : 3.0f;
            for (int t = 0; t < V; t++) {
                const double u = RNG01();
                c[t] = shape == 0 ? (u < 0.5 ? -A : A) : (float)(A * (2 * u - 1));
                if (shape == 2) c[t] *= 1e-3f;
            }
            if (shape == 2) c[7] = A;
            float cmax, cmin;
            rs_minmax(c, V, &cmax, &cmin);
            const double m = fmax(fabs(cmax), fabs(cmin));
            for (int i = 0; i < nr; i++)
                for (int sg = -1; sg <= 1; sg += 2) {
                    const float kappa = (float)(sg * rhos[i] / m);
                    if (!isfinite(kappa)) continue; /* the subnormal row's ρ = 3 */
                    const double rho = fabs((double)kappa) * m;
                    rs_series sr = {0};
                    const double got = rs_lpi_row(&e, &cx, c, kappa, cmax, cmin, &sr);
                    const double err = fabs(got - lpi_ref64(lp, c, kappa, V, W));
                    if (!(err <= 1e-6)) /* also NaN, which fmax below would skip */
                        fail_msg("shape %d, rho %g: LPI %.9g, float64 %.9g", shape, rho, got,
                                 lpi_ref64(lp, c, kappa, V, W));
                    /* the series path runs exactly when ρ <= 1/4 */
                    assert_true((sr.cx == &cx) == (rho <= RS_SERIES_RHO));
                    if (rho <= RS_SERIES_RHO)
                        worst_series = fmax(worst_series, err);
                    else
                        worst_direct = fmax(worst_direct, err);
                    /* a second unit on the row reuses its moments */
                    if (sr.cx) {
                        const double again = rs_lpi_row(&e, &cx, c, -kappa, cmax, cmin, &sr);
                        assert_true(fabs(again - lpi_ref64(lp, c, -kappa, V, W)) <= 5e-8);
                    }
                }
        }
        rs_series sr = {0};
        assert_true(rs_lpi_row(&e, &cx, c, 0.0f, 1.0f, -1.0f, &sr) == 0.0);
        assert_true(rs_lpi_from(&e, &cx, c, 0.0f, 1.0f, -1.0f) == 0.0); /* lse0 */
        printf("  series (%s kernels): max |LPI - float64| %.1e series (rho <= 1/4), "
               "%.1e direct\n",
               generic ? "generic" : "best", worst_series, worst_direct);
        /* the series' truncation is <= 2.0e-8 of the sum at rho = 1/4; its
         * top term there is 3.4e-7 for the ±A row */
        assert_true(worst_series <= 5e-8);
        assert_true(worst_direct <= 1e-6);
    }
#undef RNG01
    rs_kernels_set_generic(false);
    free(lp), free(p), free(c), free(b);
}

/* ---------------------------------------------------------------------- */
/* §3.2 sums, in bs space                                                 */
/* ---------------------------------------------------------------------- */

static double bs_w_of(resid_explainer *e, const float *v) { return rs_dot(v, e->gw, e->D); }

static void test_sums(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        tu_setup s = open_fixture(&fixtures[fi], RESID_LENS_PAPER, -1);
        resid_explainer *e = s.e;
        resid_score *heads, *hp, *an, *fn, *pos, *al, *fl;
        int64_t nh, nhp, nan_, nfn, npos, nal, nfl;
        assert_int_equal(resid_score_all(e, RESID_UNIT_HEAD, &heads, &nh, NULL), 0);
        assert_int_equal(resid_score_all(e, RESID_UNIT_HEAD_POS, &hp, &nhp, NULL), 0);
        assert_int_equal(resid_score_all(e, RESID_UNIT_ATTN_NEURON, &an, &nan_, NULL), 0);
        assert_int_equal(resid_score_all(e, RESID_UNIT_FFN_NEURON, &fn, &nfn, NULL), 0);
        assert_int_equal(resid_score_all(e, RESID_UNIT_POS, &pos, &npos, NULL), 0);
        assert_int_equal(resid_score_all(e, RESID_UNIT_ATTN_LAYER, &al, &nal, NULL), 0);
        assert_int_equal(resid_score_all(e, RESID_UNIT_FFN_LAYER, &fl, &nfl, NULL), 0);
        const int L = e->L, H = e->H, T = e->T, dh = e->dh, N = e->N;
        assert_int_equal(nh, L * H);
        assert_int_equal(nhp, L * H * T);
        assert_int_equal(nan_, (int64_t)L * H * dh * T);
        assert_int_equal(nfn, (int64_t)L * N);
        double d_head = 0, d_hp = 0, d_an = 0, d_fn = 0, d_pos = 0, scale = 0;
        for (int l = 0; l < L; l++) {
            const rs_layer *ly = &s.m->layers[l];
            double bo = ly->bo ? bs_w_of(e, ly->bo) : 0;
            double b2 = ly->b_down ? bs_w_of(e, ly->b_down) : 0;
            double sh = 0, sp = 0;
            for (int h = 0; h < H; h++) {
                double shp = 0;
                for (int j = 0; j < T; j++) {
                    const resid_score *x = &hp[((int64_t)l * H + h) * T + j];
                    double sn = 0;
                    for (int n = 0; n < dh; n++)
                        sn += an[(((int64_t)l * H + h) * dh + n) * T + j].bs_target;
                    d_an = fmax(d_an, fabs(sn - x->bs_target));
                    shp += x->bs_target;
                }
                d_hp = fmax(d_hp, fabs(shp - heads[l * H + h].bs_target));
                sh += heads[l * H + h].bs_target;
            }
            for (int j = 0; j < T; j++) sp += pos[(int64_t)l * T + j].bs_target;
            d_head = fmax(d_head, fabs(sh + bo - al[l].bs_target));
            d_pos = fmax(d_pos, fabs(sp - sh));
            double sf = 0;
            for (int k = 0; k < N; k++) sf += fn[(int64_t)l * N + k].bs_target;
            d_fn = fmax(d_fn, fabs(sf + b2 - fl[l].bs_target));
            scale = fmax(scale, fmax(fabs(al[l].bs_target), fabs(fl[l].bs_target)));
        }
        printf("  sums %-36s heads+b_O %.1e, head-pos %.1e, attn-neurons %.1e, "
               "ffn-neurons+b_2 %.1e, positions %.1e\n",
               fixtures[fi].path, d_head, d_hp, d_an, d_fn, d_pos);
        double tol = 1e-4 * fmax(1, scale);
        assert_true(d_head <= tol && d_hp <= tol && d_an <= tol && d_fn <= tol && d_pos <= tol);
        free(heads), free(hp), free(an), free(fn), free(pos), free(al), free(fl);
        tu_setup_close(&s);
    }
}

/* ---------------------------------------------------------------------- */
/* Ids and bad input                                                      */
/* ---------------------------------------------------------------------- */

static void test_ids_and_errors(void **state) {
    (void)state;
    tu_setup s = open_fixture(&fixtures[0], RESID_LENS_PAPER, -1);
    resid_error err;
    /* every unit's id round-trips */
    for (int k = 0; k < RESID_UNIT_KIND_COUNT; k++) {
        int64_t n = resid_unit_count(s.e, (resid_unit_kind)k);
        for (int64_t i = 0; i < n; i += 1 + n / 50) {
            resid_unit u, v;
            char id[64];
            assert_int_equal(resid_unit_at(s.e, (resid_unit_kind)k, i, &u, NULL), 0);
            resid_unit_format(&u, id, sizeof id);
            assert_int_equal(resid_unit_parse(id, (resid_unit_kind)k, s.tr, &v, &err), 0);
            assert_memory_equal(&u, &v, sizeof u);
        }
    }
    resid_unit u;
    assert_int_equal(resid_unit_parse("4_171", RESID_UNIT_FFN_NEURON, s.tr, &u, &err), 0);
    assert_int_equal(resid_unit_parse("4_172", RESID_UNIT_FFN_NEURON, s.tr, &u, &err),
                     RESID_E_ARG);
    assert_non_null(strstr(err.msg, "172"));
    assert_int_equal(resid_unit_parse("5_0", RESID_UNIT_HEAD, s.tr, &u, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "layer"));
    assert_int_equal(resid_unit_parse("0_8", RESID_UNIT_HEAD, s.tr, &u, &err), RESID_E_ARG);
    assert_int_equal(resid_unit_parse("0_0_8_0", RESID_UNIT_ATTN_NEURON, s.tr, &u, &err),
                     RESID_E_ARG);
    assert_int_equal(resid_unit_parse("0_0_0_10", RESID_UNIT_ATTN_NEURON, s.tr, &u, &err),
                     RESID_E_ARG);
    assert_non_null(strstr(err.msg, "position"));
    const char *bad[] = {"", "a", "3", "3_", "_3", "3_x", "3_4_", "-1_2", "3 _4", "f3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(resid_unit_parse(bad[i], RESID_UNIT_FFN_NEURON, NULL, &u, &err),
                         RESID_E_ARG);
    assert_int_equal(resid_unit_parse("a3", RESID_UNIT_ATTN_LAYER, NULL, &u, &err), 0);
    assert_int_equal(resid_unit_parse("a3", RESID_UNIT_FFN_LAYER, NULL, &u, &err), RESID_E_ARG);
    /* bad units in score */
    resid_unit bu = {RESID_UNIT_FFN_NEURON, 0, -1, 172, -1};
    resid_score sc;
    assert_int_equal(resid_score_units(s.e, &bu, 1, &sc, &err), RESID_E_ARG);
    /* target / contrast out of range */
    resid_explain_opts eo = resid_explain_defaults();
    resid_explainer *e2;
    eo.target = 512;
    assert_int_equal(resid_explainer_new(s.m, s.tr, &eo, &e2, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "512"));
    eo.target = -2;
    assert_int_equal(resid_explainer_new(s.m, s.tr, &eo, &e2, &err), RESID_E_ARG);
    eo.target = 5, eo.contrast = 9999;
    assert_int_equal(resid_explainer_new(s.m, s.tr, &eo, &e2, &err), RESID_E_ARG);
    /* the logit lens: layer table only */
    eo.contrast = -1, eo.lens = RESID_LENS_LOGIT;
    assert_int_equal(resid_explainer_new(s.m, s.tr, &eo, &e2, &err), 0);
    resid_unit al = {RESID_UNIT_ATTN_LAYER, 0, -1, -1, -1};
    assert_int_equal(resid_score_units(e2, &al, 1, &sc, &err), RESID_E_ARG);
    resid_explainer_free(e2);
    /* a contrast: the logit difference */
    eo.lens = RESID_LENS_PAPER, eo.target = 5, eo.contrast = 7;
    assert_int_equal(resid_explainer_new(s.m, s.tr, &eo, &e2, &err), 0);
    resid_unit fu = {RESID_UNIT_FFN_NEURON, 2, -1, 33, -1};
    assert_int_equal(resid_score_units(e2, &fu, 1, &sc, &err), 0);
    ref64 *r5 = ref64_new(s.m, s.tr, false, 5), *r7 = ref64_new(s.m, s.tr, false, 7);
    double want = ref64_bs_target(r5, &fu) - ref64_bs_target(r7, &fu);
    assert_true(fabs(sc.contrast - want) <= 1e-5 * fmax(1, fabs(want)));
    ref64_free(r5), ref64_free(r7);
    resid_explainer_free(e2);
    /* a trace without the captures */
    resid_trace_opts o = resid_trace_defaults();
    o.capture = RESID_CAP_RESID | RESID_CAP_LOGITS;
    resid_trace *tr2;
    assert_int_equal(resid_forward(s.m, fixtures[0].ids, 3, &o, &tr2, &err), 0);
    assert_int_equal(resid_explainer_new(s.m, tr2, NULL, &e2, &err), RESID_E_ARG);
    resid_trace_free(tr2);
    /* lens names */
    resid_lens ln;
    assert_string_equal(resid_lens_name(RESID_LENS_LOGIT), "logit-lens");
    assert_int_equal(resid_lens_parse("exact", &ln, &err), 0);
    assert_int_equal(ln, RESID_LENS_EXACT);
    assert_int_equal(resid_lens_parse("nope", &ln, &err), RESID_E_ARG);
    tu_setup_close(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_errors), cmocka_unit_test(test_identity8),
        cmocka_unit_test(test_series),
        cmocka_unit_test(test_ref64),          cmocka_unit_test(test_identity4),
        cmocka_unit_test(test_identity5),      cmocka_unit_test(test_identity6),
        cmocka_unit_test(test_identity7),      cmocka_unit_test(test_sums),
    };
    if (getenv("RESID_TEST_FILTER")) cmocka_set_test_filter(getenv("RESID_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
