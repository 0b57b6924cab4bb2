/*
 * common.h - what every `resid` command shares: the command table entry,
 * option parsing (getopt_long, global + prompt options), opening a model or
 * a tokenizer with clear errors, prompt -> token ids, token text escaping and
 * the one JSON output path.
 *
 * Adding a command: write cli/cmd_<name>.c defining
 *     const cli_command cli_cmd_<name> = {"name", "summary", help, run};
 * and add X(<name>) to CLI_COMMANDS in cli/main.c.
 *
 * Exit codes: 0 success, 1 a library error (printed as "resid: <msg>"),
 * 2 a usage error (one line, ending "(see resid CMD --help)").
 */
#ifndef RESID_CLI_COMMON_H
#define RESID_CLI_COMMON_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "resid.h"

enum { CLI_EXIT_OK = 0, CLI_EXIT_ERR = 1, CLI_EXIT_USAGE = 2 };

/* Returned by cli_parse when the command should go on. */
#define CLI_CONTINUE (-1)

typedef struct cli_command cli_command;
struct cli_command {
    const char *name;
    const char *summary; /* one line, for `resid --help` */
    const char *help;    /* usage line, description, options, examples */
    /* argv[0] is the command name; returns the exit code. */
    int (*run)(const cli_command *cmd, int argc, char **argv);
};

/* Help text blocks shared by the commands' help strings. */
#define CLI_HELP_PROMPT                                                                            \
    "  -p, --prompt TEXT    the prompt (UTF-8, taken literally)\n"                                 \
    "      --ids LIST       token ids instead of text, e.g. --ids 1,42,99\n"                       \
    "                       (needed for models without a tokenizer)\n"                             \
    "      --no-bos         do not add the BOS token the model normally adds\n"                    \
    "      --parse-special  turn special-token text (<s>, <|endoftext|>) into\n"                   \
    "                       the special tokens\n"
#define CLI_HELP_GLOBAL                                                                            \
    "      --tokenizer PATH a tokenizer to use instead of the model's own\n"                       \
    "                       (llama2.c tokenizer.bin, tokenizer.json, GGUF)\n"                      \
    "      --threads N      number of threads (OpenMP and OpenBLAS)\n"                             \
    "  -h, --help           show this help\n"

/* Option sets a command can ask cli_parse for (besides the global ones:
 * --tokenizer, --threads, --help, which every command accepts). */
enum {
    CLI_OPT_PROMPT = 1u << 0, /* -p, --ids, --no-bos, --parse-special */
    CLI_OPT_JSON = 1u << 1,   /* --json */
    CLI_OPT_REST = 1u << 2,   /* positionals after MODEL are allowed */
};

typedef struct cli_args {
    const char *model;  /* the positional MODEL argument */
    const char *prompt; /* -p; NULL if not given */
    const char *ids;    /* --ids text; NULL if not given */
    bool no_bos;
    bool parse_special;
    bool json;
    const char *tokenizer_path; /* --tokenizer */
    int threads;                /* --threads, 0 = default */
    char **rest;                /* positionals after MODEL (CLI_OPT_REST) */
    int n_rest;
} cli_args;

/* Global options given before the command name (resid --threads 2 run ...);
 * cli_parse starts from these. */
extern cli_args cli_globals;

/* A command's own options: called for every option code found in `extra`.
 * Returns CLI_CONTINUE, or an exit code (after printing the error with
 * cli_usage_error). */
typedef int (*cli_opt_fn)(const cli_command *cmd, void *user, int opt, const char *arg);

/* Parses argv (argv[0] = command name) with getopt_long: the global options,
 * the sets in `features`, and the command's `extra` options (a table ending
 * with a zero entry; option values for long-only options should be >= 256;
 * may be NULL) with their short letters in `extra_short` (getopt syntax,
 * may be NULL), dispatched to `fn`. Expects exactly one positional MODEL.
 * Returns CLI_CONTINUE, CLI_EXIT_OK after printing --help, or
 * CLI_EXIT_USAGE after printing a one-line error. */
int cli_parse(const cli_command *cmd, int argc, char **argv, unsigned features,
              const struct option *extra, const char *extra_short, cli_opt_fn fn, void *user,
              cli_args *out);

/* "resid CMD: <message> (see resid CMD --help)" on stderr; returns 2. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* "resid: <err->msg>" on stderr; returns 1. */
int cli_lib_error(const resid_error *err);
/* "resid: <message>" on stderr; returns 1. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parses a decimal integer in [lo, hi] for option `name`. Returns
 * CLI_CONTINUE or a usage error. */
int cli_parse_int(const cli_command *cmd, const char *name, const char *s, long lo, long hi,
                  long *out);

/* Parses --lens NAME (paper, exact, logit-lens) into *out. Returns
 * CLI_CONTINUE or a usage error. */
int cli_parse_lens(const cli_command *cmd, const char *s, resid_lens *out);

/* A command whose one own option is an integer (run --top K, generate
 * -n N, neuron --top K) passes cli_on_int_option as cli_parse's fn and a
 * cli_int_option as its user: value, holding the default, receives the
 * option checked to [lo, hi] by cli_parse_int (which names it `name`). */
typedef struct cli_int_option {
    const char *name;
    long lo, hi;
    long value;
} cli_int_option;
int cli_on_int_option(const cli_command *cmd, void *user, int opt, const char *arg);

/* Sets the OpenMP and OpenBLAS thread counts (n > 0). */
void cli_set_threads(int n);

