/*
 * test_explain_cli.c - `resid explain` and `resid neuron`, run as programs
 * ($RESID_CLI). The JSON is parsed and checked against the schema
 * (docs/explain-json.md: every field, lengths L and L·H, sorted lists),
 * against the exact identities of METHOD.md §8 recomputed here from
 * scratch in double precision (the layer LPIs telescope to
 * log p(w|x_L) − log p(w|x_in[0]); the contrast scores to the change of
 * bs_w − bs_c), against the model's own probability (exact lens), the
 * certified ranking against --exhaustive, and every error path.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "testutil.h"

#define STORIES "tinyllamas/stories260K.bin"
#define GPT2S   "tiny-gpt2-stories"
#define P_RED   "Once upon a time, there was a boy named Tim. Tim had a big red"
#define P_TIM   "Once upon a time, there was a little boy named Tim. Tim had a big red ball. One day,"

/* ------------------------------------------------------------------------- */
/* Running the CLI                                                           */
/* ------------------------------------------------------------------------- */

/* `resid CMD MODEL ARGS` with the prompt (may be NULL) quoted. */
static char *run_cli(const char *cmd, const char *model, const char *prompt, const char *args,
                     bool merge_stderr, int *status) {
    char *line = tu_cli_line(cmd, model, prompt, args, merge_stderr);
    char *out = tu_run(line, status);
    free(line);
    return out;
}

static cJSON *explain_json(const char *model, const char *prompt, const char *args) {
    char full[512];
    snprintf(full, sizeof full, "--json - %s", args);
    char *line = tu_cli_line("explain", model, prompt, full, false);
    cJSON *j = tu_run_json(line);
    free(line);
    return j;
}

/* `resid CMD MODEL [-p PROMPT] ARGS`, stderr merged, exits with status and
 * says needle (and needle2 unless NULL); else the test fails showing the
 * output. */
static void expect_output(const char *cmd, const char *model, const char *prompt, const char *args,
                          int status, const char *needle, const char *needle2) {
    int st;
    char *out = run_cli(cmd, model, prompt, args, true, &st);
    if (st != status || !strstr(out, needle) || (needle2 && !strstr(out, needle2)))
        fail_msg("%s %s %s: exit %d (want %d), output:\n%.2000s\n(want \"%s\"%s%s%s)", cmd, model,
                 args, st, status, out, needle, needle2 ? " and \"" : "", needle2 ? needle2 : "",
                 needle2 ? "\"" : "");
    free(out);
}

/* explain with "--json - BASE EXTRA" into *a and with "--json - BASE
 * --exhaustive EXTRA" into *b. */
static void explain_pair(const char *model, const char *prompt, const char *base, const char *extra,
                         cJSON **a, cJSON **b) {
    char args[256];
    snprintf(args, sizeof args, "%s %s", base, extra);
    *a = explain_json(model, prompt, args);
    snprintf(args, sizeof args, "%s --exhaustive %s", base, extra);
    *b = explain_json(model, prompt, args);
}

static const char *str(const cJSON *o, const char *name) {
    cJSON *v = tu_json_get(o, name);
    if (!cJSON_IsString(v)) {
        print_error("field \"%s\" is not a string\n", name);
        fail();
    }
    return v->valuestring;
}

static void assert_close_d(const char *what, double a, double b, double tol) {
    double d = fabs(a - b);
    print_message("  %s: %.9g vs %.9g, maxdiff %.3g (tol %.1g)\n", what, a, b, d, tol);
    if (!(d <= tol)) fail_msg("%s: |%.9g - %.9g| = %.3g > %.1g", what, a, b, d, tol);
}

/* ------------------------------------------------------------------------- */
/* Independent reference: the paper's lens in double precision               */
/* ------------------------------------------------------------------------- */

typedef struct ref {
    resid_model *m;
    resid_trace *tr;
    double s;          /* lens scale from x_L */
    double *bs0, *bsL; /* [V] bs(x_in[0][t*]), bs(x_L) */
    double *logitsL;   /* [V] bs(x_L) + W_U·β_f: the model's logits */
} ref;

