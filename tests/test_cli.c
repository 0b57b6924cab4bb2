/*
 * test_cli.c - the `resid` command-line tool, run as a program ($RESID_CLI)
 * and checked against independent references: model dimensions from the
 * llama2.c header and config.json, token ids from llama.cpp's vocab tests
 * and tokenization, llama.cpp's next-token probabilities, the llama2.c
 * greedy text, the HF corpus of tiny-random-llama-2; plus the library's own
 * answers (the CLI must show exactly what the library computes) and every
 * error path (exit codes 1/2 and clear messages).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------- */

/* The shell line `resid ARGS` (ARGS already shell-quoted), stderr merged
 * into stdout or dropped. malloc'd. */
static char *cli_line(const char *args, bool merge_stderr) {
    char *exe = tu_sh_quote(tu_cli());
    size_t n = strlen(exe) + strlen(args) + 32;
    char *cmd = malloc(n);
    snprintf(cmd, n, "%s %s %s", exe, args, merge_stderr ? "2>&1" : "2>/dev/null");
    free(exe);
    return cmd;
}

/* Runs `resid ARGS`; returns the output (malloc'd) and the exit status. */
static char *run_args(const char *args, bool merge_stderr, int *status) {
    char *cmd = cli_line(args, merge_stderr);
    char *out = tu_run(cmd, status);
    free(cmd);
    return out;
}

/* f and its arguments formatted into a malloc'd string. */
static char *vfmt(const char *f, va_list ap) {
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, f, aq);
    va_end(aq);
    char *s = malloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, f, ap);
    return s;
}

/* run_args with ARGS formatted from f. */
static char *run_cli(bool merge_stderr, int *status, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static char *run_cli(bool merge_stderr, int *status, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    char *args = vfmt(f, ap);
    va_end(ap);
    char *out = run_args(args, merge_stderr, status);
    free(args);
    return out;
}

/* Runs the CLI with ARGS formatted from f, expects exit 0 and JSON on
 * stdout; returns it parsed. */
static cJSON *run_json(const char *f, ...) __attribute__((format(printf, 1, 2)));
static cJSON *run_json(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    char *args = vfmt(f, ap);
    va_end(ap);
    char *cmd = cli_line(args, false);
    cJSON *j = tu_run_json(cmd);
    free(cmd);
    free(args);
    return j;
}

/* Quoted path of a fixture. */
static char *model_arg(const char *rel) {
    char *p = tu_model_path(rel);
    char *q = tu_sh_quote(p);
    free(p);
    return q;
}

static int json_int(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return v->valueint;
}

static double json_num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

/* The ids of j's {"tokens":[{"id":..}]} array (malloc'd); *n their count. */
static int32_t *token_ids(const cJSON *j, int *n) {
    const cJSON *arr = cJSON_GetObjectItem(j, "tokens");
    assert_true(cJSON_IsArray(arr));
    *n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc(((size_t)*n + 1) * sizeof *ids);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) ids[i++] = json_int(e, "id");
    return ids;
}

/* j's token ids are exactly want[0..n_want). */
static void check_ids(const cJSON *j, const int32_t *want, int n_want) {
    int n;
    int32_t *ids = token_ids(j, &n);
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, (size_t)n * sizeof *ids);
    free(ids);
}

static void assert_contains(const char *hay, const char *needle) {
    if (!strstr(hay, needle)) {
        print_error("expected \"%s\" in:\n%s\n", needle, hay);
        fail();
    }
}

/* ------------------------------------------------------------------------- */
/* info                                                                      */
/* ------------------------------------------------------------------------- */

/* Dimensions as the llama2.c header of stories260K states them
 * (PROVENANCE.md): dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads,
 * vocab 512, seq_len 512, shared classifier. */
