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
#include <unistd.h>

#include "common.h"
#include "core/util.h"
#include "output/html.h"
#include "output/report.h"

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
    "      --bottom K       also the K lowest-scoring head x positions, FFN\n"
    "                       and attention neurons (the units that lower the\n"
    "                       target most), certified exactly like the top-K\n"
    "      --tokens N       top/bottom tokens shown per unit (default 5)\n"
    "      --exhaustive     score every unit exactly instead of the certified\n"
    "                       bounds (same result, slower; for checking)\n"
    "      --ranges FILE    the model's direction ranges from `resid ranges`:\n"
    "                       the same result, fewer neurons scored exactly\n"
    "                       (much faster --bottom)\n"
    "      --json FILE      write the full result as JSON to FILE (- = stdout,\n"
    "                       then no text report); see docs/explain-json.md\n"
    "      --html FILE      write a self-contained HTML report to FILE (opens\n"
    "                       from disk; adds the lens grid, head and neuron\n"
    "                       details); see docs/serve.md\n"
    "      --html-positions N  lens-grid columns in the HTML report: the last N\n"
    "                       positions (0 = all). Each but the last costs\n"
    "                       2 x layers vocabulary projections (~5% of a default\n"
    "                       explain on GPT-2 small). Default: all when the\n"
    "                       whole grid costs at most 2^30 multiply-adds (small\n"
    "                       models), else the last (free)\n"
    "      --html-heads N   heads given a source-position breakdown in the HTML\n"
    "                       report, the best by score; each costs up to one\n"
    "                       projection per prompt token. Default: all when\n"
    "                       that is at most 2^30 multiply-adds, else 1 (resid\n"
    "                       serve computes any head on click)\n"
    "      --html-neurons N the first N of each neuron list get their query\n"
    "                       layers and query neurons in the HTML report (each\n"
    "                       costs reading the FFN weights below it). Default:\n"
    "                       all when that is at most 2^30 multiply-adds, else 10\n"
    "      --compare-scores also run the scoring-method comparison: the top-10\n"
    "                       FFN neurons by each of 8 scores zeroed, and 10\n"
    "                       random ones (as resid ablate --compare-scores);\n"
    "                       in the text, \"score_compare\" in the JSON and a\n"
    "                       chart in the HTML report. ~10 more forward passes\n" CLI_HELP_GLOBAL "\n"
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
    OPT_HTML_FILE,
    OPT_HTML_POSITIONS,
    OPT_HTML_HEADS,
    OPT_HTML_NEURONS,
    OPT_COMPARE,
    OPT_BOTTOM,
    OPT_RANGES,
};

typedef struct explain_opts {
    const char *target_text, *vs_text;
    long target_id, vs_id; /* -1: not given */
    resid_lens lens;
    long top, bottom;
    long n_tokens;
    bool exhaustive, compare;
    const char *json_path;
    const char *html_path;
    long html_positions, html_heads, html_neurons;
    const char *ranges_path;
} explain_opts;

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    explain_opts *o = user;
    switch (opt) {
    case OPT_TOP: return cli_parse_int(cmd, "--top", arg, 1, INT32_MAX, &o->top);
    case OPT_BOTTOM: return cli_parse_int(cmd, "--bottom", arg, 0, INT32_MAX, &o->bottom);
    case OPT_TOKENS: return cli_parse_int(cmd, "--tokens", arg, 0, 1000, &o->n_tokens);
    case OPT_TARGET: o->target_text = arg; return CLI_CONTINUE;
    case OPT_VS: o->vs_text = arg; return CLI_CONTINUE;
    case OPT_TARGET_ID: return cli_parse_int(cmd, "--target-id", arg, 0, INT32_MAX, &o->target_id);
    case OPT_VS_ID: return cli_parse_int(cmd, "--vs-id", arg, 0, INT32_MAX, &o->vs_id);
    case OPT_EXHAUSTIVE: o->exhaustive = true; return CLI_CONTINUE;
    case OPT_COMPARE: o->compare = true; return CLI_CONTINUE;
    case OPT_JSON_FILE: o->json_path = arg; return CLI_CONTINUE;
    case OPT_HTML_FILE: o->html_path = arg; return CLI_CONTINUE;
    case OPT_RANGES: o->ranges_path = arg; return CLI_CONTINUE;
    case OPT_HTML_POSITIONS:
        return cli_parse_int(cmd, "--html-positions", arg, 0, INT32_MAX, &o->html_positions);
    case OPT_HTML_HEADS: return cli_parse_int(cmd, "--html-heads", arg, 0, INT32_MAX, &o->html_heads);
    case OPT_HTML_NEURONS:
        return cli_parse_int(cmd, "--html-neurons", arg, 0, INT32_MAX, &o->html_neurons);
    case OPT_LENS: return cli_parse_lens(cmd, arg, &o->lens);
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

/* ------------------------------------------------------------------------- */
/* Reading the report                                                        */
/* ------------------------------------------------------------------------- */

/* The text report is rendered from the library's JSON report
 * (rs_explain_cjson), so text and --json come from one computation. */
typedef struct text_ctx {
    const resid_tokenizer *tok;
    const int32_t *ids;
    int32_t n_ids;
    const cJSON *root;
} text_ctx;

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cli_jget(o, k);
    return cJSON_IsString(v) ? v->valuestring : "?";
}

