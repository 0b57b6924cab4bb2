/*
 * test_web.c - the HTML report writer and the front end's extra views
 * (src/output/html.c):
 *  - the data block's escaping: no '<' survives, "</script>" in a token
 *    text cannot end the block, and the text parses back to the same JSON;
 *  - the report file: the assets inlined, exactly the expected <script>
 *    elements, no external reference;
 *  - lens grid: 2L+1 rows x T cells; the x_L cell at t* equals the report's
 *    p(target) in its lens (1e-5);
 *  - heads: every attention row sums to 1 (1e-5); a head's score equals the
 *    report's (1e-9); the bs_target of its head x position units sums to the
 *    head's (exact linearity, 1e-4 relative);
 *  - neuron query neurons: recomputed naively (m_k fc2_k . (gamma ⊙ key)/σ
 *    in float64 from the weights) for every lower FFN neuron; the listed
 *    ones are the largest by |contribution| with the same values (1e-4),
 *    and for Llama (no FFN bias) the contributions of a layer sum to the
 *    library's exact pre-activation share of that layer's slot (1e-3
 *    relative).
 *  - the views built from an explain session (what `explain --html` and
 *    `resid serve` use): the report JSON equals rs_explain_cjson's (exactly,
 *    but model_prob: 1e-6 relative); every lens-grid cell against the
 *    library's resid_lens_grid_new (p and p_top1 1e-5, same top-1 and rank),
 *    also with only the last 3 columns; every head x position score of the
 *    detailed heads against resid_score_units (exact, canonical) (LPI,
 *    bs_target 1e-5); a session of the last position only is refused;
 *  - the default page's size (-1): everything on a small model and prompt,
 *    the t* column, the best head and 10 neurons per list beyond
 *    RS_WEB_CHEAP_MACS; explicit sizes kept (the neuron details are those of
 *    the lists' first entries).
 * The reports written (web-report-*.html in the working directory) are
 * kept as artifacts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "model/model.h"
#include "output/html.h"
#include "output/report.h"
#include "output/web_assets.h"

#define STORIES "tinyllamas/stories260K.bin"
#define GPT2S "tiny-gpt2-stories"
#define P_RED "Once upon a time, there was a boy named Tim. Tim had a big red"

/* The CLI's explain JSON (the reference the extras are added to). */
static cJSON *explain_json(const char *model, const char *args) {
    size_t n = strlen(args) + 16;
    char *full = malloc(n);
    snprintf(full, n, "--json - %s", args);
    char *line = tu_cli_line("explain", model, P_RED, full, false);
    cJSON *j = tu_run_json(line);
    free(line), free(full);
    return j;
}

static int count(const char *hay, const char *needle) {
    int c = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        c++;
    return c;
}

