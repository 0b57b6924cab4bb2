/*
 * cmd_info.c - `resid info MODEL`: what a model is (architecture, format,
 * dimensions, norm, RoPE, parameters, dtypes, tokenizer), optionally every
 * tensor.
 */
#include <stdlib.h>

#include "common.h"

static const char help[] =
    "Usage: resid info MODEL [--tensors] [--json]\n"
    "\n"
    "Shows what MODEL is: architecture, file format, dimensions (layers,\n"
    "d_model, heads, kv heads, d_head, d_ffn, vocabulary, context), norm\n"
    "epsilon, RoPE style and base, tied output, parameter count, bytes,\n"
    "tensor dtypes and the tokenizer.\n"
    "\n"
    "Options:\n"
    "      --tensors        also list every tensor: name, role, dtype, shape\n"
    "      --json           print JSON instead of text (see docs/cli.md)\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  resid info $RESID_MODELS/tinyllamas/stories260K.bin\n"
    "  resid info $RESID_MODELS/tinyllamas/stories260K.bin --tensors --json\n";

enum { OPT_TENSORS = 300 };

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    if (opt != OPT_TENSORS) return cli_usage_error(cmd, "unknown option");
    *(bool *)user = true;
    return CLI_CONTINUE;
}

static const char *rope_name(resid_rope r) {
    switch (r) {
    case RESID_ROPE_NONE: return "none";
    case RESID_ROPE_INTERLEAVED: return "interleaved";
    case RESID_ROPE_HALVES: return "halves";
    }
    return "?";
}

/* Tensor i's info; returns 0 or prints the error and returns 1. */
static int get_tensor(const resid_model *m, int32_t i, resid_tensor_info *ti) {
    resid_error err;
    if (resid_model_tensor(m, i, ti, &err) != RESID_OK) return cli_lib_error(&err);
    return CLI_EXIT_OK;
}

static cJSON *info_json(const resid_model *m, bool tensors) {
    const resid_model_info *in = resid_model_get_info(m);
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        cli_error("out of memory");
        return NULL;
    }
    cJSON_AddStringToObject(o, "name", in->name ? in->name : "");
    cJSON_AddStringToObject(o, "path", in->path ? in->path : "");
    cJSON_AddStringToObject(o, "arch", resid_arch_name(in->arch));
    cJSON_AddStringToObject(o, "format", resid_format_name(in->format));
    cJSON_AddNumberToObject(o, "n_layer", in->n_layer);
    cJSON_AddNumberToObject(o, "d_model", in->d_model);
    cJSON_AddNumberToObject(o, "n_head", in->n_head);
    cJSON_AddNumberToObject(o, "n_kv_head", in->n_kv_head);
    cJSON_AddNumberToObject(o, "d_head", in->d_head);
    cJSON_AddNumberToObject(o, "d_ffn", in->d_ffn);
    cJSON_AddNumberToObject(o, "n_vocab", in->n_vocab);
    cJSON_AddNumberToObject(o, "n_ctx", in->n_ctx);
    cJSON_AddItemToObject(o, "norm_eps", cli_json_float(in->norm_eps));
    cJSON_AddStringToObject(o, "rope", rope_name(in->rope));
    cJSON_AddItemToObject(o, "rope_theta", cli_json_float(in->rope_theta));
    cJSON_AddBoolToObject(o, "tied_output", in->tied_output);
    cJSON_AddBoolToObject(o, "has_bias", in->has_bias);
    cJSON_AddNumberToObject(o, "n_params", (double)in->n_params);
    cJSON_AddNumberToObject(o, "n_bytes", (double)in->n_bytes);
    cJSON_AddNumberToObject(o, "n_tensors", in->n_tensors);
    cJSON *dt = cJSON_AddObjectToObject(o, "dtypes");
    for (int d = 0; dt && d < RESID_DTYPE_COUNT; d++)
        if (in->dtype_count[d])
            cJSON_AddNumberToObject(dt, resid_dtype_name(d), in->dtype_count[d]);
    if (tok) {
        cJSON *t = cJSON_AddObjectToObject(o, "tokenizer");
        if (t) {
            cJSON_AddStringToObject(t, "kind",
                                    cli_tokenizer_kind_name(resid_tokenizer_get_kind(tok)));
            cJSON_AddNumberToObject(t, "n_vocab", resid_tokenizer_n_vocab(tok));
            cJSON_AddNumberToObject(t, "bos", resid_tokenizer_bos(tok));
            cJSON_AddNumberToObject(t, "eos", resid_tokenizer_eos(tok));
            cJSON_AddBoolToObject(t, "add_bos", resid_encode_defaults(tok).add_bos);
        }
    } else {
        cJSON_AddNullToObject(o, "tokenizer");
    }
    if (tensors) {
        cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
        for (int32_t i = 0; arr && i < in->n_tensors; i++) {
            resid_tensor_info ti;
            if (get_tensor(m, i, &ti) != CLI_EXIT_OK) {
                cJSON_Delete(o);
                return NULL;
            }
            cJSON *e = cJSON_CreateObject();
            if (!e) break;
            cJSON_AddItemToArray(arr, e);
            cJSON_AddStringToObject(e, "name", ti.name);
            cJSON_AddStringToObject(e, "role", ti.role ? ti.role : "");
            cJSON_AddStringToObject(e, "dtype", resid_dtype_name(ti.dtype));
            double shape[2] = {(double)ti.n_rows, (double)ti.n_cols};
            cJSON_AddItemToObject(e, "shape", cJSON_CreateDoubleArray(shape, 2));
            cJSON_AddBoolToObject(e, "transposed", ti.transposed);
        }
    }
    return o;
}

