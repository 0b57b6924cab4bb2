/*
 * cmd_explain.c - `resid explain MODEL -p TEXT`: why the model predicts its
 * next token. Runs the prompt once, scores the pieces of the residual stream
 * at the last position by their log-probability increase (LPI, METHOD.md §3)
 * and prints the layer table, the top heads, head × positions, FFN neurons
 * and attention neurons with the tokens they push, and the query layers of
 * the top FFN neurons (§5.2 Q1). --json writes everything machine-readable
 * (schema: docs/explain-json.md).
 *
 * The command is a thin client of the attribution API (include/resid.h):
 * resid_explainer_new, resid_layer_table, resid_score_all, resid_rank,
 * resid_project_param / resid_project_unit, resid_query_layers_new.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const char help[] =
    "Usage: resid explain MODEL (-p TEXT | --ids LIST) [OPTIONS]\n"
    "\n"
    "Explains the model's next-token prediction after the prompt. Every piece\n"
    "of the residual stream at the last position (attention and FFN layers,\n"
    "heads, head x source position, FFN neurons, attention neurons) is scored\n"
    "by its log-probability increase for the target token w:\n"
    "    LPI(v) = log p(w | x + v) - log p(w | x)\n"
    "where x is the residual v is added to. The layer LPIs add up exactly to\n"
    "log p(w | x_L) - log p(w | x_in[0]). Neurons are listed with the tokens\n"
    "their output direction pushes up (top) and down (bottom); a negative\n"
    "coefficient swaps the two.\n"
    "\n"
    "Options:\n" CLI_HELP_PROMPT
    "      --target TEXT    the token to explain (default: the model's top-1);\n"
    "                       TEXT must be exactly one token\n"
    "      --target-id N    the target as a token id\n"
    "      --vs TEXT        contrast token c: also score each unit's change of\n"
    "                       log p(w) - log p(c) (= bs_w(v) - bs_c(v)), and rank\n"
    "                       the units by it\n"
    "      --vs-id N        the contrast token as an id\n"
    "      --lens NAME      paper (default): the final norm frozen at x_L, no\n"
    "                       final-norm bias; exact: plus the bias, so p(w|x_L)\n"
    "                       is the model's own (GPT-2); logit-lens: each residual\n"
    "                       normalised by itself - changes only the layer table,\n"
    "                       units are then scored in the paper lens\n"
    "  -k, --top K          units shown per list (default 10; clamped to the\n"
    "                       number of units, with a note)\n"
    "      --tokens N       top/bottom tokens shown per unit (default 5)\n"
    "      --exhaustive     score every unit exactly instead of the certified\n"
    "                       bounds (same result, slower; for checking)\n"
    "      --json FILE      write the full result as JSON to FILE (- = stdout,\n"
    "                       then no text report); see docs/explain-json.md\n" CLI_HELP_GLOBAL "\n"
    "Examples:\n"
    "  resid explain $RESID_MODELS/tinyllamas/stories260K.bin \\\n"
    "      -p \"Once upon a time, there was a boy named Tim. Tim had a big red\"\n"
    "  resid explain $RESID_MODELS/tiny-gpt2-stories --vs \" he\" \\\n"
    "      -p \"Once upon a time, there was a little boy named Tim. Tim had a big red ball. One "
    "day,\"\n"
    "  resid explain $RESID_MODELS/tiny-gpt2-stories -p \"...\" --json out.json\n";

enum {
    OPT_TOP = 'k',
    OPT_TARGET = 300,
    OPT_TARGET_ID,
    OPT_VS,
    OPT_VS_ID,
    OPT_LENS,
    OPT_TOKENS,
    OPT_EXHAUSTIVE,
    OPT_JSON_FILE,
};

typedef struct explain_opts {
    const char *target_text, *vs_text;
    long target_id, vs_id; /* -1: not given */
    resid_lens lens;
    long top;
    long n_tokens;
    bool exhaustive;
    const char *json_path;
} explain_opts;

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    explain_opts *o = user;
    resid_error err;
    switch (opt) {
    case OPT_TOP: return cli_parse_int(cmd, "--top", arg, 1, INT32_MAX, &o->top);
    case OPT_TOKENS: return cli_parse_int(cmd, "--tokens", arg, 0, 1000, &o->n_tokens);
    case OPT_TARGET: o->target_text = arg; return CLI_CONTINUE;
    case OPT_VS: o->vs_text = arg; return CLI_CONTINUE;
    case OPT_TARGET_ID: return cli_parse_int(cmd, "--target-id", arg, 0, INT32_MAX, &o->target_id);
    case OPT_VS_ID: return cli_parse_int(cmd, "--vs-id", arg, 0, INT32_MAX, &o->vs_id);
    case OPT_EXHAUSTIVE: o->exhaustive = true; return CLI_CONTINUE;
    case OPT_JSON_FILE: o->json_path = arg; return CLI_CONTINUE;
    case OPT_LENS:
        if (resid_lens_parse(arg, &o->lens, &err) != RESID_OK)
            return cli_usage_error(cmd, "--lens expects paper, exact or logit-lens, got '%s'", arg);
        return CLI_CONTINUE;
    }
    return cli_usage_error(cmd, "unknown option");
}

/* ------------------------------------------------------------------------- */
/* Tokens                                                                    */
/* ------------------------------------------------------------------------- */

/* The bytes of token id as it reads after prev ("" without a tokenizer). */
static const char *tok_text(const resid_tokenizer *tok, int32_t prev, int32_t id, size_t *len) {
    const char *b = tok ? resid_token_bytes(tok, prev, id, len) : NULL;
    if (!b) {
        *len = 0;
        return "";
    }
    return b;
}