static void test_escaping(void **state) {
    (void)state;
    cJSON *j = cJSON_CreateObject();
    const char *evil = "</script><script>alert(1)</script><!-- & --> </SCRIPT";
    cJSON_AddStringToObject(j, "text", evil);
    char *esc = rs_html_json_escaped(j);
    assert_non_null(esc);
    assert_null(strchr(esc, '<'));
    assert_null(strchr(esc, '>'));
    assert_null(strchr(esc, '&'));
    cJSON *back = cJSON_Parse(esc);
    assert_non_null(back);
    assert_string_equal(cJSON_GetObjectItem(back, "text")->valuestring, evil);
    cJSON_Delete(back);
    free(esc);

    /* The file: data block + inline JS = exactly two "</script>". */
    char *path = tu_write_temp("escape.html", "", 0);
    resid_error err;
    assert_int_equal(rs_html_write_file(path, j, &err), RESID_OK);
    size_t size;
    char *html = (char *)tu_read_file(path, &size);
    html = realloc(html, size + 1);
    html[size] = 0;
    assert_int_equal(count(html, "</script>"), 2);
    assert_int_equal(count(html, "<script"), 2);
    assert_int_equal(count(html, "</style>"), 1);
    assert_null(strstr(html, "src=\""));
    assert_null(strstr(html, "href=\""));
    /* The only URL is the SVG namespace name (never fetched). */
    assert_int_equal(count(html, "http://"), count(html, "http://www.w3.org/2000/svg"));
    assert_null(strstr(html, "https://"));
    assert_non_null(strstr(html, "id=\"resid-data\">{\"text\":\"\\u003c/script\\u003e"));
    /* Every asset byte is inlined. */
    const rs_web_asset *js = rs_web_asset_find("app.js");
    assert_non_null(js);
    assert_null(strstr((const char *)js->data, "</script"));
    assert_non_null(strstr(html, "'use strict';"));
    free(html);
    remove(path);
    free(path);
    cJSON_Delete(j);
    assert_int_equal(rs_html_write_file("/nonexistent-dir/x.html", NULL, &err), RESID_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/x.html"));
}

/* Naive contributions of every FFN neuron below `layer` to a key K at
 * position pos, float64. */
static void naive_contrib(const resid_model *m, const resid_trace *tr, const float *K, int32_t layer,
                          int32_t pos, double sigma, double *out) {
    const int32_t D = tr->d_model, N = tr->d_ffn;
    float *v = malloc((size_t)D * sizeof *v);
    resid_error err;
    for (int32_t i = 0; i < layer; i++)
        for (int32_t k = 0; k < N; k++) {
            assert_int_equal(resid_param_vector(m, RESID_PARAM_FC2, i, k, v, &err), RESID_OK);
            double dot = 0;
            for (int32_t d = 0; d < D; d++)
                dot += (double)v[d] * K[d];
            out[(size_t)i * N + k] = tr->ffn_coef[((size_t)i * tr->n_cap + pos) * N + k] * dot / sigma;
        }
    free(v);
}

static void check_report(const char *model, const char *args, const char *out_name) {
    cJSON *rep = explain_json(model, args);
    resid_model *m = tu_open_model(model);
    const resid_model_info *info = resid_model_get_info(m);
    const int32_t L = info->n_layer, H = info->n_head, N = info->d_ffn, D = info->d_model;
    const int32_t T = cJSON_GetArraySize(cJSON_GetObjectItem(rep, "tokens"));
    resid_error err;
    rs_web_opts o = rs_web_defaults();
    if (rs_web_extras_for(m, rep, &o, &err) != RESID_OK) {
        print_error("extras: %s\n", err.msg);
        fail();
    }
    const bool contrast = cJSON_GetObjectItem(rep, "contrast") != NULL;
    const char *key = contrast ? "contrast" : "lpi";

    /* Lens grid. */
    const cJSON *g = cJSON_GetObjectItem(rep, "lens_grid");
    const cJSON *rows = cJSON_GetObjectItem(g, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 2 * L + 1);
    const cJSON *row;
    cJSON_ArrayForEach(row, rows)
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(row, "cells")),
                         T - (int)tu_json_num(g, "pos_first"));
    const cJSON *last = cJSON_GetArrayItem(rows, 2 * L);
    const cJSON *cells = cJSON_GetObjectItem(last, "cells");
    double p_grid = tu_json_num(cJSON_GetArrayItem(cells, cJSON_GetArraySize(cells) - 1), "p");
    double p_rep = tu_json_num(cJSON_GetObjectItem(rep, "target"), "prob");
    printf("# %s %s: lens grid p(target) at x_L t* %.8f vs report %.8f (maxdiff %.2e)\n", model,
           args, p_grid, p_rep, fabs(p_grid - p_rep));
    assert_true(fabs(p_grid - p_rep) <= 1e-5);

    /* Heads. */
    const cJSON *hd = cJSON_GetObjectItem(rep, "head_details");
    const cJSON *heads = cJSON_GetObjectItem(rep, "heads");
    assert_int_equal(cJSON_GetArraySize(hd), L * H);
    int n_detail = 0;
    double worst_lin = 0;
    for (int32_t i = 0; i < L * H; i++) {
        const cJSON *e = cJSON_GetArrayItem(hd, i), *a = cJSON_GetObjectItem(e, "attention");
        assert_int_equal(cJSON_GetArraySize(a), T);
        double sum = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, a) sum += x->valuedouble;
        assert_true(fabs(sum - 1) <= 1e-5);
        const cJSON *pos = cJSON_GetObjectItem(e, "positions");
        if (!pos) continue;
        n_detail++;
        assert_true(fabs(tu_json_num(e, key) - tu_json_num(cJSON_GetArrayItem(heads, i), key)) <=
                    1e-9);
        double bs = 0, ref = tu_json_num(e, "bs_target");
        cJSON_ArrayForEach(x, pos) bs += tu_json_num(x, "bs_target");
        double rel = fabs(bs - ref) / fmax(1e-6, fabs(ref));
        if (rel > worst_lin) worst_lin = rel;
        assert_true(rel <= 1e-4);
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(e, "top_tokens")), 5);
    }
    printf("# heads with details %d; sum_j bs_target(head,j) vs bs_target(head): max rel diff "
           "%.2e\n",
           n_detail, worst_lin);
    assert_int_equal(n_detail, L * H < 12 ? L * H : 12);

    /* Neurons: recompute the query neurons naively. */
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_EXPLAIN_CAPTURE;
    to.positions = RESID_POS_ALL;
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    for (int32_t t = 0; t < T; t++)
        ids[t] =
            (int32_t)tu_json_num(cJSON_GetArrayItem(cJSON_GetObjectItem(rep, "tokens"), t), "id");
    resid_trace *tr;
    assert_int_equal(resid_forward(m, ids, T, &to, &tr, &err), RESID_OK);
    const cJSON *nd = cJSON_GetObjectItem(rep, "neuron_details");
    double *ref = malloc((size_t)L * N * sizeof *ref);
    float *K = malloc((size_t)D * sizeof *K), *v = malloc((size_t)D * sizeof *v);
    double worst = 0, worst_sum = 0;
    int n_checked = 0;
    static const char *lists[] = {"ffn_neurons", "attn_neurons"};
    for (int li = 0; li < 2; li++) {
        const cJSON *u;
        cJSON_ArrayForEach(u, cJSON_GetObjectItem(rep, lists[li])) {
            const char *id = cJSON_GetObjectItem(u, "id")->valuestring;
            const cJSON *d = cJSON_GetObjectItem(nd, id);
            assert_non_null(d);
            const int32_t l = (int32_t)tu_json_num(u, "layer");
            const int32_t pos = (int32_t)tu_json_num(d, "pos");
            const cJSON *k0 = cJSON_GetArrayItem(cJSON_GetObjectItem(d, "keys"), 0);
            const cJSON *slots = cJSON_GetObjectItem(k0, "slots");
            assert_int_equal(cJSON_GetArraySize(slots), li == 0 ? 2 * l + 2 : 2 * l + 1);
            const float *gamma;
            resid_subkey sk;
            int32_t index;
            if (li == 0) {
                assert_int_equal(pos, T - 1);
                assert_int_equal(resid_param_vector(m, RESID_PARAM_FC1, l,
                                                    (int32_t)tu_json_num(u, "neuron"), v, &err),
                                 RESID_OK);
                gamma = m->layers[l].ffn_norm_w;
                sk = RESID_SUBKEY_UP;
                index = (int32_t)tu_json_num(u, "neuron");
            } else {
                const int32_t h = (int32_t)tu_json_num(u, "head"),
                              n = (int32_t)tu_json_num(u, "dim");
                const int32_t hkv = h / (H / info->n_kv_head);
                assert_int_equal(pos, (int32_t)tu_json_num(u, "pos"));
                assert_int_equal(resid_param_vector(m, RESID_PARAM_WV, l,
                                                    (int64_t)hkv * info->d_head + n, v, &err),
                                 RESID_OK);
                gamma = m->layers[l].attn_norm_w;
                sk = RESID_SUBKEY_VALUE;
                index = h * info->d_head + n;
            }
            for (int32_t x = 0; x < D; x++)
                K[x] = (gamma ? gamma[x] : 1.0f) * v[x];
            resid_preact *pa;
            assert_int_equal(resid_preact_new(m, tr, sk, l, index, pos, &pa, &err), RESID_OK);
            naive_contrib(m, tr, K, l, pos, pa->sigma, ref);
            /* The listed ones: the largest |contribution|, same values. */
            const cJSON *q = cJSON_GetObjectItem(d, "query_neurons"), *e;
            double floor_abs = INFINITY;
            cJSON_ArrayForEach(e, q) {
                int32_t il = (int32_t)tu_json_num(e, "layer"),
                        ik = (int32_t)tu_json_num(e, "neuron");
                assert_true(il < l);
                double diff = fabs(tu_json_num(e, "contribution") - ref[(size_t)il * N + ik]);
                double rel = diff / fmax(1e-3, fabs(ref[(size_t)il * N + ik]));
                if (rel > worst) worst = rel;
                assert_true(rel <= 1e-4);
                if (fabs(ref[(size_t)il * N + ik]) < floor_abs)
                    floor_abs = fabs(ref[(size_t)il * N + ik]);
            }
            int n_above = 0;
            for (int64_t i = 0; i < (int64_t)l * N; i++)
                n_above += fabs(ref[i]) > floor_abs * (1 + 1e-6);
            assert_true(n_above <= cJSON_GetArraySize(q));
            assert_int_equal(cJSON_GetArraySize(q), l * N < o.n_query ? l * N : o.n_query);
            /* Llama (no FFN bias): a layer's contributions add up to its
             * slot's exact share of the pre-activation. */
            if (info->arch == RESID_ARCH_LLAMA) {
                for (int32_t i = 0; i < l; i++) {
                    double sum = 0;
                    for (int32_t k = 0; k < N; k++)
                        sum += ref[(size_t)i * N + k];
                    double share = pa->share[2 * i + 2];
                    double rel = fabs(sum - share) / fmax(1e-3, fabs(share));
                    if (rel > worst_sum) worst_sum = rel;
                    assert_true(rel <= 1e-3);
                }
            }
            resid_preact_free(pa);
            n_checked++;
        }
    }
    printf("# %d neurons: query-neuron contributions vs naive float64 max rel diff %.2e; layer "
           "sums vs exact slot share %.2e\n",
           n_checked, worst, worst_sum);
    assert_true(n_checked > 0);

    rs_web_ctx *c;
    assert_int_equal(rs_web_ctx_new(m, ids, T, -1, -1, RESID_LENS_PAPER, &c, &err), RESID_OK);
    cJSON *hj;
    assert_int_equal(rs_web_head(c, L, 0, NULL, &hj, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "out of range"));
    resid_unit bad = {RESID_UNIT_FFN_NEURON, 0, -1, N, -1};
    assert_int_equal(rs_web_neuron(c, &bad, NULL, &hj, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "out of range"));
    rs_web_ctx_free(c);

    assert_int_equal(rs_html_write_file(out_name, rep, &err), RESID_OK);
    free(ref), free(K), free(v), free(ids);
    resid_trace_free(tr);
    resid_model_free(m);
    cJSON_Delete(rep);
}

