/*
 * common.c - option parsing, model/tokenizer opening, prompts, token text
 * and JSON output shared by every command (see common.h).
 */
#include "common.h"

#include "output/report.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <omp.h>

/* From OpenBLAS (cblas.h); declared here because which cblas.h the include
 * path finds first (netlib or OpenBLAS) depends on the system. */
void openblas_set_num_threads(int num_threads);

cli_args cli_globals;

/* ------------------------------------------------------------------------- */
/* Errors                                                                    */
/* ------------------------------------------------------------------------- */

int cli_usage_error(const cli_command *cmd, const char *fmt, ...) {
    const char *name = cmd ? cmd->name : NULL;
    fprintf(stderr, "resid%s%s: ", name ? " " : "", name ? name : "");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see resid%s%s --help)\n", name ? " " : "", name ? name : "");
    return CLI_EXIT_USAGE;
}

int cli_lib_error(const resid_error *err) {
    fprintf(stderr, "resid: %s\n", err->msg[0] ? err->msg : resid_status_str(err->code));
    return CLI_EXIT_ERR;
}

int cli_error(const char *fmt, ...) {
    fprintf(stderr, "resid: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_EXIT_ERR;
}

/* ------------------------------------------------------------------------- */
/* Option parsing                                                            */
/* ------------------------------------------------------------------------- */

enum {
    OPT_TOKENIZER = 200,
    OPT_THREADS,
    OPT_IDS,
    OPT_NO_BOS,
    OPT_PARSE_SPECIAL,
    OPT_JSON,
};

int cli_parse_int(const cli_command *cmd, const char *name, const char *s, long lo, long hi,
                  long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno == ERANGE || v < lo || v > hi)
        return cli_usage_error(cmd, "%s expects an integer in [%ld, %ld], got '%s'", name, lo, hi,
                               s);
    *out = v;
    return CLI_CONTINUE;
}

int cli_parse_lens(const cli_command *cmd, const char *s, resid_lens *out) {
    resid_error err;
    if (resid_lens_parse(s, out, &err) != RESID_OK)
        return cli_usage_error(cmd, "--lens expects paper, exact or logit-lens, got '%s'", s);
    return CLI_CONTINUE;
}

int cli_on_int_option(const cli_command *cmd, void *user, int opt, const char *arg) {
    cli_int_option *o = user;
    return cli_parse_int(cmd, o->name, arg, o->lo, o->hi, &o->value);
}

void cli_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

/* Appends entries of src (zero-terminated) to dst at *n. */
static void add_opts(struct option *dst, size_t *n, const struct option *src) {
    for (; src && src->name; src++)
        dst[(*n)++] = *src;
}

/* The name an option was given as, for error messages. */
static const char *opt_text(char **argv, int idx) {
    return (idx > 0 && argv[idx - 1]) ? argv[idx - 1] : "?";
}

