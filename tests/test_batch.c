/*
 * test_batch.c - `resid batch` and `resid summarize`, run as programs
 * ($RESID_CLI) on stories260K: every record's explain fields against
 * `resid explain --json` for the same prompt; bad records carry "error" and
 * the run goes on; --resume after a simulated crash (the output cut in the
 * middle of a line) gives the file an uninterrupted run gives; summarize
 * (json, csv, text) against numbers recomputed here from the records; and,
 * when the binary has MPI and mpirun exists, 2 ranks against 1 process.
 * Every run uses --threads 1: OpenBLAS results depend on the thread count
 * in the last bits, and the comparisons here are exact.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "output/report.h"
#include "testutil.h"

#define STORIES "tinyllamas/stories260K.bin"

/* Good prompts (from data/stories260K-prompts.jsonl) and bad records. */
static const char *const good[] = {
    "{\"id\": \"name-1\", \"prompt\": \"Mark and Sam were friends. Mark had a ball. Mark gave "
    "the ball to\", \"target\": \" S\", \"type\": \"name\"}",
    "{\"id\": \"pron-1\", \"prompt\": \"Once upon a time, there was a little girl named Lily. "
    "One day,\", \"target\": \" she\", \"type\": \"pronoun\"}",
    "{\"id\": \"obj-1\", \"prompt\": \"Sam had a kite. Sam loved the kite very much. One day, "
    "Sam lost his\", \"target\": \" k\", \"type\": \"object\"}",
    "{\"id\": \"col-1\", \"prompt\": \"Zoe had a green cup. Zoe liked the\", \"target\": \" g\", "
    "\"type\": \"colour\"}",
    "{\"id\": \"pron-2\", \"prompt\": \"There was a boy named Tim. Tim had a toy. One day,\", "
    "\"type\": \"pronoun\"}",
    "{\"id\": 7, \"ids\": [1, 403, 407], \"type\": \"name\"}",
};
enum { N_GOOD = sizeof good / sizeof good[0] };

static char g_dir[256];
static char *g_in, *g_out;                  /* the input and the uninterrupted output */
static int g_n_lines;                       /* non-blank input lines */
static const int g_bad[] = {1, 3, 5, 7, 8}; /* indices of the bad records */
static double g_md_target;                  /* records vs explain: target fields */

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------- */

static char *model_path(void) {
    return tu_model_path(STORIES);
}

/* Runs a shell command line; returns stdout; *st the exit status. */
static char *sh(int *st, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return tu_run(cmd, st);
}

static char *read_text(const char *path) {
    size_t n;
    uint8_t *b = tu_read_file(path, &n);
    char *s = malloc(n + 1);
    memcpy(s, b, n);
    s[n] = 0;
    free(b);
    return s;
}

/* The records of a file, "time_ms" removed, each re-printed. */
static char **records(const char *path, int *n) {
    char *s = read_text(path);
    char **v = calloc(1024, sizeof *v);
    *n = 0;
    for (char *line = strtok(s, "\n"); line && *n < 1024; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        if (!j) {
            print_error("%s: line %d is not JSON: %.200s\n", path, *n + 1, line);
            fail();
        }
        cJSON_DeleteItemFromObjectCaseSensitive(j, "time_ms");
        v[(*n)++] = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
    }
    free(s);
    return v;
}

