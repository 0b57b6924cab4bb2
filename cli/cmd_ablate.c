/*
 * cmd_ablate.c - `resid ablate MODEL -p TEXT --units ...`: change units
 * during the forward pass (zero, mean, replace, add) and show the target's
 * probability, log-probability and rank before and after, beside a random
 * baseline; `--compare-scores` runs the scoring-method comparison of
 * METHOD.md §3.5 and `--additivity L` the additivity check of §3.4.
 *
 * A thin client of the "Interventions and verification" API (resid.h).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "intervene.h"

static const char help[] =
    "Usage: resid ablate MODEL (-p TEXT | --ids LIST) --units LIST [OPTIONS]\n"
    "       resid ablate MODEL (-p TEXT | --prompts FILE) --compare-scores [--top K]\n"
    "       resid ablate MODEL (-p TEXT | --prompts FILE) --additivity L\n"
    "\n"
    "Intervenes on units during the forward pass and shows the target token's\n"
    "probability, log-probability and rank (1 = the top token) at the last\n"
    "position before and after, in the paper lens (prob: the final norm frozen\n"
    "at the run's own x_L, no final-norm bias) and in the model's own output\n"
    "(model_prob).\n"
    "\n"
    "Unit ids (0-based; comma-separated in --units):\n"
    "  n:L_K      FFN neuron K of layer L (zeroing it at every position = zeroing\n"
    "             its fc2 row)\n"
    "  h:L_H      head H of layer L (its W_O columns, every position)\n"
    "  L_K, L_H   two numbers are ambiguous: give n:/h: or --kind neuron|head\n"
    "  L_H_J      the attention weight of head H from the last position to\n"
    "             source J (set to 0, not renormalised)\n"
    "  L_H_N_J    attention neuron: the contribution alpha_{t*,J} v_J[N] to dim N\n"
    "             of head H at the last position\n"
    "  wo:L_H_N   attention neuron as a parameter: dim N of head H at every\n"
    "             source and position (= zeroing its W_O row)\n"
    "  aL, fL     the attention / FFN output of layer L (with its bias)\n"
    "  aL_J       source position J for every head of layer L\n"
    "\n"
    "Options:\n" CLI_HELP_PROMPT "  -u, --units LIST     the units to change\n"
    "      --kind K         neuron or head: what a bare L_X id means\n"
    "  -m, --mode M         zero (default), mean, replace or add\n"
    "      --positions LIST query positions to change (default: every position\n"
    "                       for L_K, L_H, wo:, aL, fL; the last one for the\n"
    "                       others and for add); 'all' or 'last' also work\n"
    "      --clean TEXT     replace: the clean prompt whose activations are\n"
    "                       patched in (same number of tokens)\n"
    "      --clean-ids LIST replace: the clean prompt as ids\n"
    "      --means FILE     mean: the unit means (raw float32, or numbers as text),\n"
    "                       concatenated in unit order: 1 per neuron, d_head per\n"
    "                       head, d_model per aL/fL\n"
    "      --mean-prompts FILE  mean: compute the means over these prompts (one\n"
    "                       per line, every position)\n"
    "      --vector FILE    add: a d_model vector (raw float32 or text); without\n"
    "                       it, each unit's own vector at the last position\n"
    "      --scale S        add: multiply the vector by S (default 1)\n"
    "      --layers LIST    add: residual inputs x_in[l] to add to, l in 0..L\n"
    "                       (L = the final residual; default L)\n"
    "      --random N       also zero/mean/replace N random units of the same\n"
    "                       kinds (none of the chosen ones) as a baseline\n"
    "      --seed S         seed of the random baseline (default 1)\n"
    "      --target TEXT    the target token (default: the model's top-1)\n"
    "      --target-id N    the target as an id\n"
    "      --compare-scores zero the top-K FFN neurons of each of 8 scores (lpi,\n"
    "                       logp-alone, prob-inc, norm, coef, rank, coef-norm,\n"
    "                       coef-rank; see docs/cli.md) and K random ones\n"
    "  -k, --top K          neurons per score (default 10)\n"
    "      --additivity L   sum of LPIs vs LPI of the sum for the FFN neurons of\n"
    "                       layer L ranked by LPI (and for prob increase)\n"
    "      --prompts FILE   compare/additivity: prompts, one per line (averaged)\n"
    "      --json           machine-readable output (docs/cli.md)\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  M=$RESID_MODELS/tinyllamas/stories260K.bin\n"
    "  resid ablate $M -p \"Once upon a time, there was a little girl named\" \\\n"
    "      --units n:4_17,h:3_1,f2 --random 3\n"
    "  resid ablate $M -p \"Lily saw a big dog\" --units a2 --mode replace \\\n"
    "      --clean \"Lily saw a big cat\"\n"
    "  resid ablate $M -p \"Once upon a time\" --compare-scores --json\n";

enum {
    OPT_UNITS = 'u',
    OPT_MODE = 'm',
    OPT_TOP = 'k',
    OPT_KIND = 300,
    OPT_POSITIONS,
    OPT_CLEAN,
    OPT_CLEAN_IDS,
    OPT_MEANS,
    OPT_MEAN_PROMPTS,
    OPT_VECTOR,
    OPT_SCALE,
    OPT_LAYERS,
    OPT_RANDOM,
    OPT_SEED,
    OPT_TARGET,
    OPT_TARGET_ID,
    OPT_COMPARE,
    OPT_ADDITIVITY,
    OPT_PROMPTS,
};

typedef struct ablate_opts {
    const char *units, *kind, *positions, *clean, *clean_ids, *means, *mean_prompts;
    const char *vector, *layers, *target_text, *prompts;
    resid_iv_mode mode;
    double scale;
    long random, top, target_id, additivity;
    unsigned long long seed;
    bool compare;
} ablate_opts;

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    ablate_opts *o = user;
    switch (opt) {
    case OPT_UNITS: o->units = arg; return CLI_CONTINUE;
    case OPT_KIND:
        if (strcmp(arg, "neuron") && strcmp(arg, "head"))
            return cli_usage_error(cmd, "--kind must be neuron or head, not '%s'", arg);
        o->kind = arg;
        return CLI_CONTINUE;
    case OPT_MODE: {
        resid_error err;
        if (resid_iv_mode_parse(arg, &o->mode, &err) != RESID_OK)
            return cli_usage_error(cmd, "%s", err.msg);
        return CLI_CONTINUE;
    }
    case OPT_POSITIONS: o->positions = arg; return CLI_CONTINUE;
    case OPT_CLEAN: o->clean = arg; return CLI_CONTINUE;
    case OPT_CLEAN_IDS: o->clean_ids = arg; return CLI_CONTINUE;
    case OPT_MEANS: o->means = arg; return CLI_CONTINUE;
    case OPT_MEAN_PROMPTS: o->mean_prompts = arg; return CLI_CONTINUE;
    case OPT_VECTOR: o->vector = arg; return CLI_CONTINUE;
    case OPT_SCALE: {
        char *end;
        errno = 0;
        o->scale = strtod(arg, &end);
        if (errno || end == arg || *end || !isfinite(o->scale))
            return cli_usage_error(cmd, "--scale needs a finite number, not '%s'", arg);
        return CLI_CONTINUE;
    }
    case OPT_LAYERS: o->layers = arg; return CLI_CONTINUE;
    case OPT_RANDOM: return cli_parse_int(cmd, "--random", arg, 1, 100000, &o->random);
    case OPT_SEED: {
        char *end;
        errno = 0;
        o->seed = strtoull(arg, &end, 10);
        if (errno || end == arg || *end || arg[0] == '-')
            return cli_usage_error(cmd, "--seed needs a non-negative integer, not '%s'", arg);
        return CLI_CONTINUE;
    }
    case OPT_TARGET: o->target_text = arg; return CLI_CONTINUE;
    case OPT_TARGET_ID: return cli_parse_int(cmd, "--target-id", arg, 0, INT32_MAX, &o->target_id);
    case OPT_COMPARE: o->compare = true; return CLI_CONTINUE;
    case OPT_TOP: return cli_parse_int(cmd, "--top", arg, 1, 100000, &o->top);
    case OPT_ADDITIVITY:
        return cli_parse_int(cmd, "--additivity", arg, 0, INT32_MAX, &o->additivity);
    case OPT_PROMPTS: o->prompts = arg; return CLI_CONTINUE;
    default: return cli_usage_error(cmd, "unknown option");
    }
}

/* ------------------------------------------------------------------------- */
/* Parsing helpers                                                           */
/* ------------------------------------------------------------------------- */