/* Resolves --target/--vs TEXT to one token id. A token whose text (after the
 * last prompt token `prev`, as `resid run` shows it) is exactly TEXT wins;
 * otherwise TEXT must tokenize to one token (SentencePiece: a leading space
 * is the one the encoder prepends itself). Anything else is an error that
 * shows how TEXT tokenizes. Returns 0 or 1 (printed). */
static int resolve_token(const resid_tokenizer *tok, const char *what, const char *text,
                         int32_t prev, int32_t *out) {
    if (!tok)
        return cli_error("the model has no tokenizer: give %s as an id (%s-id N)", what, what);
    const size_t tl = strlen(text);
    const int32_t V = resid_tokenizer_n_vocab(tok);
    for (int32_t id = 0; id < V; id++) {
        size_t len;
        const char *b = resid_token_bytes(tok, prev, id, &len);
        if (b && len == tl && tl > 0 && memcmp(b, text, tl) == 0) {
            *out = id;
            return CLI_EXIT_OK;
        }
    }
    resid_encode_opts eo = resid_encode_defaults(tok);
    eo.add_bos = false;
    const char *enc = text;
    if (resid_tokenizer_get_kind(tok) == RESID_TOKENIZER_SPM && text[0] == ' ') enc = text + 1;
    int32_t *ids = NULL, n = 0;
    resid_error err;
    if (resid_tokenize(tok, enc, -1, &eo, &ids, &n, &err) != RESID_OK) return cli_lib_error(&err);
    if (n == 1) {
        *out = ids[0];
        free(ids);
        return CLI_EXIT_OK;
    }
    fprintf(stderr, "resid: %s ", what + 2);
    cli_fput_quoted(stderr, text, tl);
    fprintf(stderr, " is %d tokens%s", n, n ? ": " : "");
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *b = tok_text(tok, i ? ids[i - 1] : prev, ids[i], &len);
        if (i) fputs(" + ", stderr);
        cli_fput_quoted(stderr, b, len);
        fprintf(stderr, " (%d)", ids[i]);
    }
    fprintf(stderr, "; give one token or use %s-id\n", what);
    free(ids);
    return CLI_EXIT_ERR;
}

/* log-softmax of x[V] at id. */
static double log_softmax_at(const float *x, int32_t V, int32_t id) {
    double mx = -INFINITY, sum = 0;
    for (int32_t i = 0; i < V; i++)
        if (x[i] > mx) mx = x[i];
    for (int32_t i = 0; i < V; i++)
        sum += exp((double)x[i] - mx);
    return (double)x[id] - mx - log(sum);
}

static int32_t argmax(const float *x, int32_t V) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* ------------------------------------------------------------------------- */
/* The result                                                                */
/* ------------------------------------------------------------------------- */

/* One ranked list. */
typedef struct unit_list {
    const char *name;  /* JSON key: "head_positions", ... */
    const char *title; /* text heading */
    resid_unit_kind kind;
    resid_score *s;
    int64_t n;
    resid_rank_stats st;
    bool all_exact; /* listed from resid_score_all (heads) */
} unit_list;

enum { LIST_HEADS, LIST_HEAD_POS, LIST_FFN, LIST_ATTN, N_LISTS };

typedef struct explain_result {
    const resid_model_info *info;
    const resid_tokenizer *tok;
    const int32_t *ids;
    int32_t n_ids;
    resid_explainer *ex;      /* units: paper or exact lens */
    resid_lens lens;          /* as asked */
    int32_t target, contrast; /* contrast -1: none */
    double prob, model_prob;  /* p(w|x_L) in the lens, and the model's */
    double c_prob, c_model_prob;
    double c_diff_initial, c_diff_final;  /* (bs_w − bs_c)(x_in[0]), (x_L) */
    resid_layer_row *rows;                /* [L], in the lens */
    double *attn_contrast, *ffn_contrast; /* [L] or NULL */
    double logp_initial, logp_final;
    unit_list lists[N_LISTS];
    resid_query_layers *q1; /* may be NULL (with q1_error) */
    char q1_error[512];
    long top_requested;
    int32_t n_tokens;
    bool exhaustive;
    resid_rank_key key;
} explain_result;

static void result_free(explain_result *r) {
    free(r->rows);
    free(r->attn_contrast);
    free(r->ffn_contrast);
    for (int i = 0; i < N_LISTS; i++)
        free(r->lists[i].s);
    resid_query_layers_free(r->q1);
    resid_explainer_free(r->ex);
}

/* Descending by the ranking key; ties keep enumeration order (qsort is not
 * stable, so the enumeration index breaks ties). */
typedef struct keyed {
    double key;
    int64_t i;
} keyed;