static void test_report_stories(void **state) {
    (void)state;
    check_report(STORIES, "", "web-report-stories260K.html");
}

static void test_report_gpt2_contrast(void **state) {
    (void)state;
    check_report(GPT2S, "--vs ' blue' --lens exact", "web-report-gpt2-vs.html");
}

/* Compares cJSON trees: numbers within rel (relative, 1e-300 floor) except
 * keys in `loose` (within loose_rel); returns the worst relative gap. */
static double tree_diff(const cJSON *a, const cJSON *b, const char *key, double *worst_loose) {
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) {
        double d = fabs(a->valuedouble - b->valuedouble) / fmax(1e-300, fabs(b->valuedouble));
        if (key && !strcmp(key, "model_prob")) {
            if (d > *worst_loose) *worst_loose = d;
            return 0;
        }
        return a->valuedouble == b->valuedouble ? 0 : d;
    }
    if (a->type != b->type) return INFINITY;
    if (cJSON_IsString(a)) return strcmp(a->valuestring, b->valuestring) ? INFINITY : 0;
    if (cJSON_IsArray(a) || cJSON_IsObject(a)) {
        if (cJSON_GetArraySize(a) != cJSON_GetArraySize(b)) return INFINITY;
        double w = 0;
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next) {
            if (cJSON_IsObject(a) && strcmp(x->string, y->string)) return INFINITY;
            w = fmax(w, tree_diff(x, y, x->string, worst_loose));
        }
        return w;
    }
    return 0;
}