static void check_stories_dims(const cJSON *j) {
    assert_string_equal(cJSON_GetObjectItem(j, "arch")->valuestring, "llama");
    assert_int_equal(json_int(j, "n_layer"), 5);
    assert_int_equal(json_int(j, "d_model"), 64);
    assert_int_equal(json_int(j, "n_head"), 8);
    assert_int_equal(json_int(j, "n_kv_head"), 4);
    assert_int_equal(json_int(j, "d_head"), 8);
    assert_int_equal(json_int(j, "d_ffn"), 172);
    assert_int_equal(json_int(j, "n_vocab"), 512);
    assert_int_equal(json_int(j, "n_ctx"), 512);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "tied_output")));
    assert_string_equal(cJSON_GetObjectItem(j, "rope")->valuestring, "interleaved");
    assert_true(fabs(json_num(j, "norm_eps") - 1e-5) < 1e-12);
    /* 512·64 embedding + 5·(2·64 + 64·64·2 + 64·32·2 + 3·172·64) + 64 */
    int64_t params = 512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 64 * 32 + 3 * 172 * 64) + 64;
    assert_int_equal((int64_t)json_num(j, "n_params"), params);
    const cJSON *tok = cJSON_GetObjectItem(j, "tokenizer");
    assert_true(cJSON_IsObject(tok));
    assert_string_equal(cJSON_GetObjectItem(tok, "kind")->valuestring, "spm");
    assert_int_equal(json_int(tok, "n_vocab"), 512);
    assert_int_equal(json_int(tok, "bos"), 1);
    assert_int_equal(json_int(tok, "eos"), 2);
}

static void test_info_stories(void **state) {
    const char *files[] = {"tinyllamas/stories260K.bin", "derived/stories260K.gguf"};
    const char *formats[] = {"llama2.c", "gguf"};
    for (int f = 0; f < 2; f++) {
        char *m = model_arg(files[f]);
        cJSON *j = run_json("info %s --json --tensors", m);
        assert_string_equal(cJSON_GetObjectItem(j, "format")->valuestring, formats[f]);
        check_stories_dims(j);
        /* --tensors: one entry per tensor, shapes multiply to n_params */
        const cJSON *ts = cJSON_GetObjectItem(j, "tensors");
        assert_int_equal(cJSON_GetArraySize(ts), json_int(j, "n_tensors"));
        double total = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, ts) {
            const cJSON *sh = cJSON_GetObjectItem(t, "shape");
            assert_int_equal(cJSON_GetArraySize(sh), 2);
            total +=
                cJSON_GetArrayItem(sh, 0)->valuedouble * cJSON_GetArrayItem(sh, 1)->valuedouble;
            assert_non_null(cJSON_GetObjectItem(t, "role")->valuestring);
        }
        /* tied output: the embedding is listed once */
        assert_true(total == json_num(j, "n_params"));
        cJSON_Delete(j);

        /* text output shows the same dimensions */
        int st;
        char *out = run_cli(false, &st, "info %s", m);
        assert_int_equal(st, 0);
        assert_contains(out, "n_layer      5\n");
        assert_contains(out, "d_ffn        172\n");
        assert_contains(out, "n_kv_head    4\n");
        free(out);
        free(m);
    }
}

static void test_info_gpt2_hf(void **state) {
    cJSON *cfg = tu_load_json("tiny-gpt2/config.json");
    char *m = model_arg("tiny-gpt2");
    cJSON *j = run_json("info %s --json", m);
    assert_string_equal(cJSON_GetObjectItem(j, "arch")->valuestring, "gpt2");
    assert_string_equal(cJSON_GetObjectItem(j, "format")->valuestring, "huggingface");
    int n_embd = json_int(cfg, "n_embd"), n_head = json_int(cfg, "n_head");
    assert_int_equal(json_int(j, "n_layer"), json_int(cfg, "n_layer"));
    assert_int_equal(json_int(j, "d_model"), n_embd);
    assert_int_equal(json_int(j, "n_head"), n_head);
    assert_int_equal(json_int(j, "n_kv_head"), n_head);
    assert_int_equal(json_int(j, "d_head"), n_embd / n_head);
    assert_int_equal(json_int(j, "d_ffn"), 4 * n_embd); /* n_inner null */
    assert_int_equal(json_int(j, "n_vocab"), json_int(cfg, "vocab_size"));
    assert_int_equal(json_int(j, "n_ctx"), json_int(cfg, "n_positions"));
    assert_true(fabs(json_num(j, "norm_eps") - json_num(cfg, "layer_norm_epsilon")) < 1e-12);
    assert_string_equal(cJSON_GetObjectItem(j, "rope")->valuestring, "none");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "has_bias")));
    const cJSON *tok = cJSON_GetObjectItem(j, "tokenizer");
    assert_string_equal(cJSON_GetObjectItem(tok, "kind")->valuestring, "bpe");
    assert_int_equal(json_int(tok, "eos"), 50256);
    cJSON_Delete(j);
    cJSON_Delete(cfg);
    free(m);
}

