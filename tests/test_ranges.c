/*
 * test_ranges.c - the model's direction ranges (src/analysis/ranges.c,
 * METHOD.md §10) and what they are for:
 *   - the values: every cached max/min equals, bit for bit, the max/min of
 *     the test's own scale-1 lens vector of that direction (read through
 *     rs_dir_row, not the build's rs_tensor_cols) projected alone by
 *     rs_project_canon;
 *   - the bounds: after an exhaustive ranking has projected every
 *     direction through the explainer (its own scale s), each direction's
 *     bounds from the cache contain its projected max/min, and are tight
 *     (the slack is printed);
 *   - the ranking: with the ranges, the certified bottom-K and top-K of FFN
 *     and attention neurons (K = 1, 10, 300, and N+5 on small vocabularies;
 *     ties from zeroed coefficients) equal exhaustive scoring by a separate
 *     explainer, bit for bit; each ranking scores no more units exactly
 *     than a fresh explainer without the ranges, and the bottom-K ones
 *     strictly fewer in total (counts printed);
 *   - the file: save/load round trip, save again gives the same bytes;
 *     another model's file (another shape, or the same shape with other
 *     weights), a truncated file, a flipped magic, another version, a
 *     corrupt float, a trailing byte fail with clear errors; an explainer
 *     refuses another shape's ranges;
 *   - the CLI: `resid ranges` then `resid explain --bottom --ranges` gives
 *     the same lists as without, with fewer units scored exactly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "testutil.h"

/* tu_fixtures' models plus tiny-gpt2, with short prompts */
static const tu_fixture fixtures[] = {
    {"tinyllamas/stories260K.bin", {1, 403, 407, 261, 378, 432, 383, 286, 261, 376}, 10},
    {"tiny-gpt2", {464, 3139, 286, 4881}, 4},
    {"tiny-gpt2-stories", {7454, 2402, 257}, 3},
    {"tiny-random-llama-2", {1, 42, 99, 7}, 4},
    {"quant/tiny-llama-256.q8_0.gguf", {1, 403, 407, 261, 378}, 5},
};
#define N_FIXTURES (int)(sizeof fixtures / sizeof fixtures[0])

static resid_ranges *build(const resid_model *m) {
    resid_ranges *r = NULL;
    resid_error err;
    if (resid_ranges_build(m, NULL, NULL, &r, &err) != RESID_OK) {
        print_error("resid_ranges_build: %s\n", err.msg);
        fail();
    }
    return r;
}

static resid_explainer *explainer(resid_model *m, resid_trace *tr, const resid_ranges *r) {
    resid_explain_opts eo = resid_explain_defaults();
    eo.ranges = r;
    return tu_explainer(m, tr, &eo);
}

static bool same_float(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* A fixture opened: its model, the model's ranges and the trace of its
 * prompt. */
typedef struct opened {
    resid_model *m;
    resid_ranges *r;
    resid_trace *tr;
} opened;

static opened open_fixture(const tu_fixture *f) {
    opened o;
    o.m = tu_open_model(f->path);
    o.r = build(o.m);
    o.tr = tu_trace(o.m, f->ids, f->n, RESID_CAP_ALL, RESID_POS_AUTO);
    return o;
}

static void close_fixture(opened *o) {
    resid_trace_free(o->tr);
    resid_ranges_free(o->r);
    resid_model_free(o->m);
}

/* Every unit of kind k scored by an explainer without the ranges; *n the
 * count. malloc'd. */
static resid_score *score_all(resid_model *m, resid_trace *tr, resid_unit_kind k, int64_t *n) {
    resid_explainer *eref = explainer(m, tr, NULL);
    resid_score *all;
    assert_int_equal(resid_score_all(eref, k, &all, n, NULL), RESID_OK);
    resid_explainer_free(eref);
    return all;
}

/* ---------------------------------------------------------------------- */

static void test_values(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        opened fx = open_fixture(&fixtures[fi]);
        resid_model *m = fx.m;
        const resid_ranges *r = fx.r;
        resid_explainer *e = explainer(m, fx.tr, NULL);
        const int D = e->D, V = e->V;
        const bool centre = resid_model_get_info(m)->arch == RESID_ARCH_GPT2;
        float *d = malloc((size_t)D * sizeof(float)), *y = malloc((size_t)D * sizeof(float));
        float *c = malloc((size_t)V * sizeof(float));
        int64_t rows = 0;
        for (int kind = 0; kind < 2; kind++) {
            const resid_unit_kind k = kind ? RESID_UNIT_ATTN_NEURON : RESID_UNIT_FFN_NEURON;
            for (int32_t l = 0; l < e->L; l++) {
                assert_non_null(rs_dirs(e, k, l, NULL)); /* W_Oᵀ for rs_dir_row */
                const int64_t n = kind ? (int64_t)e->H * e->dh : e->N;
                const float *mx = (kind ? r->attn_max : r->ffn_max) + (size_t)l * n;
                const float *mn = (kind ? r->attn_min : r->ffn_min) + (size_t)l * n;
                for (int64_t row = 0; row < n; row++) {
                    rs_dir_row(e, k, l, row, d);
                    /* γ ⊙ centre(d) at scale 1, as the lens computes it */
                    double mean = 0;
                    if (centre) {
                        for (int q = 0; q < D; q++) mean += d[q];
                        mean /= D;
                    }
                    for (int q = 0; q < D; q++)
                        y[q] = (float)((double)e->gamma[q] * (d[q] - mean) * 1.0);
                    rs_project_canon(e, y, 1, c);
                    float a = -INFINITY, b = INFINITY;
                    for (int t = 0; t < V; t++) a = c[t] > a ? c[t] : a, b = c[t] < b ? c[t] : b;
                    if (!same_float(a, mx[row]) || !same_float(b, mn[row])) {
                        print_error("%s: %s layer %d row %lld: cached [%.9g, %.9g], direct "
                                    "[%.9g, %.9g]\n",
                                    fixtures[fi].path, resid_unit_kind_name(k), l,
                                    (long long)row, mn[row], mx[row], b, a);
                        fail();
                    }
                    rows++;
                }
            }
        }
        printf("  %-34s %lld directions: cached max/min = direct projection, bit for bit\n",
               fixtures[fi].path, (long long)rows);
        free(d), free(y), free(c);
        resid_explainer_free(e);
        close_fixture(&fx);
    }
}