static void free_records(char **v, int n) {
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Two outputs hold the same records (time_ms aside), in the same order. */
static void assert_same_records(const char *a, const char *b) {
    int na, nb;
    char **ra = records(a, &na), **rb = records(b, &nb);
    if (na != nb) {
        print_error("%s has %d records, %s has %d\n", a, na, b, nb);
        fail();
    }
    for (int i = 0; i < na; i++)
        if (strcmp(ra[i], rb[i])) {
            print_error("record %d differs:\n%.300s\n%.300s\n", i, ra[i], rb[i]);
            fail();
        }
    free_records(ra, na);
    free_records(rb, nb);
}

static int batch(const char *out, const char *extra) {
    char *mp = model_path();
    int st;
    char *o = sh(&st,
                 "'%s' --threads 1 batch '%s' --in '%s' --out '%s' --progress-every 0 %s "
                 "2>'%s.err'",
                 tu_cli(), mp, g_in, out, extra, out);
    free(o), free(mp);
    return st;
}

static int setup(void **state) {
    snprintf(g_dir, sizeof g_dir, "/tmp/resid-test-batch-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    /* Bad records at 1 (not JSON), 3 (invalid UTF-8), 5 (a target of
     * several tokens), 7 (longer than the context), 8 (an id out of range);
     * a blank line that is skipped. */
    char *in = malloc(1 << 16);
    size_t k = 0;
    k += (size_t)sprintf(in + k, "%s\n", good[0]);
    k += (size_t)sprintf(in + k, "{\"prompt\": \"unterminated\n");
    k += (size_t)sprintf(in + k, "%s\n\n", good[1]);
    k += (size_t)sprintf(in + k, "{\"prompt\": \"bad \xff byte\", \"id\": \"utf8\"}\n");
    k += (size_t)sprintf(in + k, "%s\n", good[2]);
    k += (size_t)sprintf(in + k, "{\"prompt\": \"Tim had a big red\", \"target\": \" big ball\", "
                                 "\"id\": \"multi\", \"type\": \"object\"}\n");
    k += (size_t)sprintf(in + k, "%s\n", good[3]);
    k += (size_t)sprintf(in + k, "{\"prompt\": \"");
    for (int i = 0; i < 600; i++)
        k += (size_t)sprintf(in + k, "Once ");
    k += (size_t)sprintf(in + k, "\", \"id\": \"long\"}\n");
    k += (size_t)sprintf(in + k, "{\"ids\": [1, 99999], \"id\": \"range\"}\n");
    k += (size_t)sprintf(in + k, "%s\n%s\n", good[4], good[5]);
    g_n_lines = 11;
    g_in = malloc(512);
    snprintf(g_in, 512, "%s/in.jsonl", g_dir);
    FILE *f = fopen(g_in, "wb");
    fwrite(in, 1, k, f);
    fclose(f);
    free(in);
    g_out = malloc(512);
    snprintf(g_out, 512, "%s/out.jsonl", g_dir);
    *state = NULL;
    return batch(g_out, "--ablate") == 0 ? 0 : -1;
}

static int teardown(void **state) {
    int st;
    free(sh(&st, "rm -rf '%s'", g_dir));
    free(g_in), free(g_out);
    return 0;
}

static const cJSON *jget(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = jget(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static cJSON *record(int i) {
    int n;
    char **v = records(g_out, &n);
    assert_true(i < n);
    cJSON *j = cJSON_Parse(v[i]);
    free_records(v, n);
    return j;
}

/* ------------------------------------------------------------------------- */
/* Records against resid explain --json                                      */
/* ------------------------------------------------------------------------- */

/* Every number of two JSON values, recursively, within tol; *maxdiff. */
static void cmp_json(const char *what, const cJSON *a, const cJSON *b, double tol, double *md) {
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) {
        const double d = fabs(a->valuedouble - b->valuedouble);
        if (d > *md) *md = d;
        if (!(d <= tol)) {
            print_error("%s: %.17g vs %.17g\n", what, a->valuedouble, b->valuedouble);
            fail();
        }
        return;
    }
    if (cJSON_IsString(a) && cJSON_IsString(b)) {
        if (strcmp(a->valuestring, b->valuestring)) {
            print_error("%s: \"%s\" vs \"%s\"\n", what, a->valuestring, b->valuestring);
            fail();
        }
        return;
    }
    if ((cJSON_IsArray(a) && cJSON_IsArray(b)) || (cJSON_IsObject(a) && cJSON_IsObject(b))) {
        if (cJSON_GetArraySize(a) != cJSON_GetArraySize(b)) {
            print_error("%s: %d vs %d entries\n", what, cJSON_GetArraySize(a),
                        cJSON_GetArraySize(b));
            fail();
        }
        const cJSON *x, *y = b->child;
        cJSON_ArrayForEach(x, a) {
            char w[256];
            snprintf(w, sizeof w, "%s/%s", what, x->string ? x->string : "[]");
            cmp_json(w, x, cJSON_IsObject(a) ? jget(b, x->string) : y, tol, md);
            if (y) y = y->next;
        }
        return;
    }
    if (!((cJSON_IsNull(a) && cJSON_IsNull(b)) ||
          (cJSON_IsBool(a) && cJSON_IsBool(b) && cJSON_IsTrue(a) == cJSON_IsTrue(b)))) {
        print_error("%s: different JSON types\n", what);
        fail();
    }
}

static void test_records_match_explain(void **state) {
    (void)state;
    int n;
    char **v = records(g_out, &n);
    assert_int_equal(n, g_n_lines);
    int n_checked = 0;
    double md = 0;
    for (int i = 0; i < n; i++) {
        cJSON *r = cJSON_Parse(v[i]);
        assert_int_equal((int)jnum(r, "index"), i);
        if (jget(r, "error")) {
            cJSON_Delete(r);
            continue;
        }
        /* The same prompt through resid explain (prompt or ids, target id). */
        char *mp = model_path();
        const cJSON *prompt = jget(r, "prompt");
        char arg[4096];
        if (prompt) {
            char *p = prompt->valuestring, *q = arg;
            *q++ = '\'';
            for (; *p; p++)
                if (*p == '\'')
                    q += sprintf(q, "'\\''");
                else
                    *q++ = *p;
            *q++ = '\'';
            *q = 0;
        }
        int st;
        char *out = sh(&st,
                       "'%s' --threads 1 explain '%s' %s %s --target-id %d --top 10 "
                       "--tokens 0 --json - 2>/dev/null",
                       tu_cli(), mp, prompt ? "-p" : "--ids", prompt ? arg : "1,403,407",
                       (int)jnum(jget(r, "target"), "id"));
        free(mp);
        assert_int_equal(st, 0);
        cJSON *e = cJSON_Parse(out);
        free(out);
        assert_non_null(e);
        assert_int_equal((int)jnum(r, "n_tokens"), cJSON_GetArraySize(jget(e, "tokens")));
        static const char *const same[] = {"model",        "lens",         "unit_lens",
                                           "scale",        "score",        "layers",
                                           "layer_totals", "query_layers", "query"};
        for (size_t f = 0; f < sizeof same / sizeof same[0]; f++)
            cmp_json(same[f], jget(r, same[f]), jget(e, same[f]), 0, &md);
        /* The target: the record's trace holds every position (for the
         * query neurons), so the model's logits come from a GEMM over all
         * positions instead of one row: model_prob may differ in the last
         * float bits (measured up to 8.3e-7 in model_logprob); the rest is exact. */
        double md_target = 0;
        cmp_json("target", jget(r, "target"), jget(e, "target"), 1e-5, &md_target);
        if (md_target > g_md_target) g_md_target = md_target;
        assert_string_equal(jget(jget(r, "target"), "text")->valuestring,
                            jget(jget(e, "target"), "text")->valuestring);
        assert_int_equal((int)jnum(jget(r, "target"), "id"), (int)jnum(jget(e, "target"), "id"));
        /* Lists: the record is compact {id, lpi}; the explain lists are the
         * top 10 (heads: all). */
        static const char *const lists[] = {"heads", "head_positions", "ffn_neurons",
                                            "attn_neurons"};
        for (int l = 0; l < 4; l++) {
            const cJSON *ra = jget(r, lists[l]), *ea = jget(e, lists[l]);
            const int ne = cJSON_GetArraySize(ea);
            assert_true(cJSON_GetArraySize(ra) >= ne);
            if (l >= 2) assert_int_equal(cJSON_GetArraySize(ra), 300);
            for (int k = 0; k < ne; k++) {
                const cJSON *x = cJSON_GetArrayItem(ra, k), *y = cJSON_GetArrayItem(ea, k);
                assert_string_equal(jget(x, "id")->valuestring, jget(y, "id")->valuestring);
                cmp_json(lists[l], jget(x, "lpi"), jget(y, "lpi"), 0, &md);
            }
        }
        /* The ablation's original probability is the model's own. */
        const cJSON *ab = jget(r, "ablation");
        assert_non_null(ab);
        assert_true(fabs(jnum(jget(ab, "original"), "prob") -
                         jnum(jget(r, "target"), "model_prob")) < 1e-5);
        assert_int_equal((int)jnum(ab, "k"), 10);
        assert_non_null(jget(jget(ab, "methods"), "coef-rank"));
        cJSON_Delete(e);
        cJSON_Delete(r);
        n_checked++;
    }
    printf("  %d records equal resid explain --json, maxdiff %.3g (target: %.3g)\n", n_checked, md,
           g_md_target);
    assert_int_equal(n_checked, N_GOOD);
    free_records(v, n);
}

static void test_bad_records(void **state) {
    (void)state;
    static const char *const want[] = {"invalid JSON", "not valid UTF-8", "is 3 tokens", "context",
                                       "out of range"};
    static const char *const ids[] = {NULL, "utf8", "multi", "long", "range"};
    for (int b = 0; b < 5; b++) {
        cJSON *r = record(g_bad[b]);
        const cJSON *e = jget(r, "error");
        assert_true(cJSON_IsString(e));
        if (!strstr(e->valuestring, want[b])) {
            print_error("record %d: error \"%s\" lacks \"%s\"\n", g_bad[b], e->valuestring,
                        want[b]);
            fail();
        }
        if (ids[b]) assert_string_equal(jget(r, "id")->valuestring, ids[b]);
        assert_null(jget(r, "layers"));
        cJSON_Delete(r);
    }
    /* The multi-token target shows its pieces as resid explain does. */
    {
        cJSON *r = record(5);
        char *mp = model_path();
        int st;
        char *ex = sh(&st,
                      "'%s' --threads 1 explain '%s' -p 'Tim had a big red' --target ' big ball' "
                      "2>&1 >/dev/null",
                      tu_cli(), mp);
        free(mp);
        assert_int_equal(st, 1);
        const char *a = strstr(ex, "is 3 tokens: "),
                   *b = strstr(jget(r, "error")->valuestring, "is 3 tokens: ");
        assert_non_null(a);
        assert_non_null(b);
        const size_t n = (size_t)(strchr(a, ';') - a);
        if (strncmp(a, b, n) || b[n] != ';') {
            print_error("explain: %.*s\nbatch:   %s\n", (int)n, a, b);
            fail();
        }
        printf("  multi-token target: %.*s\n", (int)n, b);
        free(ex);
        cJSON_Delete(r);
    }
    /* The run went on after them: the last record is a good one. */
    cJSON *r = record(g_n_lines - 1);
    assert_null(jget(r, "error"));
    assert_int_equal((int)jnum(r, "id"), 7);
    cJSON_Delete(r);
}

/* ------------------------------------------------------------------------- */
/* Resume                                                                    */
/* ------------------------------------------------------------------------- */

static void test_resume(void **state) {
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/crash.jsonl", g_dir);
    size_t n;
    uint8_t *full = tu_read_file(g_out, &n);
    /* A crash in the middle of the 5th record (a good one)... */
    size_t cut = 0;
    for (int nl = 0; cut < n && nl < 4; cut++)
        nl += full[cut] == '\n';
    cut += 200;
    assert_true(cut < n && full[cut - 1] != '\n');
    FILE *f = fopen(path, "wb");
    fwrite(full, 1, cut, f);
    fclose(f);
    free(full);
    /* ...refused without --resume, finished with it. */
    assert_int_equal(batch(path, "--ablate"), 2);
    assert_int_equal(batch(path, "--ablate --resume"), 0);
    assert_same_records(path, g_out);
    char *err = read_text(strcat(strcpy((char[700]){0}, path), ".err"));
    assert_non_null(strstr(err, "cut a partial last line"));
    assert_non_null(strstr(err, "4 of 11 prompts done"));
    free(err);
    /* Resuming a finished file adds nothing. */
    assert_int_equal(batch(path, "--ablate --resume"), 0);
    assert_same_records(path, g_out);
    printf("  resume after a cut at byte %zu: same %d records as the uninterrupted run\n", cut,
           g_n_lines);
}

/* SIGINT: the current record is finished, the file holds complete records
 * only, and --resume completes it. */
static void test_sigint(void **state) {
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/int.jsonl", g_dir);
    char *mp = model_path();
    int st;
    char *o = sh(&st,
                 "'%s' --threads 1 batch '%s' --in '%s' --out '%s' --ablate "
                 "--progress-every 0 2>'%s.err' & pid=$!; sleep 0.4; kill -INT $pid; wait $pid; "
                 "echo $?",
                 tu_cli(), mp, g_in, path, path);
    free(mp);
    const int rc = atoi(o);
    free(o);
    size_t n;
    uint8_t *b = tu_read_file(path, &n);
    assert_true(n == 0 || b[n - 1] == '\n');
    int lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += b[i] == '\n';
    free(b);
    if (rc == 0) {
        printf("  (the run finished before the signal; nothing interrupted)\n");
    } else {
        assert_int_equal(rc, 1);
        char *err = read_text(strcat(strcpy((char[700]){0}, path), ".err"));
        assert_non_null(strstr(err, "interrupted"));
        free(err);
        printf("  SIGINT after %d complete records; exit 1\n", lines);
    }
    assert_int_equal(batch(path, "--ablate --resume"), 0);
    assert_same_records(path, g_out);
}

/* ------------------------------------------------------------------------- */
/* Summarize                                                                 */
/* ------------------------------------------------------------------------- */

/* The group's records. */
static int group_records(const char *type, cJSON **out) {
    int n, k = 0;
    char **v = records(g_out, &n);
    for (int i = 0; i < n; i++) {
        cJSON *r = cJSON_Parse(v[i]);
        const cJSON *t = jget(r, "type");
        if (jget(r, "error") || (type && !(cJSON_IsString(t) && !strcmp(t->valuestring, type)))) {
            cJSON_Delete(r);
            continue;
        }
        out[k++] = r;
    }
    free_records(v, n);
    return k;
}

/* A record's neuron rows as summarize defines them, recomputed naively:
 * list "ffn", "attn" (L_H_N_J -> L_H_N), "query", or "value" (the top 300
 * of ffn + attn by LPI, sorted here, attention rows "a...", FFN "f..."),
 * the first 300 entries, duplicates dropped. Returns the count. */
typedef struct entry {
    char key[64];
    double lpi;
    int attn, order;
} entry;

static int cmp_entry(const void *pa, const void *pb) {
    const entry *a = pa, *b = pb;
    if (a->lpi != b->lpi) return a->lpi > b->lpi ? -1 : 1;
    if (a->attn != b->attn) return a->attn - b->attn; /* FFN first on ties */
    return a->order - b->order;
}

static int naive_rows(const cJSON *r, const char *list, char (*rows)[64]) {
    static entry e[1024];
    int n = 0;
    const bool value = !strcmp(list, "value");
    for (int part = 0; part < 2; part++) {
        const char *key = value                   ? (part ? "attn_neurons" : "ffn_neurons")
                          : part                  ? NULL
                          : !strcmp(list, "ffn")  ? "ffn_neurons"
                          : !strcmp(list, "attn") ? "attn_neurons"
                                                  : "query_neurons";
        if (!key) break;
        const bool attn = !strcmp(key, "attn_neurons");
        int k = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, jget(r, key)) {
            if (k++ >= 300) break;
            entry *y = &e[n];
            snprintf(y->key, sizeof y->key, "%s%s", value ? (attn ? "a" : "f") : "",
                     jget(x, "id")->valuestring);
            if (attn) *strrchr(y->key, '_') = 0;
            y->lpi = value ? jnum(x, "lpi") : -n; /* keep list order */
            y->attn = attn;
            y->order = n++;
        }
    }
    qsort(e, (size_t)n, sizeof *e, cmp_entry);
    int m = 0;
    for (int i = 0; i < n && i < 300; i++) {
        bool dup = false;
        for (int j = 0; j < m && !dup; j++)
            dup = !strcmp(rows[j], e[i].key);
        if (!dup) strcpy(rows[m++], e[i].key);
    }
    return m;
}

/* Histogram and sharing rate of one list over a group, naively. */
static void check_list(const cJSON *go, cJSON **recs, int n, const char *list, double *md) {
    static char rows[64][300][64];
    int nr[64], hist[5] = {0};
    for (int i = 0; i < n; i++) {
        nr[i] = naive_rows(recs[i], list, rows[i]);
        for (int k = 0; k < nr[i]; k++)
            hist[atoi(rows[i][k] + (!strcmp(list, "value")))]++;
    }
    char name[64];
    snprintf(name, sizeof name, "%s_layer_hist", list);
    const cJSON *h = jget(go, name);
    assert_int_equal(cJSON_GetArraySize(h), 5);
    for (int l = 0; l < 5; l++)
        assert_int_equal((int)cJSON_GetArrayItem(h, l)->valuedouble, hist[l]);
    double rate = 0;
    for (int i = 0; i < n; i++) {
        int hit = 0;
        for (int k = 0; k < nr[i]; k++) {
            int c = 0;
            for (int j = 0; j < n; j++)
                for (int q = 0; q < nr[j]; q++)
                    if (!strcmp(rows[j][q], rows[i][k])) {
                        c++;
                        break;
                    }
            hit += 2 * c > n;
        }
        rate += (double)hit / nr[i];
    }
    rate /= n;
    cmp_json(list, jget(jget(jget(go, "sharing"), list), "rate"),
             &(cJSON){.type = cJSON_Number, .valuedouble = rate}, 1e-12, md);
}

static void check_group(const cJSON *go) {
    const char *type = jget(go, "type")->valuestring;
    cJSON *recs[64];
    const bool overall = cJSON_IsTrue(jget(go, "overall"));
    assert_true(!overall || !strcmp(type, "*"));
    const int n = group_records(overall ? NULL : type, recs);
    assert_int_equal((int)jnum(go, "n"), n);
    /* Layer histogram of the FFN value neurons, importance sums. */
    int hist[5] = {0};
    double sa = 0, sf = 0, head0 = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *e;
        cJSON_ArrayForEach(e, jget(recs[i], "ffn_neurons"))
            hist[atoi(jget(e, "id")->valuestring)]++;
        sa += jnum(jget(recs[i], "layer_totals"), "attn_lpi");
        sf += jnum(jget(recs[i], "layer_totals"), "ffn_lpi");
    }
    for (int l = 0; l < 5; l++)
        assert_int_equal((int)cJSON_GetArrayItem(jget(go, "ffn_layer_hist"), l)->valuedouble,
                         hist[l]);
    double md = 0;
    cmp_json("attn_lpi_sum", jget(jget(go, "importance"), "attn_lpi_sum"),
             &(cJSON){.type = cJSON_Number, .valuedouble = sa}, 1e-9, &md);
    cmp_json("ffn_lpi_sum", jget(jget(go, "importance"), "ffn_lpi_sum"),
             &(cJSON){.type = cJSON_Number, .valuedouble = sf}, 1e-9, &md);
    /* Layer histograms and sharing of every list, the query neurons'
     * (Q3) among them, recomputed from the records. */
    static const char *const lists[] = {"ffn", "attn", "value", "query"};
    for (int li = 0; li < 4; li++)
        check_list(go, recs, n, lists[li], &md);
    /* Sharing (FFN): ids in more than half of the records. */
    double rate = 0;
    for (int i = 0; i < n; i++) {
        int hit = 0, k = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, jget(recs[i], "ffn_neurons")) {
            int c = 0;
            for (int j = 0; j < n; j++) {
                const cJSON *x;
                cJSON_ArrayForEach(
                    x, jget(recs[j], "ffn_neurons")) if (!strcmp(jget(x, "id")->valuestring,
                                                                 jget(e, "id")->valuestring)) {
                    c++;
                    break;
                }
            }
            hit += 2 * c > n;
            k++;
        }
        rate += (double)hit / k;
    }
    rate /= n;
    cmp_json("sharing", jget(jget(jget(go, "sharing"), "ffn"), "rate"),
             &(cJSON){.type = cJSON_Number, .valuedouble = rate}, 1e-12, &md);
    /* The best head by mean LPI. */
    const char *best = jget(cJSON_GetArrayItem(jget(go, "heads"), 0), "id")->valuestring;
    double best_mean = -INFINITY;
    for (int h = 0; h < 40; h++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            s += jnum(cJSON_GetArrayItem(jget(recs[i], "heads"), h), "lpi");
        if (s / n > best_mean) best_mean = s / n;
        char id[16];
        snprintf(id, sizeof id, "%d_%d", h / 8, h % 8);
        if (!strcmp(id, best))
            cmp_json("head mean", jget(cJSON_GetArrayItem(jget(go, "heads"), 0), "mean_lpi"),
                     &(cJSON){.type = cJSON_Number, .valuedouble = s / n}, 1e-12, &md);
    }
    assert_true(fabs(jnum(cJSON_GetArrayItem(jget(go, "heads"), 0), "mean_lpi") - best_mean) <
                1e-12);
    (void)head0;
    /* The ablation table: mean probability with the LPI top-10 zeroed. */
    double p = 0;
    for (int i = 0; i < n; i++)
        p += jnum(jget(jget(jget(recs[i], "ablation"), "methods"), "lpi"), "prob");
    cmp_json("ablation lpi prob", jget(jget(jget(go, "ablation"), "lpi"), "prob"),
             &(cJSON){.type = cJSON_Number, .valuedouble = p / n}, 1e-12, &md);
    for (int i = 0; i < n; i++)
        cJSON_Delete(recs[i]);
}