static void check_session(const char *model, int32_t contrast, resid_lens lens) {
    resid_model *m = tu_open_model(model);
    const resid_model_info *info = resid_model_get_info(m);
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    const int32_t L = info->n_layer, H = info->n_head;
    resid_error err;
    resid_encode_opts eo = resid_encode_defaults(tok);
    int32_t *ids, T;
    assert_int_equal(resid_tokenize(tok, P_RED, -1, &eo, &ids, &T, &err), RESID_OK);
    resid_explain_request rq = resid_explain_request_defaults();
    rq.tokens = ids;
    rq.n_tokens = T;
    rq.contrast = contrast;
    rq.lens = lens;
    cJSON *ref, *rep;
    assert_int_equal(rs_explain_cjson(m, &rq, &ref, &err), RESID_OK);
    rs_explain_session *s;
    assert_int_equal(rs_explain_session_new(m, &rq, true, &s, &err), RESID_OK);
    assert_int_equal(rs_explain_session_json(s, &rep, &err), RESID_OK);
    double loose = 0, strict = tree_diff(rep, ref, NULL, &loose);
    printf("# %s: session report vs rs_explain_cjson: max rel diff %.2e (model_prob %.2e)\n",
           model, strict, loose);
    assert_true(strict == 0);
    assert_true(loose <= 1e-6);

    rs_web_ctx *c;
    assert_int_equal(rs_web_ctx_from_session(m, s, &c, &err), RESID_OK);
    resid_lens_grid *g;
    const int32_t target = (int32_t)tu_json_num(cJSON_GetObjectItem(rep, "target"), "id");
    assert_int_equal(resid_lens_grid_new(m, rs_explain_session_trace(s), lens, target, &g, &err),
                     RESID_OK);
    for (int cols = 0; cols <= 3; cols += 3) {
        rs_web_opts o = rs_web_defaults();
        o.grid_positions = cols;
        cJSON *gj;
        assert_int_equal(rs_web_lens_grid(c, lens, &o, &gj, &err), RESID_OK);
        const int32_t P = cols ? cols : T, p0 = T - P;
        assert_int_equal((int32_t)tu_json_num(gj, "pos_first"), p0);
        const cJSON *rows = cJSON_GetObjectItem(gj, "rows");
        assert_int_equal(cJSON_GetArraySize(rows), 2 * L + 1);
        double worst = 0;
        for (int32_t r = 0; r <= 2 * L; r++) {
            const cJSON *cells = cJSON_GetObjectItem(cJSON_GetArrayItem(rows, r), "cells");
            assert_int_equal(cJSON_GetArraySize(cells), P);
            /* rows: x_in[0], x_mid[0], x_in[1], ..., x_L */
            const resid_lens_cell *rc =
                r == 2 * L ? g->in + (size_t)L * T : (r % 2 ? g->mid : g->in) + (size_t)(r / 2) * T;
            for (int32_t t = 0; t < P; t++) {
                const cJSON *e = cJSON_GetArrayItem(cells, t);
                const resid_lens_cell *x = &rc[p0 + t];
                worst = fmax(worst, fabs(tu_json_num(e, "p") - x->p_target));
                worst = fmax(worst, fabs(tu_json_num(e, "p_top1") - x->p_top1));
                assert_int_equal((int32_t)tu_json_num(e, "rank"), x->rank_target);
                assert_int_equal((int32_t)tu_json_num(cJSON_GetObjectItem(e, "top1"), "id"),
                                 x->top1);
            }
        }
        printf("# %s lens %s, %d columns: grid vs resid_lens_grid_new max |dp| %.2e\n", model,
               resid_lens_name(lens), P, worst);
        assert_true(worst <= 1e-5);
        cJSON_Delete(gj);
    }
    resid_lens_grid_free(g);

    /* Head details vs the exact scores. */
    rs_web_opts o = rs_web_defaults();
    o.n_head_detail = 4;
    assert_int_equal(rs_web_extras(c, rep, &o, &err), RESID_OK);
    const cJSON *hd = cJSON_GetObjectItem(rep, "head_details"), *e;
    resid_explainer *ex = rs_explain_session_explainer(s);
    double worst = 0;
    int n_heads = 0;
    cJSON_ArrayForEach(e, hd) {
        const cJSON *pos = cJSON_GetObjectItem(e, "positions"), *x;
        if (!pos) continue;
        n_heads++;
        cJSON_ArrayForEach(x, pos) {
            resid_unit u = {RESID_UNIT_HEAD_POS, (int32_t)tu_json_num(e, "layer"),
                            (int32_t)tu_json_num(e, "head"), -1, (int32_t)tu_json_num(x, "pos")};
            resid_score sc;
            assert_int_equal(resid_score_units(ex, &u, 1, &sc, &err), RESID_OK);
            worst = fmax(worst, fabs(tu_json_num(x, "lpi") - sc.lpi));
            worst = fmax(worst, fabs(tu_json_num(x, "bs_target") - sc.bs_target));
            worst = fmax(worst, fabs(tu_json_num(x, "prob_inc") - sc.prob_inc));
            if (contrast >= 0) worst = fmax(worst, fabs(tu_json_num(x, "contrast") - sc.contrast));
        }
    }
    printf("# %s: %d heads' position scores vs resid_score_units max diff %.2e\n", model, n_heads,
           worst);
    assert_int_equal(n_heads, L * H < 4 ? L * H : 4);
    assert_true(worst <= 1e-5);
    rs_web_ctx_free(c);
    rs_explain_session_free(s);

    /* A session of the last position only cannot feed the views. */
    assert_int_equal(rs_explain_session_new(m, &rq, false, &s, &err), RESID_OK);
    assert_int_equal(rs_web_ctx_from_session(m, s, &c, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "every position"));
    rs_explain_session_free(s);
    cJSON_Delete(ref), cJSON_Delete(rep);
    free(ids);
    resid_model_free(m);
}

