/*
 * cmd_neuron.c - `resid neuron MODEL L_K`: one FFN neuron read without a
 * prompt. Its output side: the top and bottom tokens of bs(fc2_k) (what it
 * pushes up when its coefficient is positive, and down; a negative
 * coefficient swaps them, METHOD.md §2.3). Its input side: the norms of its
 * key rows and the tokens whose embeddings alone activate it most.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "output/neuron_input.h"

static const char help[] =
    "Usage: resid neuron MODEL L_K [--top K] [--json]\n"
    "\n"
    "Shows FFN neuron K of layer L (0-based, e.g. 2_84), with no prompt:\n"
    "  value  the top and bottom tokens of bs(fc2_K), the neuron's output\n"
    "         direction read through the final norm and the unembedding\n"
    "         (scale 1: the order of the tokens does not depend on the\n"
    "         prompt). With a positive coefficient the neuron pushes the top\n"
    "         tokens up and the bottom ones down; a negative one the reverse.\n"
    "  key    the norms of its input rows (fc1 for GPT-2; up and gate for\n"
    "         SwiGLU), raw and with the FFN norm gain folded in (the key K the\n"
    "         residual is dotted with), and the fc1 bias (GPT-2).\n"
    "  input  the tokens whose embedding alone, fed through the FFN norm,\n"
    "         gives the largest and the smallest coefficient m (GPT-2:\n"
    "         gelu(LN(e)·fc1 + b); Llama: SiLU(RMS(e)·gate)·(RMS(e)·up)).\n"
    "         A direct-path reading only: inside a prompt the neuron sees the\n"
    "         whole residual, not one embedding.\n"
    "\n"
    "Options:\n"
    "  -k, --top K          tokens per list (default 10)\n"
    "      --json           print everything as JSON (docs/explain-json.md)\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  resid neuron $RESID_MODELS/tinyllamas/stories260K.bin 2_84\n"
    "  resid neuron $RESID_MODELS/tiny-gpt2-stories 2_421 --top 20 --json\n";

enum { OPT_TOP = 'k' };

static void put_list(const resid_tokenizer *tok, const char *label, const resid_token_value *t,
                     int32_t n, const char *fmt) {
    printf("  %-8s", label);
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tok ? resid_token_bytes(tok, 0, t[i].id, &len) : NULL;
        putchar(' ');
        if (b)
            cli_fput_quoted(stdout, b, len);
        else
            printf("#%d", t[i].id);
        printf(fmt, t[i].value);
    }
    putchar('\n');
}

static cJSON *json_list(const resid_tokenizer *tok, const resid_token_value *t, int32_t n,
                        const char *value_name) {
    cJSON *arr = cJSON_CreateArray();
    for (int32_t i = 0; arr && i < n; i++) {
        cJSON *e = cli_json_token(tok, 0, t[i].id);
        if (!e || !cJSON_AddNumberToObject(e, value_name, t[i].value)) {
            cJSON_Delete(e);
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

static cJSON *json_num(double v) {
    return cJSON_CreateNumber(v);
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"top", required_argument, NULL, OPT_TOP},
        {NULL, 0, NULL, 0},
    };
    cli_int_option top = {"--top", 1, 100000, 10};
    cli_args a;
    int r = cli_parse(cmd, argc, argv, CLI_OPT_JSON | CLI_OPT_REST, extra, "k:", cli_on_int_option,
                      &top, &a);
    if (r != CLI_CONTINUE) return r;
    const long k = top.value;
    if (a.n_rest == 0) return cli_usage_error(cmd, "missing the neuron id L_K (e.g. 2_84)");
    if (a.n_rest > 1)
        return cli_usage_error(cmd, "expects one neuron id L_K, got %d arguments", a.n_rest);
    const char *id = a.rest[0];
    char *end;
    long layer = strtol(id, &end, 10), index = -1;
    bool well_formed = end != id && *end == '_' && end[1] >= '0' && end[1] <= '9';
    if (well_formed) {
        const char *p = end + 1;
        index = strtol(p, &end, 10);
        well_formed = *end == 0 && layer >= 0 && index >= 0;
    }
    if (!well_formed)
        return cli_usage_error(cmd, "neuron id '%s' is not of the form L_K (e.g. 2_84)", id);

    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    const resid_model_info *info = resid_model_get_info(m);
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    if (layer >= info->n_layer || index >= info->d_ffn) {
        r = cli_error("neuron %s is out of range: layers are 0..%d and neurons 0..%d (%s has %d "
                      "layers of %d FFN neurons)",
                      id, info->n_layer - 1, info->d_ffn - 1, info->name, info->n_layer,
                      info->d_ffn);
        resid_model_free(m);
        return r;
    }
    const int32_t V = info->n_vocab;
    const int32_t K = (int32_t)(k < V ? k : V);
    resid_error err;
    resid_token_value *vt = malloc((size_t)K * sizeof *vt), *vb = malloc((size_t)K * sizeof *vb);
    resid_token_value *it = malloc((size_t)K * sizeof *it), *ib = malloc((size_t)K * sizeof *ib);
    float *coef = malloc((size_t)V * sizeof *coef);
    rs_neuron_keys keys;
    int32_t kv = 0;
    if (!vt || !vb || !it || !ib || !coef) {
        r = cli_error("out of memory");
    } else if (resid_project_param(m, RESID_PARAM_FC2, (int32_t)layer, index, 1.0, 1.0, K, vt, vb,
                                   &kv, &err) != RESID_OK ||
               rs_neuron_keys_get(m, (int32_t)layer, (int32_t)index, &keys, &err) != RESID_OK ||
               rs_neuron_embed_coef(m, (int32_t)layer, (int32_t)index, coef, NULL, NULL, &err) !=
                   RESID_OK) {
        r = cli_lib_error(&err);
    }
    int32_t ki = 0;
    if (r == CLI_EXIT_OK) ki = resid_top_bottom(coef, V, K, it, ib);
    const bool gated = !isnan(keys.gate_norm);
    if (r == CLI_EXIT_OK && a.json) {
        char idbuf[64];
        snprintf(idbuf, sizeof idbuf, "%ld_%ld", layer, index);
        cJSON *root = cJSON_CreateObject(), *key = cJSON_CreateObject();
        bool ok = root && key;
        if (ok) {
            cJSON_AddItemToObject(root, "id", cJSON_CreateString(idbuf));
            cJSON_AddItemToObject(root, "layer", json_num((double)layer));
            cJSON_AddItemToObject(root, "neuron", json_num((double)index));
            cJSON_AddItemToObject(root, "arch", cJSON_CreateString(resid_arch_name(info->arch)));
            cJSON_AddItemToObject(root, "top_tokens", json_list(tok, vt, kv, "bs"));
            cJSON_AddItemToObject(root, "bottom_tokens", json_list(tok, vb, kv, "bs"));
            cJSON_AddItemToObject(root, "key", key);
            cJSON_AddItemToObject(key, gated ? "up_norm" : "fc1_norm", json_num(keys.up_norm));
            cJSON_AddItemToObject(key, gated ? "up_key_norm" : "fc1_key_norm",
                                  json_num(keys.up_key_norm));
            if (gated) {
                cJSON_AddItemToObject(key, "gate_norm", json_num(keys.gate_norm));
                cJSON_AddItemToObject(key, "gate_key_norm", json_num(keys.gate_key_norm));
            } else {
                cJSON_AddItemToObject(key, "fc1_bias", json_num(keys.up_bias));
            }
            cJSON_AddItemToObject(root, "input_top_tokens", json_list(tok, it, ki, "coef"));
            cJSON_AddItemToObject(root, "input_bottom_tokens", json_list(tok, ib, ki, "coef"));
        } else {
            cJSON_Delete(key);
        }
        r = cli_json_print(ok ? root : NULL);
    } else if (r == CLI_EXIT_OK) {
        printf("neuron %ld_%ld of %s (%s; layer %ld of %d, neuron %ld of %d)\n", layer, index,
               info->name, resid_arch_name(info->arch), layer, info->n_layer, index, info->d_ffn);
        printf("value: tokens of bs(fc2_%ld) (pushed up by a positive coefficient, down by a "
               "negative one)\n",
               index);
        put_list(tok, "top", vt, kv, " %+.3f");
        put_list(tok, "bottom", vb, kv, " %+.3f");
        printf("key: ");
        if (gated)
            printf("|up| = %.4f, |gamma*up| = %.4f; |gate| = %.4f, |gamma*gate| = %.4f\n",
                   keys.up_norm, keys.up_key_norm, keys.gate_norm, keys.gate_key_norm);
        else
            printf("|fc1| = %.4f, |gamma*fc1| = %.4f, fc1 bias %+.4f\n", keys.up_norm,
                   keys.up_key_norm, keys.up_bias);
        printf("input: coefficient m on each token's embedding alone (direct path)\n");
        put_list(tok, "highest", it, ki, " %+.3f");
        put_list(tok, "lowest", ib, ki, " %+.3f");
    }
    free(vt), free(vb), free(it), free(ib), free(coef);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_neuron = {"neuron", "one FFN neuron: the tokens it writes and reads",
                                    help, run};
