/*
 * test_rank.c - the certified top-K / bottom-K (METHOD.md §10) against
 * exhaustive scoring: the same units, in the same order, with bit-identical
 * scores, for K in {1, 10, 300, N+5 (clamped)}, top and bottom, every unit
 * kind, every fixture model; the library's exhaustive path against the
 * test's own sort; other keys; and a constructed tie (zeroed FFN
 * coefficients give exactly equal scores, which must keep the enumeration
 * order). The reference scores always come from a separate explainer, so
 * the ranking explainer's memo of exact LPIs cannot make them agree; one
 * test checks that memo, one that rankings run together (rs_rank_many)
 * return what each returns alone. Prints how many exact scorings the
 * certified path needed.
 *
 * Cost: every exact score of a 50257-token model is a full vocabulary
 * projection, so the two GPT-2 fixtures run one prompt and skip the clamped
 * K = N+5 (clamping is covered by the small-vocabulary fixtures, where
 * K = 300 and N+5 both clamp), and the tie test runs on one of them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "analysis/analysis.h"

typedef struct fixture {
    const char *path;
    int32_t ids[2][12];
    int n[2];
} fixture;

static const fixture fixtures[] = {
    {"tinyllamas/stories260K.bin",
     {{1, 403, 407, 261, 378, 432, 383, 286, 261, 376}, {1, 300, 301, 302}},
     {10, 4}},
    {"tiny-random-llama-2", {{1, 42, 99, 7}, {1, 2999, 5, 17, 256}}, {4, 5}},
    {"tiny-gpt2", {{464, 3139, 286, 4881}, {15496, 11}}, {4, 2}},
    {"tiny-gpt2-stories", {{7454, 2402, 257}, {40, 1101}}, {3, 2}},
    {"quant/tiny-llama-256.q4_k_m.gguf", {{1, 300, 301, 302, 403, 407}, {1, 403}}, {6, 2}},
    {"quant/tiny-llama-256.q8_0.gguf", {{1, 403, 407, 261, 378}, {1, 5, 6, 7}}, {5, 4}},
};
#define N_FIXTURES (int)(sizeof fixtures / sizeof fixtures[0])

static resid_explainer *explainer(resid_model *m, resid_trace *tr, int32_t contrast) {
    resid_explain_opts eo = resid_explain_defaults();
    eo.contrast = contrast;
    return tu_explainer(m, tr, &eo);
}

typedef struct tally {
    int64_t calls, units, exact;
} tally;

/* Ranks with opts, checks against all[ord[0..k)) and tallies. */
static void check_rank(resid_explainer *e, const resid_rank_opts *o, const resid_score *all,
                       const int64_t *ord, int64_t n, tally *t, const char *what) {
    t->exact += tu_check_rank(e, o, all, ord, n, what);
    t->calls++;
    t->units += n;
}

static void test_certified_equals_exhaustive(void **state) {
    (void)state;
    const int64_t ks[] = {1, 10, 300, -1 /* N+5 */};
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        resid_model *m = tu_open_model(fixtures[fi].path);
        tally tk[RESID_UNIT_KIND_COUNT];
        memset(tk, 0, sizeof tk);
        const bool big = tu_big_vocab(m);
        const int n_prompts = big ? 1 : 2;
        for (int pi = 0; pi < n_prompts; pi++) {
            resid_trace *tr = tu_trace(m, fixtures[fi].ids[pi], fixtures[fi].n[pi], RESID_CAP_ALL,
                                       RESID_POS_AUTO);
            /* The reference scores come from an explainer of their own: the
             * ranking explainer remembers the LPIs it has scored, and must
             * match scores it never saw, computed in other batches. */
            resid_explainer *e = explainer(m, tr, -1), *eref = explainer(m, tr, -1);
            for (int k = 0; k < RESID_UNIT_KIND_COUNT; k++) {
                resid_score *all;
                int64_t n;
                assert_int_equal(resid_score_all(eref, (resid_unit_kind)k, &all, &n, NULL), 0);
                for (int bottom = 0; bottom < 2; bottom++) {
                    int64_t *ord = tu_reference_order(all, n, RESID_KEY_LPI, bottom);
                    resid_rank_opts o = resid_rank_defaults((resid_unit_kind)k, 10);
                    o.bottom = bottom;
                    /* the library's exhaustive path vs the test's sort */
                    o.exhaustive = true;
                    tally dummy = {0, 0, 0};
                    check_rank(e, &o, all, ord, n, &dummy, fixtures[fi].path);
                    o.exhaustive = false;
                    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                        if (big && ks[ki] < 0) continue;
                        o.k = ks[ki] < 0 ? n + 5 : ks[ki];
                        check_rank(e, &o, all, ord, n, &tk[k], fixtures[fi].path);
                    }
                    free(ord);
                }
                free(all);
            }
            resid_explainer_free(e);
            resid_explainer_free(eref);
            resid_trace_free(tr);
        }
        printf("  %-34s exact scorings / units (%d rankings x %d prompt(s)):\n",
               fixtures[fi].path, big ? 6 : 8, n_prompts);
        for (int k = 0; k < RESID_UNIT_KIND_COUNT; k++)
            printf("      %-12s %8lld / %8lld (%.1f%%)\n", resid_unit_kind_name(k),
                   (long long)tk[k].exact, (long long)tk[k].units,
                   100.0 * (double)tk[k].exact / (double)tk[k].units);
        resid_model_free(m);
    }
}