static int cmp_keyed(const void *pa, const void *pb) {
    const keyed *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static double key_of(resid_rank_key key, const resid_score *s) {
    return key == RESID_KEY_CONTRAST ? s->contrast : s->lpi;
}

/* Fills r (everything but the printing). Returns 0 or 1 (printed). */
static int compute(const resid_model *m, const resid_trace *tr, const explain_opts *o,
                   explain_result *r) {
    resid_error err;
    const int32_t L = r->info->n_layer, V = r->info->n_vocab, D = r->info->d_model;
    const float *logits = tr->logits + (size_t)(tr->n_cap - 1) * (size_t)V;
    if (r->target < 0) r->target = argmax(logits, V);
    r->model_prob = exp(log_softmax_at(logits, V, r->target));
    if (r->contrast >= 0) r->c_model_prob = exp(log_softmax_at(logits, V, r->contrast));

    resid_explain_opts eo = resid_explain_defaults();
    eo.lens = o->lens == RESID_LENS_LOGIT ? RESID_LENS_PAPER : o->lens;
    eo.target = r->target;
    eo.contrast = r->contrast;
    if (resid_explainer_new(m, tr, &eo, &r->ex, &err) != RESID_OK) return cli_lib_error(&err);
    const double s = resid_explainer_scale(r->ex);

    /* Probabilities in the lens, and the contrast's logit differences. */
    const float *x0 = tr->x_in + (size_t)(tr->n_cap - 1) * (size_t)D;
    const float *xl = tr->x_in + ((size_t)L * (size_t)tr->n_cap + (size_t)(tr->n_cap - 1)) * D;
    float *bs = malloc((size_t)V * sizeof *bs);
    if (!bs) return cli_error("out of memory");
    int rc = CLI_EXIT_OK;
    if (resid_lens_apply(m, o->lens, s, xl, bs, &err) != RESID_OK) {
        rc = cli_lib_error(&err);
    } else {
        r->prob = o->lens == RESID_LENS_LOGIT ? exp(log_softmax_at(bs, V, r->target))
                                              : resid_explainer_target_prob(r->ex);
        if (r->contrast >= 0) {
            r->c_prob = exp(log_softmax_at(bs, V, r->contrast));
            /* The logit difference is the same in the paper and exact lens. */
            if (resid_lens_apply(m, RESID_LENS_PAPER, s, xl, bs, &err) != RESID_OK) {
                rc = cli_lib_error(&err);
            } else {
                r->c_diff_final = (double)bs[r->target] - bs[r->contrast];
                if (resid_lens_apply(m, RESID_LENS_PAPER, s, x0, bs, &err) != RESID_OK)
                    rc = cli_lib_error(&err);
                else
                    r->c_diff_initial = (double)bs[r->target] - bs[r->contrast];
            }
        }
    }
    free(bs);
    if (rc != CLI_EXIT_OK) return rc;

    /* The layer table, in the lens asked for. */
    r->rows = calloc((size_t)L, sizeof *r->rows);
    if (!r->rows) return cli_error("out of memory");
    if (o->lens == RESID_LENS_LOGIT) {
        resid_explainer *lx;
        eo.lens = RESID_LENS_LOGIT;
        eo.contrast = -1;
        if (resid_explainer_new(m, tr, &eo, &lx, &err) != RESID_OK) return cli_lib_error(&err);
        resid_status st = resid_layer_table(lx, r->rows, &err);
        resid_explainer_free(lx);
        if (st != RESID_OK) return cli_lib_error(&err);
    } else if (resid_layer_table(r->ex, r->rows, &err) != RESID_OK) {
        return cli_lib_error(&err);
    }
    r->logp_initial = log(r->rows[0].p_in);
    r->logp_final = log(r->prob);

    if (r->contrast >= 0) {
        resid_unit *u = malloc((size_t)2 * L * sizeof *u);
        resid_score *sc = malloc((size_t)2 * L * sizeof *sc);
        r->attn_contrast = malloc((size_t)L * sizeof(double));
        r->ffn_contrast = malloc((size_t)L * sizeof(double));
        if (!u || !sc || !r->attn_contrast || !r->ffn_contrast) {
            free(u), free(sc);
            return cli_error("out of memory");
        }
        for (int32_t l = 0; l < L; l++) {
            u[2 * l] = (resid_unit){RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
            u[2 * l + 1] = (resid_unit){RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
        }
        resid_status st = resid_score_units(r->ex, u, 2 * L, sc, &err);
        if (st == RESID_OK)
            for (int32_t l = 0; l < L; l++) {
                r->attn_contrast[l] = sc[2 * l].contrast;
                r->ffn_contrast[l] = sc[2 * l + 1].contrast;
            }
        free(u), free(sc);
        if (st != RESID_OK) return cli_lib_error(&err);
    }

    /* Heads: all of them, exactly, in enumeration order (JSON); the text
     * report sorts a copy. */
    r->key = r->contrast >= 0 ? RESID_KEY_CONTRAST : RESID_KEY_LPI;
    static const struct {
        const char *name, *title;
        resid_unit_kind kind;
    } defs[N_LISTS] = {
        {"heads", "heads", RESID_UNIT_HEAD},
        {"head_positions", "head x source position", RESID_UNIT_HEAD_POS},
        {"ffn_neurons", "FFN neurons", RESID_UNIT_FFN_NEURON},
        {"attn_neurons", "attention neurons", RESID_UNIT_ATTN_NEURON},
    };
    for (int i = 0; i < N_LISTS; i++) {
        unit_list *ul = &r->lists[i];
        ul->name = defs[i].name;
        ul->title = defs[i].title;
        ul->kind = defs[i].kind;
        if (i == LIST_HEADS) {
            if (resid_score_all(r->ex, ul->kind, &ul->s, &ul->n, &err) != RESID_OK)
                return cli_lib_error(&err);
            ul->all_exact = true;
            ul->st.n_units = ul->st.n_exact = ul->n;
            ul->st.k_requested = o->top;
            ul->st.k = o->top < ul->n ? o->top : ul->n;
            ul->st.clamped = o->top > ul->n;
            continue;
        }
        resid_rank_opts ro = resid_rank_defaults(ul->kind, o->top);
        ro.key = r->key;
        ro.exhaustive = o->exhaustive;
        if (resid_rank(r->ex, &ro, &ul->s, &ul->n, &ul->st, &err) != RESID_OK)
            return cli_lib_error(&err);
    }
    for (int i = 0; i < N_LISTS; i++)
        if (r->lists[i].st.clamped)
            fprintf(stderr,
                    "resid: note: --top %ld is more than the %lld %s; showing all of them\n",
                    o->top, (long long)r->lists[i].st.n_units, r->lists[i].title);

    /* Q1: which lower layers activate the top FFN value neurons. */
    resid_query_opts qo = resid_query_defaults();
    if (resid_query_layers_new(r->ex, RESID_UNIT_FFN_NEURON, &qo, &r->q1, &err) != RESID_OK) {
        r->q1 = NULL;
        snprintf(r->q1_error, sizeof r->q1_error, "%s", err.msg);
    }
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------- */
/* Per-unit details                                                          */
/* ------------------------------------------------------------------------- */

/* The id of a unit as the JSON and the text show it. */
static void unit_id(const resid_unit *u, char *buf, size_t n) {
    resid_unit_format(u, buf, n);
}

/* Top and bottom tokens of a unit. FFN and attention neurons: of the raw
 * parameter row (fc2_k, W_O row; coefficient not applied, as the notebooks
 * print them). Heads and head × positions: of the unit's vector itself. */
static int unit_tokens(const resid_model *m, resid_explainer *ex, const resid_unit *u, int32_t k,
                       resid_token_value *top, resid_token_value *bottom, int32_t *k_out) {
    resid_error err;
    resid_status st;
    const int32_t dh = resid_model_get_info(m)->d_head;
    if (k == 0) {
        *k_out = 0;
        return CLI_EXIT_OK;
    }
    switch (u->kind) {
    case RESID_UNIT_FFN_NEURON:
        st = resid_project_param(m, RESID_PARAM_FC2, u->layer, u->index, 1.0, 1.0, k, top, bottom,
                                 k_out, &err);
        break;
    case RESID_UNIT_ATTN_NEURON:
        st = resid_project_param(m, RESID_PARAM_WO, u->layer, (int64_t)u->head * dh + u->index, 1.0,
                                 1.0, k, top, bottom, k_out, &err);
        break;
    default: st = resid_project_unit(ex, u, k, top, bottom, k_out, &err); break;
    }
    return st == RESID_OK ? CLI_EXIT_OK : cli_lib_error(&err);
}

/* ------------------------------------------------------------------------- */
/* Text report                                                               */
/* ------------------------------------------------------------------------- */

static void put_token(const explain_result *r, int32_t id) {
    size_t len;
    const char *b = tok_text(r->tok, r->ids[r->n_ids - 1], id, &len);
    if (r->tok)
        cli_fput_quoted(stdout, b, len);
    else
        printf("#%d", id);
}

static void put_token_list(const explain_result *r, const resid_token_value *t, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        if (i) putchar(' ');
        put_token(r, t[i].id);
    }
}

static void put_slot(int32_t j, char *buf, size_t n) {
    if (j == 0)
        snprintf(buf, n, "emb");
    else
        snprintf(buf, n, "%c%d", (j % 2) ? 'a' : 'f', (j - 1) / 2);
}

static const char *lens_desc(resid_lens l) {
    switch (l) {
    case RESID_LENS_PAPER:
        return "paper: final norm frozen at the scale of x_L, final-norm bias dropped";
    case RESID_LENS_EXACT: return "exact: the paper lens plus the final-norm bias";
    case RESID_LENS_LOGIT:
        return "logit-lens: each residual normalised by its own statistics (layer table "
               "only; units below are scored in the paper lens)";
    }
    return "?";
}

static int print_text(const resid_model *m, const explain_opts *o, explain_result *r) {
    const resid_model_info *info = r->info;
    const int32_t L = info->n_layer;
    const bool vs = r->contrast >= 0;
    printf("model   %s (%s, %d layers, %d heads, %d FFN neurons per layer)\n", info->name,
           resid_arch_name(info->arch), L, info->n_head, info->d_ffn);
    printf("prompt  %d tokens:", r->n_ids);
    for (int32_t i = 0; i < r->n_ids; i++) {
        size_t len;
        const char *b = tok_text(r->tok, i ? r->ids[i - 1] : -1, r->ids[i], &len);
        printf(" %d:", i);
        if (r->tok)
            cli_fput_quoted(stdout, b, len);
        else
            printf("#%d", r->ids[i]);
    }
    printf("\ntarget  ");
    put_token(r, r->target);
    printf(" (%d)  p = %.6f in the %s lens; model p = %.6f\n", r->target, r->prob,
           resid_lens_name(r->lens), r->model_prob);
    if (vs) {
        printf("vs      ");
        put_token(r, r->contrast);
        printf(" (%d)  p = %.6f in the %s lens; model p = %.6f\n", r->contrast, r->c_prob,
               resid_lens_name(r->lens), r->c_model_prob);
    }
    printf("lens    %s\n", lens_desc(r->lens));
    printf("units   scored by %s, ranking %s\n",
           vs ? "contrast = change of log p(w) - log p(c) (LPI beside it)"
              : "LPI = log p(w|x+v) - log p(w|x)",
           r->exhaustive ? "exhaustive (every unit scored exactly)"
                         : "certified (exact top-K from bounds)");

    printf("\nLayers (LPI in the %s lens; cum = running sum)\n", resid_lens_name(r->lens));
    printf("%5s %10s %10s %10s %10s %10s", "layer", "p_in", "attn_lpi", "ffn_lpi", "cum", "p_out");
    if (vs) printf(" %11s %11s", "attn_contr", "ffn_contr");
    putchar('\n');
    double cum = 0, sa = 0, sf = 0, ca = 0, cf = 0;
    for (int32_t l = 0; l < L; l++) {
        const resid_layer_row *w = &r->rows[l];
        cum += w->attn_lpi + w->ffn_lpi;
        sa += w->attn_lpi;
        sf += w->ffn_lpi;
        printf("%5d %10.6f %+10.4f %+10.4f %+10.4f %10.6f", l, w->p_in, w->attn_lpi, w->ffn_lpi,
               cum, l + 1 < L ? r->rows[l + 1].p_in : r->prob);
        if (vs) {
            printf(" %+11.4f %+11.4f", r->attn_contrast[l], r->ffn_contrast[l]);
            ca += r->attn_contrast[l];
            cf += r->ffn_contrast[l];
        }
        putchar('\n');
    }
    printf("total   attention %+.4f + FFN %+.4f = %+.4f = log p(w|x_L) - log p(w|x_in[0]) = "
           "%.4f - (%.4f)\n",
           sa, sf, sa + sf, r->logp_final, r->logp_initial);
    if (vs)
        printf("contrast attention %+.4f + FFN %+.4f = %+.4f = (log p(w) - log p(c)) at x_L "
               "minus at x_in[0] = %.4f - (%.4f)\n",
               ca, cf, ca + cf, r->c_diff_final, r->c_diff_initial);

    resid_token_value *top = malloc((size_t)(o->n_tokens + 1) * sizeof *top);
    resid_token_value *bot = malloc((size_t)(o->n_tokens + 1) * sizeof *bot);
    keyed *order = malloc((size_t)(r->lists[LIST_HEADS].n + 1) * sizeof *order);
    if (!top || !bot || !order) {
        free(top), free(bot), free(order);
        return cli_error("out of memory");
    }
    int rc = CLI_EXIT_OK;
    for (int li = 0; li < N_LISTS && rc == CLI_EXIT_OK; li++) {
        unit_list *ul = &r->lists[li];
        int64_t shown = ul->st.k;
        printf("\nTop %lld %s by %s", (long long)shown, ul->title, vs ? "contrast" : "LPI");
        if (ul->st.clamped)
            printf(" (--top %ld clamped: there are %lld)", r->top_requested,
                   (long long)ul->st.n_units);
        if (ul->all_exact || r->exhaustive)
            printf(" - all %lld scored exactly\n", (long long)ul->st.n_units);
        else
            printf(" - %s: %lld of %lld scored exactly\n",
                   r->exhaustive ? "exhaustive" : "certified", (long long)ul->st.n_exact,
                   (long long)ul->st.n_units);
        /* Heads come in enumeration order: sort a permutation. */
        const resid_score *base = ul->s;
        for (int64_t i = 0; i < ul->n && li == LIST_HEADS; i++)
            order[i] = (keyed){key_of(r->key, &ul->s[i]), i};
        if (li == LIST_HEADS) qsort(order, (size_t)ul->n, sizeof *order, cmp_keyed);

        switch (ul->kind) {
        case RESID_UNIT_HEAD: printf("%4s %-9s", "rank", "head"); break;
        case RESID_UNIT_HEAD_POS:
            printf("%4s %-9s %-16s %7s", "rank", "head_pos", "source", "attn");
            break;
        case RESID_UNIT_FFN_NEURON: printf("%4s %-9s %9s", "rank", "neuron", "coef"); break;
        default: printf("%4s %-12s %-16s %9s", "rank", "neuron", "source", "coef"); break;
        }
        printf(" %9s %9s", "lpi", "prob_inc");
        if (vs) printf(" %9s", "contrast");
        if (ul->kind == RESID_UNIT_FFN_NEURON || ul->kind == RESID_UNIT_ATTN_NEURON)
            printf("  tokens of the %s row (+: top pushed up; -: coef < 0, bottom pushed up)\n",
                   ul->kind == RESID_UNIT_FFN_NEURON ? "fc2" : "W_O");
        else
            printf("  tokens the unit pushes up | down\n");
        for (int64_t i = 0; i < shown && rc == CLI_EXIT_OK; i++) {
            const resid_score *sc = li == LIST_HEADS ? &base[order[i].i] : &base[i];
            const resid_unit *u = &sc->unit;
            char id[64];
            unit_id(u, id, sizeof id);
            printf("%4lld ", (long long)i + 1);
            if (ul->kind == RESID_UNIT_HEAD) {
                printf("%-9s", id);
            } else {
                printf(ul->kind == RESID_UNIT_ATTN_NEURON ? "%-12s " : "%-9s ", id);
                size_t len;
                const char *b =
                    tok_text(r->tok, u->pos ? r->ids[u->pos - 1] : -1, r->ids[u->pos], &len);
                int w = 0;
                if (ul->kind != RESID_UNIT_FFN_NEURON) {
                    w = printf("%d:", u->pos);
                    w += r->tok ? cli_fput_quoted(stdout, b, len) : printf("#%d", r->ids[u->pos]);
                    printf("%*s ", w < 16 ? 16 - w : 0, "");
                }
                printf(ul->kind == RESID_UNIT_HEAD_POS ? "%7.4f" : "%+9.4f", sc->coef);
            }
            printf(" %+9.4f %+9.5f", sc->lpi, sc->prob_inc);
            if (vs) printf(" %+9.4f", sc->contrast);
            int32_t k = 0;
            rc = unit_tokens(m, r->ex, u, (int32_t)o->n_tokens, top, bot, &k);
            if (rc != CLI_EXIT_OK) break;
            bool neuron = ul->kind == RESID_UNIT_FFN_NEURON || ul->kind == RESID_UNIT_ATTN_NEURON;
            printf("  %s", neuron ? (sc->coef < 0 ? "- " : "+ ") : "");
            put_token_list(r, top, k);
            printf(" | ");
            put_token_list(r, bot, k);
            putchar('\n');
        }
    }
    free(top), free(bot), free(order);
    if (rc != CLI_EXIT_OK) return rc;

    printf("\nQuery layers (Q1): ");
    if (!r->q1) {
        printf("not available: %s\n", r->q1_error);
        return CLI_EXIT_OK;
    }
    const resid_query_layers *q = r->q1;
    printf("which lower vectors activate the top %d FFN neurons by LPI (sum of their LPIs "
           "%+.4f, mean layer %.2f)\n",
           q->n_units, q->lpi_sum, q->mean_layer);
    printf("each neuron's LPI is shared among emb, a_i, f_i by their inner product with its "
           "key%s\n",
           q->q_gate ? " (SwiGLU: up key and gate key separately)" : " (gamma_2 * fc1_k)");
    keyed *qo = malloc((size_t)q->n_slots * sizeof *qo);
    if (!qo) return cli_error("out of memory");
    for (int32_t j = 0; j < q->n_slots; j++)
        qo[j] = (keyed){q->q[j] + (q->q_gate ? q->q_gate[j] : 0), j};
    qsort(qo, (size_t)q->n_slots, sizeof *qo, cmp_keyed);
    if (q->q_gate)
        printf("%5s %10s %10s\n", "slot", "up_share", "gate_share");
    else
        printf("%5s %10s\n", "slot", "share");
    for (int32_t i = 0; i < q->n_slots; i++) {
        char lab[16];
        put_slot((int32_t)qo[i].i, lab, sizeof lab);
        if (q->q_gate)
            printf("%5s %+10.4f %+10.4f\n", lab, q->q[qo[i].i], q->q_gate[qo[i].i]);
        else
            printf("%5s %+10.4f\n", lab, q->q[qo[i].i]);
    }
    if (q->n_small_den)
        printf("note: %d neuron(s) had a near-zero key inner product sum (shares unstable)\n",
               q->n_small_den);
    free(qo);
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------- */
/* JSON                                                                      */
/* ------------------------------------------------------------------------- */

static cJSON *json_token(const explain_result *r, int32_t id) {
    return cli_json_token(r->tok, r->ids[r->n_ids - 1], id);
}

static bool add_tokens(const explain_result *r, cJSON *obj, const char *name,
                       const resid_token_value *t, int32_t n) {
    cJSON *arr = cJSON_AddArrayToObject(obj, name);
    if (!arr) return false;
    for (int32_t i = 0; i < n; i++) {
        cJSON *e = json_token(r, t[i].id);
        if (!e) return false;
        cJSON_AddItemToArray(arr, e);
        if (!cJSON_AddNumberToObject(e, "bs", t[i].value)) return false;
    }
    return true;
}

/* Adds the fields every unit entry has. */
static bool add_score(const explain_result *r, cJSON *e, const resid_score *sc) {
    char id[64];
    unit_id(&sc->unit, id, sizeof id);
    bool ok = cJSON_AddStringToObject(e, "id", id) && cJSON_AddNumberToObject(e, "lpi", sc->lpi) &&
              cJSON_AddNumberToObject(e, "prob_inc", sc->prob_inc) &&
              cJSON_AddNumberToObject(e, "bs_target", sc->bs_target);
    if (ok && r->contrast >= 0) ok = cJSON_AddNumberToObject(e, "contrast", sc->contrast) != NULL;
    return ok;
}

static cJSON *build_json(const resid_model *m, const explain_opts *o, explain_result *r) {
    const resid_model_info *info = r->info;
    const int32_t L = info->n_layer;
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    resid_token_value *top = malloc((size_t)(o->n_tokens + 1) * sizeof *top);
    resid_token_value *bot = malloc((size_t)(o->n_tokens + 1) * sizeof *bot);
    bool ok = top && bot;
    cJSON *mo = ok ? cJSON_AddObjectToObject(root, "model") : NULL;
    ok = mo && cJSON_AddStringToObject(mo, "name", info->name) &&
         cJSON_AddStringToObject(mo, "arch", resid_arch_name(info->arch)) &&
         cJSON_AddNumberToObject(mo, "n_layer", L) &&
         cJSON_AddNumberToObject(mo, "n_head", info->n_head) &&
         cJSON_AddNumberToObject(mo, "d_head", info->d_head) &&
         cJSON_AddNumberToObject(mo, "d_ffn", info->d_ffn) &&
         cJSON_AddNumberToObject(mo, "n_vocab", info->n_vocab);
    cJSON *toks = ok ? cli_json_tokens(r->tok, r->ids, r->n_ids) : NULL;
    ok = toks != NULL;
    if (ok) cJSON_AddItemToObject(root, "tokens", toks);

    cJSON *tg = ok ? json_token(r, r->target) : NULL;
    ok = tg != NULL;
    if (ok) {
        cJSON_AddItemToObject(root, "target", tg);
        ok = cJSON_AddNumberToObject(tg, "prob", r->prob) &&
             cJSON_AddNumberToObject(tg, "model_prob", r->model_prob) &&
             cJSON_AddNumberToObject(tg, "logprob", r->logp_final);
    }
    if (ok && r->contrast >= 0) {
        cJSON *c = json_token(r, r->contrast);
        ok = c != NULL;
        if (ok) {
            cJSON_AddItemToObject(root, "contrast", c);
            ok = cJSON_AddNumberToObject(c, "prob", r->c_prob) &&
                 cJSON_AddNumberToObject(c, "model_prob", r->c_model_prob) &&
                 cJSON_AddNumberToObject(c, "logit_diff_initial", r->c_diff_initial) &&
                 cJSON_AddNumberToObject(c, "logit_diff_final", r->c_diff_final) &&
                 cJSON_AddNumberToObject(c, "total", r->c_diff_final - r->c_diff_initial);
        }
    }
    ok = ok && cJSON_AddStringToObject(root, "lens", resid_lens_name(r->lens)) &&
         cJSON_AddStringToObject(root, "unit_lens", resid_lens_name(resid_explainer_lens(r->ex))) &&
         cJSON_AddNumberToObject(root, "scale", resid_explainer_scale(r->ex)) &&
         cJSON_AddStringToObject(root, "score", r->key == RESID_KEY_CONTRAST ? "contrast" : "lpi");

    /* Layers. */
    cJSON *layers = ok ? cJSON_AddArrayToObject(root, "layers") : NULL;
    ok = layers != NULL;
    double sa = 0, sf = 0;
    for (int32_t l = 0; ok && l < L; l++) {
        const resid_layer_row *w = &r->rows[l];
        cJSON *e = cJSON_CreateObject();
        ok = e != NULL;
        if (!ok) break;
        cJSON_AddItemToArray(layers, e);
        sa += w->attn_lpi;
        sf += w->ffn_lpi;
        ok = cJSON_AddNumberToObject(e, "layer", l) &&
             cJSON_AddNumberToObject(e, "attn_lpi", w->attn_lpi) &&
             cJSON_AddNumberToObject(e, "ffn_lpi", w->ffn_lpi) &&
             cJSON_AddNumberToObject(e, "cum_lpi", sa + sf) &&
             cJSON_AddNumberToObject(e, "attn_bs_target", w->attn_bs_target) &&
             cJSON_AddNumberToObject(e, "ffn_bs_target", w->ffn_bs_target) &&
             cJSON_AddNumberToObject(e, "p_in", w->p_in) &&
             cJSON_AddNumberToObject(e, "p_mid", w->p_mid);
        if (ok && r->contrast >= 0)
            ok = cJSON_AddNumberToObject(e, "attn_contrast", r->attn_contrast[l]) &&
                 cJSON_AddNumberToObject(e, "ffn_contrast", r->ffn_contrast[l]);
    }
    cJSON *tot = ok ? cJSON_AddObjectToObject(root, "layer_totals") : NULL;
    ok = tot && cJSON_AddNumberToObject(tot, "attn_lpi", sa) &&
         cJSON_AddNumberToObject(tot, "ffn_lpi", sf) &&
         cJSON_AddNumberToObject(tot, "total", sa + sf) &&
         cJSON_AddNumberToObject(tot, "telescoped", r->logp_final - r->logp_initial) &&
         cJSON_AddNumberToObject(tot, "logp_initial", r->logp_initial) &&
         cJSON_AddNumberToObject(tot, "logp_final", r->logp_final);

    /* Unit lists. */
    cJSON *ranking = ok ? cJSON_AddObjectToObject(root, "ranking") : NULL;
    ok = ranking &&
         cJSON_AddStringToObject(ranking, "key",
                                 r->key == RESID_KEY_CONTRAST ? "contrast" : "lpi") &&
         cJSON_AddNumberToObject(ranking, "top_requested", (double)r->top_requested);
    const int32_t dh = info->d_head;
    for (int li = 0; ok && li < N_LISTS; li++) {
        unit_list *ul = &r->lists[li];
        cJSON *rk = cJSON_AddObjectToObject(ranking, ul->name);
        ok = rk &&
             cJSON_AddStringToObject(rk, "method",
                                     ul->all_exact || r->exhaustive ? "exhaustive" : "certified") &&
             cJSON_AddNumberToObject(rk, "units_total", (double)ul->st.n_units) &&
             cJSON_AddNumberToObject(rk, "units_scored_exactly", (double)ul->st.n_exact) &&
             cJSON_AddNumberToObject(rk, "k", (double)(ul->all_exact ? ul->n : ul->st.k)) &&
             cJSON_AddBoolToObject(rk, "clamped", ul->st.clamped);
        cJSON *arr = ok ? cJSON_AddArrayToObject(root, ul->name) : NULL;
        ok = arr != NULL;
        for (int64_t i = 0; ok && i < ul->n; i++) {
            const resid_score *sc = &ul->s[i];
            const resid_unit *u = &sc->unit;
            cJSON *e = cJSON_CreateObject();
            ok = e != NULL;
            if (!ok) break;
            cJSON_AddItemToArray(arr, e);
            ok = cJSON_AddNumberToObject(e, "layer", u->layer) != NULL;
            if (ok && u->kind != RESID_UNIT_FFN_NEURON)
                ok = cJSON_AddNumberToObject(e, "head", u->head) != NULL;
            if (ok && u->kind == RESID_UNIT_ATTN_NEURON)
                ok = cJSON_AddNumberToObject(e, "dim", u->index) &&
                     cJSON_AddNumberToObject(e, "row", (double)u->head * dh + u->index);
            if (ok && u->kind == RESID_UNIT_FFN_NEURON)
                ok = cJSON_AddNumberToObject(e, "neuron", u->index) != NULL;
            if (ok && u->pos >= 0) {
                ok = cJSON_AddNumberToObject(e, "pos", u->pos) != NULL;
                cJSON *st =
                    ok ? cli_json_token(r->tok, u->pos ? r->ids[u->pos - 1] : -1, r->ids[u->pos])
                       : NULL;
                ok = st != NULL;
                if (ok) cJSON_AddItemToObject(e, "source", st);
            }
            if (ok && !isnan(sc->coef)) ok = cJSON_AddNumberToObject(e, "coef", sc->coef) != NULL;
            ok = ok && add_score(r, e, sc);
            if (ok && li != LIST_HEADS) {
                int32_t k = 0;
                if (unit_tokens(m, r->ex, u, (int32_t)o->n_tokens, top, bot, &k) != CLI_EXIT_OK) {
                    free(top), free(bot);
                    cJSON_Delete(root);
                    return NULL; /* the error is printed */
                }
                ok = add_tokens(r, e, "top_tokens", top, k) &&
                     add_tokens(r, e, "bottom_tokens", bot, k);
            }
        }
    }

    /* Query layers (Q1). */
    cJSON *ql = ok ? cJSON_AddArrayToObject(root, "query_layers") : NULL;
    ok = ql != NULL;
    if (ok && r->q1) {
        const resid_query_layers *q = r->q1;
        for (int32_t j = 0; ok && j < q->n_slots; j++) {
            char lab[16];
            put_slot(j, lab, sizeof lab);
            cJSON *e = cJSON_CreateObject();
            ok = e != NULL;
            if (!ok) break;
            cJSON_AddItemToArray(ql, e);
            ok = cJSON_AddStringToObject(e, "slot", lab) != NULL;
            if (ok && q->q_gate)
                ok = cJSON_AddNumberToObject(e, "gate_share", q->q_gate[j]) &&
                     cJSON_AddNumberToObject(e, "up_share", q->q[j]);
            else if (ok)
                ok = cJSON_AddNumberToObject(e, "share", q->q[j]) != NULL;
        }
        cJSON *qi = ok ? cJSON_AddObjectToObject(root, "query") : NULL;
        ok = qi && cJSON_AddStringToObject(qi, "kind", "ffn-neuron") &&
             cJSON_AddStringToObject(qi, "key", q->q_gate ? "up+gate" : "fc1") &&
             cJSON_AddNumberToObject(qi, "n_value", q->n_units) &&
             cJSON_AddNumberToObject(qi, "lpi_sum", q->lpi_sum) &&
             cJSON_AddNumberToObject(qi, "mean_layer", q->mean_layer) &&
             cJSON_AddNumberToObject(qi, "n_small_den", q->n_small_den);
    } else if (ok) {
        cJSON *qi = cJSON_AddObjectToObject(root, "query");
        ok = qi && cJSON_AddStringToObject(qi, "error", r->q1_error);
    }
    free(top), free(bot);
    if (!ok) {
        cJSON_Delete(root);
        cli_error("out of memory building the JSON output");
        return NULL;
    }
    return root;
}

/* ------------------------------------------------------------------------- */
/* The command                                                               */
/* ------------------------------------------------------------------------- */

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"top", required_argument, NULL, OPT_TOP},
        {"target", required_argument, NULL, OPT_TARGET},
        {"target-id", required_argument, NULL, OPT_TARGET_ID},
        {"vs", required_argument, NULL, OPT_VS},
        {"vs-id", required_argument, NULL, OPT_VS_ID},
        {"lens", required_argument, NULL, OPT_LENS},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"exhaustive", no_argument, NULL, OPT_EXHAUSTIVE},
        {"json", required_argument, NULL, OPT_JSON_FILE},
        {NULL, 0, NULL, 0},
    };
    explain_opts o = {NULL, NULL, -1, -1, RESID_LENS_PAPER, 10, 5, false, NULL};
    cli_args a;
    int r = cli_parse(cmd, argc, argv, CLI_OPT_PROMPT, extra, "k:", on_opt, &o, &a);
    if (r != CLI_CONTINUE) return r;
    if (o.target_text && o.target_id >= 0)
        return cli_usage_error(cmd, "give either --target TEXT or --target-id N, not both");
    if (o.vs_text && o.vs_id >= 0)
        return cli_usage_error(cmd, "give either --vs TEXT or --vs-id N, not both");

    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    const resid_model_info *info = resid_model_get_info(m);
    const int32_t V = info->n_vocab;
    int32_t *ids = NULL, n = 0;
    resid_trace *tr = NULL;
    explain_result res;
    memset(&res, 0, sizeof res);
    res.target = res.contrast = -1;
    r = cli_prompt_ids(cmd, &a, tok, V, CLI_PROMPT_NONEMPTY, &ids, &n);
    if (r == CLI_EXIT_OK && o.target_id >= V)
        r = cli_usage_error(cmd, "--target-id %ld is out of range [0, %d)", o.target_id, V);
    if (r == CLI_EXIT_OK && o.vs_id >= V)
        r = cli_usage_error(cmd, "--vs-id %ld is out of range [0, %d)", o.vs_id, V);
    if (r == CLI_EXIT_OK) {
        res.target = (int32_t)o.target_id;
        res.contrast = (int32_t)o.vs_id;
        if (o.target_text)
            r = resolve_token(tok, "--target", o.target_text, ids[n - 1], &res.target);
    }
    if (r == CLI_EXIT_OK && o.vs_text)
        r = resolve_token(tok, "--vs", o.vs_text, ids[n - 1], &res.contrast);
    if (r == CLI_EXIT_OK) {
        resid_trace_opts to = resid_trace_defaults();
        to.capture = RESID_EXPLAIN_CAPTURE | RESID_CAP_LOGITS;
        to.positions = RESID_POS_LAST;
        resid_error err;
        if (resid_forward(m, ids, n, &to, &tr, &err) != RESID_OK) r = cli_lib_error(&err);
    }
    if (r == CLI_EXIT_OK) {
        res.info = info;
        res.tok = tok;
        res.ids = ids;
        res.n_ids = n;
        res.lens = o.lens;
        res.top_requested = o.top;
        res.n_tokens = (int32_t)o.n_tokens;
        res.exhaustive = o.exhaustive;
        r = compute(m, tr, &o, &res);
        if (r == CLI_EXIT_OK && res.target == res.contrast)
            fprintf(stderr, "resid: note: the contrast token is the target: every contrast "
                            "score is 0\n");
    }
    bool json_stdout = o.json_path && !strcmp(o.json_path, "-");
    if (r == CLI_EXIT_OK && !json_stdout) r = print_text(m, &o, &res);
    if (r == CLI_EXIT_OK && o.json_path) {
        cJSON *root = build_json(m, &o, &res);
        r = root ? cli_json_write(root, o.json_path) : CLI_EXIT_ERR;
    }
    result_free(&res);
    resid_trace_free(tr);
    free(ids);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_explain = {
    "explain", "explain a next-token prediction: layers, heads, neurons", help, run};
