/*
 * test_explain_compare.c - the scoring-method comparison in the explain
 * report: `resid explain --compare-scores` ("score_compare", docs/
 * explain-json.md) against `resid ablate --compare-scores --json` for the
 * same prompt (every number identical: the same function on the same
 * inputs, printed by the same cJSON, so the tolerance is 0), against
 * resid_compare_scores called directly (k and seed passed through the
 * library request; tolerance 1e-13 relative, the JSON's digits), the
 * text table against the JSON, and the errors: no score_compare without the
 * option, a k too large fails the report.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define STORIES "tinyllamas/stories260K.bin"
#define GPT2S   "tiny-gpt2-stories"
#define P_RED   "Once upon a time, there was a boy named Tim. Tim had a big red"
#define P_TIM   "Once upon a time, there was a little boy named Tim. Tim had a big red ball. One day,"

static const char *const methods[8] = {"lpi",  "logp-alone", "prob-inc",  "norm",
                                       "coef", "rank",       "coef-norm", "coef-rank"};
static const char *const stat_fields[8] = {"prob",       "logprob",       "rank",       "rr",
                                           "model_prob", "model_logprob", "model_rank", "model_rr"};

/* `resid CMD MODEL -p PROMPT ARGS` (stderr dropped); its stdout. */
static char *run_cli(const char *cmd, const char *model, const char *prompt, const char *args,
                     int *status) {
    char *line = tu_cli_line(cmd, model, prompt, args, false);
    char *out = tu_run(line, status);
    free(line);
    return out;
}

static cJSON *run_json(const char *cmd, const char *model, const char *prompt, const char *args) {
    char *line = tu_cli_line(cmd, model, prompt, args, false);
    cJSON *j = tu_run_json(line);
    free(line);
    return j;
}

/* Every statistic of row a equals row b exactly; returns the largest
 * difference seen (0). */
static double same_stats(const char *what, const cJSON *a, const cJSON *b) {
    double md = 0;
    for (int i = 0; i < 8; i++) {
        double x = tu_json_num(a, stat_fields[i]), y = tu_json_num(b, stat_fields[i]);
        double d = fabs(x - y);
        if (!(x == y)) fail_msg("%s.%s: %.17g vs %.17g", what, stat_fields[i], x, y);
        if (d > md) md = d;
    }
    return md;
}

static void same_units(const char *what, const cJSON *a, const cJSON *b, int k) {
    const cJSON *ua = tu_json_get(a, "units"), *ub = tu_json_get(b, "units");
    assert_int_equal(cJSON_GetArraySize(ua), k);
    assert_int_equal(cJSON_GetArraySize(ub), k);
    for (int i = 0; i < k; i++) {
        const char *x = cJSON_GetArrayItem(ua, i)->valuestring;
        const char *y = cJSON_GetArrayItem(ub, i)->valuestring;
        if (!x || !y || strcmp(x, y)) fail_msg("%s.units[%d]: %s vs %s", what, i, x, y);
        if (strncmp(x, "n:", 2)) fail_msg("%s.units[%d] = %s: not an n:L_K id", what, i, x);
    }
}