/* bs(x)[V] = W_U·(γ_f ⊙ centre(x))/s (+ W_U·β_f when with_bias). */
static void ref_bs(const resid_model *m, const float *x, double s, bool with_bias, double *out) {
    const int D = m->hp.d_model, V = m->hp.n_vocab;
    const bool gpt2 = m->hp.arch == RESID_ARCH_GPT2;
    double mean = 0;
    if (gpt2) {
        for (int d = 0; d < D; d++)
            mean += x[d];
        mean /= D;
    }
    double *y = malloc((size_t)D * sizeof *y);
    float *row = malloc((size_t)D * sizeof *row);
    for (int d = 0; d < D; d++) {
        y[d] = (m->out_norm_w ? m->out_norm_w[d] : 1.0) * (x[d] - mean) / s;
        if (with_bias && m->out_norm_b) y[d] += m->out_norm_b[d];
    }
    for (int t = 0; t < V; t++) {
        rs_tensor_rows(m->w_out, t, 1, row);
        double acc = 0;
        for (int d = 0; d < D; d++)
            acc += (double)row[d] * y[d];
        out[t] = acc;
    }
    free(y), free(row);
}

static double log_softmax(const double *x, int V, int id) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++)
        if (x[i] > mx) mx = x[i];
    for (int i = 0; i < V; i++)
        sum += exp(x[i] - mx);
    return x[id] - mx - log(sum);
}

static void ref_init(ref *r, const char *model, const char *prompt) {
    r->m = tu_open_model(model);
    int32_t *ids;
    const int32_t n = tu_tokenize(r->m, prompt, &ids);
    resid_error err;
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_CAP_RESID;
    to.positions = RESID_POS_LAST;
    assert_int_equal(resid_forward(r->m, ids, n, &to, &r->tr, &err), RESID_OK);
    free(ids);
    const int D = r->m->hp.d_model, V = r->m->hp.n_vocab, L = r->m->hp.n_layer;
    const float *x0 = r->tr->x_in; /* n_cap = 1 */
    const float *xl = r->tr->x_in + (size_t)L * D;
    double mean = 0, ss = 0;
    if (r->m->hp.arch == RESID_ARCH_GPT2) {
        for (int d = 0; d < D; d++)
            mean += xl[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++)
        ss += (xl[d] - mean) * (xl[d] - mean);
    r->s = sqrt(ss / D + r->m->hp.norm_eps);
    r->bs0 = malloc((size_t)V * sizeof(double));
    r->bsL = malloc((size_t)V * sizeof(double));
    r->logitsL = malloc((size_t)V * sizeof(double));
    ref_bs(r->m, x0, r->s, false, r->bs0);
    ref_bs(r->m, xl, r->s, false, r->bsL);
    ref_bs(r->m, xl, r->s, true, r->logitsL);
}

static void ref_free(ref *r) {
    free(r->bs0), free(r->bsL), free(r->logitsL);
    resid_trace_free(r->tr);
    resid_model_free(r->m);
}

/* The sum over j's layers of attn_<score> + ffn_<score>. */
static double layer_sum(const cJSON *j, const char *score) {
    char attn[32], ffn[32];
    snprintf(attn, sizeof attn, "attn_%s", score);
    snprintf(ffn, sizeof ffn, "ffn_%s", score);
    double sum = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, tu_json_get(j, "layers")) sum +=
        tu_json_num(e, attn) + tu_json_num(e, ffn);
    return sum;
}

/* j's target.prob equals its model_prob (the lens is the model's own). */
static void check_prob_is_model(const char *what, const cJSON *j) {
    assert_close_d(what, tu_json_num(tu_json_get(j, "target"), "prob"),
                   tu_json_num(tu_json_get(j, "target"), "model_prob"), 1e-5);
}

/* ------------------------------------------------------------------------- */
/* Schema                                                                    */
/* ------------------------------------------------------------------------- */

static void check_sorted(const cJSON *arr, const char *key, const char *what) {
    double prev = INFINITY;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        double v = tu_json_num(e, key);
        if (v > prev) fail_msg("%s not sorted by %s at %d: %.9g after %.9g", what, key, i, v, prev);
        prev = v;
        i++;
    }
}

