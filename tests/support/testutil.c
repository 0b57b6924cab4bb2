#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_models_dir(void) {
    const char *env = getenv("RESID_MODELS");
    return (env && *env) ? env : RESID_MODELS_DEFAULT;
}

char *tu_model_path(const char *rel) {
    const char *dir = tu_models_dir();
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, rel);
    if (access(p, R_OK) != 0) {
        print_error("fixture missing: %s (set RESID_MODELS to the models folder)\n", p);
        fail();
    }
    return p;
}

uint8_t *tu_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_error("cannot open %s\n", path);
        fail();
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    fclose(f);
    if (size) *size = (size_t)n;
    return buf;
}

cJSON *tu_load_json(const char *rel) {
    char *p = tu_model_path(rel);
    size_t n;
    uint8_t *buf = tu_read_file(p, &n);
    cJSON *j = cJSON_ParseWithLength((const char *)buf, n);
    if (!j) {
        print_error("cannot parse JSON %s\n", p);
        fail();
    }
    free(buf);
    free(p);
    return j;
}

cJSON *tu_json_get(const cJSON *o, const char *name) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v) {
        char *s = o ? cJSON_PrintUnformatted(o) : NULL;
        print_error("missing field \"%s\" in %.300s\n", name, s ? s : "(null)");
        free(s);
        fail();
    }
    return v;
}

double tu_json_num(const cJSON *o, const char *name) {
    cJSON *v = tu_json_get(o, name);
    if (!cJSON_IsNumber(v)) {
        print_error("field \"%s\" is not a number\n", name);
        fail();
    }
    return v->valuedouble;
}

float *tu_load_f32(const char *rel, size_t *n) {
    char *p = tu_model_path(rel);
    size_t size;
    uint8_t *buf = tu_read_file(p, &size);
    free(p);
    *n = size / sizeof(float);
    return (float *)buf;
}

resid_model *tu_open_model(const char *rel) {
    char *p = tu_model_path(rel);
    resid_model *m = NULL;
    resid_error err;
    if (resid_model_open(p, NULL, &m, &err) != RESID_OK) {
        print_error("resid_model_open(%s): %s\n", p, err.msg);
        fail();
    }
    free(p);
    return m;
}

const char *const tu_explain_stages[TU_N_EXPLAIN_STAGES] = {
    "forward pass", "contexts",     "layer table",
    "heads",        "head x positions and neurons", "query layers",
    "scoring-method comparison", "report"};

const tu_fixture tu_fixtures[TU_N_FIXTURES] = {
    {"tinyllamas/stories260K.bin", {1, 403, 407, 261, 378, 432, 383, 286, 261, 376}, 10},
    {"tiny-gpt2-stories", {7454, 2402, 257, 640, 11, 612, 373}, 7},
    {"tiny-random-llama-2", {1, 42, 99, 7}, 4},
    {"quant/tiny-llama-256.q8_0.gguf", {1, 403, 407, 261, 378}, 5},
};

resid_trace *tu_trace(resid_model *m, const int32_t *ids, int n, uint32_t cap,
                      resid_positions pos) {
    resid_trace_opts o = resid_trace_defaults();
    o.capture = cap;
    o.positions = pos;
    resid_trace *tr = NULL;
    resid_error err;
    if (resid_forward(m, ids, n, &o, &tr, &err) != RESID_OK) {
        print_error("resid_forward: %s\n", err.msg);
        fail();
    }
    return tr;
}

resid_explainer *tu_explainer(const resid_model *m, const resid_trace *tr,
                              const resid_explain_opts *eo) {
    resid_explainer *e = NULL;
    resid_error err;
    if (resid_explainer_new(m, tr, eo, &e, &err) != RESID_OK) {
        print_error("resid_explainer_new: %s\n", err.msg);
        fail();
    }
    return e;
}

bool tu_big_vocab(const resid_model *m) { return resid_model_get_info(m)->n_vocab > 10000; }

static const resid_score *g_all;
static resid_rank_key g_key;
static bool g_bottom;

static double key_of(const resid_score *s) {
    switch (g_key) {
    case RESID_KEY_PROB_INC: return s->prob_inc;
    case RESID_KEY_LOGIT: return s->bs_target;
    case RESID_KEY_CONTRAST: return s->contrast;
    default: return s->lpi;
    }
}

static int cmp_ref(const void *pa, const void *pb) {
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    double ka = key_of(&g_all[a]), kb = key_of(&g_all[b]);
    if (ka != kb) return (g_bottom ? ka < kb : ka > kb) ? -1 : 1;
    return a < b ? -1 : a > b;
}

int64_t *tu_reference_order(const resid_score *all, int64_t n, resid_rank_key key, bool bottom) {
    int64_t *ord = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) ord[i] = i;
    g_all = all, g_key = key, g_bottom = bottom;
    qsort(ord, (size_t)n, sizeof *ord, cmp_ref);
    return ord;
}