/* ---------------------------------------------------------------------- */

static void test_bounds(void **state) {
    (void)state;
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        opened fx = open_fixture(&fixtures[fi]);
        resid_explainer *e = explainer(fx.m, fx.tr, fx.r);
        double worst = 0; /* largest slack / the direction's range */
        int64_t rows = 0;
        for (int kind = 0; kind < 2; kind++) {
            const resid_unit_kind k = kind ? RESID_UNIT_ATTN_NEURON : RESID_UNIT_FFN_NEURON;
            /* projects every direction: fills pmax/pmin */
            resid_rank_opts o = resid_rank_defaults(k, 1);
            o.exhaustive = true;
            resid_score *got;
            int64_t ng;
            assert_int_equal(resid_rank(e, &o, &got, &ng, NULL, NULL), RESID_OK);
            free(got);
            for (int32_t l = 0; l < e->L; l++) {
                const rs_dirstats *ds = kind ? &e->attn_dirs[l] : &e->ffn_dirs[l];
                assert_non_null(ds->bmax);
                assert_non_null(ds->bmin);
                for (int64_t row = 0; row < ds->n; row++) {
                    assert_false(isnan(ds->pmax[row]));
                    if (!(ds->bmin[row] <= ds->pmin[row] && ds->pmax[row] <= ds->bmax[row])) {
                        print_error("%s: %s layer %d row %lld: projected [%.9g, %.9g] not in "
                                    "the bounds [%.9g, %.9g]\n",
                                    fixtures[fi].path, resid_unit_kind_name(k), l,
                                    (long long)row, ds->pmin[row], ds->pmax[row], ds->bmin[row],
                                    ds->bmax[row]);
                        fail();
                    }
                    const double range = (double)ds->pmax[row] - ds->pmin[row];
                    const double slack = fmax((double)ds->bmax[row] - ds->pmax[row],
                                              (double)ds->pmin[row] - ds->bmin[row]);
                    if (range > 0 && slack / range > worst) worst = slack / range;
                    rows++;
                }
            }
        }
        printf("  %-34s %lld directions inside their cached bounds; largest slack %.2e of "
               "the range\n",
               fixtures[fi].path, (long long)rows, worst);
        /* the bounds are tight enough to matter */
        assert_true(worst < 1e-3);
        resid_explainer_free(e);
        close_fixture(&fx);
    }
}

/* ---------------------------------------------------------------------- */

/* Ranks with o on a fresh explainer (ranges r or none) and checks the
 * list against all[ord[0..k)); returns the units scored exactly. */
static int64_t rank_checked(resid_model *m, resid_trace *tr, const resid_ranges *r,
                            const resid_rank_opts *o, const resid_score *all, const int64_t *ord,
                            int64_t n, const char *what) {
    resid_explainer *e = explainer(m, tr, r);
    char w[256];
    snprintf(w, sizeof w, "%s (%s ranges)", what, r ? "with" : "without");
    const int64_t n_exact = tu_check_rank(e, o, all, ord, n, w);
    resid_explainer_free(e);
    return n_exact;
}