static void test_summarize(void **state) {
    (void)state;
    int st;
    char *out = sh(&st, "'%s' summarize '%s' --format json", tu_cli(), g_out);
    assert_int_equal(st, 0);
    cJSON *j = cJSON_Parse(out);
    free(out);
    assert_non_null(j);
    assert_int_equal((int)jnum(j, "n_records"), N_GOOD);
    assert_int_equal((int)jnum(j, "n_errors"), 5);
    const cJSON *go;
    int n_groups = 0;
    cJSON_ArrayForEach(go, jget(j, "groups")) {
        check_group(go);
        n_groups++;
    }
    assert_int_equal(n_groups, 5); /* *, name, pronoun, object, colour */

    /* CSV: every row is a number of the JSON. */
    out = sh(&st, "'%s' summarize '%s' --format csv", tu_cli(), g_out);
    assert_int_equal(st, 0);
    int rows = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        if (rows++ == 0) {
            assert_string_equal(line, "group,section,key,field,value");
            continue;
        }
        char g[64], sec[64], key[64], field[64];
        double v;
        assert_int_equal(
            sscanf(line, "%63[^,],%63[^,],%63[^,],%63[^,],%lf", g, sec, key, field, &v), 5);
        const cJSON *grp = NULL, *x;
        cJSON_ArrayForEach(x, jget(j, "groups")) if (!strcmp(jget(x, "type")->valuestring, g)) grp =
            x;
        assert_non_null(grp);
        double want;
        if (!strcmp(sec, "count"))
            want = jnum(grp, "n");
        else if (strstr(sec, "_layer_hist"))
            want = cJSON_GetArrayItem(jget(grp, sec), atoi(key))->valuedouble;
        else if (!strcmp(sec, "importance"))
            want = jnum(jget(grp, "importance"), key);
        else if (!strcmp(sec, "sharing") || !strcmp(sec, "ablation"))
            want = jnum(jget(jget(grp, sec), key), field);
        else {
            want = NAN;
            cJSON_ArrayForEach(x, jget(grp, sec)) if (!strcmp(jget(x, "id")->valuestring, key))
                want = jnum(x, "mean_lpi");
        }
        if (!(fabs(v - want) <= 1e-9 * (1 + fabs(want)))) {
            print_error("csv row %s: %.12g, JSON %.12g\n", line, v, want);
            fail();
        }
    }
    free(out);
    assert_true(rows > 100);

    /* Text: the group headings and the summed importance as printed. */
    out = sh(&st, "'%s' summarize '%s'", tu_cli(), g_out);
    assert_int_equal(st, 0);
    const cJSON *all = cJSON_GetArrayItem(jget(j, "groups"), 0);
    char want[256];
    snprintf(want, sizeof want, "== * (%d records)", N_GOOD);
    assert_non_null(strstr(out, want));
    snprintf(want, sizeof want, "summed importance: attention %+.4f, FFN %+.4f",
             jnum(jget(all, "importance"), "attn_lpi_sum"),
             jnum(jget(all, "importance"), "ffn_lpi_sum"));
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "coef-rank"));
    free(out);
    printf("  summarize: %d groups recomputed from the records; %d CSV rows match the JSON\n",
           n_groups, rows - 1);
    cJSON_Delete(j);
}