static void test_session_stories(void **state) {
    (void)state;
    check_session(STORIES, -1, RESID_LENS_PAPER);
    check_session(STORIES, -1, RESID_LENS_LOGIT);
}

static void test_session_gpt2(void **state) {
    (void)state;
    check_session(GPT2S, 5, RESID_LENS_EXACT);
    check_session(GPT2S, -1, RESID_LENS_PAPER);
}

/* The page's size for `prompt` on `model` with o's sizes: *P lens-grid
 * columns, *nd heads with a position breakdown, *nn neurons with details;
 * *T the prompt's length. */
static void page_size(const char *model, const char *prompt, rs_web_opts o, int32_t *T,
                      int32_t *P, int32_t *nd, int32_t *nn) {
    resid_model *m = tu_open_model(model);
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    resid_error err;
    resid_encode_opts eo = resid_encode_defaults(tok);
    int32_t *ids;
    assert_int_equal(resid_tokenize(tok, prompt, -1, &eo, &ids, T, &err), RESID_OK);
    resid_explain_request rq = resid_explain_request_defaults();
    rq.tokens = ids;
    rq.n_tokens = *T;
    rs_explain_session *s;
    cJSON *rep;
    rs_web_ctx *c;
    assert_int_equal(rs_explain_session_new(m, &rq, true, &s, &err), RESID_OK);
    assert_int_equal(rs_explain_session_json(s, &rep, &err), RESID_OK);
    assert_int_equal(rs_web_ctx_from_session(m, s, &c, &err), RESID_OK);
    assert_int_equal(rs_web_extras(c, rep, &o, &err), RESID_OK);
    const cJSON *rows = cJSON_GetObjectItem(cJSON_GetObjectItem(rep, "lens_grid"), "rows"), *e;
    *P = cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(rows, 0), "cells"));
    *nd = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(rep, "head_details")) {
        *nd += cJSON_HasObjectItem(e, "positions");
    }
    *nn = cJSON_GetArraySize(cJSON_GetObjectItem(rep, "neuron_details"));
    /* the details are those of the lists' first entries */
    const char *lists[] = {"ffn_neurons", "attn_neurons"};
    for (int li = 0; li < 2; li++) {
        int32_t i = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(rep, lists[li])) {
            const char *id = cJSON_GetObjectItem(e, "id")->valuestring;
            assert_int_equal(cJSON_HasObjectItem(cJSON_GetObjectItem(rep, "neuron_details"), id),
                             i++ < o.n_neuron_detail || o.n_neuron_detail < 0);
        }
    }
    rs_web_ctx_free(c);
    rs_explain_session_free(s);
    cJSON_Delete(rep);
    free(ids);
    resid_model_free(m);
}