/* 1234567 -> "1.23 M". */
static void human(char *buf, size_t n, double v, const char *unit) {
    const char *suffix[] = {"", " K", " M", " G", " T"};
    int k = 0;
    while (v >= 1000 && k < 4)
        v /= 1000, k++;
    snprintf(buf, n, k ? "%.2f%s%s" : "%.0f%s%s", v, suffix[k], unit);
}

static int info_text(const resid_model *m, bool tensors) {
    const resid_model_info *in = resid_model_get_info(m);
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    char hp[32], hb[32];
    human(hp, sizeof hp, (double)in->n_params, "");
    human(hb, sizeof hb, (double)in->n_bytes, "B");
    printf("model        %s\n", in->name ? in->name : "");
    printf("path         %s\n", in->path ? in->path : "");
    printf("arch         %s\n", resid_arch_name(in->arch));
    printf("format       %s\n", resid_format_name(in->format));
    printf("n_layer      %d\n", in->n_layer);
    printf("d_model      %d\n", in->d_model);
    printf("n_head       %d\n", in->n_head);
    printf("n_kv_head    %d\n", in->n_kv_head);
    printf("d_head       %d\n", in->d_head);
    printf("d_ffn        %d\n", in->d_ffn);
    printf("n_vocab      %d\n", in->n_vocab);
    printf("n_ctx        %d\n", in->n_ctx);
    printf("norm_eps     %g\n", (double)in->norm_eps);
    if (in->rope == RESID_ROPE_NONE)
        printf("rope         none (learned positions)\n");
    else
        printf("rope         %s, theta %g\n", rope_name(in->rope), (double)in->rope_theta);
    printf("tied_output  %s\n", in->tied_output ? "yes" : "no");
    printf("bias         %s\n", in->has_bias ? "yes" : "no");
    printf("params       %lld (%s)\n", (long long)in->n_params, hp);
    printf("bytes        %lld (%s)\n", (long long)in->n_bytes, hb);
    printf("tensors      %d:", in->n_tensors);
    for (int d = 0; d < RESID_DTYPE_COUNT; d++)
        if (in->dtype_count[d]) printf(" %s %d", resid_dtype_name(d), in->dtype_count[d]);
    printf("\n");
    if (tok) {
        int32_t bos = resid_tokenizer_bos(tok), eos = resid_tokenizer_eos(tok);
        const char *bp = bos >= 0 ? resid_token_piece(tok, bos) : NULL;
        const char *ep = eos >= 0 ? resid_token_piece(tok, eos) : NULL;
        printf("tokenizer    %s, %d tokens, bos %d %s, eos %d %s, adds bos: %s\n",
               cli_tokenizer_kind_name(resid_tokenizer_get_kind(tok)), resid_tokenizer_n_vocab(tok),
               bos, bp ? bp : "-", eos, ep ? ep : "-",
               resid_encode_defaults(tok).add_bos ? "yes" : "no");
    } else {
        printf("tokenizer    none (use --ids, or --tokenizer PATH)\n");
    }
    if (tensors) {
        printf("\n%-4s %-40s %-24s %-6s %s\n", "#", "name", "role", "dtype", "shape");
        for (int32_t i = 0; i < in->n_tensors; i++) {
            resid_tensor_info ti;
            if (get_tensor(m, i, &ti) != CLI_EXIT_OK) return CLI_EXIT_ERR;
            printf("%-4d %-40s %-24s %-6s [%lld, %lld]%s\n", i, ti.name, ti.role ? ti.role : "",
                   resid_dtype_name(ti.dtype), (long long)ti.n_rows, (long long)ti.n_cols,
                   ti.transposed ? " (stored transposed)" : "");
        }
    }
    return CLI_EXIT_OK;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"tensors", no_argument, NULL, OPT_TENSORS},
        {NULL, 0, NULL, 0},
    };
    bool tensors = false;
    cli_args a;
    int r = cli_parse(cmd, argc, argv, CLI_OPT_JSON, extra, NULL, on_opt, &tensors, &a);
    if (r != CLI_CONTINUE) return r;
    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    if (a.json) {
        cJSON *o = info_json(m, tensors);
        r = o ? cli_json_print(o) : CLI_EXIT_ERR;
    } else {
        r = info_text(m, tensors);
    }
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_info = {"info", "show a model's architecture, dimensions and tensors",
                                  help, run};