/* A type named "all" is a group of its own beside the overall "*". */
static void test_type_all(void **state) {
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/all.jsonl", g_dir);
    int n;
    char **v = records(g_out, &n);
    FILE *f = fopen(path, "wb");
    for (int i = 0; i < n; i++) {
        cJSON *r = cJSON_Parse(v[i]);
        const cJSON *t = jget(r, "type");
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "name"))
            cJSON_ReplaceItemInObjectCaseSensitive(r, "type", cJSON_CreateString("all"));
        char *line = cJSON_PrintUnformatted(r);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(r);
    }
    fclose(f);
    free_records(v, n);
    int st;
    char *out = sh(&st, "'%s' summarize '%s' --format json", tu_cli(), path);
    assert_int_equal(st, 0);
    cJSON *j = cJSON_Parse(out);
    free(out);
    int seen = 0;
    const cJSON *go;
    cJSON_ArrayForEach(go, jget(j, "groups")) {
        const char *t = jget(go, "type")->valuestring;
        if (!strcmp(t, "*")) {
            assert_true(cJSON_IsTrue(jget(go, "overall")));
            assert_int_equal((int)jnum(go, "n"), N_GOOD);
            seen |= 1;
        } else if (!strcmp(t, "all")) {
            assert_true(cJSON_IsFalse(jget(go, "overall")));
            assert_int_equal((int)jnum(go, "n"), 2);
            seen |= 2;
        }
    }
    assert_int_equal(seen, 3);
    cJSON_Delete(j);
}