/* explain --html's default page (the sizes at -1, rs_web_auto): each view
 * whole when it costs at most RS_WEB_CHEAP_MACS, else the t* column, the
 * best head and RS_WEB_AUTO_NEURONS neurons per list. tiny-gpt2-stories (4
 * layers x 4 heads, V·D = 3.2M) on P_RED's 17 tokens gets everything, on
 * ~70 tokens the trimmed grid and heads (1.7G and 3.6G multiply-adds);
 * GPT-2 small's sizes (no fixture) through rs_web_auto directly. */
static void test_auto_size(void **state) {
    (void)state;
    rs_web_opts o = rs_web_defaults();
    o.grid_positions = o.n_head_detail = o.n_neuron_detail = -1;
    int32_t T, P, nd, nn;
    page_size(GPT2S, P_RED, o, &T, &P, &nd, &nn);
    printf("# %s, %d tokens: %d grid columns, %d heads, %d neurons detailed\n", GPT2S, T, P, nd,
           nn);
    assert_true(2.0 * 4 * (T - 1) * 50257 * 64 <= RS_WEB_CHEAP_MACS);
    assert_true(16.0 * T * 50257 * 64 <= RS_WEB_CHEAP_MACS);
    assert_int_equal(P, T);
    assert_int_equal(nd, 16);
    assert_int_equal(nn, 20);
    page_size(GPT2S, P_RED " ball. " P_RED " car. " P_RED " hat. " P_RED, o, &T, &P, &nd, &nn);
    printf("# %s, %d tokens: %d grid columns, %d heads, %d neurons detailed\n", GPT2S, T, P, nd,
           nn);
    assert_true(2.0 * 4 * (T - 1) * 50257 * 64 > RS_WEB_CHEAP_MACS);
    assert_int_equal(P, 1);
    assert_int_equal(nd, 1);
    assert_int_equal(nn, 20);
    /* explicit sizes are kept: 3 columns, 2 heads, the first 3 neurons */
    rs_web_opts x = rs_web_defaults();
    x.grid_positions = 3, x.n_head_detail = 2, x.n_neuron_detail = 3;
    page_size(GPT2S, P_RED, x, &T, &P, &nd, &nn);
    assert_int_equal(P, 3);
    assert_int_equal(nd, 2);
    assert_int_equal(nn, 6);

    resid_model_info g2 = {.n_layer = 12, .n_head = 12, .n_vocab = 50257, .d_model = 768,
                           .d_ffn = 3072};
    const double nmacs = 3072.0 * 768; /* one neuron in layer 1 */
    rs_web_opts a = o;
    rs_web_auto(&a, &g2, 16, 20 * 6 * nmacs); /* explain's --top 10 */
    assert_int_equal(a.grid_positions, 1);
    assert_int_equal(a.n_head_detail, 1);
    assert_int_equal(a.n_neuron_detail, INT32_MAX);
    a = o;
    rs_web_auto(&a, &g2, 16, 600 * 6 * nmacs); /* --top 300 */
    assert_int_equal(a.n_neuron_detail, RS_WEB_AUTO_NEURONS);
    a = o;
    rs_web_auto(&a, &g2, 2, 0); /* 2 tokens: the grid's other column, 0.93G */
    assert_int_equal(a.grid_positions, 0);
    a = o;
    rs_web_auto(&a, &g2, 3, 0); /* 3 tokens: two more, 1.85G */
    assert_int_equal(a.grid_positions, 1);
    resid_model_info small = {.n_layer = 5, .n_head = 8, .n_vocab = 512, .d_model = 64};
    a = o;
    rs_web_auto(&a, &small, 21, 0); /* stories260K: everything */
    assert_int_equal(a.grid_positions, 0);
    assert_int_equal(a.n_head_detail, 40);
    a = x;
    rs_web_auto(&a, &g2, 16, 1e12);
    assert_int_equal(a.grid_positions, 3);
    assert_int_equal(a.n_head_detail, 2);
    assert_int_equal(a.n_neuron_detail, 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_report_stories),
        cmocka_unit_test(test_report_gpt2_contrast),
        cmocka_unit_test(test_session_stories),
        cmocka_unit_test(test_session_gpt2),
        cmocka_unit_test(test_auto_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