int64_t tu_check_rank(resid_explainer *e, const resid_rank_opts *o, const resid_score *all,
                      const int64_t *ord, int64_t n, const char *what) {
    resid_score *got;
    int64_t ng;
    resid_rank_stats st;
    resid_error err;
    if (resid_rank(e, o, &got, &ng, &st, &err) != RESID_OK) {
        print_error("%s: resid_rank: %s\n", what, err.msg);
        fail();
    }
    const int64_t k = o->k < n ? o->k : n;
    assert_int_equal(ng, k);
    assert_int_equal(st.k, k);
    assert_int_equal(st.n_units, n);
    assert_int_equal(st.clamped, o->k > n);
    for (int64_t i = 0; i < k; i++) {
        const resid_score *want = &all[ord[i]];
        if (memcmp(&got[i].unit, &want->unit, sizeof want->unit) != 0 ||
            memcmp(&got[i].lpi, &want->lpi, sizeof(double)) != 0 ||
            memcmp(&got[i].bs_target, &want->bs_target, sizeof(double)) != 0 ||
            memcmp(&got[i].prob_inc, &want->prob_inc, sizeof(double)) != 0) {
            char a[64], b[64];
            resid_unit_format(&got[i].unit, a, sizeof a);
            resid_unit_format(&want->unit, b, sizeof b);
            print_error("%s: %s K=%lld %s #%lld: got %s %.17g, want %s %.17g\n", what,
                        resid_unit_kind_name(o->kind), (long long)o->k,
                        o->bottom ? "bottom" : "top", (long long)i, a, got[i].lpi, b,
                        want->lpi);
            fail();
        }
    }
    free(got);
    return st.n_exact;
}

tu_setup tu_setup_open(const tu_fixture *f, resid_positions pos, const resid_explain_opts *eo) {
    tu_setup s = {tu_open_model(f->path), NULL, NULL};
    s.tr = tu_trace(s.m, f->ids, f->n, RESID_CAP_ALL, pos);
    s.e = tu_explainer(s.m, s.tr, eo);
    return s;
}

void tu_setup_close(tu_setup *s) {
    resid_explainer_free(s->e);
    resid_trace_free(s->tr);
    resid_model_free(s->m);
}

int32_t tu_tokenize(const resid_model *m, const char *text, int32_t **ids) {
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    assert_non_null(tok);
    resid_encode_opts eo = resid_encode_defaults(tok);
    int32_t n = 0;
    resid_error err;
    if (resid_tokenize(tok, text, -1, &eo, ids, &n, &err) != RESID_OK) {
        print_error("tokenize \"%s\": %s\n", text, err.msg);
        fail();
    }
    return n;
}

const char *tu_cli(void) {
    const char *env = getenv("RESID_CLI");
    return (env && *env) ? env : RESID_BINARY_DIR "/resid";
}

double tu_max_abs_diff(const float *a, const float *b, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

void tu_assert_close(const char *what, const float *a, const float *b,
                     size_t n, double tol) {
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(d)) d = INFINITY;
        if (d > worst) {
            worst = d;
            wi = i;
        }
    }
    printf("  %-48s maxdiff %.3g (tol %.1g)\n", what, worst, tol);
    if (!(worst <= tol)) {
        print_error("%s: |diff| %.6g > %.3g at %zu (%.9g vs %.9g)\n", what,
                    worst, tol, wi, (double)a[wi], (double)b[wi]);
        fail();
    }
}

char *tu_write_temp(const char *name, const void *data, size_t size) {
    const char *tmp = getenv("TMPDIR");
    if (!tmp) tmp = "/tmp";
    size_t n = strlen(tmp) + strlen(name) + 32;
    char *p = malloc(n);
    snprintf(p, n, "%s/resid-%d-%s", tmp, (int)getpid(), name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    if (size) assert_int_equal(fwrite(data, 1, size, f), size);
    fclose(f);
    return p;
}

char *tu_run(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    size_t r;
    while ((r = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += r;
        if (cap - len < 1024) out = realloc(out, cap *= 2);
    }
    out[len] = 0;
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

char *tu_cli_line(const char *cmd, const char *model_rel, const char *prompt, const char *args,
                  bool merge_stderr) {
    char *exe = tu_sh_quote(tu_cli());
    char *path = tu_model_path(model_rel);
    char *mq = tu_sh_quote(path);
    char *pq = prompt ? tu_sh_quote(prompt) : NULL;
    size_t n = strlen(exe) + strlen(cmd) + strlen(mq) + (pq ? strlen(pq) : 0) + strlen(args) + 64;
    char *line = malloc(n);
    assert_non_null(line);
    snprintf(line, n, "%s %s %s %s%s %s %s", exe, cmd, mq, pq ? "-p " : "", pq ? pq : "", args,
             merge_stderr ? "2>&1" : "2>/dev/null");
    free(exe), free(path), free(mq), free(pq);
    return line;
}

cJSON *tu_run_json(const char *line) {
    int st;
    char *out = tu_run(line, &st);
    if (st != 0) {
        print_error("%s: exit %d, output: %.500s\n", line, st, out);
        fail();
    }
    cJSON *j = cJSON_Parse(out);
    if (!j) {
        print_error("%s: output is not JSON: %.500s\n", line, out);
        fail();
    }
    free(out);
    return j;
}

char *tu_sh_quote(const char *s) {
    size_t n = 3;
    for (const char *p = s; *p; p++) n += *p == '\'' ? 4 : 1;
    char *q = malloc(n), *o = q;
    assert_non_null(q);
    *o++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(o, "'\\''", 4);
            o += 4;
        } else {
            *o++ = *p;
        }
    }
    *o++ = '\'';
    *o = 0;
    return q;
}