/* ------------------------------------------------------------------------- */
/* Text report                                                               */
/* ------------------------------------------------------------------------- */

static void put_token(const text_ctx *r, int32_t id) {
    size_t len;
    const char *b = tok_text(r->tok, r->ids[r->n_ids - 1], id, &len);
    if (r->tok)
        cli_fput_quoted(stdout, b, len);
    else
        printf("#%d", id);
}

static void put_token_list(const text_ctx *r, const cJSON *arr) {
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, arr) {
        if (i++) putchar(' ');
        put_token(r, (int32_t)cli_jnum(t, "id"));
    }
}

static const char *lens_desc(const char *l) {
    if (!strcmp(l, "paper"))
        return "paper: final norm frozen at the scale of x_L, final-norm bias dropped";
    if (!strcmp(l, "exact")) return "exact: the paper lens plus the final-norm bias";
    if (!strcmp(l, "logit-lens"))
        return "logit-lens: each residual normalised by its own statistics (layer table "
               "only; units below are scored in the paper lens)";
    return "?";
}

static const struct {
    const char *name, *title;
    resid_unit_kind kind;
    bool bottom; /* present with --bottom only */
} lists[] = {
    {"heads", "heads", RESID_UNIT_HEAD, false},
    {"head_positions", "head x source position", RESID_UNIT_HEAD_POS, false},
    {"ffn_neurons", "FFN neurons", RESID_UNIT_FFN_NEURON, false},
    {"attn_neurons", "attention neurons", RESID_UNIT_ATTN_NEURON, false},
    {"head_positions_bottom", "head x source position", RESID_UNIT_HEAD_POS, true},
    {"ffn_neurons_bottom", "FFN neurons", RESID_UNIT_FFN_NEURON, true},
    {"attn_neurons_bottom", "attention neurons", RESID_UNIT_ATTN_NEURON, true},
};
enum { N_LISTS = sizeof lists / sizeof lists[0] };

