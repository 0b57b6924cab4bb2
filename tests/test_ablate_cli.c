/*
 * test_ablate_cli.c - `resid ablate` run as a program ($RESID_CLI): its JSON
 * must show exactly what the library computes (resid_intervention_run,
 * resid_compare_scores, resid_additivity_new on the same prompt), the unit
 * id syntax (n:/h:/wo: prefixes, --kind), and every usage error (exit 2) and
 * library error (exit 1).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const char *const PROMPT = "Once upon a time, there was a little girl named";

/* Runs `resid ablate MODEL -p PROMPT ARGS`; stdout (+stderr when merge). */
static char *run_ablate(const char *model_rel, const char *args, bool merge, int *status) {
    char *line = tu_cli_line("ablate", model_rel, PROMPT, args, merge);
    char *out = tu_run(line, status);
    free(line);
    return out;
}

static cJSON *run_json(const char *model_rel, const char *args) {
    char *line = tu_cli_line("ablate", model_rel, PROMPT, args, false);
    cJSON *j = tu_run_json(line);
    free(line);
    return j;
}

static const cJSON *obj(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_non_null(v);
    return v;
}

/* The CLI's stats object vs the library's (rank printed 1-based). */
static void check_stats(const char *what, const cJSON *j, const resid_target_stats *s) {
    double d = fmax(fabs(tu_json_num(j, "prob") - s->prob),
                    fabs(tu_json_num(j, "model_prob") - s->model_prob));
    d = fmax(d, fabs(tu_json_num(j, "logprob") - s->logprob));
    d = fmax(d, fabs(tu_json_num(j, "model_logprob") - s->model_logprob));
    if (d > 1e-12 || (int)tu_json_num(j, "rank") != s->rank + 1 ||
        (int)tu_json_num(j, "model_rank") != s->model_rank + 1 ||
        fabs(tu_json_num(j, "rr") - s->rr) > 1e-15) {
        print_error("%s: CLI vs library differ (maxdiff %g, rank %d vs %d)\n", what, d,
                    (int)tu_json_num(j, "rank"), s->rank + 1);
        fail();
    }
    printf("  %-36s CLI vs library maxdiff %.3g (tol 1e-12)\n", what, d);
}