/* Comma-separated non-negative integers into *out (malloc'd). Returns
 * CLI_CONTINUE or a usage error naming `what`. */
static int parse_int_list(const cli_command *cmd, const char *what, const char *s, long hi,
                          int32_t **out, int32_t *n) {
    *out = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return cli_error("out of memory");
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > hi || (*end && *end != ',')) {
            free(v);
            return cli_usage_error(cmd, "%s: '%s' is not a list of integers in [0, %ld]", what, s,
                                   hi);
        }
        v[(*n)++] = (int32_t)x;
        if (!*end) break;
        p = end + 1;
    }
    *out = v;
    return CLI_CONTINUE;
}

/* One unit id (see the help). Returns 0 or a usage error. */
static int parse_unit(const cli_command *cmd, const char *id, const char *kind, int32_t T,
                      const resid_model_info *in, resid_unit *u) {
    char msg[512];
    return cli_unit_parse(id, kind, T, in, u, msg, sizeof msg) ? 0
                                                               : cli_usage_error(cmd, "%s", msg);
}

/* A file of floats: raw little-endian float32 when its size is 4·want and
 * it does not parse as text, else whitespace/comma separated numbers.
 * want < 0: any count (text only, or raw when not text). */
static int read_floats(const char *path, int64_t want, float **out, int64_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return cli_error("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) free(buf);
            buf = nb, cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return cli_error("out of memory");
    buf[len] = 0;
    /* text? */
    bool text = len > 0;
    for (size_t i = 0; i < len && text; i++)
        text = strchr("0123456789+-.eEinfaINFA, \t\r\n", buf[i]) != NULL;
    float *v = NULL;
    int64_t cnt = 0;
    if (text) {
        v = malloc((len / 2 + 1) * sizeof *v);
        char *p = buf;
        while (v) {
            while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
                p++;
            if (!*p) break;
            char *end;
            float x = strtof(p, &end);
            if (end == p || !isfinite(x)) {
                long at = (long)(p - buf);
                free(v), free(buf);
                return cli_error("%s: not a number at byte %ld", path, at);
            }
            v[cnt++] = x;
            p = end;
        }
    } else {
        if (len % 4) {
            free(buf);
            return cli_error("%s: %zu bytes is not a float32 array", path, len);
        }
        cnt = (int64_t)(len / 4);
        v = malloc((len ? len : 4));
        if (v) memcpy(v, buf, len);
        for (int64_t i = 0; v && i < cnt; i++)
            if (!isfinite(v[i])) {
                free(v), free(buf);
                return cli_error("%s: value %lld is not finite", path, (long long)i);
            }
    }
    free(buf);
    if (!v) return cli_error("out of memory");
    if (want >= 0 && cnt != want) {
        free(v);
        return cli_error("%s: %lld values, expected %lld", path, (long long)cnt, (long long)want);
    }
    *out = v;
    *n = cnt;
    return CLI_EXIT_OK;
}

/* Lines of a file (empty lines skipped), malloc'd array of malloc'd strings. */
static int read_lines(const char *path, char ***out, int32_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return cli_error("%s: cannot open: %s", path, strerror(errno));
    char **v = NULL, *line = NULL;
    size_t lcap = 0;
    int32_t cnt = 0, cap = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, f)) >= 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = 0;
        if (!got) continue;
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            char **nv = realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) break;
            v = nv;
        }
        v[cnt++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (cnt == 0) {
        free(v);
        return cli_error("%s: no prompts (one per line)", path);
    }
    *out = v;
    *n = cnt;
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------- */
/* Output                                                                    */
/* ------------------------------------------------------------------------- */

static void print_stats_header(void) {
    printf("%-22s %10s %10s %6s %11s %11s %6s\n", "", "prob", "logprob", "rank", "model_prob",
           "model_logp", "mrank");
}

static void print_stats(const char *label, const resid_target_stats *s) {
    printf("%-22s %10.6f %10.4f %6d %11.6f %11.4f %6d\n", label, s->prob, s->logprob, s->rank + 1,
           s->model_prob, s->model_logprob, s->model_rank + 1);
}

static void print_target(const resid_tokenizer *tok, int32_t prev, int32_t target) {
    printf("target ");
    if (tok) {
        size_t len;
        const char *b = resid_token_bytes(tok, prev, target, &len);
        cli_fput_quoted(stdout, b ? b : "", b ? len : 0);
    }
    printf(" (id %d)\n", target);
}

/* ------------------------------------------------------------------------- */
/* The three modes of the command                                            */
/* ------------------------------------------------------------------------- */

typedef struct ctx {
    const cli_command *cmd;
    const ablate_opts *o;
    const cli_args *a;
    resid_model *m;
    const resid_tokenizer *tok;
    const resid_model_info *in;
} ctx;

/* Token ids of a prompt text (as -p would give), for --prompts/--clean. */
static int prompt_ids(const ctx *c, const char *text, const char *ids_text, int32_t **ids,
                      int32_t *n) {
    cli_args a = *c->a;
    a.prompt = text;
    a.ids = ids_text;
    return cli_prompt_ids(c->cmd, &a, c->tok, c->in->n_vocab, CLI_PROMPT_NONEMPTY, ids, n);
}

static int resolve_target_for(const ctx *c, const int32_t *ids, int32_t n, int32_t *target) {
    *target = -1;
    if (c->o->target_id >= 0) {
        if (c->o->target_id >= c->in->n_vocab)
            return cli_usage_error(c->cmd, "--target-id %ld is out of range [0, %d)",
                                   c->o->target_id, c->in->n_vocab);
        *target = (int32_t)c->o->target_id;
        return CLI_EXIT_OK;
    }
    if (c->o->target_text) return cli_resolve_token(c->tok, "--target", c->o->target_text, ids[n - 1], target);
    return CLI_EXIT_OK;
}

/* Adds the edits of the units in the chosen mode (cli_iv_build). */
static int build(const ctx *c, resid_intervention *iv, const resid_unit *u, int64_t nu,
                 const int32_t *pos, int32_t n_pos, const float *means, const float *vecs,
                 int64_t n_vecs, const int32_t *layers, int32_t n_layers) {
    const cli_iv_spec s = {.mode = c->o->mode, .units = u, .n_units = nu, .pos = pos,
                           .n_pos = n_pos, .means = means, .vecs = vecs, .n_vecs = n_vecs,
                           .scale = c->o->scale, .layers = layers, .n_layers = n_layers};
    resid_error err;
    return cli_iv_build(c->m, iv, &s, &err) ? cli_lib_error(&err) : CLI_EXIT_OK;
}

static int do_ablate(const ctx *c, const int32_t *ids, int32_t n) {
    const ablate_opts *o = c->o;
    const int D = c->in->d_model, L = c->in->n_layer;
    int r = CLI_EXIT_OK;
    resid_error err;
    resid_unit *u = NULL, *ru = NULL;
    int64_t nu = 0;
    int32_t *pos = NULL, n_pos = 0, *layers = NULL, n_layers = 0, *clean = NULL, n_clean = 0;
    float *means = NULL, *vecs = NULL, *rmeans = NULL;
    int64_t n_means = 0, n_vecs = 0;
    resid_intervention *iv = NULL, *riv = NULL;
    char **mp = NULL;
    int32_t n_mp = 0;
    int32_t **mp_ids = NULL, *mp_n = NULL;

    if (!o->units && !(o->mode == RESID_IV_ADD && o->vector))
        return cli_usage_error(c->cmd, "--units is required (or --mode add --vector FILE)");
    if (o->units) {
        size_t cap = 1;
        for (const char *p = o->units; *p; p++)
            cap += *p == ',';
        u = malloc(cap * sizeof *u);
        char *copy = strdup(o->units);
        if (!u || !copy) {
            free(u), free(copy);
            return cli_error("out of memory");
        }
        for (char *save, *t = strtok_r(copy, ",", &save); t && !r; t = strtok_r(NULL, ",", &save))
            r = parse_unit(c->cmd, t, o->kind, n, c->in, &u[nu++]);
        free(copy);
        if (r) goto out;
    }
    if (o->positions) {
        if (!strcmp(o->positions, "last")) {
            pos = malloc(sizeof *pos), pos[0] = n - 1, n_pos = 1;
        } else if (!strcmp(o->positions, "all")) {
            pos = malloc((size_t)n * sizeof *pos);
            for (int32_t t = 0; t < n; t++)
                pos[t] = t;
            n_pos = n;
        } else if ((r = parse_int_list(c->cmd, "--positions", o->positions, n - 1, &pos, &n_pos)) !=
                   CLI_CONTINUE) {
            goto out;
        }
        r = 0;
    }
    if (o->mode != RESID_IV_ADD && (o->vector || o->layers))
        r = cli_usage_error(c->cmd, "--vector and --layers go with --mode add");
    else if (o->mode != RESID_IV_REPLACE && (o->clean || o->clean_ids))
        r = cli_usage_error(c->cmd, "--clean goes with --mode replace");
    else if (o->mode != RESID_IV_MEAN && (o->means || o->mean_prompts))
        r = cli_usage_error(c->cmd, "--means / --mean-prompts go with --mode mean");
    else if (o->mode == RESID_IV_REPLACE && !o->clean && !o->clean_ids)
        r = cli_usage_error(c->cmd, "--mode replace needs --clean TEXT or --clean-ids LIST");
    else if (o->mode == RESID_IV_MEAN && !o->means == !o->mean_prompts)
        r = cli_usage_error(c->cmd, "--mode mean needs one of --means FILE, --mean-prompts FILE");
    else if (o->mode == RESID_IV_ADD && o->random)
        r = cli_usage_error(c->cmd, "--random has no meaning with --mode add");
    else if (o->mode == RESID_IV_MEAN && o->means && o->random)
        r = cli_usage_error(c->cmd, "--random with --mode mean needs --mean-prompts (the random "
                                    "units' means are computed from them)");
    if (r) goto out;

    int32_t target;
    if ((r = resolve_target_for(c, ids, n, &target))) goto out;

    /* mode inputs */
    if (o->mode == RESID_IV_REPLACE) {
        if ((r = prompt_ids(c, o->clean, o->clean_ids, &clean, &n_clean))) goto out;
        if (n_clean != n) {
            r = cli_error("the clean prompt has %d tokens but the prompt has %d: replace needs "
                          "the same length",
                          n_clean, n);
            goto out;
        }
    }
    if (o->mode == RESID_IV_MEAN) {
        int64_t want = 0;
        char msg[256];
        if (!cli_iv_mean_width(c->m, u, nu, &want, msg, sizeof msg)) {
            r = cli_usage_error(c->cmd, "%s", msg);
            goto out;
        }
        if (o->means) {
            if ((r = read_floats(o->means, want, &means, &n_means))) goto out;
        } else {
            if ((r = read_lines(o->mean_prompts, &mp, &n_mp))) goto out;
            mp_ids = calloc((size_t)n_mp, sizeof *mp_ids);
            mp_n = calloc((size_t)n_mp, sizeof *mp_n);
            if (!mp_ids || !mp_n) {
                r = cli_error("out of memory");
                goto out;
            }
            for (int32_t i = 0; i < n_mp && !r; i++)
                r = prompt_ids(c, mp[i], NULL, &mp_ids[i], &mp_n[i]);
            if (r) goto out;
            if (resid_unit_means(c->m, (const int32_t *const *)mp_ids, mp_n, n_mp, u, nu, &means,
                                 &n_means, &err)) {
                r = cli_lib_error(&err);
                goto out;
            }
        }
    }
    if (o->mode == RESID_IV_ADD) {
        if (o->layers) {
            if ((r = parse_int_list(c->cmd, "--layers", o->layers, L, &layers, &n_layers)) !=
                CLI_CONTINUE)
                goto out;
            r = 0;
        } else {
            layers = malloc(sizeof *layers), layers[0] = L, n_layers = 1;
        }
        if (o->vector) {
            if ((r = read_floats(o->vector, D, &vecs, &n_vecs))) goto out;
            n_vecs = 1;
        } else {
            if (cli_iv_unit_vectors(c->m, ids, n, u, nu, &vecs, &err)) {
                r = cli_lib_error(&err);
                goto out;
            }
            n_vecs = nu;
        }
    }

    resid_target_stats before, after, rafter;
    if (resid_intervention_run(c->m, NULL, ids, n, target, &before, &target, NULL, NULL, &err)) {
        r = cli_lib_error(&err);
        goto out;
    }
    if (resid_intervention_new(c->m, &iv, &err) ||
        (clean && resid_intervention_set_clean(iv, clean, n_clean, &err))) {
        r = cli_lib_error(&err);
        goto out;
    }
    if ((r = build(c, iv, u, nu, pos, n_pos, means, vecs, n_vecs, layers, n_layers))) goto out;
    if (resid_intervention_run(c->m, iv, ids, n, target, &after, NULL, NULL, NULL, &err)) {
        r = cli_lib_error(&err);
        goto out;
    }
    if (o->random) {
        ru = malloc((size_t)o->random * sizeof *ru);
        if (!ru) {
            r = cli_error("out of memory");
            goto out;
        }
        if (resid_random_units(c->m, n, u, nu, o->random, o->seed, ru, &err) ||
            resid_intervention_new(c->m, &riv, &err) ||
            (clean && resid_intervention_set_clean(riv, clean, n_clean, &err))) {
            r = cli_lib_error(&err);
            goto out;
        }
        if (o->mode == RESID_IV_MEAN) {
            int64_t nrm;
            if (resid_unit_means(c->m, (const int32_t *const *)mp_ids, mp_n, n_mp, ru, o->random,
                                 &rmeans, &nrm, &err)) {
                r = cli_lib_error(&err);
                goto out;
            }
        }
        if ((r = build(c, riv, ru, o->random, pos, n_pos, rmeans, NULL, 0, NULL, 0))) goto out;
        if (resid_intervention_run(c->m, riv, ids, n, target, &rafter, NULL, NULL, NULL, &err)) {
            r = cli_lib_error(&err);
            goto out;
        }
    }

    if (c->a->json) {
        cJSON *root = cJSON_CreateObject();
        if (root) {
            cJSON_AddItemToObject(root, "tokens", cli_json_tokens(c->tok, ids, n));
            cJSON_AddItemToObject(root, "target", cli_json_token(c->tok, ids[n - 1], target));
            cJSON_AddStringToObject(root, "mode", resid_iv_mode_name(o->mode));
            cJSON_AddItemToObject(root, "units", cli_json_units(u, nu));
            if (o->mode == RESID_IV_ADD) {
                cJSON_AddNumberToObject(root, "scale", o->scale);
                cJSON *la = cJSON_CreateArray();
                for (int32_t i = 0; la && i < n_layers; i++)
                    cJSON_AddItemToArray(la, cJSON_CreateNumber(layers[i]));
                cJSON_AddItemToObject(root, "layers", la);
                cJSON_AddBoolToObject(root, "vector_file", o->vector != NULL);
            }
            cJSON_AddItemToObject(root, "before", cli_json_target_stats(&before));
            cJSON_AddItemToObject(root, "after", cli_json_target_stats(&after));
            if (o->random) {
                cJSON *rj = cJSON_CreateObject();
                if (rj) {
                    cJSON_AddNumberToObject(rj, "seed", (double)o->seed);
                    cJSON_AddItemToObject(rj, "units", cli_json_units(ru, o->random));
                    cJSON_AddItemToObject(rj, "after", cli_json_target_stats(&rafter));
                }
                cJSON_AddItemToObject(root, "random", rj);
            }
        }
        r = cli_json_print(root);
    } else {
        printf("%d prompt tokens, ", n);
        print_target(c->tok, ids[n - 1], target);
        printf("mode %s, units:", resid_iv_mode_name(o->mode));
        for (int64_t i = 0; i < nu; i++) {
            char id[64];
            cli_unit_format(&u[i], id, sizeof id);
            printf(" %s", id);
        }
        if (o->mode == RESID_IV_ADD) {
            printf("%s (scale %g) at layers", o->vector ? " vector file" : "", o->scale);
            for (int32_t i = 0; i < n_layers; i++)
                printf(" %d", layers[i]);
        }
        printf("\n\n");
        print_stats_header();
        print_stats("before", &before);
        print_stats("after", &after);
        if (o->random) {
            char lab[64];
            snprintf(lab, sizeof lab, "random (%ld units)", o->random);
            print_stats(lab, &rafter);
            printf("\nrandom units (seed %llu):", o->seed);
            for (long i = 0; i < o->random; i++) {
                char id[64];
                cli_unit_format(&ru[i], id, sizeof id);
                printf(" %s", id);
            }
            printf("\n");
        }
        printf("\nprob: paper lens (final norm frozen at the run's x_L, no final-norm bias); "
               "model_prob: the model's output. rank 1 = top token.\n");
    }
out:
    resid_intervention_free(iv);
    resid_intervention_free(riv);
    free(u), free(ru), free(pos), free(layers), free(clean), free(means), free(rmeans);
    free(vecs);
    for (int32_t i = 0; i < n_mp; i++) {
        free(mp[i]);
        if (mp_ids) free(mp_ids[i]);
    }
    free(mp), free(mp_ids), free(mp_n);
    return r;
}

/* The prompts of --compare-scores / --additivity: -p/--ids, or --prompts. */
static int gather_prompts(const ctx *c, int32_t ***ids, int32_t **ns, char ***texts, int32_t *np) {
    *ids = NULL, *ns = NULL, *texts = NULL, *np = 0;
    if (c->o->prompts && (c->a->prompt || c->a->ids))
        return cli_usage_error(c->cmd, "give -p/--ids or --prompts, not both");
    char **t = NULL;
    int32_t n = 1;
    if (c->o->prompts) {
        int r = read_lines(c->o->prompts, &t, &n);
        if (r) return r;
    } else if (!c->a->prompt && !c->a->ids) {
        return cli_usage_error(c->cmd, "a prompt is required (-p TEXT, --ids LIST or --prompts "
                                       "FILE)");
    }
    int32_t **v = calloc((size_t)n, sizeof *v);
    int32_t *len = calloc((size_t)n, sizeof *len);
    int r = (v && len) ? CLI_EXIT_OK : cli_error("out of memory");
    for (int32_t i = 0; i < n && !r; i++)
        r = t ? prompt_ids(c, t[i], NULL, &v[i], &len[i])
              : prompt_ids(c, c->a->prompt, c->a->ids, &v[i], &len[i]);
    *ids = v, *ns = len, *texts = t, *np = n;
    return r;
}

static void free_prompts(int32_t **ids, int32_t *ns, char **texts, int32_t np) {
    for (int32_t i = 0; i < np; i++) {
        if (ids) free(ids[i]);
        if (texts) free(texts[i]);
    }
    free(ids), free(ns), free(texts);
}

static const char *const row_names[RESID_FSCORE_COUNT + 2] = {
    "original", "lpi",  "logp-alone", "prob-inc",  "norm",
    "coef",     "rank", "coef-norm",  "coef-rank", "random"};

static int do_compare(const ctx *c) {
    int32_t **ids, *ns, np;
    char **texts;
    int r = gather_prompts(c, &ids, &ns, &texts, &np);
    const int32_t k = (int32_t)(c->o->top > 0 ? c->o->top : 10);
    enum { NR = RESID_FSCORE_COUNT + 2 };
    double sum[NR][4] = {{0}}; /* rr, prob, model_rr, model_prob */
    cJSON *root = NULL, *jp = NULL;
    if (!r && c->a->json) {
        root = cJSON_CreateObject();
        if (root) {
            cJSON_AddNumberToObject(root, "k", k);
            cJSON_AddNumberToObject(root, "seed", (double)c->o->seed);
            jp = cJSON_AddArrayToObject(root, "prompts");
        }
    }
    for (int32_t p = 0; p < np && !r; p++) {
        int32_t target;
        if ((r = resolve_target_for(c, ids[p], ns[p], &target))) break;
        resid_score_compare *sc;
        resid_error err;
        if (resid_compare_scores(c->m, ids[p], ns[p], target, k, c->o->seed + (uint64_t)p, &sc,
                                 &err)) {
            r = cli_lib_error(&err);
            break;
        }
        const resid_target_stats *rows[NR];
        rows[0] = &sc->original;
        for (int f = 0; f < RESID_FSCORE_COUNT; f++)
            rows[1 + f] = &sc->method[f];
        rows[NR - 1] = &sc->random;
        for (int i = 0; i < NR; i++) {
            sum[i][0] += rows[i]->rr, sum[i][1] += rows[i]->prob;
            sum[i][2] += rows[i]->model_rr, sum[i][3] += rows[i]->model_prob;
        }
        if (c->a->json) {
            cJSON *pj = cJSON_CreateObject();
            cJSON_AddItemToArray(jp, pj);
            cJSON_AddItemToObject(pj, "tokens", cli_json_tokens(c->tok, ids[p], ns[p]));
            cJSON_AddItemToObject(pj, "target",
                                  cli_json_token(c->tok, ids[p][ns[p] - 1], sc->target));
            cJSON *ra = cJSON_AddArrayToObject(pj, "rows");
            for (int i = 0; i < NR; i++) {
                cJSON *row = cli_json_target_stats(rows[i]);
                cJSON_AddItemToArray(ra, row);
                cJSON_AddStringToObject(row, "method", row_names[i]);
                if (i > 0)
                    cJSON_AddItemToObject(row, "units",
                                          cli_json_units(sc->units + (size_t)(i - 1) * k, k));
            }
        } else {
            printf("prompt %d: %d tokens, ", p + 1, ns[p]);
            print_target(c->tok, ids[p][ns[p] - 1], sc->target);
            if (np == 1) {
                print_stats_header();
                for (int i = 0; i < NR; i++)
                    print_stats(row_names[i], rows[i]);
                printf("\n");
            }
        }
        resid_score_compare_free(sc);
    }
    if (!r && c->a->json) {
        cJSON *ma = cJSON_AddArrayToObject(root, "mean");
        for (int i = 0; i < NR; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToArray(ma, o);
            cJSON_AddStringToObject(o, "method", row_names[i]);
            cJSON_AddNumberToObject(o, "mrr", sum[i][0] / np);
            cJSON_AddNumberToObject(o, "prob", sum[i][1] / np);
            cJSON_AddNumberToObject(o, "model_mrr", sum[i][2] / np);
            cJSON_AddNumberToObject(o, "model_prob", sum[i][3] / np);
        }
        r = cli_json_print(root);
        root = NULL;
    } else if (!r) {
        printf("top-%d FFN neurons zeroed (fc2 rows), mean over %d prompt%s:\n", k, np,
               np == 1 ? "" : "s");
        printf("%-12s %9s %9s %10s %10s\n", "method", "MRR", "prob", "model_MRR", "model_prob");
        for (int i = 0; i < NR; i++)
            printf("%-12s %9.4f %9.4f %10.4f %10.4f\n", row_names[i], sum[i][0] / np,
                   sum[i][1] / np, sum[i][2] / np, sum[i][3] / np);
        printf("\nprob/MRR: paper lens; model_*: the model's output. Lower after ablation = "
               "the score found more important neurons.\n");
    }
    cJSON_Delete(root);
    free_prompts(ids, ns, texts, np);
    return r;
}

static cJSON *json_doubles(const double *v, int32_t n) {
    cJSON *a = cJSON_CreateArray();
    for (int32_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static int do_additivity(const ctx *c) {
    if (c->o->additivity >= c->in->n_layer)
        return cli_usage_error(c->cmd, "--additivity %ld: layer out of range (model has %d)",
                               c->o->additivity, c->in->n_layer);
    int32_t **ids, *ns, np;
    char **texts;
    int r = gather_prompts(c, &ids, &ns, &texts, &np);
    resid_additivity **a = calloc((size_t)(np ? np : 1), sizeof *a);
    if (!a && !r) r = cli_error("out of memory");
    const int32_t l = (int32_t)c->o->additivity;
    for (int32_t p = 0; p < np && !r; p++) {
        int32_t target;
        if ((r = resolve_target_for(c, ids[p], ns[p], &target))) break;
        resid_trace_opts to = resid_trace_defaults();
        to.capture = RESID_EXPLAIN_CAPTURE;
        to.positions = RESID_POS_LAST;
        resid_trace *tr = NULL;
        resid_explainer *ex = NULL;
        resid_error err;
        resid_explain_opts eo = resid_explain_defaults();
        eo.target = target;
        if (resid_forward(c->m, ids[p], ns[p], &to, &tr, &err) ||
            resid_explainer_new(c->m, tr, &eo, &ex, &err) ||
            resid_additivity_new(ex, l, 0, &a[p], &err))
            r = cli_lib_error(&err);
        else if (!c->a->json) {
            printf("prompt %d: %d tokens, ", p + 1, ns[p]);
            print_target(c->tok, ids[p][ns[p] - 1], resid_explainer_target(ex));
            printf("  layer %d, %d neurons by LPI: LPI r = %.4f slope = %.4f | prob-inc r = "
                   "%.4f slope = %.4f\n",
                   l, a[p]->n, a[p]->r_lpi, a[p]->slope_lpi, a[p]->r_pinc, a[p]->slope_pinc);
        }
        resid_explainer_free(ex);
        resid_trace_free(tr);
    }
    if (!r) {
        resid_additivity_summary s;
        resid_additivity_aggregate((const resid_additivity *const *)a, np, &s);
        if (c->a->json) {
            cJSON *root = cJSON_CreateObject();
            cJSON_AddNumberToObject(root, "layer", l);
            cJSON *pa = cJSON_AddArrayToObject(root, "prompts");
            for (int32_t p = 0; p < np; p++) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddItemToArray(pa, o);
                cJSON_AddItemToObject(o, "tokens", cli_json_tokens(c->tok, ids[p], ns[p]));
                cJSON_AddNumberToObject(o, "n", a[p]->n);
                cJSON_AddNumberToObject(o, "r_lpi", a[p]->r_lpi);
                cJSON_AddNumberToObject(o, "slope_lpi", a[p]->slope_lpi);
                cJSON_AddNumberToObject(o, "r_pinc", a[p]->r_pinc);
                cJSON_AddNumberToObject(o, "slope_pinc", a[p]->slope_pinc);
                cJSON *ord = cJSON_CreateArray();
                for (int32_t i = 0; i < a[p]->n; i++)
                    cJSON_AddItemToArray(ord, cJSON_CreateNumber(a[p]->order[i]));
                cJSON_AddItemToObject(o, "order", ord);
                cJSON_AddItemToObject(o, "sum_lpi", json_doubles(a[p]->sum_lpi, a[p]->n));
                cJSON_AddItemToObject(o, "lpi_sum", json_doubles(a[p]->lpi_sum, a[p]->n));
                cJSON_AddItemToObject(o, "sum_pinc", json_doubles(a[p]->sum_pinc, a[p]->n));
                cJSON_AddItemToObject(o, "pinc_sum", json_doubles(a[p]->pinc_sum, a[p]->n));
            }
            cJSON *sj = cJSON_AddObjectToObject(root, "summary");
            cJSON_AddNumberToObject(sj, "n_prompts", s.n_prompts);
            cJSON_AddNumberToObject(sj, "mean_r_lpi", s.mean_r_lpi);
            cJSON_AddNumberToObject(sj, "mean_slope_lpi", s.mean_slope_lpi);
            cJSON_AddNumberToObject(sj, "pooled_r_lpi", s.pooled_r_lpi);
            cJSON_AddNumberToObject(sj, "pooled_slope_lpi", s.pooled_slope_lpi);
            cJSON_AddNumberToObject(sj, "mean_r_pinc", s.mean_r_pinc);
            cJSON_AddNumberToObject(sj, "mean_slope_pinc", s.mean_slope_pinc);
            cJSON_AddNumberToObject(sj, "pooled_r_pinc", s.pooled_r_pinc);
            cJSON_AddNumberToObject(sj, "pooled_slope_pinc", s.pooled_slope_pinc);
            r = cli_json_print(root);
        } else {
            printf("\nover %d prompt%s: LPI mean r %.4f (pooled %.4f), mean slope %.4f | "
                   "prob-inc mean r %.4f (pooled %.4f), mean slope %.4f\n",
                   np, np == 1 ? "" : "s", s.mean_r_lpi, s.pooled_r_lpi, s.mean_slope_lpi,
                   s.mean_r_pinc, s.pooled_r_pinc, s.mean_slope_pinc);
            printf("x = running sum of the neurons' scores, y = score of the running sum of "
                   "their vectors (same context x_mid[%d][t*]).\n",
                   l);
        }
    }
    for (int32_t p = 0; a && p < np; p++)
        resid_additivity_free(a[p]);
    free(a);
    free_prompts(ids, ns, texts, np);
    return r;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"units", required_argument, NULL, OPT_UNITS},
        {"kind", required_argument, NULL, OPT_KIND},
        {"mode", required_argument, NULL, OPT_MODE},
        {"positions", required_argument, NULL, OPT_POSITIONS},
        {"clean", required_argument, NULL, OPT_CLEAN},
        {"clean-ids", required_argument, NULL, OPT_CLEAN_IDS},
        {"means", required_argument, NULL, OPT_MEANS},
        {"mean-prompts", required_argument, NULL, OPT_MEAN_PROMPTS},
        {"vector", required_argument, NULL, OPT_VECTOR},
        {"scale", required_argument, NULL, OPT_SCALE},
        {"layers", required_argument, NULL, OPT_LAYERS},
        {"random", required_argument, NULL, OPT_RANDOM},
        {"seed", required_argument, NULL, OPT_SEED},
        {"target", required_argument, NULL, OPT_TARGET},
        {"target-id", required_argument, NULL, OPT_TARGET_ID},
        {"compare-scores", no_argument, NULL, OPT_COMPARE},
        {"top", required_argument, NULL, OPT_TOP},
        {"additivity", required_argument, NULL, OPT_ADDITIVITY},
        {"prompts", required_argument, NULL, OPT_PROMPTS},
        {NULL, 0, NULL, 0},
    };
    ablate_opts o = {
        .mode = RESID_IV_ZERO, .scale = 1.0, .target_id = -1, .additivity = -1, .seed = 1};
    cli_args a;
    int r =
        cli_parse(cmd, argc, argv, CLI_OPT_PROMPT | CLI_OPT_JSON, extra, "u:m:k:", on_opt, &o, &a);
    if (r != CLI_CONTINUE) return r;
    if (o.target_text && o.target_id >= 0)
        return cli_usage_error(cmd, "give either --target TEXT or --target-id N, not both");
    int n_actions = (o.compare ? 1 : 0) + (o.additivity >= 0 ? 1 : 0);
    if (n_actions > 1) return cli_usage_error(cmd, "give one of --compare-scores and --additivity");
    if (n_actions && (o.units || o.random))
        return cli_usage_error(cmd, "--units/--random do not go with --compare-scores or "
                                    "--additivity");
    if (!n_actions && o.prompts)
        return cli_usage_error(cmd, "--prompts goes with --compare-scores or --additivity");
    if (!o.compare && o.top) return cli_usage_error(cmd, "--top goes with --compare-scores");
    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    ctx c = {cmd, &o, &a, m, resid_model_tokenizer(m), resid_model_get_info(m)};
    if (o.compare) {
        r = do_compare(&c);
    } else if (o.additivity >= 0) {
        r = do_additivity(&c);
    } else {
        int32_t *ids = NULL, n = 0;
        r = cli_prompt_ids(cmd, &a, c.tok, c.in->n_vocab, CLI_PROMPT_NONEMPTY, &ids, &n);
        if (r == CLI_EXIT_OK) r = do_ablate(&c, ids, n);
        free(ids);
    }
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_ablate = {
    "ablate", "zero/mean/replace/steer units and measure the target; score comparison", help, run};