/* ------------------------------------------------------------------------- */
/* tokenize                                                                  */
/* ------------------------------------------------------------------------- */

static void test_tokenize_stories(void **state) {
    /* the library's answer */
    resid_model *lm = tu_open_model("tinyllamas/stories260K.bin");
    const resid_tokenizer *tok = resid_model_tokenizer(lm);
    assert_non_null(tok);
    resid_encode_opts eo = resid_encode_defaults(tok);
    int32_t *ref;
    int32_t n_ref;
    resid_error err;
    assert_int_equal(resid_tokenize(tok, "Once upon a time", -1, &eo, &ref, &n_ref, &err),
                     RESID_OK);

    char *m = model_arg("tinyllamas/stories260K.bin");
    cJSON *j = run_json("tokenize %s -p 'Once upon a time' --json", m);
    check_ids(j, ref, n_ref);
    /* BOS, then llama.cpp's ids for this text (quant/forward-ref.json
     * story20: 1 403 407 261 378 ...) */
    const int32_t llama_cpp[] = {1, 403, 407, 261, 378};
    check_ids(j, llama_cpp, 5);
    /* the texts concatenate to the prompt */
    char buf[256] = "";
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "tokens"))
        strcat(buf, cJSON_GetObjectItem(e, "text")->valuestring);
    assert_string_equal(buf, "Once upon a time");
    cJSON_Delete(j);

    /* --no-bos drops exactly the BOS */
    j = run_json("tokenize %s -p 'Once upon a time' --no-bos --json", m);
    check_ids(j, ref + 1, n_ref - 1);
    cJSON_Delete(j);

    /* the full story20 sentence, against llama.cpp's 20 ids */
    cJSON *fr = tu_load_json("quant/forward-ref.json");
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(fr, "prompts"), 2);
    assert_string_equal(cJSON_GetObjectItem(p, "name")->valuestring, "story20");
    char *text = tu_sh_quote(cJSON_GetObjectItem(p, "text")->valuestring);
    j = run_json("tokenize %s -p %s --json", m, text);
    int n;
    int32_t *ids = token_ids(j, &n);
    const cJSON *want = cJSON_GetObjectItem(p, "ids");
    assert_int_equal(n, cJSON_GetArraySize(want));
    for (int i = 0; i < n; i++)
        assert_int_equal(ids[i], cJSON_GetArrayItem(want, i)->valueint);
    free(ids);
    cJSON_Delete(j);
    cJSON_Delete(fr);
    free(text);

    /* the tokenizer alone (tok512.bin) gives the same ids */
    char *t = model_arg("tinyllamas/tok512.bin");
    j = run_json("tokenize %s -p 'Once upon a time' --json", t);
    check_ids(j, ref, n_ref);
    cJSON_Delete(j);
    free(t);

    free(m);
    free(ref);
    resid_model_free(lm);
}

/* Splits the llama.cpp vocab test inputs at "\n__ggml_vocab_test__\n". */
static int split_cases(char *s, char **out, int max) {
    const char *sep = "\n__ggml_vocab_test__\n";
    int n = 0;
    while (*s && n < max) {
        char *e = strstr(s, sep);
        if (!e) break;
        *e = 0;
        out[n++] = s;
        s = e + strlen(sep);
    }
    return n;
}