static void test_zero_and_random(void **state) {
    (void)state;
    const char *models[] = {"tinyllamas/stories260K.bin", "tiny-gpt2-stories"};
    for (int mi = 0; mi < 2; mi++) {
        resid_model *m = tu_open_model(models[mi]);
        int32_t *ids, n = tu_tokenize(m, PROMPT, &ids);
        cJSON *j = run_json(models[mi], "--units n:1_5,h:0_1,f0,1_2_3,1_1_0_2,wo:1_0_1,a1_0 "
                                        "--random 4 --seed 9 --json");
        /* the units, as given back */
        const char *want_ids[] = {"n:1_5", "h:0_1", "f0", "1_2_3", "1_1_0_2", "wo:1_0_1", "a1_0"};
        const cJSON *units = obj(j, "units");
        assert_int_equal(cJSON_GetArraySize(units), 7);
        for (int i = 0; i < 7; i++)
            assert_string_equal(cJSON_GetArrayItem(units, i)->valuestring, want_ids[i]);
        resid_unit u[7] = {
            {RESID_UNIT_FFN_NEURON, 1, -1, 5, -1}, {RESID_UNIT_HEAD, 0, 1, -1, -1},
            {RESID_UNIT_FFN_LAYER, 0, -1, -1, -1}, {RESID_UNIT_HEAD_POS, 1, 2, -1, 3},
            {RESID_UNIT_ATTN_NEURON, 1, 1, 0, 2},  {RESID_UNIT_ATTN_NEURON, 1, 0, 1, -1},
            {RESID_UNIT_POS, 1, -1, -1, 0}};
        resid_error err;
        resid_target_stats before, after, rafter;
        int32_t target;
        assert_int_equal(
            resid_intervention_run(m, NULL, ids, n, -1, &before, &target, NULL, NULL, &err),
            RESID_OK);
        assert_int_equal((int)tu_json_num(obj(j, "target"), "id"), target);
        resid_intervention *iv;
        assert_int_equal(resid_intervention_new(m, &iv, &err), RESID_OK);
        for (int i = 0; i < 7; i++)
            assert_int_equal(resid_intervention_zero(iv, &u[i], NULL, 0, &err), RESID_OK);
        assert_int_equal(
            resid_intervention_run(m, iv, ids, n, target, &after, NULL, NULL, NULL, &err),
            RESID_OK);
        resid_intervention_free(iv);
        printf("%s\n", models[mi]);
        check_stats("before", obj(j, "before"), &before);
        check_stats("after (7 units zeroed)", obj(j, "after"), &after);
        /* random baseline: same units as the library draws */
        resid_unit ru[4];
        assert_int_equal(resid_random_units(m, n, u, 7, 4, 9, ru, &err), RESID_OK);
        assert_int_equal(resid_intervention_new(m, &iv, &err), RESID_OK);
        for (int i = 0; i < 4; i++)
            assert_int_equal(resid_intervention_zero(iv, &ru[i], NULL, 0, &err), RESID_OK);
        assert_int_equal(
            resid_intervention_run(m, iv, ids, n, target, &rafter, NULL, NULL, NULL, &err),
            RESID_OK);
        resid_intervention_free(iv);
        const cJSON *rj = obj(j, "random");
        assert_int_equal(cJSON_GetArraySize(obj(rj, "units")), 4);
        check_stats("random after", obj(rj, "after"), &rafter);
        cJSON_Delete(j);

        /* --kind makes a bare L_X an FFN neuron; same result as n: */
        cJSON *a = run_json(models[mi], "--units 1_5 --kind neuron --json");
        cJSON *b = run_json(models[mi], "--units n:1_5 --json");
        assert_true(tu_json_num(obj(a, "after"), "prob") == tu_json_num(obj(b, "after"), "prob"));
        cJSON_Delete(a), cJSON_Delete(b);
        /* replace with the prompt itself is a no-op */
        char args[512];
        char *pq = tu_sh_quote(PROMPT);
        snprintf(args, sizeof args, "--units a1,f0,n:0_3 --mode replace --clean %s --json", pq);
        free(pq);
        cJSON *rp = run_json(models[mi], args);
        assert_true(tu_json_num(obj(rp, "after"), "model_prob") ==
                    tu_json_num(obj(rp, "before"), "model_prob"));
        cJSON_Delete(rp);
        free(ids);
        resid_model_free(m);
    }
}

