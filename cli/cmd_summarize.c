/*
 * cmd_summarize.c - `resid summarize RESULTS.jsonl`: the aggregate views of
 * METHOD.md §4.2 over the records of `resid batch`, per "type" and overall:
 * the layer histograms of the top value neurons (FFN, attention) and of
 * query neurons when the records have them, the summed importance of
 * attention versus FFN, the rate at which neurons are shared across the
 * sentences of a type, the head and layer rankings by mean LPI, and the
 * scoring-method comparison (records made with --ablate). As a text table,
 * JSON or CSV.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "output/jsonl.h"

static const char help[] =
    "Usage: resid summarize RESULTS.jsonl [--format text|json|csv] [OPTIONS]\n"
    "\n"
    "Summarises the records of resid batch, for every \"type\" and for all\n"
    "records together (the group \"*\"; records without a type count there\n"
    "only); records with an \"error\" are counted and skipped. K = --neurons.\n"
    "A neuron is its parameter row: an FFN neuron L_K, an attention neuron\n"
    "L_H_N (the source position J of an id L_H_N_J is a token position of one\n"
    "sentence, so it is dropped: the same row at any position is the same\n"
    "neuron, as in the paper's ablations). Lists per record:\n"
    "    ffn    the distinct rows of the top-K ffn_neurons\n"
    "    attn   the distinct rows of the top-K attn_neurons\n"
    "    value  the distinct rows of the top-K of ffn_neurons + attn_neurons\n"
    "           merged by LPI (the paper's top-300 value neurons)\n"
    "    query  the top-K query_neurons (records of batch --query-neurons)\n"
    "Outputs per group:\n"
    "  - layer histograms: per layer, the rows of each list summed over the\n"
    "    group's records\n"
    "  - summed importance: the sums (and means) over records of the attention\n"
    "    and FFN layer LPIs (layer_totals.attn_lpi, ffn_lpi)\n"
    "  - sharing (METHOD.md 4.2, value vs query): a row is shared when it is\n"
    "    in the list of more than half of the group's records; rate = the mean\n"
    "    over the records of the fraction of their rows that are shared\n"
    "  - head and layer rankings by mean LPI over the records\n"
    "  - the scoring-method comparison (records made with batch --ablate):\n"
    "    mean probability and reciprocal rank of the target with the top-k FFN\n"
    "    neurons of each score zeroed, the original and random neurons, and\n"
    "    the % decrease of each from the original\n"
    "\n"
    "Options:\n"
    "      --format F       text (default), json or csv (group,section,key,\n"
    "                       field,value rows)\n"
    "  -k, --top N          heads and layers listed (default 10)\n"
    "      --neurons K      top-K neurons of each record used (default 300)\n"
    "  -h, --help           show this help\n"
    "\n"
    "Examples:\n"
    "  resid summarize results.jsonl\n"
    "  resid summarize results.jsonl --format csv > summary.csv\n";

enum { OPT_TOP = 'k', OPT_FORMAT = 300, OPT_NEURONS };

/* The name of the group of every record (a record's own "type" may be any
 * string, even "all"; the JSON also marks this group "overall": true). */
#define OVERALL "*"
enum { FMT_TEXT, FMT_JSON, FMT_CSV };

typedef struct sum_opts {
    int format;
    long top, neurons;
} sum_opts;

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    sum_opts *o = user;
    switch (opt) {
    case OPT_TOP: return cli_parse_int(cmd, "--top", arg, 1, INT32_MAX, &o->top);
    case OPT_NEURONS: return cli_parse_int(cmd, "--neurons", arg, 1, INT32_MAX, &o->neurons);
    case OPT_FORMAT:
        if (!strcmp(arg, "text"))
            o->format = FMT_TEXT;
        else if (!strcmp(arg, "json"))
            o->format = FMT_JSON;
        else if (!strcmp(arg, "csv"))
            o->format = FMT_CSV;
        else
            return cli_usage_error(cmd, "--format expects text, json or csv, got '%s'", arg);
        return CLI_CONTINUE;
    }
    return cli_usage_error(cmd, "unknown option");
}

/* ------------------------------------------------------------------------- */
/* Neuron id counting                                                        */
/* ------------------------------------------------------------------------- */