static void check_tokens_list(const cJSON *e, const char *name, int n_tokens) {
    const cJSON *t = tu_json_get(e, name);
    assert_true(cJSON_IsArray(t));
    assert_int_equal(cJSON_GetArraySize(t), n_tokens);
    const cJSON *x;
    cJSON_ArrayForEach(x, t) {
        tu_json_num(x, "id");
        str(x, "text");
        tu_json_num(x, "bs");
    }
}

static void check_schema(const cJSON *j, const char *model_rel, int top) {
    resid_model *m = tu_open_model(model_rel);
    const resid_model_info *info = resid_model_get_info(m);
    const int L = info->n_layer, H = info->n_head, N = info->d_ffn;
    const bool gated = info->arch == RESID_ARCH_LLAMA;
    resid_model_free(m);

    const cJSON *toks = tu_json_get(j, "tokens"), *t;
    assert_true(cJSON_IsArray(toks) && cJSON_GetArraySize(toks) > 0);
    const int T = cJSON_GetArraySize(toks);
    cJSON_ArrayForEach(t, toks) {
        tu_json_num(t, "id");
        str(t, "text");
    }
    const cJSON *tg = tu_json_get(j, "target");
    tu_json_num(tg, "id");
    str(tg, "text");
    double p = tu_json_num(tg, "prob"), mp = tu_json_num(tg, "model_prob");
    assert_true(p > 0 && p <= 1 && mp > 0 && mp <= 1);
    str(j, "lens");

    const cJSON *layers = tu_json_get(j, "layers");
    assert_int_equal(cJSON_GetArraySize(layers), L);
    int l = 0;
    cJSON_ArrayForEach(t, layers) {
        assert_int_equal((int)tu_json_num(t, "layer"), l);
        tu_json_num(t, "attn_lpi");
        tu_json_num(t, "ffn_lpi");
        l++;
    }
    const cJSON *heads = tu_json_get(j, "heads");
    assert_int_equal(cJSON_GetArraySize(heads), L * H);
    int i = 0;
    cJSON_ArrayForEach(t, heads) { /* all heads, enumeration order */
        assert_int_equal((int)tu_json_num(t, "layer"), i / H);
        assert_int_equal((int)tu_json_num(t, "head"), i % H);
        char id[32];
        snprintf(id, sizeof id, "%d_%d", i / H, i % H);
        assert_string_equal(str(t, "id"), id);
        tu_json_num(t, "lpi");
        tu_json_num(t, "bs_target");
        tu_json_num(t, "prob_inc");
        i++;
    }
    const cJSON *hp = tu_json_get(j, "head_positions");
    assert_int_equal(cJSON_GetArraySize(hp), top < L * H * T ? top : L * H * T);
    cJSON_ArrayForEach(t, hp) {
        int tl = (int)tu_json_num(t, "layer"), th = (int)tu_json_num(t, "head"),
            tp = (int)tu_json_num(t, "pos");
        char id[48];
        snprintf(id, sizeof id, "%d_%d_%d", tl, th, tp);
        assert_string_equal(str(t, "id"), id);
        assert_true(tl >= 0 && tl < L && th >= 0 && th < H && tp >= 0 && tp < T);
        tu_json_num(t, "lpi");
        tu_json_num(t, "bs_target");
        tu_json_num(t, "prob_inc");
        str(tu_json_get(t, "source"), "text");
    }
    check_sorted(hp, "lpi", "head_positions");
    const cJSON *fn = tu_json_get(j, "ffn_neurons");
    assert_int_equal(cJSON_GetArraySize(fn), top < L * N ? top : L * N);
    cJSON_ArrayForEach(t, fn) {
        int tl = (int)tu_json_num(t, "layer"), k = (int)tu_json_num(t, "neuron");
        char id[48];
        snprintf(id, sizeof id, "%d_%d", tl, k);
        assert_string_equal(str(t, "id"), id);
        assert_true(tl >= 0 && tl < L && k >= 0 && k < N);
        tu_json_num(t, "coef");
        tu_json_num(t, "lpi");
        tu_json_num(t, "bs_target");
        tu_json_num(t, "prob_inc");
        check_tokens_list(t, "top_tokens", 5);
        check_tokens_list(t, "bottom_tokens", 5);
    }
    check_sorted(fn, "lpi", "ffn_neurons");
    const cJSON *an = tu_json_get(j, "attn_neurons");
    assert_int_equal(cJSON_GetArraySize(an), top);
    cJSON_ArrayForEach(t, an) {
        char id[64];
        snprintf(id, sizeof id, "%d_%d_%d_%d", (int)tu_json_num(t, "layer"),
                 (int)tu_json_num(t, "head"), (int)tu_json_num(t, "dim"),
                 (int)tu_json_num(t, "pos"));
        assert_string_equal(str(t, "id"), id);
        tu_json_num(t, "lpi");
        tu_json_num(t, "coef");
        tu_json_num(t, "bs_target");
        tu_json_num(t, "prob_inc");
        check_tokens_list(t, "top_tokens", 5);
    }
    check_sorted(an, "lpi", "attn_neurons");

    const cJSON *ql = tu_json_get(j, "query_layers");
    assert_int_equal(cJSON_GetArraySize(ql), 2 * L + 1);
    i = 0;
    double qsum = 0;
    cJSON_ArrayForEach(t, ql) {
        char lab[16];
        if (i == 0)
            snprintf(lab, sizeof lab, "emb");
        else
            snprintf(lab, sizeof lab, "%c%d", i % 2 ? 'a' : 'f', (i - 1) / 2);
        assert_string_equal(str(t, "slot"), lab);
        if (gated) {
            tu_json_num(t, "gate_share");
            qsum += tu_json_num(t, "up_share");
        } else {
            qsum += tu_json_num(t, "share");
        }
        i++;
    }
    /* §8 item 10: the shares of each key add up to the neurons' LPIs. */
    assert_close_d("sum of query shares vs sum of value-neuron LPIs", qsum,
                   tu_json_num(tu_json_get(j, "query"), "lpi_sum"), 1e-4 * (1 + fabs(qsum)));

    const cJSON *rk = tu_json_get(j, "ranking");
    const char *kinds[] = {"heads", "head_positions", "ffn_neurons", "attn_neurons"};
    for (int q = 0; q < 4; q++) {
        const cJSON *r = tu_json_get(rk, kinds[q]);
        const char *meth = str(r, "method");
        assert_true(!strcmp(meth, "certified") || !strcmp(meth, "exhaustive"));
        assert_true(tu_json_num(r, "units_scored_exactly") <= tu_json_num(r, "units_total"));
    }
    assert_int_equal((int)tu_json_num(tu_json_get(rk, "heads"), "units_total"), L * H);
    assert_int_equal((int)tu_json_num(tu_json_get(rk, "ffn_neurons"), "units_total"), L * N);
}