/* Other keys and a layer filter, on the FFN and attention neurons. */
static void test_other_keys(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        resid_model *m = tu_open_model(fixtures[fi].path);
        resid_trace *tr =
            tu_trace(m, fixtures[fi].ids[0], fixtures[fi].n[0], RESID_CAP_ALL, RESID_POS_AUTO);
        resid_explainer *e = explainer(m, tr, 3), *eref = explainer(m, tr, 3);
        const resid_unit_kind kinds[] = {RESID_UNIT_FFN_NEURON, RESID_UNIT_ATTN_NEURON,
                                         RESID_UNIT_HEAD_POS};
        const resid_rank_key keys[] = {RESID_KEY_PROB_INC, RESID_KEY_LOGIT, RESID_KEY_CONTRAST};
        tally t = {0, 0, 0};
        for (size_t ki = 0; ki < 3; ki++) {
            resid_score *all;
            int64_t n;
            assert_int_equal(resid_score_all(eref, kinds[ki], &all, &n, NULL), 0);
            for (size_t kk = 0; kk < 3; kk++) {
                for (int bottom = 0; bottom < 2; bottom++) {
                    int64_t *ord = tu_reference_order(all, n, keys[kk], bottom);
                    resid_rank_opts o = resid_rank_defaults(kinds[ki], 25);
                    o.key = keys[kk];
                    o.bottom = bottom;
                    check_rank(e, &o, all, ord, n, &t, fixtures[fi].path);
                    free(ord);
                }
            }
            free(all);
        }
        /* a layer filter: the last layer's FFN neurons only */
        int L = resid_model_get_info(m)->n_layer;
        resid_rank_opts o = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 7);
        o.layer = L - 1;
        resid_score *all;
        int64_t n;
        assert_int_equal(resid_score_all(eref, RESID_UNIT_FFN_NEURON, &all, &n, NULL), 0);
        int64_t N = n / L;
        int64_t *ord = tu_reference_order(all + (L - 1) * N, N, RESID_KEY_LPI, 0);
        check_rank(e, &o, all + (L - 1) * N, ord, N, &t, fixtures[fi].path);
        free(ord), free(all);
        /* bad options */
        resid_error err;
        resid_score *got;
        int64_t ng;
        o.layer = L;
        assert_int_equal(resid_rank(e, &o, &got, &ng, NULL, &err), RESID_E_ARG);
        o.layer = -1, o.k = -1;
        assert_int_equal(resid_rank(e, &o, &got, &ng, NULL, &err), RESID_E_ARG);
        printf("  %-34s other keys: %lld exact scorings for %lld units\n", fixtures[fi].path,
               (long long)t.exact, (long long)t.units);
        resid_explainer_free(e);
        resid_explainer_free(eref);
        resid_trace_free(tr);
        resid_model_free(m);
    }
}