/* tokenizer-only GGUF: every llama.cpp test case of ggml-vocab-gpt-2. */
static void test_tokenize_vocab_gguf(void **state) {
    char *inp_path = tu_model_path("llama.cpp-vocab/ggml-vocab-gpt-2.gguf.inp");
    char *out_path = tu_model_path("llama.cpp-vocab/ggml-vocab-gpt-2.gguf.out");
    size_t n_inp, n_out;
    char *inp = (char *)tu_read_file(inp_path, &n_inp);
    char *outs = (char *)tu_read_file(out_path, &n_out);
    inp = realloc(inp, n_inp + 1);
    inp[n_inp] = 0;
    outs = realloc(outs, n_out + 1);
    outs[n_out] = 0;
    char *cases[128];
    int n_cases = split_cases(inp, cases, 128);
    assert_true(n_cases >= 40);
    char *m = model_arg("llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
    char *line = outs;
    int checked = 0;
    for (int c = 0; c < n_cases; c++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = 0;
        char *q = tu_sh_quote(cases[c]);
        cJSON *j = run_json("tokenize %s -p %s --json", m, q);
        int n;
        int32_t *ids = token_ids(j, &n);
        /* expected: space-separated ids */
        int k = 0;
        for (char *p = line; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            if (k >= n || ids[k] != v) {
                print_error("case %d %s: id %d is %d, llama.cpp %ld\n", c, q, k,
                            k < n ? ids[k] : -1, v);
                fail();
            }
            k++;
            p = end;
        }
        assert_int_equal(k, n);
        checked++;
        free(ids);
        cJSON_Delete(j);
        free(q);
        line = nl + 1;
    }
    printf("  ggml-vocab-gpt-2: %d/%d llama.cpp cases equal\n", checked, n_cases);

    /* --parse-special turns <|endoftext|> into 50256 */
    cJSON *j = run_json("tokenize %s -p 'Hi<|endoftext|>' --parse-special --json", m);
    int n;
    int32_t *ids = token_ids(j, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[1], 50256);
    free(ids);
    cJSON_Delete(j);
    /* ... and is literal text without it */
    j = run_json("tokenize %s -p 'Hi<|endoftext|>' --json", m);
    ids = token_ids(j, &n);
    assert_true(n > 2);
    for (int i = 0; i < n; i++)
        assert_int_not_equal(ids[i], 50256);
    free(ids);
    cJSON_Delete(j);

    free(m);
    free(inp);
    free(outs);
    free(inp_path);
    free(out_path);
}

/* Byte tokens that are not UTF-8 on their own still give valid JSON, with
 * their exact bytes in "bytes". */
static void test_tokenize_byte_tokens_json(void **state) {
    char *m = model_arg("llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
    /* U+1F999 has no piece: byte fallback <0xF0><0x9F><0xA6><0x99> */
    /* run_json fails unless the output parses */
    cJSON *j = run_json("tokenize %s -p '\xF0\x9F\xA6\x99' --no-bos --json", m);
    const cJSON *arr = cJSON_GetObjectItem(j, "tokens");
    char hex[64] = "";
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *b = cJSON_GetObjectItem(e, "bytes");
        if (b) {
            if (hex[0]) strcat(hex, " ");
            strcat(hex, b->valuestring);
        }
    }
    assert_string_equal(hex, "f0 9f a6 99");
    cJSON_Delete(j);
    free(m);
}

/* ------------------------------------------------------------------------- */
/* run                                                                       */
/* ------------------------------------------------------------------------- */

static void test_run_stories(void **state) {
    char *m = model_arg("tinyllamas/stories260K.bin");
    cJSON *j = run_json("run %s -p 'Once upon a time' --top 5 --json", m);
    int n;
    int32_t *ids = token_ids(j, &n);
    const cJSON *top = cJSON_GetObjectItem(j, "top");
    assert_int_equal(cJSON_GetArraySize(top), 5);

    /* the library's distribution for the same ids */
    resid_model *lm = tu_open_model("tinyllamas/stories260K.bin");
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_CAP_LOGITS;
    to.positions = RESID_POS_LAST;
    resid_trace *tr;
    resid_error err;
    assert_int_equal(resid_forward(lm, ids, n, &to, &tr, &err), RESID_OK);
    const float *lg = tr->logits + (size_t)(tr->n_cap - 1) * 512;
    int32_t amax = 0;
    double mx = lg[0], z = 0;
    for (int i = 1; i < 512; i++)
        if (lg[i] > lg[amax]) amax = i, mx = lg[i];
    for (int i = 0; i < 512; i++)
        z += exp(lg[i] - mx);

    double sum = 0, prev = 2, worst = 0;
    int rank = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, top) {
        double p = json_num(e, "prob"), lp = json_num(e, "logprob");
        int id = json_int(e, "id");
        assert_true(p <= prev); /* sorted */
        assert_true(fabs(exp(lp) - p) < 1e-12);
        double ref = exp(lg[id] - mx) / z;
        if (fabs(ref - p) > worst) worst = fabs(ref - p);
        if (rank == 0) assert_int_equal(id, amax);
        assert_non_null(cJSON_GetObjectItem(e, "text"));
        prev = p;
        sum += p;
        rank++;
    }
    printf("  run top-5 vs library softmax maxdiff %.3g (tol 1e-9), sum %.6f\n", worst, sum);
    assert_true(worst <= 1e-9);
    assert_true(sum <= 1 + 1e-12);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "text")->valuestring, ",");
    resid_trace_free(tr);
    resid_model_free(lm);
    free(ids);
    cJSON_Delete(j);

    /* llama.cpp's distribution after BOS (derived/stories260K.llamacpp-ref) */
    cJSON *ref = tu_load_json("derived/stories260K.llamacpp-ref.json");
    const cJSON *step0 = cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "top5_probs_per_step"), 0);
    j = run_json("run %s --ids 1 --top 5 --json", m);
    top = cJSON_GetObjectItem(j, "top");
    worst = 0;
    for (int i = 0; i < 5; i++) {
        const cJSON *want = cJSON_GetArrayItem(step0, i);
        const cJSON *got = cJSON_GetArrayItem(top, i);
        assert_int_equal(json_int(got, "id"), cJSON_GetArrayItem(want, 0)->valueint);
        double d = fabs(json_num(got, "prob") - cJSON_GetArrayItem(want, 1)->valuedouble);
        if (d > worst) worst = d;
    }
    printf("  run --ids 1 top-5 vs llama.cpp maxdiff %.3g (tol 1e-5)\n", worst);
    assert_true(worst <= 1e-5);
    cJSON_Delete(j);
    cJSON_Delete(ref);

    /* an empty prompt is BOS alone: the same distribution */
    j = run_json("run %s -p '' --top 1 --json", m);
    ids = token_ids(j, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    assert_int_equal(json_int(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "top"), 0), "id"), 403);
    free(ids);
    cJSON_Delete(j);
    free(m);
}