/* A string -> count map (open addressing), for neuron ids. */
typedef struct counter {
    char **key;
    int64_t *count;
    int64_t cap, n;
} counter;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Adds 1 to key; false on out of memory. */
static bool counter_add(counter *c, const char *key) {
    if (2 * (c->n + 1) > c->cap) {
        int64_t nc = c->cap ? 2 * c->cap : 256;
        char **nk = calloc((size_t)nc, sizeof *nk);
        int64_t *nn = calloc((size_t)nc, sizeof *nn);
        if (!nk || !nn) {
            free(nk), free(nn);
            return false;
        }
        for (int64_t i = 0; i < c->cap; i++) {
            if (!c->key[i]) continue;
            int64_t j = (int64_t)(hash_str(c->key[i]) & (uint64_t)(nc - 1));
            while (nk[j])
                j = (j + 1) & (nc - 1);
            nk[j] = c->key[i];
            nn[j] = c->count[i];
        }
        free(c->key), free(c->count);
        c->key = nk, c->count = nn, c->cap = nc;
    }
    int64_t j = (int64_t)(hash_str(key) & (uint64_t)(c->cap - 1));
    while (c->key[j] && strcmp(c->key[j], key))
        j = (j + 1) & (c->cap - 1);
    if (!c->key[j]) {
        if (!(c->key[j] = strdup(key))) return false;
        c->n++;
    }
    c->count[j]++;
    return true;
}

static int64_t counter_get(const counter *c, const char *key) {
    if (!c->cap) return 0;
    int64_t j = (int64_t)(hash_str(key) & (uint64_t)(c->cap - 1));
    while (c->key[j] && strcmp(c->key[j], key))
        j = (j + 1) & (c->cap - 1);
    return c->key[j] ? c->count[j] : 0;
}