/* Zeroed FFN coefficients: many exactly equal scores. */
static void test_ties(void **state) {
    (void)state;
    int n_big = 0;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        resid_model *m = tu_open_model(fixtures[fi].path);
        if (tu_big_vocab(m) && n_big++ > 0) { /* one GPT-2 fixture is enough */
            resid_model_free(m);
            continue;
        }
        resid_trace *tr =
            tu_trace(m, fixtures[fi].ids[0], fixtures[fi].n[0], RESID_CAP_ALL, RESID_POS_AUTO);
        const int N = tr->d_ffn;
        /* layer 0 at t*: every other neuron off; so is neuron 1 of layer 1 */
        float *mrow = tr->ffn_coef + (size_t)(tr->n_cap - 1) * N;
        for (int k = 0; k < N; k += 2) mrow[k] = 0.0f;
        tr->ffn_coef[((size_t)tr->n_cap + tr->n_cap - 1) * N + 1] = 0.0f;
        resid_explainer *e = explainer(m, tr, -1), *eref = explainer(m, tr, -1);
        resid_score *all;
        int64_t n;
        assert_int_equal(resid_score_all(eref, RESID_UNIT_FFN_NEURON, &all, &n, NULL), 0);
        assert_true(all[0].lpi == all[2 * (N / 4)].lpi); /* a real tie */
        tally t = {0, 0, 0};
        for (int bottom = 0; bottom < 2; bottom++) {
            int64_t *ord = tu_reference_order(all, n, RESID_KEY_LPI, bottom);
            /* K cutting the tie block of unit 0 (layer 0) */
            int64_t r0 = 0, r1 = 0;
            for (int64_t i = 0; i < n; i++) {
                if (ord[i] == 0) r0 = i;
                if (ord[i] == N + 1) r1 = i;
            }
            const int64_t ks[] = {r0 + 1, r0 + 3, r1 + 1, r1 + 2, 1, n};
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                resid_rank_opts o = resid_rank_defaults(RESID_UNIT_FFN_NEURON, ks[ki]);
                o.bottom = bottom;
                check_rank(e, &o, all, ord, n, &t, fixtures[fi].path);
            }
            free(ord);
        }
        free(all);
        resid_explainer_free(e);
        resid_explainer_free(eref);
        resid_trace_free(tr);
        resid_model_free(m);
    }
}

/* An explainer remembers the exact LPIs it has scored: ranking again (a
 * smaller K, as the query analysis does after the report's lists) projects
 * nothing and returns the same bits, which a fresh explainer reproduces. */
static void test_memo(void **state) {
    (void)state;
    const fixture *f = &fixtures[3]; /* tiny-gpt2-stories: V = 50257 */
    resid_model *m = tu_open_model(f->path);
    resid_trace *tr = tu_trace(m, f->ids[0], f->n[0], RESID_CAP_ALL, RESID_POS_AUTO);
    resid_explainer *e = explainer(m, tr, -1), *fresh = explainer(m, tr, -1);
    const resid_unit_kind kinds[] = {RESID_UNIT_FFN_NEURON, RESID_UNIT_ATTN_NEURON,
                                     RESID_UNIT_HEAD_POS};
    for (size_t ki = 0; ki < 3; ki++) {
        resid_score *a, *b, *c;
        int64_t na, nb, nc;
        resid_rank_stats sa, sb, sc;
        resid_rank_opts o = resid_rank_defaults(kinds[ki], 40);
        assert_int_equal(resid_rank(e, &o, &a, &na, &sa, NULL), RESID_OK);
        assert_true(sa.n_projections > 0);
        o.k = 25;
        assert_int_equal(resid_rank(e, &o, &b, &nb, &sb, NULL), RESID_OK);
        assert_int_equal(sb.n_projections, 0);
        assert_int_equal(nb, 25);
        assert_int_equal(resid_rank(fresh, &o, &c, &nc, &sc, NULL), RESID_OK);
        assert_true(sc.n_projections > 0);
        assert_int_equal(nc, 25);
        for (int64_t i = 0; i < 25; i++) {
            assert_memory_equal(&a[i].unit, &b[i].unit, sizeof a[i].unit);
            assert_memory_equal(&a[i].unit, &c[i].unit, sizeof a[i].unit);
            assert_memory_equal(&a[i].lpi, &b[i].lpi, sizeof(double));
            assert_memory_equal(&a[i].lpi, &c[i].lpi, sizeof(double));
        }
        printf("  %s: top-40 %lld projections, then top-25 %lld (fresh explainer: %lld)\n",
               resid_unit_kind_name(kinds[ki]), (long long)sa.n_projections,
               (long long)sb.n_projections, (long long)sc.n_projections);
        free(a), free(b), free(c);
    }
    resid_explainer_free(e);
    resid_explainer_free(fresh);
    resid_trace_free(tr);
    resid_model_free(m);
}