/* tiny-random-llama-2 has no tokenizer: --ids; the HF corpus gives its
 * greedy token and some logits (log-prob differences = logit differences). */
static void test_run_ids_no_tokenizer(void **state) {
    cJSON *corpus = tu_load_json("tiny-random-llama-2/corpus.json");
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(corpus, "model_cases"), 2);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(c, "input_ids")), 3);
    int greedy = json_int(c, "greedy_token");
    const cJSON *lg = cJSON_GetObjectItem(c, "sampled_logits");

    char *m = model_arg("tiny-random-llama-2");
    cJSON *j = run_json("run %s --ids 1,42,99 --top 32000 --json", m);
    int n;
    int32_t *ids = token_ids(j, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 42);
    assert_int_equal(ids[2], 99);
    const cJSON *top = cJSON_GetObjectItem(j, "top");
    assert_int_equal(json_int(cJSON_GetArrayItem(top, 0), "id"), greedy);
    /* no tokenizer: no "text" */
    assert_null(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "text"));
    /* logprob[id] - logprob[greedy] == logit[id] - logit[greedy] */
    double lp_greedy = json_num(cJSON_GetArrayItem(top, 0), "logprob");
    double ref_greedy = json_num(lg, "2185");
    assert_int_equal(greedy, 2185);
    double worst = 0;
    int found = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, top) {
        char key[16];
        snprintf(key, sizeof key, "%d", json_int(e, "id"));
        const cJSON *want = cJSON_GetObjectItem(lg, key);
        if (!want) continue;
        double d = fabs((json_num(e, "logprob") - lp_greedy) - (want->valuedouble - ref_greedy));
        if (d > worst) worst = d;
        found++;
    }
    printf("  run --ids 1,42,99: %d corpus logits, maxdiff %.3g (tol 1e-5)\n", found, worst);
    assert_int_equal(found, cJSON_GetArraySize(lg));
    assert_true(worst <= 1e-5);
    free(ids);
    cJSON_Delete(j);

    /* generate continues greedily as the corpus says */
    j = run_json("generate %s --ids 1,42,99 -n 4 --json", m);
    const cJSON *gen = cJSON_GetObjectItem(j, "generated");
    const cJSON *want = cJSON_GetObjectItem(c, "greedy_continuation");
    assert_int_equal(cJSON_GetArraySize(gen), cJSON_GetArraySize(want));
    for (int i = 0; i < cJSON_GetArraySize(want); i++)
        assert_int_equal(json_int(cJSON_GetArrayItem(gen, i), "id"),
                         cJSON_GetArrayItem(want, i)->valueint);
    cJSON_Delete(j);
    free(m);
    cJSON_Delete(corpus);
}