/* explain --compare-scores EXTRA vs ablate --compare-scores --json ABL. */
static void check_vs_ablate(const char *model, const char *prompt, const char *extra,
                            const char *abl) {
    char a1[256], a2[256];
    snprintf(a1, sizeof a1, "--json - --compare-scores --tokens 0 %s", extra);
    snprintf(a2, sizeof a2, "--compare-scores --json %s", abl);
    cJSON *ex = run_json("explain", model, prompt, a1);
    cJSON *ab = run_json("ablate", model, prompt, a2);
    const cJSON *sc = tu_json_get(ex, "score_compare");
    const cJSON *p0 = cJSON_GetArrayItem(tu_json_get(ab, "prompts"), 0);
    const cJSON *rows = tu_json_get(p0, "rows");
    const int k = (int)tu_json_num(ab, "k");
    assert_int_equal(cJSON_GetArraySize(rows), 10);
    assert_int_equal((int)tu_json_num(sc, "k"), k);
    assert_int_equal((int)tu_json_num(sc, "seed"), (int)tu_json_num(ab, "seed"));
    assert_int_equal((int)tu_json_num(sc, "target"),
                     (int)tu_json_num(tu_json_get(p0, "target"), "id"));
    assert_int_equal((int)tu_json_num(sc, "target"),
                     (int)tu_json_num(tu_json_get(ex, "target"), "id"));
    assert_string_equal(tu_json_get(sc, "lens")->valuestring, "paper");
    double md = same_stats("original", tu_json_get(sc, "original"), cJSON_GetArrayItem(rows, 0));
    assert_string_equal(tu_json_get(tu_json_get(sc, "original"), "name")->valuestring, "original");
    const cJSON *ms = tu_json_get(sc, "methods");
    assert_int_equal(cJSON_GetArraySize(ms), 8);
    for (int f = 0; f < 8; f++) {
        const cJSON *m = cJSON_GetArrayItem(ms, f), *r = cJSON_GetArrayItem(rows, f + 1);
        assert_string_equal(tu_json_get(m, "name")->valuestring, methods[f]);
        assert_string_equal(tu_json_get(r, "method")->valuestring, methods[f]);
        const char l[2] = {(char)('a' + f), 0};
        assert_string_equal(tu_json_get(m, "letter")->valuestring, l);
        md = fmax(md, same_stats(methods[f], m, r));
        same_units(methods[f], m, r, k);
    }
    const cJSON *rnd = tu_json_get(sc, "random");
    assert_string_equal(tu_json_get(rnd, "name")->valuestring, "random");
    md = fmax(md, same_stats("random", rnd, cJSON_GetArrayItem(rows, 9)));
    same_units("random", rnd, cJSON_GetArrayItem(rows, 9), k);
    /* The original row is the report's own target. */
    const double pd = fabs(tu_json_num(tu_json_get(sc, "original"), "model_prob") -
                           tu_json_num(tu_json_get(ex, "target"), "model_prob"));
    print_message("  %s %s | %s: 10 rows x 8 stats + units vs ablate, maxdiff %.3g (tol 0); "
                  "original model_prob vs report, maxdiff %.3g (tol 1e-6)\n",
                  model, extra, abl, md, pd);
    assert_true(pd <= 1e-6);
    cJSON_Delete(ex);
    cJSON_Delete(ab);
}

static void test_vs_ablate_stories(void **state) {
    (void)state;
    check_vs_ablate(STORIES, P_RED, "", "");
    /* the report's lens does not change the comparison (paper lens) */
    check_vs_ablate(STORIES, P_RED, "--lens exact --vs ' a'", "");
    /* an explicit target is passed on */
    check_vs_ablate(STORIES, P_RED, "--target ' a'", "--target ' a'");
}

static void test_vs_ablate_gpt2(void **state) {
    (void)state;
    check_vs_ablate(GPT2S, P_TIM, "", "");
}

/* No option: no score_compare. */
static void test_absent(void **state) {
    (void)state;
    cJSON *ex = run_json("explain", STORIES, P_RED, "--json - --tokens 0");
    assert_null(cJSON_GetObjectItemCaseSensitive(ex, "score_compare"));
    cJSON_Delete(ex);
}

/* The library request: k and seed reach resid_compare_scores (called here
 * directly as the reference); a k too large is an error, not a crash. */