/* Counts of units scored exactly, with and without the ranges. */
typedef struct counts {
    int64_t with[2], without[2]; /* [bottom] */
    int64_t fewer;               /* rankings with strictly fewer */
} counts;

static void rank_case(resid_model *m, resid_trace *tr, const resid_ranges *r, resid_unit_kind k,
                      const int64_t *ks, int nk, const char *what, counts *cnt) {
    int64_t n;
    resid_score *all = score_all(m, tr, k, &n);
    for (int bottom = 0; bottom < 2; bottom++) {
        int64_t *ord = tu_reference_order(all, n, RESID_KEY_LPI, bottom);
        for (int ki = 0; ki < nk; ki++) {
            resid_rank_opts o = resid_rank_defaults(k, ks[ki] < 0 ? n + 5 : ks[ki]);
            o.bottom = bottom;
            const int64_t w = rank_checked(m, tr, r, &o, all, ord, n, what);
            const int64_t wo = rank_checked(m, tr, NULL, &o, all, ord, n, what);
            if (w > wo) {
                print_error("%s: %s K=%lld %s: %lld units scored exactly with the ranges, "
                            "%lld without\n",
                            what, resid_unit_kind_name(k), (long long)o.k,
                            bottom ? "bottom" : "top", (long long)w, (long long)wo);
                fail();
            }
            cnt->with[bottom] += w;
            cnt->without[bottom] += wo;
            cnt->fewer += w < wo;
        }
        free(ord);
    }
    free(all);
}

static void test_rank(void **state) {
    (void)state;
    const int64_t ks[] = {1, 10, 300, -1 /* N+5 */};
    counts total = {{0, 0}, {0, 0}, 0};
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        opened fx = open_fixture(&fixtures[fi]);
        const int nk = tu_big_vocab(fx.m) ? 3 : 4;
        for (int kind = 0; kind < 2; kind++) {
            const resid_unit_kind k = kind ? RESID_UNIT_ATTN_NEURON : RESID_UNIT_FFN_NEURON;
            counts c = {{0, 0}, {0, 0}, 0};
            rank_case(fx.m, fx.tr, fx.r, k, ks, nk, fixtures[fi].path, &c);
            printf("  %-34s %-11s units scored exactly with / without the ranges: "
                   "bottom %6lld / %6lld, top %6lld / %6lld\n",
                   fixtures[fi].path, resid_unit_kind_name(k), (long long)c.with[1],
                   (long long)c.without[1], (long long)c.with[0], (long long)c.without[0]);
            for (int b = 0; b < 2; b++)
                total.with[b] += c.with[b], total.without[b] += c.without[b];
            total.fewer += c.fewer;
        }
        close_fixture(&fx);
    }
    printf("  all fixtures: bottom-K %lld / %lld, top-K %lld / %lld units scored exactly "
           "(with / without); %lld rankings strictly fewer\n",
           (long long)total.with[1], (long long)total.without[1], (long long)total.with[0],
           (long long)total.without[0], (long long)total.fewer);
    assert_true(total.with[1] < total.without[1]);
    assert_true(total.fewer > 0);
}

/* Zeroed FFN coefficients give runs of exactly equal scores: K cutting a
 * tie block must keep the enumeration order with the ranges too. */
static void test_ties(void **state) {
    (void)state;
    const int fis[] = {0, 2}; /* stories260K, tiny-gpt2-stories */
    for (size_t q = 0; q < sizeof fis / sizeof fis[0]; q++) {
        const tu_fixture *f = &fixtures[fis[q]];
        opened fx = open_fixture(f);
        const int N = fx.tr->d_ffn;
        float *mrow = fx.tr->ffn_coef + (size_t)(fx.tr->n_cap - 1) * N;
        for (int k = 0; k < N; k += 2) mrow[k] = 0.0f;
        int64_t n;
        resid_score *all = score_all(fx.m, fx.tr, RESID_UNIT_FFN_NEURON, &n);
        assert_true(all[0].lpi == all[2].lpi); /* a real tie */
        for (int bottom = 0; bottom < 2; bottom++) {
            int64_t *ord = tu_reference_order(all, n, RESID_KEY_LPI, bottom);
            int64_t r0 = 0;
            for (int64_t i = 0; i < n; i++)
                if (ord[i] == 0) r0 = i;
            const int64_t ks[] = {r0 + 1, r0 + 3, 1, 10};
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                resid_rank_opts o = resid_rank_defaults(RESID_UNIT_FFN_NEURON, ks[ki]);
                o.bottom = bottom;
                rank_checked(fx.m, fx.tr, fx.r, &o, all, ord, n, f->path);
            }
            free(ord);
        }
        free(all);
        close_fixture(&fx);
    }
}