/* The query neurons of a record against the library's Q3 on the same
 * prompt (the record with "ids"). */
static void test_query_neurons(void **state) {
    (void)state;
    cJSON *r = record(g_n_lines - 1);
    assert_int_equal((int)jnum(r, "id"), 7);
    resid_model *m = tu_open_model(STORIES);
    assert_non_null(m);
    static const int32_t ids[] = {1, 403, 407};
    resid_explain_request rq = resid_explain_request_defaults();
    rq.tokens = ids;
    rq.n_tokens = 3;
    rq.target = (int32_t)jnum(jget(r, "target"), "id");
    rq.top_k = 10;
    rq.neuron_top_k = 300;
    rq.n_unit_tokens = 0;
    rq.prompt_tokens = false;
    rq.compact = true;
    resid_error err;
    rs_explain_session *sess;
    assert_int_equal(rs_explain_session_new(m, &rq, true, &sess, &err), RESID_OK);
    resid_query_opts qo = resid_query_defaults();
    qo.n_attn = 30;
    qo.n_top = 300;
    resid_query_neurons *q;
    assert_int_equal(resid_query_neurons_new(rs_explain_session_explainer(sess), &qo, &q, &err),
                     RESID_OK);
    const cJSON *arr = jget(r, "query_neurons");
    assert_true(cJSON_IsArray(arr));
    assert_int_equal((int)jnum(jget(r, "query_neuron_info"), "n_attn"), q->n_attn);
    int k = 0, n_zero = 0;
    double md = 0;
    for (int32_t i = 0; i < q->n_query; i++) {
        if (q->query[i].score == 0) {
            n_zero++;
            continue;
        }
        const cJSON *e = cJSON_GetArrayItem(arr, k++);
        assert_non_null(e);
        char id[48];
        snprintf(id, sizeof id, "%d_%d", q->query[i].layer, q->query[i].index);
        assert_string_equal(jget(e, "id")->valuestring, id);
        const double d = fabs(jnum(e, "q") - q->query[i].score);
        if (d > md) md = d;
        if (!(d <= 1e-12 * fabs(q->query[i].score))) {
            print_error("%s: %.17g vs %.17g\n", id, jnum(e, "q"), q->query[i].score);
            fail();
        }
    }
    assert_int_equal(cJSON_GetArraySize(arr), k);
    printf("  query neurons of record %d: %d entries (%d zero scores left out) equal the "
           "library's Q3, maxdiff %.3g\n",
           g_n_lines - 1, k, n_zero, md);
    resid_query_neurons_free(q);
    rs_explain_session_free(sess);
    resid_model_free(m);
    cJSON_Delete(r);
}