static int print_text(const text_ctx *r) {
    const cJSON *root = r->root, *mo = cli_jget(root, "model");
    const int32_t L = (int32_t)cli_jnum(mo, "n_layer");
    const cJSON *contrast = cli_jget(root, "contrast"), *target = cli_jget(root, "target");
    const bool vs = contrast != NULL;
    const char *lens = jstr(root, "lens");
    const char *score = vs ? "contrast" : "lpi";
    const double top_requested = cli_jnum(cli_jget(root, "ranking"), "top_requested");
    printf("model   %s (%s, %d layers, %d heads, %d FFN neurons per layer)\n", jstr(mo, "name"),
           jstr(mo, "arch"), L, (int)cli_jnum(mo, "n_head"), (int)cli_jnum(mo, "d_ffn"));
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
    put_token(r, (int32_t)cli_jnum(target, "id"));
    printf(" (%d)  p = %.6f in the %s lens; model p = %.6f\n", (int)cli_jnum(target, "id"),
           cli_jnum(target, "prob"), lens, cli_jnum(target, "model_prob"));
    if (vs) {
        printf("vs      ");
        put_token(r, (int32_t)cli_jnum(contrast, "id"));
        printf(" (%d)  p = %.6f in the %s lens; model p = %.6f\n", (int)cli_jnum(contrast, "id"),
               cli_jnum(contrast, "prob"), lens, cli_jnum(contrast, "model_prob"));
    }
    const bool exhaustive =
        !strcmp(jstr(cli_jget(cli_jget(root, "ranking"), "ffn_neurons"), "method"), "exhaustive");
    printf("lens    %s\n", lens_desc(lens));
    printf("units   scored by %s, ranking %s\n",
           vs ? "contrast = change of log p(w) - log p(c) (LPI beside it)"
              : "LPI = log p(w|x+v) - log p(w|x)",
           exhaustive ? "exhaustive (every unit scored exactly)"
                      : "certified (exact top-K from bounds)");

    printf("\nLayers (LPI in the %s lens; cum = running sum)\n", lens);
    printf("%5s %10s %10s %10s %10s %10s", "layer", "p_in", "attn_lpi", "ffn_lpi", "cum", "p_out");
    if (vs) printf(" %11s %11s", "attn_contr", "ffn_contr");
    putchar('\n');
    double cum = 0, sa = 0, sf = 0, ca = 0, cf = 0;
    const cJSON *layers = cli_jget(root, "layers");
    for (int32_t l = 0; l < L; l++) {
        const cJSON *w = cJSON_GetArrayItem(layers, l);
        const double a = cli_jnum(w, "attn_lpi"), f = cli_jnum(w, "ffn_lpi");
        cum += a + f;
        sa += a;
        sf += f;
        printf("%5d %10.6f %+10.4f %+10.4f %+10.4f %10.6f", l, cli_jnum(w, "p_in"), a, f, cum,
               l + 1 < L ? cli_jnum(cJSON_GetArrayItem(layers, l + 1), "p_in")
                         : cli_jnum(target, "prob"));
        if (vs) {
            printf(" %+11.4f %+11.4f", cli_jnum(w, "attn_contrast"), cli_jnum(w, "ffn_contrast"));
            ca += cli_jnum(w, "attn_contrast");
            cf += cli_jnum(w, "ffn_contrast");
        }
        putchar('\n');
    }
    const cJSON *tot = cli_jget(root, "layer_totals");
    printf("total   attention %+.4f + FFN %+.4f = %+.4f = log p(w|x_L) - log p(w|x_in[0]) = "
           "%.4f - (%.4f)\n",
           sa, sf, sa + sf, cli_jnum(tot, "logp_final"), cli_jnum(tot, "logp_initial"));
    if (vs)
        printf("contrast attention %+.4f + FFN %+.4f = %+.4f = (log p(w) - log p(c)) at x_L "
               "minus at x_in[0] = %.4f - (%.4f)\n",
               ca, cf, ca + cf, cli_jnum(contrast, "logit_diff_final"),
               cli_jnum(contrast, "logit_diff_initial"));

    const cJSON *heads = cli_jget(root, "heads");
    const int n_heads = cJSON_GetArraySize(heads);
    rs_keyed *order = malloc((size_t)(n_heads + 1) * sizeof *order);
    if (!order) return cli_error("out of memory");
    for (int li = 0; li < N_LISTS; li++) {
        if (lists[li].bottom && !cJSON_GetObjectItemCaseSensitive(root, lists[li].name)) continue;
        const cJSON *arr = cli_jget(root, lists[li].name);
        const cJSON *rk = cli_jget(cli_jget(root, "ranking"), lists[li].name);
        const resid_unit_kind kind = lists[li].kind;
        const bool all_exact = !strcmp(jstr(rk, "method"), "exhaustive");
        const bool clamped = cJSON_IsTrue(cli_jget(rk, "clamped"));
        int64_t shown = (int64_t)cli_jnum(rk, "k");
        if (li == 0) shown = top_requested < n_heads ? (int64_t)top_requested : n_heads;
        printf("\n%s %lld %s by %s%s", lists[li].bottom ? "Bottom" : "Top", (long long)shown,
               lists[li].title, vs ? "contrast" : "LPI", lists[li].bottom ? ", lowest first" : "");
        if (clamped)
            printf(" (--%s %ld clamped: there are %lld)", lists[li].bottom ? "bottom" : "top",
                   (long)(lists[li].bottom ? cli_jnum(cli_jget(root, "ranking"), "bottom_requested")
                                           : top_requested),
                   (long long)cli_jnum(rk, "units_total"));
        if (all_exact)
            printf(" - all %lld scored exactly\n", (long long)cli_jnum(rk, "units_total"));
        else
            printf(" - %s: %lld of %lld scored exactly\n", "certified",
                   (long long)cli_jnum(rk, "units_scored_exactly"),
                   (long long)cli_jnum(rk, "units_total"));
        /* Heads come in enumeration order: sort a permutation. */
        const int n = cJSON_GetArraySize(arr);
        for (int i = 0; i < n && li == 0; i++)
            order[i] = (rs_keyed){cli_jnum(cJSON_GetArrayItem(arr, i), score), i};
        if (li == 0) rs_keyed_sort(order, (size_t)n);

        switch (kind) {
        case RESID_UNIT_HEAD: printf("%4s %-9s", "rank", "head"); break;
        case RESID_UNIT_HEAD_POS:
            printf("%4s %-9s %-16s %7s", "rank", "head_pos", "source", "attn");
            break;
        case RESID_UNIT_FFN_NEURON: printf("%4s %-9s %9s", "rank", "neuron", "coef"); break;
        default: printf("%4s %-12s %-16s %9s", "rank", "neuron", "source", "coef"); break;
        }
        printf(" %9s %9s", "lpi", "prob_inc");
        if (vs) printf(" %9s", "contrast");
        if (kind == RESID_UNIT_FFN_NEURON || kind == RESID_UNIT_ATTN_NEURON)
            printf("  tokens of the %s row (+: top pushed up; -: coef < 0, bottom pushed up)\n",
                   kind == RESID_UNIT_FFN_NEURON ? "fc2" : "W_O");
        else
            printf("  tokens the unit pushes up | down\n");
        for (int64_t i = 0; i < shown && i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(arr, li == 0 ? (int)order[i].i : (int)i);
            const double coef = cli_jnum(e, "coef");
            printf("%4lld ", (long long)i + 1);
            if (kind == RESID_UNIT_HEAD) {
                printf("%-9s", jstr(e, "id"));
            } else {
                printf(kind == RESID_UNIT_ATTN_NEURON ? "%-12s " : "%-9s ", jstr(e, "id"));
                if (kind != RESID_UNIT_FFN_NEURON) {
                    const int32_t pos = (int32_t)cli_jnum(e, "pos");
                    size_t len;
                    const char *b = tok_text(r->tok, pos ? r->ids[pos - 1] : -1, r->ids[pos], &len);
                    int w = printf("%d:", pos);
                    w += r->tok ? cli_fput_quoted(stdout, b, len) : printf("#%d", r->ids[pos]);
                    printf("%*s ", w < 16 ? 16 - w : 0, "");
                }
                printf(kind == RESID_UNIT_HEAD_POS ? "%7.4f" : "%+9.4f", coef);
            }
            printf(" %+9.4f %+9.5f", cli_jnum(e, "lpi"), cli_jnum(e, "prob_inc"));
            if (vs) printf(" %+9.4f", cli_jnum(e, "contrast"));
            bool neuron = kind == RESID_UNIT_FFN_NEURON || kind == RESID_UNIT_ATTN_NEURON;
            printf("  %s", neuron ? (coef < 0 ? "- " : "+ ") : "");
            put_token_list(r, cli_jget(e, "top_tokens"));
            printf(" | ");
            put_token_list(r, cli_jget(e, "bottom_tokens"));
            putchar('\n');
        }
    }
    free(order);

    printf("\nQuery layers (Q1): ");
    const cJSON *q = cli_jget(root, "query"), *ql = cli_jget(root, "query_layers");
    if (cli_jget(q, "error")) {
        printf("not available: %s\n", jstr(q, "error"));
        return CLI_EXIT_OK;
    }
    const bool gate = !strcmp(jstr(q, "key"), "up+gate");
    printf("which lower vectors activate the top %d FFN neurons by LPI (sum of their LPIs "
           "%+.4f, mean layer %.2f)\n",
           (int)cli_jnum(q, "n_value"), cli_jnum(q, "lpi_sum"), cli_jnum(q, "mean_layer"));
    printf("each neuron's LPI is shared among emb, a_i, f_i by their inner product with its "
           "key%s\n",
           gate ? " (SwiGLU: up key and gate key separately)" : " (gamma_2 * fc1_k)");
    const int n_slots = cJSON_GetArraySize(ql);
    rs_keyed *qo = malloc((size_t)(n_slots + 1) * sizeof *qo);
    if (!qo) return cli_error("out of memory");
    for (int j = 0; j < n_slots; j++) {
        const cJSON *e = cJSON_GetArrayItem(ql, j);
        qo[j] = (rs_keyed){
            gate ? cli_jnum(e, "up_share") + cli_jnum(e, "gate_share") : cli_jnum(e, "share"), j};
    }
    rs_keyed_sort(qo, (size_t)n_slots);
    if (gate)
        printf("%5s %10s %10s\n", "slot", "up_share", "gate_share");
    else
        printf("%5s %10s\n", "slot", "share");
    for (int i = 0; i < n_slots; i++) {
        const cJSON *e = cJSON_GetArrayItem(ql, (int)qo[i].i);
        if (gate)
            printf("%5s %+10.4f %+10.4f\n", jstr(e, "slot"), cli_jnum(e, "up_share"),
                   cli_jnum(e, "gate_share"));
        else
            printf("%5s %+10.4f\n", jstr(e, "slot"), cli_jnum(e, "share"));
    }
    if (cli_jnum(q, "n_small_den") > 0)
        printf("note: %d neuron(s) had a near-zero key inner product sum (shares unstable)\n",
               (int)cli_jnum(q, "n_small_den"));
    free(qo);
    return CLI_EXIT_OK;
}