/* ------------------------------------------------------------------------- */
/* generate                                                                  */
/* ------------------------------------------------------------------------- */

static void test_generate_stories(void **state) {
    size_t n_ref;
    char *ref_path = tu_model_path("tinyllamas/stories260K.greedy200.txt");
    char *ref = (char *)tu_read_file(ref_path, &n_ref);
    char *m = model_arg("tinyllamas/stories260K.bin");
    int st;
    char *out = run_cli(false, &st, "generate %s -p '' -n 20", m);
    assert_int_equal(st, 0);
    size_t n = strlen(out);
    assert_true(n > 1 && out[n - 1] == '\n');
    out[--n] = 0;
    printf("  generate -n 20: %zu bytes: %s\n", n, out);
    assert_true(n >= 60 && n < n_ref);
    assert_memory_equal(out, ref, n);
    /* the 21st token would add more text: the output is not longer than 20 */
    free(out);

    /* 200 tokens: the whole llama2.c text, byte for byte */
    out = run_cli(false, &st, "generate %s -p '' -n 200", m);
    assert_int_equal(st, 0);
    assert_int_equal(strlen(out), n_ref + 1);
    assert_memory_equal(out, ref, n_ref);
    free(out);

    /* JSON: prompt tokens, 20 generated, text = prompt + generated */
    cJSON *j = run_json("generate %s -p 'Once upon a time' -n 20 --json", m);
    int np;
    int32_t *ids = token_ids(j, &np);
    assert_int_equal(np, 5);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "generated")), 20);
    const char *text = cJSON_GetObjectItem(j, "text")->valuestring;
    assert_memory_equal(text, ref, strlen(text)); /* the greedy story starts so */
    assert_string_equal(cJSON_GetObjectItem(j, "stop")->valuestring, "length");
    free(ids);
    cJSON_Delete(j);
    free(m);
    free(ref);
    free(ref_path);
}

/* ------------------------------------------------------------------------- */
/* errors and help                                                           */
/* ------------------------------------------------------------------------- */