/* The layer LPIs add up to log p(w|x_L) − log p(w|x_in[0]) (§8 item 5),
 * the reference recomputed here from the residuals. */
static void check_telescoping(const cJSON *j, const char *model, const char *prompt) {
    ref r;
    ref_init(&r, model, prompt);
    const int V = r.m->hp.n_vocab;
    const int w = (int)tu_json_num(tu_json_get(j, "target"), "id");
    double sum = layer_sum(j, "lpi");
    double want = log_softmax(r.bsL, V, w) - log_softmax(r.bs0, V, w);
    assert_close_d("sum of layer LPIs vs log p(w|x_L) - log p(w|x_in[0])", sum, want, 1e-4);
    assert_close_d("layer_totals.telescoped vs reference",
                   tu_json_num(tu_json_get(j, "layer_totals"), "telescoped"), want, 1e-4);
    assert_close_d("target.model_prob vs reference",
                   tu_json_num(tu_json_get(j, "target"), "model_prob"),
                   exp(log_softmax(r.logitsL, V, w)), 1e-5);
    ref_free(&r);
}

static void test_schema_stories(void **state) {
    (void)state;
    cJSON *j = explain_json(STORIES, P_RED, "");
    check_schema(j, STORIES, 10);
    check_telescoping(j, STORIES, P_RED);
    /* Llama: the paper lens is the model's distribution (§8 item 6). */
    check_prob_is_model("stories260K target.prob vs model_prob", j);
    cJSON_Delete(j);
}