/* The scoring-method comparison ("score_compare"), when it was run. */
static void print_compare(const text_ctx *r) {
    const cJSON *c = cli_jget(r->root, "score_compare");
    if (!c) return;
    printf("\nScoring methods compared: the top %d FFN neurons by each score zeroed (fc2 rows, "
           "every position)\n",
           (int)cli_jnum(c, "k"));
    printf("%-3s %-12s %9s %9s %7s %10s  %s\n", "", "method", "prob", "MRR", "rank", "model_prob",
           "neurons zeroed");
    const cJSON *rows[RESID_FSCORE_COUNT + 2];
    int n = 0;
    rows[n++] = cli_jget(c, "original");
    const cJSON *e;
    cJSON_ArrayForEach(e, cli_jget(c, "methods")) {
        if (n < RESID_FSCORE_COUNT + 1) rows[n++] = e;
    }
    rows[n++] = cli_jget(c, "random");
    for (int i = 0; i < n; i++) {
        const cJSON *w = rows[i];
        const cJSON *letter = cli_jget(w, "letter");
        printf("%-3s %-12s %9.4f %9.4f %7d %10.4f ",
               cJSON_IsString(letter) ? letter->valuestring : "", jstr(w, "name"),
               cli_jnum(w, "prob"), cli_jnum(w, "rr"), (int)cli_jnum(w, "rank"),
               cli_jnum(w, "model_prob"));
        const cJSON *u;
        int j = 0;
        cJSON_ArrayForEach(u, cli_jget(w, "units")) {
            if (j < 4) printf(" %s", cJSON_IsString(u) ? u->valuestring : "?");
            j++;
        }
        if (j > 4) printf(" ... (%d)", j);
        if (!j) printf(" -");
        putchar('\n');
    }
    printf("prob, MRR (1/rank), rank: the target in the paper lens after zeroing; model_prob: "
           "the model's own. Lower = the score found more important neurons.\n");
}