static void counter_free(counter *c) {
    for (int64_t i = 0; i < c->cap; i++)
        free(c->key[i]);
    free(c->key), free(c->count);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------------- */
/* Groups                                                                    */
/* ------------------------------------------------------------------------- */

/* The neuron lists summarised: JSON key, short name. "value" is not a
 * record field: it is the top-K of ffn_neurons ∪ attn_neurons by LPI (the
 * paper's "value neurons" of both kinds). */
static const struct {
    const char *key, *name;
} neuron_lists[] = {
    {"ffn_neurons", "ffn"},
    {"attn_neurons", "attn"},
    {NULL, "value"},
    {"query_neurons", "query"},
};
enum { N_NLISTS = 4, LIST_ATTN = 1, LIST_VALUE = 2 };

/* A neuron as summarised: its parameter row ("L_K" for FFN neurons,
 * "L_H_N" for attention neurons, whose ids "L_H_N_J" also name the source
 * position J: J is a token position of one sentence, so the same row at
 * different positions is the same neuron) and its layer. */
typedef struct nkey {
    char key[64];
    int32_t layer;
} nkey;

/* The distinct parameter rows among the first k entries of a record's
 * list li (value: of the merged FFN and attention lists by LPI,
 * descending; attention rows marked "a", FFN rows "f"), in list order, into
 * out[k]. Returns the count, -1 when the record lacks the list, -2 on out
 * of memory. */
static int64_t record_keys(const cJSON *r, int li, long k, nkey *out) {
    const cJSON *a, *b = NULL;
    if (li == LIST_VALUE) {
        a = cJSON_GetObjectItemCaseSensitive(r, "ffn_neurons");
        b = cJSON_GetObjectItemCaseSensitive(r, "attn_neurons");
        if (!cJSON_IsArray(a) || !cJSON_IsArray(b)) return -1;
    } else {
        a = cJSON_GetObjectItemCaseSensitive(r, neuron_lists[li].key);
        if (!cJSON_IsArray(a)) return -1;
    }
    counter seen;
    memset(&seen, 0, sizeof seen);
    const cJSON *x = a->child, *y = b ? b->child : NULL;
    int64_t n = 0;
    for (long i = 0; i < k && (x || y); i++) {
        /* The next entry: from a, or (value) whichever has the higher LPI. */
        const cJSON *e;
        bool attn = li == LIST_ATTN;
        if (y && (!x || cli_jnum(y, "lpi") > cli_jnum(x, "lpi"))) {
            e = y, y = y->next, attn = true;
        } else {
            e = x, x = x->next;
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsString(id)) continue;
        nkey *nk = &out[n];
        snprintf(nk->key, sizeof nk->key, "%s%s", li == LIST_VALUE ? (attn ? "a" : "f") : "",
                 id->valuestring);
        if (attn) { /* L_H_N_J -> L_H_N */
            char *u = strrchr(nk->key, '_');
            if (u) *u = 0;
        }
        nk->layer = (int32_t)strtol(id->valuestring, NULL, 10);
        if (counter_get(&seen, nk->key)) continue;
        if (!counter_add(&seen, nk->key)) {
            counter_free(&seen);
            return -2;
        }
        n++;
    }
    counter_free(&seen);
    return n;
}

#define N_STATS (RESID_FSCORE_COUNT + 2) /* original, methods, random */

typedef struct group {
    char *type;               /* NULL: all */
    int64_t n, n_error;       /* records used, error records */
    int64_t *hist[N_NLISTS];  /* [L] */
    int64_t n_with[N_NLISTS]; /* records having the list */
    double attn_sum, ffn_sum;
    double *head_sum;               /* [L*H] by enumeration index */
    int64_t n_heads;                /* records with heads */
    double *layer_attn, *layer_ffn; /* [L] */
    counter shared[N_NLISTS];       /* neuron id -> records */
    int64_t n_ablate;
    double ab_prob[N_STATS], ab_rr[N_STATS];
} group;

typedef struct summary {
    int32_t L, H;
    group *g; /* g[0]: all */
    int n_groups;
    const char *path;
    cJSON **recs; /* every usable record */
    int64_t n_recs, n_error;
} summary;

/* The stat slots: 0 original, 1..8 methods, 9 random. */
static const char *stat_name(int i) {
    if (i == 0) return "original";
    if (i == N_STATS - 1) return "random";
    return resid_fscore_name((resid_fscore)(i - 1));
}

static group *group_for(summary *s, const char *type) {
    for (int i = 1; i < s->n_groups; i++)
        if (!strcmp(s->g[i].type, type)) return &s->g[i];
    group *ng = realloc(s->g, (size_t)(s->n_groups + 1) * sizeof *ng);
    if (!ng) return NULL;
    s->g = ng;
    group *g = &s->g[s->n_groups];
    memset(g, 0, sizeof *g);
    if (!(g->type = strdup(type))) return NULL;
    s->n_groups++;
    return g;
}

static bool group_alloc(group *g, int32_t L, int32_t H) {
    for (int i = 0; i < N_NLISTS; i++)
        if (!(g->hist[i] = calloc((size_t)L, sizeof(int64_t)))) return false;
    g->head_sum = calloc((size_t)L * (size_t)H + 1, sizeof(double));
    g->layer_attn = calloc((size_t)L, sizeof(double));
    g->layer_ffn = calloc((size_t)L, sizeof(double));
    return g->head_sum && g->layer_attn && g->layer_ffn;
}

static void group_free(group *g) {
    free(g->type);
    for (int i = 0; i < N_NLISTS; i++) {
        free(g->hist[i]);
        counter_free(&g->shared[i]);
    }
    free(g->head_sum), free(g->layer_attn), free(g->layer_ffn);
}

/* Adds one record to a group (first pass: everything but sharing rates). */
static bool group_add(const summary *s, group *g, const cJSON *r, long k_neurons) {
    const int32_t L = s->L, H = s->H;
    if (!g->head_sum && !group_alloc(g, L, H)) return false;
    g->n++;
    nkey *keys = malloc((size_t)(k_neurons > 0 ? k_neurons : 1) * sizeof *keys);
    if (!keys) return false;
    for (int li = 0; li < N_NLISTS; li++) {
        const int64_t n = record_keys(r, li, k_neurons, keys);
        if (n == -2) {
            free(keys);
            return false;
        }
        if (n < 0) continue;
        g->n_with[li]++;
        for (int64_t i = 0; i < n; i++) {
            if (keys[i].layer >= 0 && keys[i].layer < L) g->hist[li][keys[i].layer]++;
            if (!counter_add(&g->shared[li], keys[i].key)) {
                free(keys);
                return false;
            }
        }
    }
    free(keys);
    const cJSON *tot = cli_jget(r, "layer_totals");
    g->attn_sum += cli_jnum(tot, "attn_lpi");
    g->ffn_sum += cli_jnum(tot, "ffn_lpi");
    const cJSON *heads = cli_jget(r, "heads");
    if (cJSON_GetArraySize(heads) == L * H) {
        g->n_heads++;
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, heads) g->head_sum[i++] += cli_jnum(e, "lpi");
    }
    const cJSON *layers = cli_jget(r, "layers");
    int l = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, layers) {
        if (l >= L) break;
        g->layer_attn[l] += cli_jnum(e, "attn_lpi");
        g->layer_ffn[l] += cli_jnum(e, "ffn_lpi");
        l++;
    }
    const cJSON *ab = cli_jget(r, "ablation");
    if (ab) {
        g->n_ablate++;
        for (int i = 0; i < N_STATS; i++) {
            const cJSON *st = i == 0             ? cli_jget(ab, "original")
                              : i == N_STATS - 1 ? cli_jget(ab, "random")
                                                 : cli_jget(cli_jget(ab, "methods"), stat_name(i));
            g->ab_prob[i] += cli_jnum(st, "prob");
            g->ab_rr[i] += cli_jnum(st, "rr");
        }
    }
    return true;
}