/* `resid ARGS`, ARGS formatted from f, exits with status and says needle. */
static void expect_error(int status, const char *needle, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static void expect_error(int status, const char *needle, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    char *args = vfmt(f, ap);
    va_end(ap);
    int st;
    char *out = run_args(args, true, &st);
    if (st != status || !strstr(out, needle)) {
        print_error("resid %s: exit %d (want %d), output:\n%s\n(want \"%s\")\n", args, st, status,
                    out, needle);
        fail();
    }
    /* one line, no crash report */
    assert_null(strstr(out, "Sanitizer"));
    free(out);
    free(args);
}

static void test_errors(void **state) {
    char *stories = tu_model_path("tinyllamas/stories260K.bin");
    char *m = tu_sh_quote(stories);

    /* a missing file: exit 1, the message names the path */
    expect_error(1, "/nonexistent/dir/model.bin", "info /nonexistent/dir/model.bin");
    expect_error(1, "/nonexistent/dir/model.gguf", "run /nonexistent/dir/model.gguf -p hi");

    /* a truncated checkpoint */
    size_t size;
    uint8_t *data = tu_read_file(stories, &size);
    char *trunc = tu_write_temp("trunc.bin", data, 1000);
    char *tq = tu_sh_quote(trunc);
    expect_error(1, "truncated", "info %s", tq);
    expect_error(1, trunc, "run %s --ids 1", tq);
    remove(trunc);
    free(tq);
    free(trunc);
    free(data);

    /* -p on a model without a tokenizer points to --ids */
    char *rl = model_arg("tiny-random-llama-2");
    expect_error(1, "--ids", "run %s -p hello", rl);
    expect_error(1, "--ids", "generate %s -p hello", rl);
    free(rl);

    /* invalid UTF-8 */
    expect_error(1, "UTF-8", "run %s -p 'ab\xff'", m);
    expect_error(1, "UTF-8", "tokenize %s -p '\xc3'", m);

    /* longer than the context (512) */
    char *ids = malloc(600 * 4 + 1), *p = ids;
    for (int i = 0; i < 600; i++)
        p += sprintf(p, i ? ",%d" : "%d", i ? 300 : 1);
    expect_error(1, "512", "run %s --ids %s", m, ids);
    expect_error(1, "512", "generate %s --ids %s -n 2", m, ids);
    free(ids);

    /* usage errors: exit 2, "see resid CMD --help" */
    expect_error(2, "see resid run --help", "run %s -p hi --bogus", m);
    expect_error(2, "unknown option", "info %s -z", m);
    expect_error(2, "needs an argument", "run %s -p", m);
    expect_error(2, "missing MODEL", "run -p hi");
    expect_error(2, "-p TEXT or --ids", "run %s", m);
    expect_error(2, "out of range", "run %s --ids 1,512", m);
    expect_error(2, "--ids", "run %s --ids 1,x", m);
    expect_error(2, "--top", "run %s --top 0 -p hi", m);
    expect_error(2, "unexpected argument", "info %s %s", m, m);
    expect_error(2, "unknown command", "frobnicate x");
    expect_error(2, "unknown option", "--bogus info x");
    expect_error(2, "Usage", "%s", "");

    free(m);
    free(stories);
}

/* --tokenizer and --threads, after the command and before it: same ids and
 * the same distribution as without them. */
static void test_global_options(void **state) {
    char *m = model_arg("tinyllamas/stories260K.bin");
    char *t = model_arg("tinyllamas/tok512.bin");
    cJSON *j1 = run_json("run %s -p 'Once upon a' --top 3 --json", m);
    cJSON *j2 = run_json("--threads 1 --tokenizer %s run %s -p 'Once upon a' --top 3 --json", t, m);
    cJSON *j3 = run_json("run %s -p 'Once upon a' --top 3 --json --threads=2 --tokenizer=%s", m, t);
    char *s1 = cJSON_PrintUnformatted(j1), *s2 = cJSON_PrintUnformatted(j2),
         *s3 = cJSON_PrintUnformatted(j3);
    assert_string_equal(s1, s2);
    assert_string_equal(s1, s3);
    /* a tokenizer that does not exist is an error naming it */
    expect_error(1, "/nonexistent/tok.bin", "run %s -p hi --tokenizer /nonexistent/tok.bin", m);
    expect_error(2, "--threads", "--threads 0 info x");
    free(s1), free(s2), free(s3);
    cJSON_Delete(j1), cJSON_Delete(j2), cJSON_Delete(j3);
    free(m), free(t);
}

static void test_help(void **state) {
    const char *cmds[] = {"--help",     "-h",          "info --help", "tokenize --help",
                          "run --help", "generate -h", "run x --help"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        int st;
        char *out = run_cli(false, &st, "%s", cmds[i]);
        if (st != 0 || !strstr(out, "Usage") || !strstr(out, "stories260K.bin")) {
            print_error("resid %s: exit %d\n%s\n", cmds[i], st, out);
            fail();
        }
        free(out);
    }
    int st;
    char *out = run_cli(false, &st, "--version");
    assert_int_equal(st, 0);
    assert_contains(out, RESID_VERSION);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info_stories),
        cmocka_unit_test(test_info_gpt2_hf),
        cmocka_unit_test(test_tokenize_stories),
        cmocka_unit_test(test_tokenize_vocab_gguf),
        cmocka_unit_test(test_tokenize_byte_tokens_json),
        cmocka_unit_test(test_run_stories),
        cmocka_unit_test(test_run_ids_no_tokenizer),
        cmocka_unit_test(test_generate_stories),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_global_options),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
