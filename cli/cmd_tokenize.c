/*
 * cmd_tokenize.c - `resid tokenize MODEL -p TEXT`: the token ids the model
 * sees for a prompt, with their pieces and decoded text. MODEL may also be
 * a tokenizer alone (vocab-only GGUF, tokenizer.json, tokenizer.bin).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const char help[] =
    "Usage: resid tokenize MODEL -p TEXT [--no-bos] [--parse-special] [--json]\n"
    "\n"
    "Shows the tokens the model sees for TEXT: BOS first when the model adds\n"
    "one, then the ids of the text. MODEL may be a model or a tokenizer alone:\n"
    "a vocab-only GGUF, a tokenizer.json, a llama2.c tokenizer.bin (tok*.bin)\n"
    "or a folder holding one. Text output: position, id, the piece as stored\n"
    "in the vocabulary, and the decoded text (quoted, control bytes escaped).\n"
    "\n"
    "Options:\n" CLI_HELP_PROMPT
    "      --json           print "
    "{\"tokens\":[{\"id\":..,\"piece\":..,\"text\":..}]}\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  resid tokenize $RESID_MODELS/tinyllamas/stories260K.bin -p \"Once upon a time\"\n"
    "  resid tokenize $RESID_MODELS/tinyllamas/tok512.bin -p \"Once upon a time\" --no-bos "
    "--json\n";

static int print_tokens(const resid_tokenizer *tok, const int32_t *ids, int32_t n, bool json) {
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *arr = root ? cli_json_tokens(tok, ids, n) : NULL;
        if (!arr) {
            cJSON_Delete(root);
            return cli_json_print(NULL);
        }
        /* add the stored piece to each entry */
        int32_t i = 0;
        for (cJSON *e = arr->child; e; e = e->next, i++) {
            const char *piece = resid_token_piece(tok, ids[i]);
            if (piece && !cli_json_add_text(e, "piece", piece, strlen(piece))) {
                cJSON_Delete(arr);
                cJSON_Delete(root);
                return cli_json_print(NULL);
            }
        }
        cJSON_AddItemToObject(root, "tokens", arr);
        return cli_json_print(root);
    }
    printf("%5s %7s  %-24s %s\n", "pos", "id", "piece", "text");
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *b = resid_token_bytes(tok, i ? ids[i - 1] : -1, ids[i], &len);
        const char *piece = resid_token_piece(tok, ids[i]);
        printf("%5d %7d  ", i, ids[i]);
        cli_fput_padded(stdout, piece ? piece : "?", 24);
        putchar(' ');
        cli_fput_quoted(stdout, b ? b : "", b ? len : 0);
        putchar('\n');
    }
    printf("%d tokens\n", n);
    return CLI_EXIT_OK;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    cli_args a;
    int r = cli_parse(cmd, argc, argv, CLI_OPT_PROMPT | CLI_OPT_JSON, NULL, NULL, NULL, NULL, &a);
    if (r != CLI_CONTINUE) return r;
    if (!a.prompt) return cli_usage_error(cmd, "missing -p TEXT");
    if (a.ids) return cli_usage_error(cmd, "--ids makes no sense here: tokenize takes -p TEXT");
    resid_model *m;
    resid_tokenizer *owned;
    const resid_tokenizer *tok;
    if ((r = cli_open_for_tokenizer(&a, &m, &owned, &tok)) != CLI_EXIT_OK) return r;
    int32_t *ids = NULL, n = 0;
    r = cli_prompt_ids(cmd, &a, tok, resid_tokenizer_n_vocab(tok), 0, &ids, &n);
    if (r == CLI_EXIT_OK) r = print_tokens(tok, ids, n, a.json);
    free(ids);
    resid_tokenizer_free(owned);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_tokenize = {"tokenize", "show the token ids and pieces of a prompt", help,
                                      run};