/* The sharing rate of list li in group g: the mean over the group's records
 * of the fraction of their distinct top-K rows that are among the top-K of
 * more than half of the group's records (which have the list). NAN when
 * none has it; -2 (and *n_shared -1) on out of memory. */
static double sharing_rate(const summary *s, const group *g, int li, long k_neurons,
                           int64_t *n_shared) {
    const int64_t S = g->n_with[li];
    *n_shared = 0;
    if (S == 0) return NAN;
    for (int64_t i = 0; i < g->shared[li].cap; i++)
        if (g->shared[li].key[i] && 2 * g->shared[li].count[i] > S) (*n_shared)++;
    nkey *keys = malloc((size_t)(k_neurons > 0 ? k_neurons : 1) * sizeof *keys);
    if (!keys) {
        *n_shared = -1;
        return -2;
    }
    double sum = 0;
    for (int64_t ri = 0; ri < s->n_recs; ri++) {
        const cJSON *r = s->recs[ri];
        const cJSON *t = cli_jget(r, "type");
        if (g->type && !(cJSON_IsString(t) && !strcmp(t->valuestring, g->type))) continue;
        const int64_t n = record_keys(r, li, k_neurons, keys);
        if (n == -2) {
            free(keys);
            *n_shared = -1;
            return -2;
        }
        int64_t hit = 0;
        for (int64_t i = 0; i < n; i++)
            hit += 2 * counter_get(&g->shared[li], keys[i].key) > S;
        if (n > 0) sum += (double)hit / (double)n;
    }
    free(keys);
    return sum / (double)S;
}

/* ------------------------------------------------------------------------- */
/* Rankings                                                                  */
/* ------------------------------------------------------------------------- */

typedef struct ranked {
    char id[32];
    double mean;
    int64_t i;
} ranked;

static int cmp_ranked(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->mean != b->mean) return a->mean > b->mean ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* Heads (L*H) or layers (2L: a0, f0, a1, ...) by mean LPI, best first;
 * *n receives the count. malloc'd. */
static ranked *rank_units(const summary *s, const group *g, bool heads, int64_t *n) {
    const int32_t L = s->L, H = s->H;
    *n = heads ? (g->n_heads ? (int64_t)L * H : 0) : 2 * (int64_t)L;
    ranked *r = malloc((size_t)(*n + 1) * sizeof *r);
    if (!r) return NULL;
    for (int64_t i = 0; i < *n; i++) {
        r[i].i = i;
        if (heads) {
            snprintf(r[i].id, sizeof r[i].id, "%d_%d", (int)(i / H), (int)(i % H));
            r[i].mean = g->head_sum[i] / (double)g->n_heads;
        } else {
            snprintf(r[i].id, sizeof r[i].id, "%c%d", i % 2 ? 'f' : 'a', (int)(i / 2));
            r[i].mean = (i % 2 ? g->layer_ffn : g->layer_attn)[i / 2] / (double)g->n;
        }
    }
    qsort(r, (size_t)*n, sizeof *r, cmp_ranked);
    return r;
}