/* ---------------------------------------------------------------------- */

static void assert_same_ranges(const resid_ranges *a, const resid_ranges *b) {
    assert_int_equal(a->arch, b->arch);
    assert_int_equal(a->L, b->L), assert_int_equal(a->D, b->D), assert_int_equal(a->N, b->N);
    assert_int_equal(a->H, b->H), assert_int_equal(a->dh, b->dh), assert_int_equal(a->V, b->V);
    assert_true(a->fingerprint == b->fingerprint);
    const size_t nf = (size_t)a->L * a->N * sizeof(float);
    const size_t na = (size_t)a->L * a->H * a->dh * sizeof(float);
    assert_memory_equal(a->ffn_max, b->ffn_max, nf);
    assert_memory_equal(a->ffn_min, b->ffn_min, nf);
    assert_memory_equal(a->attn_max, b->attn_max, na);
    assert_memory_equal(a->attn_min, b->attn_min, na);
}

/* Loading `bytes` for m must fail with `code` and a message containing
 * `msg`. */
static void expect_load_error(const resid_model *m, const char *name, const void *bytes,
                              size_t size, resid_status code, const char *msg) {
    char *p = tu_write_temp(name, bytes, size);
    resid_ranges *r = (resid_ranges *)1;
    resid_error err;
    const resid_status st = resid_ranges_load(m, p, &r, &err);
    printf("  %-22s -> %d: %s\n", name, st, st ? err.msg : "(loaded)");
    assert_int_equal(st, code);
    assert_null(r);
    assert_non_null(strstr(err.msg, msg));
    remove(p);
    free(p);
}

static void test_file(void **state) {
    (void)state;
    resid_model *m = tu_open_model("quant/tiny-llama-256.q8_0.gguf");
    resid_model *other = tu_open_model("quant/tiny-llama-256.q4_k_m.gguf"); /* same shape */
    resid_model *gpt = tu_open_model("tiny-gpt2-stories");
    resid_ranges *r = build(m);
    resid_error err;
    char *path = tu_write_temp("ranges.bin", NULL, 0);
    assert_int_equal(resid_ranges_save(r, path, &err), RESID_OK);
    size_t size;
    uint8_t *bytes = tu_read_file(path, &size);
    const size_t nfl = (size_t)r->L * (2 * r->N + 2 * r->H * r->dh);
    assert_int_equal(size, 56 + nfl * sizeof(float));
    assert_memory_equal(bytes, "RESIDRNG", 8);

    /* round trip, and saving what was loaded gives the same bytes */
    resid_ranges *back;
    assert_int_equal(resid_ranges_load(m, path, &back, &err), RESID_OK);
    assert_same_ranges(r, back);
    char *path2 = tu_write_temp("ranges2.bin", NULL, 0);
    assert_int_equal(resid_ranges_save(back, path2, &err), RESID_OK);
    size_t size2;
    uint8_t *bytes2 = tu_read_file(path2, &size2);
    assert_int_equal(size, size2);
    assert_memory_equal(bytes, bytes2, size);
    resid_ranges_free(back);
    back = NULL;
    /* building again gives the same bits */
    resid_ranges *again = build(m);
    assert_same_ranges(r, again);
    resid_ranges_free(again);

    /* another model: another shape, then the same shape, other weights */
    assert_int_equal(resid_ranges_load(gpt, path, &back, &err), RESID_E_ARG);
    printf("  another shape          -> %s\n", err.msg);
    assert_non_null(strstr(err.msg, "another model"));
    assert_int_equal(resid_ranges_load(other, path, &back, &err), RESID_E_ARG);
    printf("  same shape, q4_k_m     -> %s\n", err.msg);
    assert_non_null(strstr(err.msg, "different weights"));
    assert_null(back);

    /* broken files */
    uint8_t *b = malloc(size + 1);
    expect_load_error(m, "truncated-header", bytes, 20, RESID_E_FORMAT, "not a resid ranges");
    expect_load_error(m, "empty", bytes, 0, RESID_E_FORMAT, "not a resid ranges");
    expect_load_error(m, "truncated", bytes, size - 5, RESID_E_FORMAT, "truncated");
    expect_load_error(m, "header-only", bytes, 56, RESID_E_FORMAT, "truncated");
    memcpy(b, bytes, size);
    b[0] ^= 0x20;
    expect_load_error(m, "flipped-magic", b, size, RESID_E_FORMAT, "not a resid ranges");
    memcpy(b, bytes, size);
    b[8] = 7;
    expect_load_error(m, "version", b, size, RESID_E_FORMAT, "version 7");
    memcpy(b, bytes, size);
    b[56 + 4 * 3] ^= 0x01;
    expect_load_error(m, "corrupt-float", b, size, RESID_E_FORMAT, "checksum");
    memcpy(b, bytes, size);
    b[size] = 0;
    expect_load_error(m, "trailing-byte", b, size + 1, RESID_E_FORMAT, "trailing");
    memcpy(b, bytes, size);
    b[20] ^= 0x01; /* d_model */
    expect_load_error(m, "shape", b, size, RESID_E_ARG, "another model");
    assert_int_equal(resid_ranges_load(m, "/nonexistent/ranges.bin", &back, &err), RESID_E_IO);

    /* an explainer refuses the ranges of another shape */
    resid_trace *tr = tu_trace(gpt, fixtures[2].ids, fixtures[2].n, RESID_CAP_ALL,
                               RESID_POS_AUTO);
    resid_explain_opts eo = resid_explain_defaults();
    eo.ranges = r;
    resid_explainer *e;
    assert_int_equal(resid_explainer_new(gpt, tr, &eo, &e, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "another model"));
    resid_trace_free(tr);

    free(b), free(bytes), free(bytes2);
    remove(path), remove(path2);
    free(path), free(path2);
    resid_ranges_free(back);
    resid_ranges_free(r);
    resid_model_free(m), resid_model_free(other), resid_model_free(gpt);
}