int cli_parse(const cli_command *cmd, int argc, char **argv, unsigned features,
              const struct option *extra, const char *extra_short, cli_opt_fn fn, void *user,
              cli_args *out) {
    static const struct option global_opts[] = {
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const struct option prompt_opts[] = {
        {"prompt", required_argument, NULL, 'p'},
        {"ids", required_argument, NULL, OPT_IDS},
        {"no-bos", no_argument, NULL, OPT_NO_BOS},
        {"parse-special", no_argument, NULL, OPT_PARSE_SPECIAL},
        {NULL, 0, NULL, 0},
    };
    static const struct option json_opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    size_t n_extra = 0;
    for (const struct option *o = extra; o && o->name; o++)
        n_extra++;
    struct option *opts = calloc(n_extra + 16, sizeof *opts);
    char *shortopts = malloc(strlen(extra_short ? extra_short : "") + 8);
    if (!opts || !shortopts) {
        free(opts);
        free(shortopts);
        return cli_error("out of memory");
    }
    size_t n = 0;
    add_opts(opts, &n, global_opts);
    if (features & CLI_OPT_PROMPT) add_opts(opts, &n, prompt_opts);
    if (features & CLI_OPT_JSON) add_opts(opts, &n, json_opts);
    add_opts(opts, &n, extra);
    /* ':' first: a missing argument returns ':' instead of printing. */
    snprintf(shortopts, strlen(extra_short ? extra_short : "") + 8, ":h%s%s",
             (features & CLI_OPT_PROMPT) ? "p:" : "", extra_short ? extra_short : "");

    *out = cli_globals;
    out->model = NULL;
    out->rest = NULL;
    out->n_rest = 0;
    int ret = CLI_CONTINUE;
    opterr = 0;
    optind = 1;
    int c;
    while (ret == CLI_CONTINUE && (c = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
        long v;
        switch (c) {
        case 'h':
            fputs(cmd->help, stdout);
            ret = CLI_EXIT_OK;
            break;
        case OPT_TOKENIZER: out->tokenizer_path = optarg; break;
        case OPT_THREADS:
            ret = cli_parse_int(cmd, "--threads", optarg, 1, 4096, &v);
            out->threads = (int)v;
            break;
        case 'p':
            if (!(features & CLI_OPT_PROMPT)) goto unknown;
            out->prompt = optarg;
            break;
        case OPT_IDS: out->ids = optarg; break;
        case OPT_NO_BOS: out->no_bos = true; break;
        case OPT_PARSE_SPECIAL: out->parse_special = true; break;
        case OPT_JSON: out->json = true; break;
        case ':':
            ret = cli_usage_error(cmd, "option '%s' needs an argument", opt_text(argv, optind));
            break;
        case '?':
        unknown:
            if (optopt && optopt < 256)
                ret = cli_usage_error(cmd, "unknown option '-%c'", optopt);
            else
                ret = cli_usage_error(cmd, "unknown option '%s'", opt_text(argv, optind));
            break;
        default:
            if (fn)
                ret = fn(cmd, user, c, optarg);
            else
                goto unknown;
            break;
        }
    }
    if (ret == CLI_CONTINUE) {
        if (optind >= argc)
            ret = cli_usage_error(cmd, "missing MODEL");
        else if (optind + 1 < argc && !(features & CLI_OPT_REST))
            ret = cli_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
        else {
            out->model = argv[optind];
            out->rest = argv + optind + 1;
            out->n_rest = argc - optind - 1;
        }
    }
    if (ret == CLI_CONTINUE && out->prompt && out->ids)
        ret = cli_usage_error(cmd, "give either -p TEXT or --ids LIST, not both");
    if (ret == CLI_CONTINUE) cli_set_threads(out->threads);
    free(opts);
    free(shortopts);
    return ret;
}

/* ------------------------------------------------------------------------- */
/* Models and tokenizers                                                     */
/* ------------------------------------------------------------------------- */

int cli_open_model(const cli_args *args, resid_model **out) {
    resid_open_opts oo = {0};
    oo.tokenizer_path = args->tokenizer_path;
    resid_error err;
    if (resid_model_open(args->model, &oo, out, &err) != RESID_OK) return cli_lib_error(&err);
    return CLI_EXIT_OK;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A GGUF file whose header says it holds no tensors (vocab-only). The
 * header is magic "GGUF", u32 version, u64 n_tensors (v2/v3), little
 * endian. */
static bool is_gguf_without_tensors(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    unsigned char h[16];
    size_t got = fread(h, 1, sizeof h, f);
    fclose(f);
    if (got != sizeof h || memcmp(h, "GGUF", 4) != 0) return false;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | h[8 + i];
    return n == 0;
}

/* Whether `path` names a tokenizer rather than a model. */
static bool is_tokenizer_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return false;
    if (S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 16;
        char *cfg = malloc(n);
        if (!cfg) return false;
        snprintf(cfg, n, "%s/config.json", path);
        bool has_config = stat(cfg, &st) == 0;
        free(cfg);
        return !has_config;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (ends_with(base, ".json")) return true;
    if (ends_with(base, ".bin") && (starts_with(base, "tokenizer") || starts_with(base, "tok")))
        return true;
    return is_gguf_without_tensors(path);
}

int cli_open_for_tokenizer(const cli_args *args, resid_model **model, resid_tokenizer **owned_tok,
                           const resid_tokenizer **tok) {
    *model = NULL;
    *owned_tok = NULL;
    *tok = NULL;
    resid_error err;
    if (!is_tokenizer_path(args->model)) {
        resid_open_opts oo = {0};
        oo.tokenizer_path = args->tokenizer_path;
        if (resid_model_open(args->model, &oo, model, &err) == RESID_OK) {
            *tok = resid_model_tokenizer(*model);
            if (!*tok) {
                resid_model_free(*model);
                *model = NULL;
                return cli_error("%s has no tokenizer: give one with --tokenizer PATH",
                                 args->model);
            }
            return CLI_EXIT_OK;
        }
        /* Not a loadable model; it may still hold a tokenizer. */
        resid_error terr;
        const char *tpath = args->tokenizer_path ? args->tokenizer_path : args->model;
        if (resid_tokenizer_open(tpath, owned_tok, &terr) != RESID_OK) return cli_lib_error(&err);
        fprintf(stderr,
                "resid: note: %s does not open as a model (%s); using the tokenizer in %s\n",
                args->model, err.msg, tpath);
        *tok = *owned_tok;
        return CLI_EXIT_OK;
    }
    const char *tpath = args->tokenizer_path ? args->tokenizer_path : args->model;
    if (resid_tokenizer_open(tpath, owned_tok, &err) != RESID_OK) return cli_lib_error(&err);
    *tok = *owned_tok;
    return CLI_EXIT_OK;
}

const char *cli_tokenizer_kind_name(resid_tokenizer_kind k) {
    switch (k) {
    case RESID_TOKENIZER_BPE: return "bpe";
    case RESID_TOKENIZER_SPM: return "spm";
    }
    return "?";
}

/* ------------------------------------------------------------------------- */
/* Prompts                                                                   */
/* ------------------------------------------------------------------------- */

/* Parses "1,42,99" (spaces allowed around the numbers). */
static int parse_id_list(const cli_command *cmd, const char *s, int32_t n_vocab, int32_t **ids,
                         int32_t *n_ids) {
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return cli_error("out of memory");
    size_t n = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ')
            p++;
        if (!isdigit((unsigned char)*p)) {
            free(v);
            return cli_usage_error(cmd, "--ids expects comma-separated token ids, got '%s'", s);
        }
        errno = 0;
        char *end;
        long id = strtol(p, &end, 10);
        if (errno == ERANGE || id >= n_vocab) {
            free(v);
            return cli_usage_error(cmd, "--ids: token id %.20s is out of range [0, %d)", p,
                                   n_vocab);
        }
        v[n++] = (int32_t)id;
        p = end;
        while (*p == ' ')
            p++;
        if (!*p) break;
        if (*p != ',') {
            free(v);
            return cli_usage_error(cmd, "--ids expects comma-separated token ids, got '%s'", s);
        }
        p++;
    }
    *ids = v;
    *n_ids = (int32_t)n;
    return CLI_EXIT_OK;
}

int cli_prompt_ids(const cli_command *cmd, const cli_args *args, const resid_tokenizer *tok,
                   int32_t n_vocab, unsigned flags, int32_t **ids, int32_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    if (args->ids) return parse_id_list(cmd, args->ids, n_vocab, ids, n_ids);
    if (!args->prompt) return cli_usage_error(cmd, "missing prompt: give -p TEXT or --ids LIST");
    if (!tok)
        return cli_error("%s has no tokenizer, so -p TEXT cannot be used: give token ids with "
                         "--ids 1,42,99 (or a tokenizer with --tokenizer PATH)",
                         args->model);
    resid_encode_opts eo = resid_encode_defaults(tok);
    if (args->no_bos) eo.add_bos = false;
    eo.parse_special = args->parse_special;
    resid_error err;
    if (resid_tokenize(tok, args->prompt, -1, &eo, ids, n_ids, &err) != RESID_OK)
        return cli_lib_error(&err);
    if (*n_ids == 0 && (flags & CLI_PROMPT_NONEMPTY)) {
        int32_t bos = resid_tokenizer_bos(tok), eos = resid_tokenizer_eos(tok);
        int32_t id = (bos >= 0 && !args->no_bos) ? bos : eos;
        const char *piece = id >= 0 ? resid_token_piece(tok, id) : NULL;
        if (id < 0 || args->no_bos) {
            free(*ids);
            *ids = NULL;
            return cli_error("the prompt gives no tokens: nothing to run (drop --no-bos, or give "
                             "a non-empty prompt)");
        }
        fprintf(stderr, "resid: note: the prompt is empty; starting from token %d (%s)\n", id,
                piece ? piece : "?");
        (*ids)[0] = id; /* resid_tokenize returns a valid pointer for 0 ids */
        *n_ids = 1;
    }
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------- */
/* Token text                                                                */
/* ------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid. */
static int utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    int len;
    uint32_t min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    if ((size_t)len > n) return 0;
    uint32_t cp = c & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

int cli_fput_quoted(FILE *f, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    int w = 2;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        int l = utf8_len(u + i, n - i);
        if (l > 1) {
            fwrite(u + i, 1, (size_t)l, f);
            i += (size_t)l;
            w++;
            continue;
        }
        if (c == '\n')
            w += fprintf(f, "\\n");
        else if (c == '\t')
            w += fprintf(f, "\\t");
        else if (c == '\r')
            w += fprintf(f, "\\r");
        else if (c == '\\')
            w += fprintf(f, "\\\\");
        else if (c == '"')
            w += fprintf(f, "\\\"");
        else if (c < 0x20 || c == 0x7F || l == 0)
            w += fprintf(f, "\\x%02x", c);
        else
            w += fputc(c, f) != EOF;
        i++;
    }
    fputc('"', f);
    return w;
}

void cli_fput_padded(FILE *f, const char *s, int width) {
    int w = 0;
    for (const unsigned char *u = (const unsigned char *)s; *u; u++)
        w += (*u & 0xC0) != 0x80;
    fputs(s, f);
    for (; w < width; w++)
        fputc(' ', f);
}

int cli_json_write(cJSON *root, const char *path) {
    if (!path || !strcmp(path, "-")) return cli_json_print(root);
    if (!root) return cli_error("out of memory building the JSON output");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) return cli_error("out of memory printing the JSON output");
    FILE *f = fopen(path, "w");
    if (!f) {
        free(s);
        return cli_error("%s: cannot open for writing: %s", path, strerror(errno));
    }
    bool ok = fputs(s, f) >= 0 && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(s);
    if (!ok) return cli_error("%s: writing the JSON output failed", path);
    return CLI_EXIT_OK;
}

const cJSON *cli_jget(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

double cli_jnum(const cJSON *o, const char *k) {
    const cJSON *v = cli_jget(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

cJSON *cli_json_float(float v) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return cJSON_CreateNumber(strtod(buf, NULL));
}

bool cli_json_add_text(cJSON *obj, const char *name, const char *s, size_t n) {
    return rs_report_add_text(obj, name, s, n); /* the report's text format */
}

cJSON *cli_json_token(const resid_tokenizer *tok, int32_t prev, int32_t id) {
    return rs_report_token(tok, prev, id); /* one token format for CLI and library */
}

cJSON *cli_json_tokens(const resid_tokenizer *tok, const int32_t *ids, int32_t n) {
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return NULL;
    for (int32_t i = 0; i < n; i++) {
        cJSON *t = cli_json_token(tok, i ? ids[i - 1] : -1, ids[i]);
        if (!t) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, t);
    }
    return arr;
}

int cli_json_print(cJSON *root) {
    if (!root) return cli_error("out of memory building the JSON output");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) return cli_error("out of memory printing the JSON output");
    fputs(s, stdout);
    fputc('\n', stdout);
    free(s);
    if (fflush(stdout) != 0) return cli_error("writing the output failed");
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------- */
/* Tokens given as text, unit ids, intervention output (explain, ablate,     */
/* serve)                                                                    */
/* ------------------------------------------------------------------------- */

void cli_fput_pieces(FILE *f, const resid_tokenizer *tok, int32_t prev, const int32_t *ids,
                     int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *b = resid_token_bytes(tok, i ? ids[i - 1] : prev, ids[i], &len);
        if (i) fputs(" + ", f);
        cli_fput_quoted(f, b ? b : "", b ? len : 0);
        fprintf(f, " (%d)", ids[i]);
    }
}

int cli_resolve_token(const resid_tokenizer *tok, const char *what, const char *text,
                      int32_t prev, int32_t *out) {
    if (!tok)
        return cli_error("the model has no tokenizer: give %s as an id (%s-id N)", what, what);
    resid_error err;
    resid_status st = rs_report_resolve_token(tok, what, text, prev, out, &err);
    if (st == RESID_OK) return CLI_EXIT_OK;
    if (st != RESID_E_ARG) return cli_lib_error(&err);
    /* several tokens (or none): show how TEXT tokenizes */
    resid_encode_opts eo = resid_encode_defaults(tok);
    eo.add_bos = false;
    const char *enc = text;
    if (resid_tokenizer_get_kind(tok) == RESID_TOKENIZER_SPM && text[0] == ' ') enc = text + 1;
    int32_t *ids = NULL, n = 0;
    if (resid_tokenize(tok, enc, -1, &eo, &ids, &n, &err) != RESID_OK) return cli_lib_error(&err);
    fprintf(stderr, "resid: %s ", what + 2);
    cli_fput_quoted(stderr, text, strlen(text));
    fprintf(stderr, " is %d tokens%s", n, n ? ": " : "");
    cli_fput_pieces(stderr, tok, prev, ids, n);
    fprintf(stderr, "; give one token or use %s-id\n", what);
    free(ids);
    return CLI_EXIT_ERR;
}

bool cli_unit_parse(const char *id, const char *kind, int32_t T, const resid_model_info *in,
                    resid_unit *u, char *msg, size_t n) {
    resid_error err;
    const char *body = id;
    resid_unit_kind k;
    bool wo = false;
    int n_num = 1;
    for (const char *p = id; *p; p++)
        n_num += *p == '_';
    if (!strncmp(id, "n:", 2)) {
        k = RESID_UNIT_FFN_NEURON, body = id + 2;
    } else if (!strncmp(id, "h:", 2)) {
        k = RESID_UNIT_HEAD, body = id + 2;
    } else if (!strncmp(id, "wo:", 3)) {
        wo = true, body = id + 3;
        k = RESID_UNIT_HEAD_POS; /* L_H_N has the shape of L_H_J */
    } else if (id[0] == 'a') {
        k = n_num == 2 ? RESID_UNIT_POS : RESID_UNIT_ATTN_LAYER;
    } else if (id[0] == 'f') {
        k = RESID_UNIT_FFN_LAYER;
    } else if (n_num == 2) {
        if (!kind) {
            snprintf(msg, n,
                     "unit '%s' is ambiguous: write n:%s (FFN neuron) or h:%s (head), or give "
                     "--kind",
                     id, id, id);
            return false;
        }
        k = !strcmp(kind, "neuron") ? RESID_UNIT_FFN_NEURON : RESID_UNIT_HEAD;
    } else if (n_num == 3) {
        k = RESID_UNIT_HEAD_POS;
    } else if (n_num == 4) {
        k = RESID_UNIT_ATTN_NEURON;
    } else {
        snprintf(msg, n, "unit '%s': unknown id shape", id);
        return false;
    }
    if (resid_unit_parse(body, k, NULL, u, &err) != RESID_OK) {
        snprintf(msg, n, "%s", err.msg);
        return false;
    }
    if (wo) /* L_H_N parsed as L_H_J: the third number is N */
        *u = (resid_unit){RESID_UNIT_ATTN_NEURON, u->layer, u->head, u->pos, -1};
    if (u->layer >= in->n_layer)
        snprintf(msg, n, "unit '%s': layer %d out of range (model has %d)", id, u->layer,
                 in->n_layer);
    else if (u->head >= in->n_head)
        snprintf(msg, n, "unit '%s': head %d out of range (model has %d)", id, u->head,
                 in->n_head);
    else if (u->kind == RESID_UNIT_FFN_NEURON && u->index >= in->d_ffn)
        snprintf(msg, n, "unit '%s': FFN neuron %d out of range (layer has %d)", id, u->index,
                 in->d_ffn);
    else if (u->kind == RESID_UNIT_ATTN_NEURON && u->index >= in->d_head)
        snprintf(msg, n, "unit '%s': head dimension %d out of range (d_head is %d)", id,
                 u->index, in->d_head);
    else if (u->pos >= T)
        snprintf(msg, n, "unit '%s': source position %d out of range (prompt has %d tokens)", id,
                 u->pos, T);
    else
        return true;
    return false;
}

void cli_unit_format(const resid_unit *u, char *buf, size_t n) {
    if (u->kind == RESID_UNIT_ATTN_NEURON && u->pos < 0)
        snprintf(buf, n, "wo:%d_%d_%d", u->layer, u->head, u->index);
    else if (u->kind == RESID_UNIT_FFN_NEURON)
        snprintf(buf, n, "n:%d_%d", u->layer, u->index);
    else if (u->kind == RESID_UNIT_HEAD)
        snprintf(buf, n, "h:%d_%d", u->layer, u->head);
    else
        resid_unit_format(u, buf, n);
}

cJSON *cli_json_units(const resid_unit *u, int64_t n) {
    cJSON *a = cJSON_CreateArray();
    for (int64_t i = 0; a && i < n; i++) {
        char id[64];
        cli_unit_format(&u[i], id, sizeof id);
        cJSON_AddItemToArray(a, cJSON_CreateString(id));
    }
    return a;
}

cJSON *cli_json_target_stats(const resid_target_stats *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "prob", s->prob);
    cJSON_AddNumberToObject(o, "logprob", s->logprob);
    cJSON_AddNumberToObject(o, "rank", s->rank + 1);
    cJSON_AddNumberToObject(o, "rr", s->rr);
    cJSON_AddNumberToObject(o, "model_prob", s->model_prob);
    cJSON_AddNumberToObject(o, "model_logprob", s->model_logprob);
    cJSON_AddNumberToObject(o, "model_rank", s->model_rank + 1);
    cJSON_AddNumberToObject(o, "model_rr", s->model_rr);
    return o;
}