static void test_compare_and_additivity(void **state) {
    (void)state;
    const char *model = "tinyllamas/stories260K.bin";
    resid_model *m = tu_open_model(model);
    int32_t *ids, n = tu_tokenize(m, PROMPT, &ids);
    resid_error err;
    cJSON *j = run_json(model, "--compare-scores --top 10 --seed 5 --json");
    resid_score_compare *c;
    assert_int_equal(resid_compare_scores(m, ids, n, -1, 10, 5, &c, &err), RESID_OK);
    const cJSON *rows = obj(cJSON_GetArrayItem(obj(j, "prompts"), 0), "rows");
    /* original + 8 scores + random */
    assert_int_equal(cJSON_GetArraySize(rows), RESID_FSCORE_COUNT + 2);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(rows, 0), "method")->valuestring,
                        "original");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetArrayItem(rows, RESID_FSCORE_COUNT + 1), "method")
            ->valuestring,
        "random");
    printf("compare-scores\n");
    check_stats("original", cJSON_GetArrayItem(rows, 0), &c->original);
    for (int f = 0; f < RESID_FSCORE_COUNT; f++) {
        const cJSON *row = cJSON_GetArrayItem(rows, 1 + f);
        assert_string_equal(cJSON_GetObjectItem(row, "method")->valuestring,
                            resid_fscore_name((resid_fscore)f));
        assert_int_equal(cJSON_GetArraySize(obj(row, "units")), 10);
        check_stats(resid_fscore_name((resid_fscore)f), row, &c->method[f]);
    }
    check_stats("random", cJSON_GetArrayItem(rows, RESID_FSCORE_COUNT + 1), &c->random);
    assert_int_equal(cJSON_GetArraySize(obj(j, "mean")), RESID_FSCORE_COUNT + 2);
    resid_score_compare_free(c);
    cJSON_Delete(j);

    j = run_json(model, "--additivity 2 --json");
    resid_trace_opts o = resid_trace_defaults();
    o.capture = RESID_EXPLAIN_CAPTURE;
    resid_trace *tr;
    resid_explainer *ex;
    assert_int_equal(resid_forward(m, ids, n, &o, &tr, &err), RESID_OK);
    assert_int_equal(resid_explainer_new(m, tr, NULL, &ex, &err), RESID_OK);
    resid_additivity *a;
    assert_int_equal(resid_additivity_new(ex, 2, 0, &a, &err), RESID_OK);
    const cJSON *p0 = cJSON_GetArrayItem(obj(j, "prompts"), 0);
    double d = fabs(tu_json_num(p0, "r_lpi") - a->r_lpi) +
               fabs(tu_json_num(p0, "slope_lpi") - a->slope_lpi);
    printf("  additivity layer 2: r_lpi %.4f (CLI vs library diff %.3g)\n", a->r_lpi, d);
    assert_true(d < 1e-12);
    assert_true(fabs(a->r_lpi) <= 1);
    assert_int_equal(cJSON_GetArraySize(obj(p0, "lpi_sum")), a->n);
    resid_additivity_free(a);
    resid_explainer_free(ex);
    resid_trace_free(tr);
    cJSON_Delete(j);
    free(ids);
    resid_model_free(m);
}

static void expect(const char *args, int status, const char *needle) {
    int st;
    char *out = run_ablate("tinyllamas/stories260K.bin", args, true, &st);
    if (st != status || !strstr(out, needle)) {
        print_error("resid ablate %s: exit %d (want %d), output '%s' lacks '%s'\n", args, st,
                    status, out, needle);
        fail();
    }
    free(out);
}

static void test_errors(void **state) {
    (void)state;
    expect("--units 2_1", 2, "ambiguous");
    expect("", 2, "--units is required");
    expect("--units n:9_1", 2, "layer 9 out of range");
    expect("--units n:1_999", 2, "FFN neuron 999 out of range");
    expect("--units h:1_8", 2, "head 8 out of range");
    expect("--units 1_1_0_99", 2, "source position 99 out of range");
    expect("--units x1", 2, "unit");
    expect("--units n:1_1 --mode bogus", 2, "mode 'bogus' unknown");
    expect("--units n:1_1 --mode replace", 2, "--clean");
    expect("--units n:1_1 --mode replace --clean 'Once'", 1, "same length");
    expect("--units n:1_1 --mode mean", 2, "--means");
    expect("--units 1_1_2 --mode mean --mean-prompts /dev/null", 2, "no mean");
    expect("--units n:1_1 --mode mean --means /nonexistent/m.f32", 1, "/nonexistent/m.f32");
    expect("--units n:1_1,h:0_0 --mode mean --means /dev/null", 1, "expected 9");
    expect("--mode add --vector /dev/null", 1, "expected 64");
    expect("--units n:1_1 --mode add --layers 6", 2, "--layers");
    expect("--units n:1_1 --mode add --random 2", 2, "--random");
    expect("--units n:1_1 --positions 99", 2, "--positions");
    expect("--units n:1_1 --target-id 99999", 2, "out of range");
    expect("--compare-scores --additivity 1", 2, "one of");
    expect("--additivity 7", 2, "layer out of range");
    expect("--compare-scores --units n:1_1", 2, "do not go");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_and_random),
        cmocka_unit_test(test_compare_and_additivity),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
