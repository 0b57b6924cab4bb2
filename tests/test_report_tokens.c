/*
 * test_report_tokens.c - the token lists of the explain report.
 *
 * The report takes each ranked unit's top and bottom tokens from the
 * projection its exact score already computed (src/analysis/tokcache.c).
 * Here every list of every unit in the report is recomputed independently
 * through the public API, from a fresh trace and explainer that never
 * cached anything:
 *   - FFN and attention neurons: the raw parameter row (resid_param_vector,
 *     fc2 / W_O) projected at lens scale 1 (resid_project_vector);
 *   - heads (head_tokens on) and head × positions: the unit's lens vector
 *     (resid_unit_lens_vector) projected by resid_project_many_topk.
 * Values agree to 1e-5 relative to the list's largest |value| (two float32
 * projections of the same vector, computed in different orders), and ids
 * agree wherever the neighbouring values are further apart than that.
 * Run on a Llama (stories260K), a GPT-2 (tiny-gpt2-stories) and a quantised
 * GGUF, in the paper and the exact lens, with a contrast token on one.
 * Also: the progress callback sees every stage in order; and the cache's
 * one-pass selection equals resid_top_bottom exactly
 * (ids, order, values) on random vectors full of ties, for small and large
 * V and k.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "output/report.h"
#include "testutil.h"

#define STORIES "tinyllamas/stories260K.bin"
#define GPT2S   "tiny-gpt2-stories"
#define P_RED   "Once upon a time, there was a boy named Tim. Tim had a big red"
#define KT      6

/* One JSON list (array of {id, bs}) against ref[k]. */
static int check_list(const char *what, const cJSON *arr, const resid_token_value *ref, int k) {
    if (cJSON_GetArraySize(arr) != k)
        fail_msg("%s: %d tokens, want %d", what, cJSON_GetArraySize(arr), k);
    double scale = 0;
    for (int i = 0; i < k; i++)
        if (fabs(ref[i].value) > scale) scale = fabs(ref[i].value);
    const double tol = 1e-5 * scale + 1e-12;
    int checked = 0;
    for (int i = 0; i < k; i++) {
        const cJSON *t = cJSON_GetArrayItem(arr, i);
        const double v = tu_json_num(t, "bs");
        if (!(fabs(v - ref[i].value) <= tol))
            fail_msg("%s[%d]: bs %.9g, independent %.9g (tol %.3g)", what, i, v, ref[i].value,
                     tol);
        const bool tie = (i > 0 && fabs(ref[i].value - ref[i - 1].value) <= 2 * tol) ||
                         (i + 1 < k && fabs(ref[i].value - ref[i + 1].value) <= 2 * tol);
        if (!tie) {
            if ((int)tu_json_num(t, "id") != ref[i].id)
                fail_msg("%s[%d]: id %d, independent %d", what, i, (int)tu_json_num(t, "id"),
                         ref[i].id);
            checked++;
        }
    }
    return checked;
}

static resid_unit unit_of(const char *list, const cJSON *u) {
    resid_unit r = {RESID_UNIT_HEAD, (int32_t)tu_json_num(u, "layer"), -1, -1, -1};
    if (!strcmp(list, "heads")) {
        r.head = (int32_t)tu_json_num(u, "head");
    } else if (!strcmp(list, "head_positions")) {
        r.kind = RESID_UNIT_HEAD_POS;
        r.head = (int32_t)tu_json_num(u, "head");
        r.pos = (int32_t)tu_json_num(u, "pos");
    } else if (!strcmp(list, "ffn_neurons")) {
        r.kind = RESID_UNIT_FFN_NEURON;
        r.index = (int32_t)tu_json_num(u, "neuron");
    } else {
        r.kind = RESID_UNIT_ATTN_NEURON;
        r.head = (int32_t)tu_json_num(u, "head");
        r.index = (int32_t)tu_json_num(u, "dim");
        r.pos = (int32_t)tu_json_num(u, "pos");
    }
    return r;
}

/* The default explain request for P_RED, tokenized by m into *ids (which
 * the caller frees). */
static resid_explain_request red_request(const resid_model *m, int32_t **ids) {
    resid_explain_request rq = resid_explain_request_defaults();
    rq.n_tokens = tu_tokenize(m, P_RED, ids);
    rq.tokens = *ids;
    return rq;
}

