/*
 * cmd_generate.c - `resid generate MODEL -p TEXT -n N`: greedy decoding
 * with the KV-cache session, streaming the text as it is produced.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const char help[] =
    "Usage: resid generate MODEL (-p TEXT | --ids LIST) [-n N] [--json]\n"
    "\n"
    "Greedy generation: appends the most probable token, N times, and prints\n"
    "the decoded text, prompt included, as it is produced. Stops early at the\n"
    "BOS token (as llama2.c's run.c does) or EOS, or when the context is full.\n"
    "An empty prompt (-p \"\") starts from BOS alone (GPT-2: <|endoftext|>).\n"
    "Without a tokenizer (--ids) the token ids are printed instead of text.\n"
    "\n"
    "Options:\n" CLI_HELP_PROMPT "  -n, --tokens N       how many tokens to generate (default 32)\n"
    "      --json           print {\"tokens\":[...], \"generated\":[{\"id\",\"text\"}...],\n"
    "                       \"text\":\"...\", \"stop\":\"length|eos|context\"} at the "
    "end\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  resid generate $RESID_MODELS/tinyllamas/stories260K.bin -p \"\" -n 200\n"
    "  resid generate $RESID_MODELS/tinyllamas/stories260K.bin -p \"Once upon a time\" -n 40 "
    "--json\n";

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Streams token `id` (after `prev`) to stdout: its bytes, or " id" without
 * a tokenizer. */
static void emit(const resid_tokenizer *tok, int32_t prev, int32_t id, bool first) {
    if (tok) {
        size_t len;
        const char *b = resid_token_bytes(tok, prev, id, &len);
        if (b) fwrite(b, 1, len, stdout);
    } else {
        printf(first ? "%d" : " %d", id);
    }
    fflush(stdout);
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"tokens", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    cli_int_option tokens = {"-n", 0, INT32_MAX, 32};
    cli_args a;
    int r = cli_parse(cmd, argc, argv, CLI_OPT_PROMPT | CLI_OPT_JSON, extra,
                      "n:", cli_on_int_option, &tokens, &a);
    if (r != CLI_CONTINUE) return r;
    const int32_t n_gen = (int32_t)tokens.value;
    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    const resid_model_info *in = resid_model_get_info(m);
    const int32_t V = in->n_vocab;
    int32_t *ids = NULL, n = 0;
    float *logits = NULL;
    resid_session *s = NULL;
    resid_error err;
    r = cli_prompt_ids(cmd, &a, tok, V, CLI_PROMPT_NONEMPTY, &ids, &n);
    if (r == CLI_EXIT_OK && n > in->n_ctx)
        r = cli_error("the prompt has %d tokens, more than the model's context of %d", n,
                      in->n_ctx);
    if (r == CLI_EXIT_OK) {
        /* room for the generated tokens */
        int32_t cap = n + (n_gen < in->n_ctx ? n_gen : in->n_ctx);
        int32_t *g = realloc(ids, (size_t)cap * sizeof *g);
        logits = malloc((size_t)V * sizeof *logits);
        if (g) ids = g;
        if (!g || !logits) r = cli_error("out of memory");
    }
    if (r == CLI_EXIT_OK && resid_session_new(m, &s, &err) != RESID_OK) r = cli_lib_error(&err);
    if (r == CLI_EXIT_OK && resid_session_eval(s, ids, n, logits, &err) != RESID_OK)
        r = cli_lib_error(&err);
    if (r != CLI_EXIT_OK) goto done;

    if (!a.json)
        for (int32_t i = 0; i < n; i++)
            emit(tok, i ? ids[i - 1] : -1, ids[i], i == 0);
    const int32_t n_prompt = n;
    int32_t bos = tok ? resid_tokenizer_bos(tok) : -1, eos = tok ? resid_tokenizer_eos(tok) : -1;
    const char *stop = "length";
    for (int32_t step = 0; step < n_gen; step++) {
        int32_t next = argmax(logits, V);
        if (next == bos || next == eos) {
            stop = "eos";
            break;
        }
        ids[n++] = next;
        if (!a.json) emit(tok, ids[n - 2], next, false);
        if (step + 1 == n_gen) break;
        if (n >= in->n_ctx) {
            stop = "context";
            break;
        }
        if (resid_session_eval(s, &next, 1, logits, &err) != RESID_OK) {
            if (!a.json) putchar('\n');
            r = cli_lib_error(&err);
            goto done;
        }
    }
    if (!a.json) {
        putchar('\n');
        if (strcmp(stop, "length") != 0)
            fprintf(stderr, "resid: stopped at %s after %d tokens\n",
                    strcmp(stop, "eos") == 0 ? "the end-of-text token" : "the context limit",
                    n - n_prompt);
        r = fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error("writing the output failed");
    } else {
        cJSON *root = cJSON_CreateObject();
        cJSON *pt = root ? cli_json_tokens(tok, ids, n_prompt) : NULL;
        cJSON *gen = pt ? cJSON_CreateArray() : NULL;
        bool ok = gen != NULL;
        if (ok) {
            cJSON_AddItemToObject(root, "tokens", pt);
            cJSON_AddItemToObject(root, "generated", gen);
        } else {
            cJSON_Delete(pt);
        }
        for (int32_t i = n_prompt; ok && i < n; i++) {
            cJSON *e = cli_json_token(tok, ids[i - 1], ids[i]);
            if (!e)
                ok = false;
            else
                cJSON_AddItemToArray(gen, e);
        }
        if (ok && tok) {
            char *text;
            size_t len;
            if (resid_detokenize(tok, ids, n, &text, &len, &err) != RESID_OK) {
                cJSON_Delete(root);
                r = cli_lib_error(&err);
                goto done;
            }
            ok = cli_json_add_text(root, "text", text, len);
            free(text);
        }
        if (ok) ok = cJSON_AddStringToObject(root, "stop", stop) != NULL;
        if (!ok) {
            cJSON_Delete(root);
            root = NULL;
        }
        r = cli_json_print(root);
    }
done:
    resid_session_free(s);
    free(logits);
    free(ids);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_generate = {"generate", "greedy generation from a prompt", help, run};