/* rs_rank_many (the explain report's rankings, in lockstep: shared
 * projections) returns what resid_rank returns for each ranking alone, bit
 * for bit: top and bottom, vector and directional kinds, other keys, an
 * exhaustive one among them, on GPT-2 and on a quantised Llama (columns of
 * a row-major down projection); a bad ranking fails the call and leaves
 * no result. */
static void test_rank_many(void **state) {
    (void)state;
    const int fis[] = {0, 3, 4};
    for (size_t f = 0; f < sizeof fis / sizeof fis[0]; f++) {
        const fixture *fx = &fixtures[fis[f]];
        resid_model *m = tu_open_model(fx->path);
        resid_trace *tr = tu_trace(m, fx->ids[0], fx->n[0], RESID_CAP_ALL, RESID_POS_AUTO);
        resid_explainer *e = explainer(m, tr, 3), *eref = explainer(m, tr, 3);
        resid_rank_opts o[8];
        int n = 0;
        o[n++] = resid_rank_defaults(RESID_UNIT_HEAD_POS, 12);
        o[n++] = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 20);
        o[n++] = resid_rank_defaults(RESID_UNIT_ATTN_NEURON, 15);
        o[n] = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 6);
        o[n++].bottom = true;
        o[n] = resid_rank_defaults(RESID_UNIT_ATTN_NEURON, 5);
        o[n++].key = RESID_KEY_PROB_INC;
        o[n] = resid_rank_defaults(RESID_UNIT_HEAD_POS, 4);
        o[n++].exhaustive = true;
        o[n] = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 3);
        o[n++].key = RESID_KEY_CONTRAST;
        o[n] = resid_rank_defaults(RESID_UNIT_HEAD, 5);
        o[n++].layer = 1;
        resid_score *s[8];
        int64_t ns[8];
        resid_rank_stats st[8];
        resid_error err;
        assert_int_equal(rs_rank_many(e, o, n, s, ns, st, &err), RESID_OK);
        for (int i = 0; i < n; i++) {
            resid_score *r;
            int64_t nr;
            assert_int_equal(resid_rank(eref, &o[i], &r, &nr, NULL, &err), RESID_OK);
            assert_int_equal(ns[i], nr);
            assert_int_equal(st[i].k, nr);
            for (int64_t q = 0; q < nr; q++) {
                assert_memory_equal(&s[i][q].unit, &r[q].unit, sizeof r[q].unit);
                assert_memory_equal(&s[i][q].lpi, &r[q].lpi, sizeof(double));
                assert_memory_equal(&s[i][q].prob_inc, &r[q].prob_inc, sizeof(double));
            }
            free(r), free(s[i]);
        }
        printf("  %s: %d rankings together = alone\n", fx->path, n);
        /* a bad ranking (k < 0) among good ones */
        o[1].k = -1;
        assert_int_equal(rs_rank_many(e, o, n, s, ns, st, &err), RESID_E_ARG);
        assert_non_null(strstr(err.msg, "negative"));
        for (int i = 0; i < n; i++) assert_null(s[i]);
        resid_explainer_free(e);
        resid_explainer_free(eref);
        resid_trace_free(tr);
        resid_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_many),
        cmocka_unit_test(test_ties),
        cmocka_unit_test(test_memo),
        cmocka_unit_test(test_other_keys),
        cmocka_unit_test(test_certified_equals_exhaustive),
    };
    if (getenv("RESID_TEST_FILTER")) cmocka_set_test_filter(getenv("RESID_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