/* Opens args->model with args->tokenizer_path. Returns 0 or 1 (printed). */
int cli_open_model(const cli_args *args, resid_model **out);

/* For `tokenize`: opens MODEL as a model, or as a tokenizer alone when it is
 * one (a .json file, tokenizer*.bin / tok*.bin, a GGUF with no tensors, a
 * folder without config.json) or cannot be opened as a model but opens as a
 * tokenizer (a note goes to stderr). --tokenizer overrides the tokenizer.
 * *model may be NULL on success; *tok then must be freed by the caller
 * (*owned_tok is set). Returns 0 or 1 (printed). */
int cli_open_for_tokenizer(const cli_args *args, resid_model **model, resid_tokenizer **owned_tok,
                           const resid_tokenizer **tok);

/* Flags for cli_prompt_ids. */
enum {
    /* An empty result becomes [BOS] (or [EOS] if there is no BOS), with a
     * note on stderr; without either it is an error. For run/generate. */
    CLI_PROMPT_NONEMPTY = 1u << 0,
};

/* The token ids of the prompt: --ids parsed and checked against n_vocab, or
 * -p tokenized (BOS as resid_encode_defaults says, unless --no-bos).
 * `tok` may be NULL (then -p is an error that points to --ids). *ids is
 * malloc'd. Returns 0, 1 (library error) or 2 (usage). */
int cli_prompt_ids(const cli_command *cmd, const cli_args *args, const resid_tokenizer *tok,
                   int32_t n_vocab, unsigned flags, int32_t **ids, int32_t *n_ids);

/* Writes bytes as a double-quoted C-like string: \n \t \r \\ \" escaped,
 * other control bytes and invalid UTF-8 bytes as \xNN, valid UTF-8 raw.
 * Returns the number of characters (code points) written, for padding. */
int cli_fput_quoted(FILE *f, const char *s, size_t n);
/* ids[0..n) as '"piece" (id) + "piece" (id) ...', each piece as it reads
 * after the one before (the first after prev). */
void cli_fput_pieces(FILE *f, const resid_tokenizer *tok, int32_t prev, const int32_t *ids,
                     int32_t n);
/* Writes s padded with spaces to `width` characters (code points). */
void cli_fput_padded(FILE *f, const char *s, int width);

/* Adds "text" (sanitized, see above) to obj, and when the bytes were not
 * valid UTF-8 also "bytes": their lowercase hex ("e2 96"). Returns false on
 * out of memory. */
bool cli_json_add_text(cJSON *obj, const char *name, const char *s, size_t n);

/* {"id": id, "text": bytes of id after prev} ("text" omitted without a
 * tokenizer). NULL on out of memory. */
cJSON *cli_json_token(const resid_tokenizer *tok, int32_t prev, int32_t id);
/* [{id,text}...] for ids[0..n) decoded in sequence (prev = previous id). */
cJSON *cli_json_tokens(const resid_tokenizer *tok, const int32_t *ids, int32_t n);

/* The one JSON output path: prints `root` unformatted plus a newline on
 * stdout and frees it. root == NULL means an allocation failed. Returns the
 * exit code (0, or 1 after printing an error). */
int cli_json_print(cJSON *root);

/* Like cli_json_print, but to `path` ("-" = stdout). Returns the exit
 * code (0, or 1 after printing an error naming the file). */
int cli_json_write(cJSON *root, const char *path);

/* o's member k (case-sensitive), or NULL. */
const cJSON *cli_jget(const cJSON *o, const char *k);
/* o's member k as a number, NAN when it is missing or not a number. */
double cli_jnum(const cJSON *o, const char *k);

/* A float as JSON: the shortest decimal that reads back as the same float
 * (1e-05, not 9.99999974737875e-06). */
cJSON *cli_json_float(float v);

/* Resolves a token given as text (--target / --vs TEXT) to one id, as
 * rs_report_resolve_token does: a token whose text after `prev` is exactly
 * TEXT wins, else TEXT must encode to one token. `what` is the option
 * ("--target"); on a multi-token TEXT the error shows how it tokenizes and
 * points to WHAT-id. Returns 0 or 1 (printed). */
int cli_resolve_token(const resid_tokenizer *tok, const char *what, const char *text,
                      int32_t prev, int32_t *out);

/* One unit id as `resid ablate --units` takes it: n:L_K, h:L_H, L_H_J,
 * L_H_N_J, wo:L_H_N, aL, fL, aL_J, and a bare L_X with kind "neuron" or
 * "head". Checked against the model and a prompt of T tokens. false with
 * msg[n] filled on error. */
bool cli_unit_parse(const char *id, const char *kind, int32_t T, const resid_model_info *in,
                    resid_unit *u, char *msg, size_t n);
/* The id in that syntax (n:3_17, h:2_1, wo:1_0_5, 3_1_4, a2, ...). */
void cli_unit_format(const resid_unit *u, char *buf, size_t n);
/* ["n:3_17", ...] of units in that syntax. */
cJSON *cli_json_units(const resid_unit *u, int64_t n);
/* {prob, logprob, rank (1-based), rr, model_prob, model_logprob,
 * model_rank, model_rr}: `resid ablate --json`'s before/after. */
cJSON *cli_json_target_stats(const resid_target_stats *s);

/* "bpe" / "spm". */
const char *cli_tokenizer_kind_name(resid_tokenizer_kind k);

#endif