/* ------------------------------------------------------------------------- */
/* Output                                                                    */
/* ------------------------------------------------------------------------- */

static double pct_drop(double orig, double v) {
    return orig != 0 ? 100.0 * (orig - v) / orig : NAN;
}

/* The summary as JSON (the CSV and the text are written from it). */
static cJSON *build(const summary *s, const sum_opts *o) {
    cJSON *root = cJSON_CreateObject();
    bool ok = root && cJSON_AddStringToObject(root, "file", s->path) &&
              cJSON_AddNumberToObject(root, "n_records", (double)s->n_recs) &&
              cJSON_AddNumberToObject(root, "n_errors", (double)s->n_error) &&
              cJSON_AddNumberToObject(root, "n_layer", s->L) &&
              cJSON_AddNumberToObject(root, "n_head", s->H) &&
              cJSON_AddNumberToObject(root, "neurons_k", (double)o->neurons);
    cJSON *groups = ok ? cJSON_AddArrayToObject(root, "groups") : NULL;
    ok = groups != NULL;
    for (int gi = 0; ok && gi < s->n_groups; gi++) {
        const group *g = &s->g[gi];
        if (!g->n) continue;
        cJSON *go = cJSON_CreateObject();
        ok = go != NULL;
        if (!ok) break;
        cJSON_AddItemToArray(groups, go);
        ok = cJSON_AddStringToObject(go, "type", g->type ? g->type : OVERALL) &&
             cJSON_AddBoolToObject(go, "overall", !g->type) &&
             cJSON_AddNumberToObject(go, "n", (double)g->n);
        for (int li = 0; ok && li < N_NLISTS; li++) {
            if (!g->n_with[li]) continue;
            char name[64];
            snprintf(name, sizeof name, "%s_layer_hist", neuron_lists[li].name);
            cJSON *h = cJSON_AddArrayToObject(go, name);
            ok = h != NULL;
            for (int32_t l = 0; ok && l < s->L; l++) {
                cJSON *v = cJSON_CreateNumber((double)g->hist[li][l]);
                ok = v != NULL;
                if (ok) cJSON_AddItemToArray(h, v);
            }
        }
        cJSON *imp = ok ? cJSON_AddObjectToObject(go, "importance") : NULL;
        ok = imp && cJSON_AddNumberToObject(imp, "attn_lpi_sum", g->attn_sum) &&
             cJSON_AddNumberToObject(imp, "ffn_lpi_sum", g->ffn_sum) &&
             cJSON_AddNumberToObject(imp, "attn_lpi_mean", g->attn_sum / (double)g->n) &&
             cJSON_AddNumberToObject(imp, "ffn_lpi_mean", g->ffn_sum / (double)g->n);
        cJSON *sh = ok ? cJSON_AddObjectToObject(go, "sharing") : NULL;
        ok = sh != NULL;
        for (int li = 0; ok && li < N_NLISTS; li++) {
            if (!g->n_with[li]) continue;
            int64_t n_shared;
            const double rate = sharing_rate(s, g, li, o->neurons, &n_shared);
            if (n_shared < 0) {
                ok = false;
                break;
            }
            static const char *const row[N_NLISTS] = {"L_K", "L_H_N", "fL_K|aL_H_N", "L_K"};
            cJSON *e = cJSON_AddObjectToObject(sh, neuron_lists[li].name);
            ok = e && cJSON_AddStringToObject(e, "row", row[li]) &&
                 cJSON_AddNumberToObject(e, "rate", rate) &&
                 cJSON_AddNumberToObject(e, "n_shared", (double)n_shared) &&
                 cJSON_AddNumberToObject(e, "n_distinct", (double)g->shared[li].n);
        }
        for (int hl = 0; ok && hl < 2; hl++) {
            int64_t n;
            ranked *r = rank_units(s, g, hl == 0, &n);
            cJSON *arr = r ? cJSON_AddArrayToObject(go, hl == 0 ? "heads" : "layers") : NULL;
            ok = arr != NULL;
            for (int64_t i = 0; ok && i < n && i < o->top; i++) {
                cJSON *e = cJSON_CreateObject();
                ok = e && cJSON_AddStringToObject(e, "id", r[i].id) &&
                     cJSON_AddNumberToObject(e, "mean_lpi", r[i].mean);
                if (e) cJSON_AddItemToArray(arr, e);
            }
            free(r);
        }
        if (ok && g->n_ablate) {
            cJSON *ab = cJSON_AddObjectToObject(go, "ablation");
            ok = ab && cJSON_AddNumberToObject(ab, "n", (double)g->n_ablate);
            const double p0 = g->ab_prob[0] / (double)g->n_ablate;
            const double r0 = g->ab_rr[0] / (double)g->n_ablate;
            for (int i = 0; ok && i < N_STATS; i++) {
                const double p = g->ab_prob[i] / (double)g->n_ablate;
                const double rr = g->ab_rr[i] / (double)g->n_ablate;
                cJSON *e = cJSON_AddObjectToObject(ab, stat_name(i));
                ok = e && cJSON_AddNumberToObject(e, "prob", p) &&
                     cJSON_AddNumberToObject(e, "mrr", rr) &&
                     cJSON_AddNumberToObject(e, "prob_drop_pct", pct_drop(p0, p)) &&
                     cJSON_AddNumberToObject(e, "mrr_drop_pct", pct_drop(r0, rr));
            }
        }
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static void csv_num(const char *g, const char *sec, const char *key, const char *field, double v) {
    printf("%s,%s,%s,%s,%.10g\n", g, sec, key, field, v);
}

/* group,section,key,field,value - one row per number. Types are written
 * with any ',', '"' or newline quoted. */
static void print_csv(const cJSON *root) {
    printf("group,section,key,field,value\n");
    const cJSON *go;
    cJSON_ArrayForEach(go, cli_jget(root, "groups")) {
        const char *t = cli_jget(go, "type")->valuestring;
        char g[512];
        if (strpbrk(t, ",\"\n\r")) {
            size_t k = 0;
            g[k++] = '"';
            for (const char *p = t; *p && k + 3 < sizeof g; p++) {
                if (*p == '"') g[k++] = '"';
                g[k++] = *p;
            }
            g[k++] = '"';
            g[k] = 0;
        } else {
            snprintf(g, sizeof g, "%s", t);
        }
        csv_num(g, "count", "records", "n", cli_jnum(go, "n"));
        for (int li = 0; li < N_NLISTS; li++) {
            char name[64];
            snprintf(name, sizeof name, "%s_layer_hist", neuron_lists[li].name);
            int l = 0;
            const cJSON *v;
            cJSON_ArrayForEach(v, cli_jget(go, name)) {
                char key[16];
                snprintf(key, sizeof key, "%d", l++);
                csv_num(g, name, key, "count", v->valuedouble);
            }
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, cli_jget(go, "importance"))
            csv_num(g, "importance", e->string, "value", e->valuedouble);
        cJSON_ArrayForEach(e, cli_jget(go, "sharing")) {
            const cJSON *f;
            cJSON_ArrayForEach(f, e) if (cJSON_IsNumber(f) || cJSON_IsNull(f))
                csv_num(g, "sharing", e->string, f->string, cli_jnum(e, f->string));
        }
        cJSON_ArrayForEach(e, cli_jget(go, "heads")) csv_num(
            g, "heads", cli_jget(e, "id")->valuestring, "mean_lpi", cli_jnum(e, "mean_lpi"));
        cJSON_ArrayForEach(e, cli_jget(go, "layers")) csv_num(
            g, "layers", cli_jget(e, "id")->valuestring, "mean_lpi", cli_jnum(e, "mean_lpi"));
        cJSON_ArrayForEach(e, cli_jget(go, "ablation")) {
            if (!cJSON_IsObject(e)) continue;
            const cJSON *f;
            cJSON_ArrayForEach(f, e) csv_num(g, "ablation", e->string, f->string, f->valuedouble);
        }
    }
}

static void print_text(const cJSON *root) {
    printf("%s: %d records used, %d with errors; %d layers, %d heads; top-%d neurons per "
           "record\n",
           cli_jget(root, "file")->valuestring, (int)cli_jnum(root, "n_records"),
           (int)cli_jnum(root, "n_errors"), (int)cli_jnum(root, "n_layer"),
           (int)cli_jnum(root, "n_head"), (int)cli_jnum(root, "neurons_k"));
    const cJSON *go;
    cJSON_ArrayForEach(go, cli_jget(root, "groups")) {
        printf("\n== %s (%d records)\n", cli_jget(go, "type")->valuestring, (int)cli_jnum(go, "n"));
        const cJSON *imp = cli_jget(go, "importance");
        printf("summed importance: attention %+.4f, FFN %+.4f (per record %+.4f, %+.4f)\n",
               cli_jnum(imp, "attn_lpi_sum"), cli_jnum(imp, "ffn_lpi_sum"),
               cli_jnum(imp, "attn_lpi_mean"), cli_jnum(imp, "ffn_lpi_mean"));
        printf("layer histogram of the top neurons (rows per layer, summed over records):\n%6s",
               "layer");
        const int L = (int)cli_jnum(root, "n_layer");
        for (int li = 0; li < N_NLISTS; li++) {
            char name[64];
            snprintf(name, sizeof name, "%s_layer_hist", neuron_lists[li].name);
            if (cli_jget(go, name)) printf(" %8s", neuron_lists[li].name);
        }
        putchar('\n');
        for (int l = 0; l < L; l++) {
            printf("%6d", l);
            for (int li = 0; li < N_NLISTS; li++) {
                char name[64];
                snprintf(name, sizeof name, "%s_layer_hist", neuron_lists[li].name);
                const cJSON *h = cli_jget(go, name);
                if (h) printf(" %8d", (int)cJSON_GetArrayItem(h, l)->valuedouble);
            }
            putchar('\n');
        }
        const cJSON *e;
        if (cli_jget(go, "sharing")->child)
            printf("sharing: %% of a record's rows that are in the lists of > 50%% of the "
                   "records\n");
        cJSON_ArrayForEach(e, cli_jget(go, "sharing"))
            printf("  %-6s %5.1f%%  (%d shared rows of %d seen; rows %s)\n", e->string,
                   100 * cli_jnum(e, "rate"), (int)cli_jnum(e, "n_shared"),
                   (int)cli_jnum(e, "n_distinct"), cli_jget(e, "row")->valuestring);
        for (int hl = 0; hl < 2; hl++) {
            printf("%s by mean LPI:", hl == 0 ? "heads " : "layers");
            cJSON_ArrayForEach(e, cli_jget(go, hl == 0 ? "heads" : "layers"))
                printf(" %s %+.4f", cli_jget(e, "id")->valuestring, cli_jnum(e, "mean_lpi"));
            putchar('\n');
        }
        const cJSON *ab = cli_jget(go, "ablation");
        if (ab) {
            printf("scoring methods (top-k FFN neurons zeroed, %d records):\n",
                   (int)cli_jnum(ab, "n"));
            printf("  %-12s %10s %10s %10s %10s\n", "method", "prob", "drop%", "MRR", "drop%");
            cJSON_ArrayForEach(e, ab) {
                if (!cJSON_IsObject(e)) continue;
                printf("  %-12s %10.4f %10.1f %10.4f %10.1f\n", e->string, cli_jnum(e, "prob"),
                       cli_jnum(e, "prob_drop_pct"), cli_jnum(e, "mrr"),
                       cli_jnum(e, "mrr_drop_pct"));
            }
        }
    }
}

/* ------------------------------------------------------------------------- */
/* The command                                                               */
/* ------------------------------------------------------------------------- */

static int load(summary *s, const sum_opts *o) {
    FILE *f = fopen(s->path, "rb");
    if (!f) return cli_error("%s: cannot open", s->path);
    resid_error err;
    rs_jsonl_reader *rd;
    if (rs_jsonl_reader_new(f, s->path, (size_t)1 << 30, &rd, &err) != RESID_OK) {
        fclose(f);
        return cli_lib_error(&err);
    }
    int rc = CLI_EXIT_OK;
    int64_t cap = 0;
    for (;;) {
        const char *line;
        size_t len;
        int64_t line_no;
        bool eof;
        if (rs_jsonl_next(rd, &line, &len, &line_no, &eof, &err) != RESID_OK) {
            rc = cli_lib_error(&err);
            break;
        }
        if (eof) break;
        if (len == 0) continue;
        cJSON *r = cJSON_ParseWithLength(line, len);
        if (!cJSON_IsObject(r)) {
            cJSON_Delete(r);
            rc = cli_error("%s:%lld: not a JSON object (a record of resid batch)", s->path,
                           (long long)line_no);
            break;
        }
        if (cli_jget(r, "error")) {
            s->n_error++;
            cJSON_Delete(r);
            continue;
        }
        if (!cli_jget(r, "layers") || !cli_jget(r, "layer_totals")) {
            cJSON_Delete(r);
            rc = cli_error("%s:%lld: not a record of resid batch (no layers)", s->path,
                           (long long)line_no);
            break;
        }
        if (s->n_recs == cap) {
            cap = cap ? 2 * cap : 256;
            cJSON **nr = realloc(s->recs, (size_t)cap * sizeof *nr);
            if (!nr) {
                cJSON_Delete(r);
                rc = cli_error("out of memory");
                break;
            }
            s->recs = nr;
        }
        s->recs[s->n_recs++] = r;
        if (s->n_recs == 1) {
            const cJSON *mo = cli_jget(r, "model");
            s->L = (int32_t)cli_jnum(mo, "n_layer");
            s->H = (int32_t)cli_jnum(mo, "n_head");
            if (!(s->L > 0 && s->L < 100000)) s->L = cJSON_GetArraySize(cli_jget(r, "layers"));
            if (!(s->H > 0 && s->H < 100000)) s->H = 1;
        }
    }
    rs_jsonl_reader_free(rd);
    fclose(f);
    if (rc == CLI_EXIT_OK && s->n_recs == 0)
        rc = cli_error("%s: no records without errors to summarise", s->path);
    (void)o;
    return rc;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"format", required_argument, NULL, OPT_FORMAT},
        {"top", required_argument, NULL, OPT_TOP},
        {"neurons", required_argument, NULL, OPT_NEURONS},
        {NULL, 0, NULL, 0},
    };
    sum_opts o = {FMT_TEXT, 10, 300};
    cli_args a;
    int r = cli_parse(cmd, argc, argv, 0, extra, "k:", on_opt, &o, &a);
    if (r != CLI_CONTINUE) return r;
    summary s;
    memset(&s, 0, sizeof s);
    s.path = a.model;
    s.g = calloc(1, sizeof *s.g);
    s.n_groups = 1;
    r = s.g ? load(&s, &o) : cli_error("out of memory");
    for (int64_t i = 0; r == CLI_EXIT_OK && i < s.n_recs; i++) {
        const cJSON *t = cli_jget(s.recs[i], "type");
        if (!group_add(&s, &s.g[0], s.recs[i], o.neurons)) r = cli_error("out of memory");
        group *g = r == CLI_EXIT_OK && cJSON_IsString(t) ? group_for(&s, t->valuestring) : NULL;
        if (r == CLI_EXIT_OK && cJSON_IsString(t) &&
            (!g || !group_add(&s, g, s.recs[i], o.neurons)))
            r = cli_error("out of memory");
    }
    if (r == CLI_EXIT_OK) {
        cJSON *root = build(&s, &o);
        if (!root) {
            r = cli_error("out of memory");
        } else if (o.format == FMT_JSON) {
            r = cli_json_print(root);
            root = NULL;
        } else if (o.format == FMT_CSV) {
            print_csv(root);
        } else {
            print_text(root);
        }
        cJSON_Delete(root);
    }
    for (int i = 0; s.g && i < s.n_groups; i++)
        group_free(&s.g[i]);
    free(s.g);
    for (int64_t i = 0; i < s.n_recs; i++)
        cJSON_Delete(s.recs[i]);
    free(s.recs);
    return r;
}

const cli_command cli_cmd_summarize = {
    "summarize", "summarise the records of resid batch (per type: layers, heads, sharing)", help,
    run};
