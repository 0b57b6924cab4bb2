/*
 * cmd_run.c - `resid run MODEL -p TEXT`: the model's next-token
 * distribution after the prompt, top K by probability.
 */
#include <math.h>
#include <stdlib.h>

#include "common.h"

static const char help[] =
    "Usage: resid run MODEL (-p TEXT | --ids LIST) [--top K] [--json]\n"
    "\n"
    "Runs the model on the prompt and shows the distribution of the next\n"
    "token: rank, id, token text (quoted, control bytes escaped), probability\n"
    "and log-probability, best first. An empty prompt (-p \"\") means BOS alone;\n"
    "for a model that adds no BOS (GPT-2) the BOS/EOS token (<|endoftext|>) is\n"
    "used instead, with a note on stderr.\n"
    "\n"
    "Options:\n" CLI_HELP_PROMPT "  -k, --top K          how many tokens to show (default 10)\n"
    "      --json           print {\"tokens\":[...], \"top\":[{\"id\",\"text\",\"prob\",\n"
    "                       \"logprob\"}...]}\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  resid run $RESID_MODELS/tinyllamas/stories260K.bin -p \"Once upon a\"\n"
    "  resid run $RESID_MODELS/tinyllamas/stories260K.bin --ids 1,403,407 --top 5 --json\n";

enum { OPT_TOP = 'k' };

typedef struct ranked {
    int32_t id;
    double logprob;
} ranked;

/* Descending log-probability; ties by ascending id. */
static int cmp_ranked(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->logprob != b->logprob) return a->logprob > b->logprob ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* log-softmax of logits[V] in double, sorted best first into out[V]. */
static void rank_logits(const float *logits, int32_t V, ranked *out) {
    double mx = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    for (int32_t i = 0; i < V; i++)
        out[i] = (ranked){i, (double)logits[i] - lse};
    qsort(out, (size_t)V, sizeof *out, cmp_ranked);
}

static int print_top(const resid_tokenizer *tok, const int32_t *ids, int32_t n, const ranked *r,
                     int32_t k, bool json) {
    int32_t last = ids[n - 1];
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *toks = root ? cli_json_tokens(tok, ids, n) : NULL;
        cJSON *top = toks ? cJSON_CreateArray() : NULL;
        if (!top) {
            cJSON_Delete(toks);
            cJSON_Delete(root);
            return cli_json_print(NULL);
        }
        cJSON_AddItemToObject(root, "tokens", toks);
        cJSON_AddItemToObject(root, "top", top);
        for (int32_t i = 0; i < k; i++) {
            cJSON *e = cli_json_token(tok, last, r[i].id);
            if (!e) {
                cJSON_Delete(root);
                return cli_json_print(NULL);
            }
            cJSON_AddItemToArray(top, e);
            cJSON_AddNumberToObject(e, "prob", exp(r[i].logprob));
            cJSON_AddNumberToObject(e, "logprob", r[i].logprob);
        }
        return cli_json_print(root);
    }
    printf("%d prompt tokens:", n);
    for (int32_t i = 0; i < n; i++)
        printf(" %d", ids[i]);
    printf("\n%4s %7s  %-24s %10s %10s\n", "rank", "id", "token", "prob", "logprob");
    for (int32_t i = 0; i < k; i++) {
        printf("%4d %7d  ", i + 1, r[i].id);
        int w;
        if (tok) {
            size_t len;
            const char *b = resid_token_bytes(tok, last, r[i].id, &len);
            w = cli_fput_quoted(stdout, b ? b : "", b ? len : 0);
        } else {
            w = printf("-");
        }
        printf("%*s %10.6f %10.4f\n", w < 24 ? 24 - w : 0, "", exp(r[i].logprob), r[i].logprob);
    }
    return CLI_EXIT_OK;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"top", required_argument, NULL, OPT_TOP},
        {NULL, 0, NULL, 0},
    };
    cli_int_option top = {"--top", 1, INT32_MAX, 10};
    cli_args a;
    int r = cli_parse(cmd, argc, argv, CLI_OPT_PROMPT | CLI_OPT_JSON, extra,
                      "k:", cli_on_int_option, &top, &a);
    if (r != CLI_CONTINUE) return r;
    const int32_t k = (int32_t)top.value;
    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    const int32_t V = resid_model_get_info(m)->n_vocab;
    int32_t *ids = NULL, n = 0;
    resid_trace *tr = NULL;
    ranked *rk = NULL;
    r = cli_prompt_ids(cmd, &a, tok, V, CLI_PROMPT_NONEMPTY, &ids, &n);
    if (r == CLI_EXIT_OK) {
        resid_trace_opts to = resid_trace_defaults();
        to.capture = RESID_CAP_LOGITS;
        to.positions = RESID_POS_LAST;
        resid_error err;
        if (resid_forward(m, ids, n, &to, &tr, &err) != RESID_OK) r = cli_lib_error(&err);
    }
    if (r == CLI_EXIT_OK) {
        rk = malloc((size_t)V * sizeof *rk);
        if (!rk) r = cli_error("out of memory");
    }
    if (r == CLI_EXIT_OK) {
        /* the last captured row is position n-1 */
        rank_logits(tr->logits + (size_t)(tr->n_cap - 1) * (size_t)V, V, rk);
        r = print_top(tok, ids, n, rk, k < V ? k : V, a.json);
    }
    free(rk);
    resid_trace_free(tr);
    free(ids);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_run = {"run", "show the next-token distribution after a prompt", help,
                                 run};