/* --resume refuses an input that has changed since the output was started,
 * or other record options; --resume --force goes on. */
static void test_resume_changed(void **state) {
    (void)state;
    char path[600], meta[700], in2[600];
    snprintf(path, sizeof path, "%s/changed.jsonl", g_dir);
    snprintf(meta, sizeof meta, "%s.meta", g_out);
    snprintf(in2, sizeof in2, "%s/in2.jsonl", g_dir);
    int st;
    free(sh(&st, "cp '%s' '%s' && cp '%s' '%s.meta' && cp '%s' '%s' && echo '%s' >> '%s'", g_out,
            path, meta, path, g_in, in2, good[0], in2));
    assert_int_equal(st, 0);
    /* Other options, same input. */
    assert_int_equal(batch(path, "--resume"), 2);
    char *err = read_text(strcat(strcpy((char[700]){0}, path), ".err"));
    assert_non_null(strstr(err, "record options differ"));
    free(err);
    /* Another input. */
    char *mp = model_path();
    const char *fmt = "'%s' --threads 1 batch '%s' --in '%s' --out '%s' --ablate --resume %s "
                      "--progress-every 0 2>'%s.err'";
    free(sh(&st, fmt, tu_cli(), mp, in2, path, "", path));
    assert_int_equal(st, 2);
    err = read_text(strcat(strcpy((char[700]){0}, path), ".err"));
    assert_non_null(strstr(err, "input has changed"));
    free(err);
    free(sh(&st, fmt, tu_cli(), mp, in2, path, "--force", path));
    assert_int_equal(st, 0);
    free(mp);
    int n;
    char **v = records(path, &n);
    assert_int_equal(n, g_n_lines + 1);
    free_records(v, n);
    printf("  --resume refuses changed options and a changed input; --resume --force adds "
           "the new record\n");
}