static void check_model(const char *rel, resid_lens lens, const char *vs) {
    resid_model *m = tu_open_model(rel);
    const resid_model_info *info = resid_model_get_info(m);
    const int D = info->d_model, dh = info->d_head;
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    int32_t *ids;
    resid_explain_request rq = red_request(m, &ids);
    const int32_t n = rq.n_tokens;
    resid_error err;
    rq.top_k = 40;
    rq.n_unit_tokens = KT;
    rq.head_tokens = true;
    rq.lens = lens;
    if (vs) {
        int32_t *cid, cn;
        resid_encode_opts ce = resid_encode_defaults(tok);
        ce.add_bos = false;
        assert_int_equal(resid_tokenize(tok, vs, -1, &ce, &cid, &cn, &err), RESID_OK);
        assert_int_equal(cn, 1);
        rq.contrast = cid[0];
        free(cid);
    }
    char *json;
    if (resid_explain_json(m, &rq, &json, &err) != RESID_OK) fail_msg("%s: %s", rel, err.msg);
    cJSON *root = cJSON_Parse(json);
    free(json);
    assert_non_null(root);

    /* a fresh trace and explainer of the same prompt, target and lens */
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_EXPLAIN_CAPTURE;
    resid_trace *tr;
    assert_int_equal(resid_forward(m, ids, n, &to, &tr, &err), RESID_OK);
    resid_explain_opts xo = resid_explain_defaults();
    xo.lens = lens;
    xo.target = (int32_t)tu_json_num(tu_json_get(root, "target"), "id");
    xo.contrast = rq.contrast;
    resid_explainer *ex;
    assert_int_equal(resid_explainer_new(m, tr, &xo, &ex, &err), RESID_OK);

    static const char *const lists[] = {"heads", "head_positions", "ffn_neurons",
                                        "attn_neurons"};
    float *v = malloc((size_t)D * sizeof *v);
    resid_token_value top[KT], bot[KT];
    int units = 0, ids_checked = 0, want_units = 0;
    for (int li = 0; li < 4; li++) {
        const int size = cJSON_GetArraySize(tu_json_get(root, lists[li]));
        want_units += li == 0 && size > 40 ? 40 : size; /* heads: the top 40 by score */
        const cJSON *u;
        cJSON_ArrayForEach(u, tu_json_get(root, lists[li])) {
            if (!cJSON_GetObjectItemCaseSensitive(u, "top_tokens")) continue;
            resid_unit un = unit_of(lists[li], u);
            int32_t k = 0;
            if (un.kind == RESID_UNIT_FFN_NEURON || un.kind == RESID_UNIT_ATTN_NEURON) {
                const resid_param p = un.kind == RESID_UNIT_FFN_NEURON ? RESID_PARAM_FC2
                                                                       : RESID_PARAM_WO;
                const int64_t row = un.kind == RESID_UNIT_FFN_NEURON
                                        ? un.index
                                        : (int64_t)un.head * dh + un.index;
                assert_int_equal(resid_param_vector(m, p, un.layer, row, v, &err), RESID_OK);
                assert_int_equal(resid_project_vector(m, v, 1.0, KT, top, bot, &k, &err),
                                 RESID_OK);
            } else {
                assert_int_equal(resid_unit_lens_vector(ex, &un, v, &err), RESID_OK);
                assert_int_equal(resid_project_many_topk(m, v, 1, KT, top, bot, &k, &err),
                                 RESID_OK);
            }
            assert_int_equal(k, KT);
            char what[96];
            snprintf(what, sizeof what, "%s %s %s.top", rel, lists[li],
                     cJSON_GetStringValue(tu_json_get(u, "id")));
            ids_checked += check_list(what, tu_json_get(u, "top_tokens"), top, KT);
            snprintf(what, sizeof what, "%s %s %s.bottom", rel, lists[li],
                     cJSON_GetStringValue(tu_json_get(u, "id")));
            ids_checked += check_list(what, tu_json_get(u, "bottom_tokens"), bot, KT);
            units++;
        }
    }
    /* every unit listed had its tokens */
    assert_int_equal(units, want_units);
    assert_true(units >= 40);
    assert_true(ids_checked > units * KT); /* not all ties */
    printf("# %s (%s%s%s): %d units, %d token ids compared\n", rel, resid_lens_name(lens),
           vs ? ", vs " : "", vs ? vs : "", units, ids_checked);
    free(v);
    resid_explainer_free(ex);
    resid_trace_free(tr);
    cJSON_Delete(root);
    free(ids);
    resid_model_free(m);
}