/* ---------------------------------------------------------------------- */

static void test_cli(void **state) {
    (void)state;
    char *model = tu_model_path("tiny-gpt2-stories");
    char *other = tu_model_path("tinyllamas/stories260K.bin");
    char *file = tu_write_temp("cli.ranges", NULL, 0);
    char *qm = tu_sh_quote(model), *qo = tu_sh_quote(other), *qf = tu_sh_quote(file);
    char cmd[4096];
    int status;
    snprintf(cmd, sizeof cmd, "%s ranges %s -o %s", tu_cli(), qm, qf);
    char *out = tu_run(cmd, &status);
    printf("  %s", out);
    assert_int_equal(status, 0);
    assert_non_null(strstr(out, "bytes, built in"));
    free(out);
    const char *ex = "explain %s --ids 7454,2402,257,640,11,612,373,257,1310 --bottom 5 "
                     "--json -%s%s";
    snprintf(cmd, sizeof cmd, ex, qm, "", "");
    char full[4200];
    snprintf(full, sizeof full, "%s %s", tu_cli(), cmd);
    cJSON *a = tu_run_json(full);
    snprintf(cmd, sizeof cmd, ex, qm, " --ranges ", qf);
    snprintf(full, sizeof full, "%s %s", tu_cli(), cmd);
    cJSON *b = tu_run_json(full);
    const char *lists[] = {"ffn_neurons", "attn_neurons", "ffn_neurons_bottom",
                           "attn_neurons_bottom", "head_positions_bottom", "layers"};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        assert_true(cJSON_Compare(cJSON_GetObjectItem(a, lists[i]),
                                  cJSON_GetObjectItem(b, lists[i]), true));
    const char *rk[] = {"ffn_neurons_bottom", "attn_neurons_bottom"};
    for (int i = 0; i < 2; i++) {
        const double na = tu_json_num(tu_json_get(tu_json_get(a, "ranking"), rk[i]),
                                      "units_scored_exactly");
        const double nb = tu_json_num(tu_json_get(tu_json_get(b, "ranking"), rk[i]),
                                      "units_scored_exactly");
        printf("  explain --bottom 5: %s units_scored_exactly %g without, %g with --ranges\n",
               rk[i], na, nb);
        assert_true(nb < na);
    }
    cJSON_Delete(a), cJSON_Delete(b);
    /* another model's file */
    snprintf(full, sizeof full, "%s explain %s --ids 1,403 --ranges %s 2>&1", tu_cli(), qo, qf);
    out = tu_run(full, &status);
    printf("  another model: exit %d: %s", status, out);
    assert_int_equal(status, 1);
    assert_non_null(strstr(out, "another model"));
    free(out);
    remove(file);
    free(model), free(other), free(file), free(qm), free(qo), free(qf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file),   cmocka_unit_test(test_values), cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_ties),   cmocka_unit_test(test_rank),   cmocka_unit_test(test_cli),
    };
    if (getenv("RESID_TEST_FILTER")) cmocka_set_test_filter(getenv("RESID_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