static void test_schema_gpt2(void **state) {
    (void)state;
    cJSON *j = explain_json(GPT2S, P_TIM, "");
    check_schema(j, GPT2S, 10);
    check_telescoping(j, GPT2S, P_TIM);
    assert_string_equal(str(tu_json_get(j, "target"), "text"), " Tim");
    cJSON_Delete(j);
}

/* ------------------------------------------------------------------------- */
/* Certified vs exhaustive                                                   */
/* ------------------------------------------------------------------------- */

static void same_units(const cJSON *a, const cJSON *b, const char *list) {
    const cJSON *x = tu_json_get(a, list), *y = tu_json_get(b, list);
    assert_int_equal(cJSON_GetArraySize(x), cJSON_GetArraySize(y));
    int n = cJSON_GetArraySize(x), bad = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *u = cJSON_GetArrayItem(x, i), *v = cJSON_GetArrayItem(y, i);
        if (strcmp(str(u, "id"), str(v, "id")) != 0) {
            if (!bad)
                print_error("%s[%d]: certified %s, exhaustive %s\n", list, i, str(u, "id"),
                            str(v, "id"));
            bad++;
        }
        double d = fabs(tu_json_num(u, "lpi") - tu_json_num(v, "lpi"));
        if (d > worst) worst = d;
    }
    print_message("  %s: %d units, %d id mismatches, lpi maxdiff %.3g\n", list, n, bad, worst);
    assert_int_equal(bad, 0);
    assert_true(worst == 0);
}

static void certified_vs_exhaustive(const char *model, const char *prompt, const char *extra) {
    cJSON *a, *b;
    explain_pair(model, prompt, "--top 25 --tokens 0", extra, &a, &b);
    assert_string_equal(str(tu_json_get(tu_json_get(b, "ranking"), "ffn_neurons"), "method"),
                        "exhaustive");
    same_units(a, b, "heads");
    same_units(a, b, "head_positions");
    same_units(a, b, "ffn_neurons");
    same_units(a, b, "attn_neurons");
    /* the projections: --exhaustive one row per layer, head, head x
     * position, FFN neuron and W_O row, plus at most 2L+2 for the contexts;
     * the certified run far fewer */
    const cJSON *mo = tu_json_get(b, "model");
    const double L = tu_json_num(mo, "n_layer"), H = tu_json_num(mo, "n_head");
    const double T = cJSON_GetArraySize(tu_json_get(b, "tokens"));
    const double rows = 2 * L + L * H + L * H * T + L * tu_json_num(mo, "d_ffn") +
                        L * H * tu_json_num(mo, "d_head");
    const double pa = tu_json_num(tu_json_get(a, "ranking"), "projections");
    const double pb = tu_json_num(tu_json_get(b, "ranking"), "projections");
    print_message("  projections: certified %.0f, exhaustive %.0f (units' rows %.0f)\n", pa, pb,
                  rows);
    assert_true(pb >= rows && pb <= rows + 2 * L + 2);
    assert_true(pa > 0 && pa < pb);
    cJSON_Delete(a);
    cJSON_Delete(b);
}

static void test_exhaustive_stories(void **state) {
    (void)state;
    certified_vs_exhaustive(STORIES, P_RED, "");
}

/* --bottom K: the K lowest-scoring units of three kinds, lowest first,
 * certified == exhaustive, below every unit of the top list; absent
 * without the option. */