static void test_library_request(void **state) {
    (void)state;
    resid_model *m = tu_open_model(STORIES);
    int32_t *ids;
    const int32_t n = tu_tokenize(m, P_RED, &ids);
    resid_error err;
    resid_explain_request rq = resid_explain_request_defaults();
    assert_false(rq.compare_scores);
    assert_int_equal(rq.compare_k, 10);
    assert_int_equal((int)rq.compare_seed, 1);
    rq.tokens = ids;
    rq.n_tokens = n;
    rq.n_unit_tokens = 0;
    rq.compare_scores = true;
    rq.compare_k = 5;
    rq.compare_seed = 7;
    char *json;
    assert_int_equal(resid_explain_json(m, &rq, &json, &err), RESID_OK);
    cJSON *root = cJSON_Parse(json);
    free(json);
    const cJSON *sc = tu_json_get(root, "score_compare");
    resid_score_compare *ref;
    const int32_t target = (int32_t)tu_json_num(tu_json_get(root, "target"), "id");
    assert_int_equal(resid_compare_scores(m, ids, n, target, 5, 7, &ref, &err), RESID_OK);
    assert_int_equal((int)tu_json_num(sc, "k"), 5);
    assert_int_equal((int)tu_json_num(sc, "seed"), 7);
    double md = 0;
    const resid_target_stats *want[10];
    const cJSON *got[10];
    want[0] = &ref->original, got[0] = tu_json_get(sc, "original");
    for (int f = 0; f < 8; f++)
        want[1 + f] = &ref->method[f],
                 got[1 + f] = cJSON_GetArrayItem(tu_json_get(sc, "methods"), f);
    want[9] = &ref->random, got[9] = tu_json_get(sc, "random");
    for (int i = 0; i < 10; i++) {
        const double v[8] = {want[i]->prob,
                             want[i]->logprob,
                             want[i]->rank + 1.0,
                             want[i]->rr,
                             want[i]->model_prob,
                             want[i]->model_logprob,
                             want[i]->model_rank + 1.0,
                             want[i]->model_rr};
        for (int j = 0; j < 8; j++) {
            /* cJSON prints 15 significant digits when they read back
             * within DBL_EPSILON, so the JSON keeps ~1e-15 relative */
            const double d = fabs(tu_json_num(got[i], stat_fields[j]) - v[j]);
            if (!(d <= 1e-13 * fmax(1.0, fabs(v[j]))))
                fail_msg("row %d %s: %.17g vs %.17g", i, stat_fields[j],
                         tu_json_num(got[i], stat_fields[j]), v[j]);
            md = fmax(md, d);
        }
        if (i == 0) continue;
        const cJSON *u = tu_json_get(got[i], "units");
        assert_int_equal(cJSON_GetArraySize(u), 5);
        for (int j = 0; j < 5; j++) {
            const resid_unit *w = &ref->units[(size_t)(i - 1) * 5 + j];
            char id[64];
            snprintf(id, sizeof id, "n:%d_%d", w->layer, w->index);
            assert_string_equal(cJSON_GetArrayItem(u, j)->valuestring, id);
        }
    }
    print_message("  library request k=5 seed=7 vs resid_compare_scores: maxdiff %.3g (tol 1e-13 "
                  "relative: JSON digits)\n",
                  md);
    resid_score_compare_free(ref);
    cJSON_Delete(root);

    /* k = L·N is refused (RESID_E_ARG, with a message), no report. */
    const resid_model_info *in = resid_model_get_info(m);
    rq.compare_k = in->n_layer * in->d_ffn;
    json = NULL;
    assert_int_equal(resid_explain_json(m, &rq, &json, &err), RESID_E_ARG);
    assert_null(json);
    assert_non_null(strstr(err.msg, "k ="));
    free(ids);
    resid_model_free(m);
}

/* The text report's table: 10 rows, the JSON's numbers at 4 decimals. */
static void test_text_table(void **state) {
    (void)state;
    cJSON *ex = run_json("explain", STORIES, P_RED, "--json - --compare-scores --tokens 0");
    int st;
    char *txt = run_cli("explain", STORIES, P_RED, "--compare-scores --tokens 0", &st);
    assert_int_equal(st, 0);
    const char *t = strstr(txt, "Scoring methods compared");
    assert_non_null(t);
    const cJSON *sc = tu_json_get(ex, "score_compare");
    const cJSON *rows[10];
    rows[0] = tu_json_get(sc, "original");
    for (int f = 0; f < 8; f++)
        rows[1 + f] = cJSON_GetArrayItem(tu_json_get(sc, "methods"), f);
    rows[9] = tu_json_get(sc, "random");
    for (int i = 0; i < 10; i++) {
        char want[128];
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(rows[i], "letter");
        snprintf(want, sizeof want, "%-3s %-12s %9.4f %9.4f %7d %10.4f ", l ? l->valuestring : "",
                 tu_json_get(rows[i], "name")->valuestring, tu_json_num(rows[i], "prob"),
                 tu_json_num(rows[i], "rr"), (int)tu_json_num(rows[i], "rank"),
                 tu_json_num(rows[i], "model_prob"));
        if (!strstr(t, want)) fail_msg("text table lacks row \"%s\"", want);
    }
    print_message("  text table: 10 rows equal to the JSON at 4 decimals\n");
    free(txt);
    /* without the option, no table */
    txt = run_cli("explain", STORIES, P_RED, "--tokens 0", &st);
    assert_int_equal(st, 0);
    assert_null(strstr(txt, "Scoring methods compared"));
    free(txt);
    cJSON_Delete(ex);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_ablate_stories),
        cmocka_unit_test(test_vs_ablate_gpt2),
        cmocka_unit_test(test_absent),
        cmocka_unit_test(test_library_request),
        cmocka_unit_test(test_text_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