/* ------------------------------------------------------------------------- */
/* The command                                                               */
/* ------------------------------------------------------------------------- */

/* Progress on a terminal: one line of stderr, "resid: explain: FFN
 * neurons (6/9)...", rewritten in place and erased at the end. */
static void tty_progress(void *user, const char *stage, int step, int n_steps) {
    fprintf(stderr, "\r\033[Kresid: %s: %s (%d/%d)...", (const char *)user, stage, step, n_steps);
    fflush(stderr);
}

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
        {"html", required_argument, NULL, OPT_HTML_FILE},
        {"html-positions", required_argument, NULL, OPT_HTML_POSITIONS},
        {"html-heads", required_argument, NULL, OPT_HTML_HEADS},
        {"html-neurons", required_argument, NULL, OPT_HTML_NEURONS},
        {"compare-scores", no_argument, NULL, OPT_COMPARE},
        {"bottom", required_argument, NULL, OPT_BOTTOM},
        {"ranges", required_argument, NULL, OPT_RANGES},
        {NULL, 0, NULL, 0},
    };
    /* The HTML report's extra views cost vocabulary projections and reads
     * of the FFN weights: by default (-1: RS_WEB_CHEAP_MACS) all of them on
     * small models, else only the free lens-grid column (t*, from the
     * explainer's contexts), one head's breakdown and 10 neurons per list,
     * so that --html adds well under 10% to the explain's time on GPT-2
     * small (scripts/bench.sh). */
    explain_opts o = {.target_id = -1,
                      .vs_id = -1,
                      .lens = RESID_LENS_PAPER,
                      .top = 10,
                      .n_tokens = 5,
                      .html_positions = -1,
                      .html_heads = -1,
                      .html_neurons = -1};
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
    const int32_t V = resid_model_get_info(m)->n_vocab;
    int32_t *ids = NULL, n = 0;
    int32_t target = -1, contrast = -1;
    cJSON *root = NULL;
    rs_explain_session *sess = NULL;
    resid_ranges *ranges = NULL;
    r = cli_prompt_ids(cmd, &a, tok, V, CLI_PROMPT_NONEMPTY, &ids, &n);
    if (r == CLI_EXIT_OK && o.ranges_path) {
        resid_error err;
        if (resid_ranges_load(m, o.ranges_path, &ranges, &err) != RESID_OK) r = cli_lib_error(&err);
    }
    if (r == CLI_EXIT_OK && o.target_id >= V)
        r = cli_usage_error(cmd, "--target-id %ld is out of range [0, %d)", o.target_id, V);
    if (r == CLI_EXIT_OK && o.vs_id >= V)
        r = cli_usage_error(cmd, "--vs-id %ld is out of range [0, %d)", o.vs_id, V);
    if (r == CLI_EXIT_OK) {
        target = (int32_t)o.target_id;
        contrast = (int32_t)o.vs_id;
        if (o.target_text) r = cli_resolve_token(tok, "--target", o.target_text, ids[n - 1], &target);
    }
    if (r == CLI_EXIT_OK && o.vs_text)
        r = cli_resolve_token(tok, "--vs", o.vs_text, ids[n - 1], &contrast);
    bool json_stdout = o.json_path && !strcmp(o.json_path, "-");
    const bool tty = isatty(STDERR_FILENO);
    if (r == CLI_EXIT_OK) {
        resid_explain_request rq = resid_explain_request_defaults();
        if (tty) rq.progress = tty_progress, rq.progress_user = "explain";
        rq.tokens = ids;
        rq.n_tokens = n;
        rq.target = target;
        rq.contrast = contrast;
        rq.lens = o.lens;
        rq.top_k = o.top;
        rq.bottom_k = o.bottom;
        rq.n_unit_tokens = (int32_t)o.n_tokens;
        rq.exhaustive = o.exhaustive;
        rq.compare_scores = o.compare;
        rq.head_tokens = !json_stdout; /* the text report lists the top heads' tokens */
        rq.ranges = ranges;
        resid_error err;
        /* --html keeps the computation (every position captured) for the
         * page's extra views, so nothing is run twice. */
        bool failed;
        if (o.html_path)
            failed = rs_explain_session_new(m, &rq, true, &sess, &err) != RESID_OK ||
                     rs_explain_session_json(sess, &root, &err) != RESID_OK;
        else
            failed = rs_explain_cjson(m, &rq, &root, &err) != RESID_OK;
        if (tty) fputs("\r\033[K", stderr); /* the progress line */
        if (failed) r = cli_lib_error(&err);
    }
    if (r == CLI_EXIT_OK) {
        const cJSON *ranking = cJSON_GetObjectItemCaseSensitive(root, "ranking");
        for (int i = 0; i < N_LISTS; i++) {
            const cJSON *rk = cJSON_GetObjectItemCaseSensitive(ranking, lists[i].name);
            if (rk && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rk, "clamped")))
                fprintf(stderr,
                        "resid: note: --%s %ld is more than the %lld %s; showing all of them\n",
                        lists[i].bottom ? "bottom" : "top", lists[i].bottom ? o.bottom : o.top,
                        (long long)cli_jnum(rk, "units_total"), lists[i].title);
        }
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "contrast");
        if (c &&
            cli_jnum(c, "id") == cli_jnum(cJSON_GetObjectItemCaseSensitive(root, "target"), "id"))
            fprintf(stderr, "resid: note: the contrast token is the target: every contrast "
                            "score is 0\n");
    }
    if (r == CLI_EXIT_OK && !json_stdout) {
        text_ctx tc = {tok, ids, n, root};
        r = print_text(&tc);
        if (r == CLI_EXIT_OK) print_compare(&tc);
    }
    if (r == CLI_EXIT_OK && o.html_path) {
        /* The report adds views to the tree: work on a copy if the JSON is
         * still to be written. */
        cJSON *h = o.json_path ? cJSON_Duplicate(root, true) : root;
        rs_web_opts wo = rs_web_defaults();
        wo.n_tokens = (int32_t)o.n_tokens;
        wo.grid_positions = (int32_t)o.html_positions;
        wo.n_head_detail = (int32_t)o.html_heads;
        wo.n_neuron_detail = (int32_t)o.html_neurons;
        if (tty) wo.progress = tty_progress, wo.progress_user = "html report";
        resid_error err;
        rs_web_ctx *wc = NULL;
        if (!h) {
            r = cli_error("out of memory");
        } else {
            const bool failed = rs_web_ctx_from_session(m, sess, &wc, &err) != RESID_OK ||
                                rs_web_extras(wc, h, &wo, &err) != RESID_OK ||
                                rs_html_write_file(o.html_path, h, &err) != RESID_OK;
            if (tty) fputs("\r\033[K", stderr);
            if (failed) r = cli_lib_error(&err);
        }
        rs_web_ctx_free(wc);
        if (h != root) cJSON_Delete(h);
    }
    if (r == CLI_EXIT_OK && o.json_path) {
        /* The head tokens were for the text report; the schema has none. */
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "heads")) {
            cJSON_DeleteItemFromObjectCaseSensitive((cJSON *)e, "top_tokens");
            cJSON_DeleteItemFromObjectCaseSensitive((cJSON *)e, "bottom_tokens");
        }
        r = cli_json_write(root, o.json_path);
        root = NULL; /* cli_json_write frees it */
    }
    cJSON_Delete(root);
    rs_explain_session_free(sess);
    resid_ranges_free(ranges);
    free(ids);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_explain = {
    "explain", "explain a next-token prediction: layers, heads, neurons", help, run};