static void bottom_lists(const char *model, const char *prompt, const char *extra) {
    static const char *const names[3][2] = {{"head_positions_bottom", "head_positions"},
                                            {"ffn_neurons_bottom", "ffn_neurons"},
                                            {"attn_neurons_bottom", "attn_neurons"}};
    cJSON *a, *b;
    explain_pair(model, prompt, "--top 5 --bottom 7 --tokens 2", extra, &a, &b);
    const char *key = *extra ? "contrast" : "lpi";
    assert_int_equal((int)tu_json_num(tu_json_get(a, "ranking"), "bottom_requested"), 7);
    for (int i = 0; i < 3; i++) {
        same_units(a, b, names[i][0]);
        const cJSON *bot = tu_json_get(a, names[i][0]), *top = tu_json_get(a, names[i][1]);
        assert_int_equal(cJSON_GetArraySize(bot), 7);
        double prev = -INFINITY;
        const cJSON *e;
        cJSON_ArrayForEach(e, bot) { /* ascending */
            const double v = tu_json_num(e, key);
            if (v < prev) fail_msg("%s: %.9g after %.9g", names[i][0], v, prev);
            prev = v;
            tu_json_get(e, "top_tokens");
        }
        const double top_last =
            tu_json_num(cJSON_GetArrayItem(top, cJSON_GetArraySize(top) - 1), key);
        assert_true(prev <= top_last);
        assert_string_equal(str(tu_json_get(tu_json_get(a, "ranking"), names[i][0]), "method"),
                            "certified");
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    a = explain_json(model, prompt, "--top 5 --tokens 0");
    for (int i = 0; i < 3; i++) assert_null(cJSON_GetObjectItemCaseSensitive(a, names[i][0]));
    cJSON_Delete(a);
}

static void test_bottom(void **state) {
    (void)state;
    bottom_lists(STORIES, P_RED, "");
    bottom_lists(GPT2S, P_TIM, "--vs \" he\"");
}

static void test_exhaustive_gpt2(void **state) {
    (void)state;
    certified_vs_exhaustive(GPT2S, P_TIM, "");
}

/* ------------------------------------------------------------------------- */
/* Options                                                                   */
/* ------------------------------------------------------------------------- */

static void test_target_text(void **state) {
    (void)state;
    /* " Tim" is one token on both models: SentencePiece's own leading space */
    cJSON *j = explain_json(STORIES, P_RED, "--target ' Tim' --top 1 --tokens 0");
    assert_int_equal((int)tu_json_num(tu_json_get(j, "target"), "id"), 326);
    assert_string_equal(str(tu_json_get(j, "target"), "text"), " Tim");
    cJSON_Delete(j);
    j = explain_json(GPT2S, P_RED, "--target ' Tim' --top 1 --tokens 0");
    assert_int_equal((int)tu_json_num(tu_json_get(j, "target"), "id"), 5045);
    cJSON_Delete(j);
    j = explain_json(GPT2S, P_RED, "--target-id 3091 --top 1 --tokens 0");
    assert_string_equal(str(tu_json_get(j, "target"), "text"), " box");
    cJSON_Delete(j);

    expect_output("explain", GPT2S, P_RED, "--target ' Timmy'", 1,
                  "target \" Timmy\" is 2 tokens: \" Tim\" (5045) + \"my\" (1820)", "--target-id");
    expect_output("explain", GPT2S, P_RED, "--target-id 50257", 2, "out of range [0, 50257)", NULL);
    expect_output("explain", STORIES, P_RED, "--target-id 512", 2, "out of range [0, 512)", NULL);
    expect_output("explain", STORIES, P_RED, "--lens sideways", 2, "--lens", NULL);
}

static void test_top_clamped(void **state) {
    (void)state;
    cJSON *j = explain_json(STORIES, P_RED, "--top 1000000 --tokens 1");
    const cJSON *r = tu_json_get(tu_json_get(j, "ranking"), "ffn_neurons");
    assert_true(cJSON_IsTrue(tu_json_get(r, "clamped")));
    assert_int_equal((int)tu_json_num(r, "k"), 5 * 172);
    assert_int_equal(cJSON_GetArraySize(tu_json_get(j, "ffn_neurons")), 5 * 172);
    check_sorted(tu_json_get(j, "ffn_neurons"), "lpi", "ffn_neurons (all)");
    /* all FFN neurons plus the biases (none in Llama) make up the FFN layers */
    cJSON_Delete(j);
    expect_output("explain", STORIES, P_RED, "--top 1000000 --tokens 0", 0,
                  "--top 1000000 is more than the 860 FFN neurons",
                  "(--top 1000000 clamped: there are 860)");
}

/* Contrast scores: their layer sum is the change of log p(w) − log p(c)
 * from x_in[0] to x_L, which the shared normaliser reduces to bs_w − bs_c
 * (recomputed here). */
static void check_contrast(const char *model, const char *prompt, const char *args) {
    cJSON *j = explain_json(model, prompt, args);
    ref r;
    ref_init(&r, model, prompt);
    const int w = (int)tu_json_num(tu_json_get(j, "target"), "id");
    const cJSON *c = tu_json_get(j, "contrast");
    const int cid = (int)tu_json_num(c, "id");
    double sum = layer_sum(j, "contrast");
    double want = (r.bsL[w] - r.bsL[cid]) - (r.bs0[w] - r.bs0[cid]);
    assert_close_d("sum of layer contrasts vs reference", sum, want, 1e-4);
    assert_close_d("contrast.total vs reference", tu_json_num(c, "total"), want, 1e-4);
    assert_close_d("contrast.model_prob vs reference", tu_json_num(c, "model_prob"),
                   exp(log_softmax(r.logitsL, r.m->hp.n_vocab, cid)), 1e-5);
    /* the lists are ranked by the contrast score */
    check_sorted(tu_json_get(j, "ffn_neurons"), "contrast", "ffn_neurons by contrast");
    check_sorted(tu_json_get(j, "head_positions"), "contrast", "head_positions by contrast");
    assert_string_equal(str(tu_json_get(j, "ranking"), "key"), "contrast");
    ref_free(&r);
    cJSON_Delete(j);
}

static void test_contrast(void **state) {
    (void)state;
    check_contrast(GPT2S, P_TIM, "--vs ' he' --tokens 1");
    check_contrast(STORIES, P_TIM, "--target ' Tim' --vs ' he'");
}

static void test_lens(void **state) {
    (void)state;
    cJSON *j = explain_json(GPT2S, P_TIM, "--lens exact --top 3 --tokens 0");
    assert_string_equal(str(j, "lens"), "exact");
    check_prob_is_model("GPT-2 exact lens: target.prob vs model_prob", j);
    /* the exact lens still telescopes, to its own end points */
    assert_close_d("exact lens: layer sum vs telescoped", layer_sum(j, "lpi"),
                   log(tu_json_num(tu_json_get(j, "target"), "prob")) -
                       log(tu_json_num(cJSON_GetArrayItem(tu_json_get(j, "layers"), 0), "p_in")),
                   1e-4);
    cJSON_Delete(j);

    /* logit lens: only the layer table changes; it ends at the model's p */
    cJSON *a = explain_json(GPT2S, P_TIM, "--lens logit-lens --top 5 --tokens 0");
    cJSON *b = explain_json(GPT2S, P_TIM, "--top 5 --tokens 0");
    /* GPT-2 paper lens: the final-norm bias is dropped, so p differs */
    assert_true(fabs(tu_json_num(tu_json_get(b, "target"), "prob") -
                     tu_json_num(tu_json_get(b, "target"), "model_prob")) > 1e-3);
    assert_string_equal(str(a, "lens"), "logit-lens");
    assert_string_equal(str(a, "unit_lens"), "paper");
    check_prob_is_model("logit lens: target.prob vs model_prob", a);
    assert_close_d("logit lens: layer sum vs telescoped", layer_sum(a, "lpi"),
                   tu_json_num(tu_json_get(a, "layer_totals"), "telescoped"), 1e-4);
    same_units(a, b, "ffn_neurons");
    same_units(a, b, "head_positions");
    cJSON_Delete(a);
    cJSON_Delete(b);
}

static void test_text_and_file(void **state) {
    (void)state;
    char *path = tu_write_temp("explain.json", "", 0);
    char args[600];
    snprintf(args, sizeof args, "--top 3 --json '%s'", path);
    int st;
    char *out = run_cli("explain", STORIES, P_RED, args, false, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "Layers (LPI in the paper lens"));
    assert_non_null(strstr(out, "Top 3 FFN neurons by LPI"));
    assert_non_null(strstr(out, "Query layers (Q1)"));
    size_t n;
    uint8_t *data = tu_read_file(path, &n);
    cJSON *j = cJSON_ParseWithLength((const char *)data, n);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(tu_json_get(j, "ffn_neurons")), 3);
    cJSON_Delete(j);
    free(data);
    free(out);
    remove(path);
    free(path);
    expect_output("explain", STORIES, P_RED, "--json /nonexistent-dir/x.json", 1,
                  "/nonexistent-dir/x.json", NULL);
}