/* rs_tokcache_extremes vs resid_top_bottom, bit for bit. */
static void test_selection(void **state) {
    (void)state;
    uint64_t seed = 12345;
    const int32_t Vs[] = {1, 2, 3, 7, 10, 64, 1000, 50257};
    const int32_t ks[] = {1, 2, 5, 10, 40};
    int cases = 0;
    for (size_t vi = 0; vi < sizeof Vs / sizeof Vs[0]; vi++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
            for (int levels = 3; levels <= 3000; levels *= 10) { /* few levels: many ties */
                const int32_t V = Vs[vi], k = ks[ki] < V ? ks[ki] : V;
                float *x = malloc((size_t)V * sizeof *x);
                for (int32_t t = 0; t < V; t++) {
                    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                    x[t] = (float)((int)((seed >> 33) % (uint64_t)levels) - levels / 2) * 0.25f;
                }
                resid_explainer e;
                memset(&e, 0, sizeof e);
                e.V = V;
                resid_error err;
                assert_int_equal(rs_tokcache_enable(&e, k, &err), RESID_OK);
                resid_token_value a[40], b[40], ra[40], rb[40];
                rs_tokcache_extremes(&e, x, 1.0, a, b);
                assert_int_equal(resid_top_bottom(x, V, k, ra, rb), k);
                for (int32_t i = 0; i < k; i++) {
                    if (a[i].id != ra[i].id || a[i].value != ra[i].value || b[i].id != rb[i].id ||
                        b[i].value != rb[i].value)
                        fail_msg("V=%d k=%d levels=%d #%d: top %d/%g vs %d/%g, bottom %d/%g vs "
                                 "%d/%g",
                                 V, k, levels, i, a[i].id, a[i].value, ra[i].id, ra[i].value,
                                 b[i].id, b[i].value, rb[i].id, rb[i].value);
                }
                rs_tokcache_free(e.tok);
                free(x);
                cases++;
            }
    printf("# %d selections equal to resid_top_bottom\n", cases);
}

/* The progress callback: every stage, in order, numbered 1..n. */
typedef struct progress_log {
    char names[16][40];
    int steps[16], n_steps[16], n;
} progress_log;

static void on_progress(void *user, const char *stage, int step, int n_steps) {
    progress_log *p = user;
    assert_true(p->n < 16);
    snprintf(p->names[p->n], sizeof p->names[0], "%s", stage);
    p->steps[p->n] = step, p->n_steps[p->n] = n_steps;
    p->n++;
}

static void test_progress(void **state) {
    (void)state;
    resid_model *m = tu_open_model(STORIES);
    const int32_t ids[] = {1, 403, 407, 261, 378, 432, 383};
    for (int cmp = 0; cmp < 2; cmp++) {
        progress_log log = {.n = 0};
        resid_explain_request rq = resid_explain_request_defaults();
        assert_null(rq.progress);
        rq.tokens = ids;
        rq.n_tokens = 7;
        rq.compare_scores = cmp;
        rq.bottom_k = cmp ? 3 : 0; /* the bottom lists: no stage of their own */
        rq.progress = on_progress;
        rq.progress_user = &log;
        char *json;
        resid_error err;
        assert_int_equal(resid_explain_json(m, &rq, &json, &err), RESID_OK);
        free(json);
        const int n = cmp ? 8 : 7;
        assert_int_equal(log.n, n);
        for (int i = 0, w = 0; i < n; i++, w++) {
            if (!cmp && w == 6) w++; /* no comparison stage */
            assert_string_equal(log.names[i], tu_explain_stages[w]);
            assert_int_equal(log.steps[i], i + 1);
            assert_int_equal(log.n_steps[i], n);
        }
    }
    resid_model_free(m);
}

/* The report of a session that captures every position (what --html and
 * resid serve use) is the plain report, byte for byte: the model's
 * logits at t* come from the same computation either way. */
static void test_session_same_report(void **state) {
    (void)state;
    const char *models[] = {STORIES, GPT2S};
    for (int mi = 0; mi < 2; mi++) {
        resid_model *m = tu_open_model(models[mi]);
        int32_t *ids;
        const resid_explain_request rq = red_request(m, &ids);
        resid_error err;
        char *plain;
        assert_int_equal(resid_explain_json(m, &rq, &plain, &err), RESID_OK);
        rs_explain_session *sess;
        cJSON *root;
        assert_int_equal(rs_explain_session_new(m, &rq, true, &sess, &err), RESID_OK);
        assert_int_equal(rs_explain_session_json(sess, &root, &err), RESID_OK);
        char *viaweb = cJSON_PrintUnformatted(root);
        assert_non_null(viaweb);
        assert_string_equal(plain, viaweb);
        printf("# %s: session report == plain report (%zu bytes)\n", models[mi], strlen(plain));
        free(plain), free(viaweb);
        cJSON_Delete(root);
        rs_explain_session_free(sess);
        free(ids);
        resid_model_free(m);
    }
}

static void test_stories(void **state) {
    (void)state;
    check_model(STORIES, RESID_LENS_PAPER, NULL);
    check_model(STORIES, RESID_LENS_PAPER, "he"); /* SPM: "▁he", one token */
}

static void test_gpt2(void **state) {
    (void)state;
    check_model(GPT2S, RESID_LENS_PAPER, NULL);
    check_model(GPT2S, RESID_LENS_EXACT, " green");
}

static void test_quantised(void **state) {
    (void)state;
    check_model("quant/tiny-llama-256.q4_k_m.gguf", RESID_LENS_PAPER, NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_session_same_report),
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_gpt2),
        cmocka_unit_test(test_quantised),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