/* ------------------------------------------------------------------------- */
/* MPI                                                                       */
/* ------------------------------------------------------------------------- */

static void test_mpi(void **state) {
    (void)state;
    int st;
    char *o =
        sh(&st, "command -v mpirun >/dev/null && grep -q MPI_Init '%s' && echo yes", tu_cli());
    const bool have = !strncmp(o, "yes", 3);
    free(o);
    if (!have) {
        printf("  skipped: %s was built without MPI or mpirun is missing\n", tu_cli());
        skip();
    }
    char path[600];
    snprintf(path, sizeof path, "%s/mpi.jsonl", g_dir);
    char *mp = model_path();
    o = sh(&st,
           "ASAN_OPTIONS=detect_leaks=0 mpirun --allow-run-as-root --oversubscribe -n 2 '%s' "
           "--threads 1 batch '%s' --in '%s' --out '%s' --ablate --progress-every 0 "
           "2>'%s.err' >/dev/null",
           tu_cli(), mp, g_in, path, path);
    free(o), free(mp);
    assert_int_equal(st, 0);
    assert_same_records(path, g_out);
    char *err = read_text(strcat(strcpy((char[700]){0}, path), ".err"));
    assert_non_null(strstr(err, "rank 1/2"));
    free(err);
    /* No part files are left behind. */
    o = sh(&st, "ls '%s' | grep -c part || true", g_dir);
    assert_int_equal(atoi(o), 0);
    free(o);
    printf("  mpirun -n 2: the same %d records as one process\n", g_n_lines);
}

int main(int argc, char **argv) {
    /* One thread in this process too (test_query_neurons compares with a
     * --threads 1 run exactly): OpenBLAS reads its thread count when it is
     * loaded, so set it and run again. */
    (void)argc;
    if (!getenv("OPENBLAS_NUM_THREADS")) {
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        setenv("OMP_NUM_THREADS", "1", 1);
        execv("/proc/self/exe", argv);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_match_explain),
        cmocka_unit_test(test_bad_records),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_sigint),
        cmocka_unit_test(test_summarize),
        cmocka_unit_test(test_type_all),
        cmocka_unit_test(test_query_neurons),
        cmocka_unit_test(test_resume_changed),
        cmocka_unit_test(test_mpi),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