/* ------------------------------------------------------------------------- */
/* resid neuron                                                              */
/* ------------------------------------------------------------------------- */

static void test_neuron(void **state) {
    (void)state;
    int st;
    char *out = run_cli("neuron", GPT2S, NULL, "2_421 --json --top 4", false, &st);
    assert_int_equal(st, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_string_equal(str(j, "id"), "2_421");
    assert_int_equal(cJSON_GetArraySize(tu_json_get(j, "top_tokens")), 4);
    assert_int_equal(cJSON_GetArraySize(tu_json_get(j, "bottom_tokens")), 4);
    check_sorted(tu_json_get(j, "top_tokens"), "bs", "neuron top tokens");
    /* the fc1 key norm, recomputed from the weights */
    resid_model *m = tu_open_model(GPT2S);
    const int D = m->hp.d_model;
    float *w = malloc((size_t)D * sizeof *w);
    resid_error err;
    assert_int_equal(resid_param_vector(m, RESID_PARAM_FC1, 2, 421, w, &err), RESID_OK);
    double ss = 0;
    for (int d = 0; d < D; d++)
        ss += (double)w[d] * w[d];
    assert_close_d("fc1 norm", tu_json_num(tu_json_get(j, "key"), "fc1_norm"), sqrt(ss), 1e-5);
    /* the direct-path coefficient of the top input token, recomputed */
    const cJSON *it = cJSON_GetArrayItem(tu_json_get(j, "input_top_tokens"), 0);
    const int t = (int)tu_json_num(it, "id");
    float *e = malloc((size_t)D * sizeof *e);
    rs_tensor_rows(m->tok_embd, t, 1, e);
    const rs_layer *ly = &m->layers[2];
    double mean = 0, var = 0;
    for (int d = 0; d < D; d++)
        mean += e[d];
    mean /= D;
    for (int d = 0; d < D; d++)
        var += (e[d] - mean) * (e[d] - mean);
    double sig = sqrt(var / D + m->hp.norm_eps), pre = ly->b_up[421];
    for (int d = 0; d < D; d++)
        pre += ((e[d] - mean) / sig * ly->ffn_norm_w[d] + ly->ffn_norm_b[d]) * w[d];
    double gelu = 0.5 * pre * (1 + tanh(sqrt(2 / M_PI) * (pre + 0.044715 * pre * pre * pre)));
    assert_close_d("direct-path coefficient of the top input token", tu_json_num(it, "coef"), gelu,
                   1e-4);
    free(w), free(e);
    resid_model_free(m);
    cJSON_Delete(j);
    free(out);

    out = run_cli("neuron", STORIES, NULL, "2_84", false, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "|gate|"));
    free(out);

    expect_output("neuron", GPT2S, NULL, "1_512", 1, "out of range", "0..511");
    expect_output("neuron", STORIES, NULL, "5_0", 1, "0..4", NULL);
    expect_output("neuron", STORIES, NULL, "five", 2, "L_K", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_stories),     cmocka_unit_test(test_schema_gpt2),
        cmocka_unit_test(test_exhaustive_stories), cmocka_unit_test(test_exhaustive_gpt2),
        cmocka_unit_test(test_bottom),
        cmocka_unit_test(test_target_text),        cmocka_unit_test(test_top_clamped),
        cmocka_unit_test(test_contrast),           cmocka_unit_test(test_lens),
        cmocka_unit_test(test_text_and_file),      cmocka_unit_test(test_neuron),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
