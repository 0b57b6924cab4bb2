/*
 * cmd_serve.c - `resid serve MODEL`: the explain views in the browser, live.
 * A small HTTP server (libmicrohttpd, linked by the CLI only) serving the
 * front end compiled into the library (web/) and a JSON API (docs/serve.md):
 *
 *   GET  /                 the page;   GET /app.css, /app.js
 *   GET  /api/info         the model
 *   GET  /api/progress     what the running computation is doing: {busy,
 *                           endpoint?, request?, stage?, step?, n_steps?,
 *                           elapsed_s?, waiting}; never waits for it
 *   POST /api/explain      {prompt|ids, target?|target_id?, vs?|vs_id?,
 *                           lens?, top?, compare_scores?}: the explain
 *                           report + lens_grid, head_details,
 *                           neuron_details (+ score_compare)
 *   POST /api/head         the same + {layer, head}
 *   POST /api/neuron       {layer, neuron} (or {layer, head, dim, pos} with
 *                           a prompt): tokens, and with a prompt the query
 *                           layers and query neurons
 *   POST /api/ablate       {prompt|ids, units: ["n:3_17", "h:2_1", ...] or
 *                           [{"kind", "layer", "head"?, "index"?, "pos"?}],
 *                           mode?: "zero" | "replace" (+ clean|clean_ids,
 *                           same length) | "mean" (+ mean_prompts, at most
 *                           16) | "add" (+ scale?, layers?: each unit's own
 *                           vector at t*), positions?, target?|target_id?}:
 *                           the target before/after the edits (the fields
 *                           of `resid ablate --json`, same library calls
 *                           through cli/intervene.c)
 *
 * Limits: request body (--max-body), prompt tokens (--max-tokens; for
 * /api/ablate's clean and mean prompts too), computations waiting for the
 * running one (--max-queue; more get 429), a thread per connection, at
 * most 64 connections (16 per client address), a 30 s connection timeout,
 * so a slow or stalled client cannot hold the others. Computations are
 * serialised by one mutex, the compute lock (the machine's cores already
 * run each one in parallel); a request waiting for it holds only its own
 * connection's thread, so /api/progress and the static files answer while
 * computations run and queue. Errors are JSON {"error": msg} with a 4xx/5xx
 * status. Binds to 127.0.0.1 by default; a non-loopback --host also needs
 * --allow-remote, and when bound to loopback any non-loopback peer is
 * refused.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "common.h"
#include "intervene.h"
#include "output/html.h"
#include "output/report.h"
#include "output/web_assets.h"

static const char help[] =
    "Usage: resid serve MODEL [--host ADDR] [--port N] [OPTIONS]\n"
    "\n"
    "Serves the explain views of MODEL in the browser: type a prompt, pick a\n"
    "target or a contrast token, change the lens, click heads and neurons.\n"
    "JSON API and limits: docs/serve.md.\n"
    "\n"
    "Options:\n"
    "      --host ADDR      IPv4 address to listen on (default 127.0.0.1). An\n"
    "                       address other than loopback also needs\n"
    "                       --allow-remote: the server has no authentication\n"
    "      --allow-remote   allow a non-loopback --host\n"
    "      --port N         TCP port (default 8080; 0 = any free port, printed)\n"
    "      --max-tokens N   longest prompt accepted, in tokens (default 256)\n"
    "      --max-body N     largest request body, bytes (default 65536)\n"
    "      --timeout S      idle connection timeout, seconds (default 30)\n"
    "      --max-queue N    computations that may wait for the running one\n"
    "                       (default 8); more get 429 \"server busy\"\n" CLI_HELP_GLOBAL "\n"
    "Example:\n"
    "  resid serve $RESID_MODELS/tinyllamas/stories260K.bin --port 8080\n"
    "  # then open http://127.0.0.1:8080/\n";

enum {
    OPT_HOST = 300,
    OPT_PORT,
    OPT_ALLOW_REMOTE,
    OPT_MAX_TOKENS,
    OPT_MAX_BODY,
    OPT_TIMEOUT,
    OPT_MAX_QUEUE,
};

typedef struct serve_opts {
    const char *host;
    long port, max_tokens, max_body, timeout, max_queue;
    bool allow_remote;
} serve_opts;

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    serve_opts *o = user;
    switch (opt) {
    case OPT_HOST: o->host = arg; return CLI_CONTINUE;
    case OPT_ALLOW_REMOTE: o->allow_remote = true; return CLI_CONTINUE;
    case OPT_PORT: return cli_parse_int(cmd, "--port", arg, 0, 65535, &o->port);
    case OPT_MAX_TOKENS: return cli_parse_int(cmd, "--max-tokens", arg, 1, 1 << 20, &o->max_tokens);
    case OPT_MAX_BODY: return cli_parse_int(cmd, "--max-body", arg, 64, 1 << 26, &o->max_body);
    case OPT_TIMEOUT: return cli_parse_int(cmd, "--timeout", arg, 1, 3600, &o->timeout);
    case OPT_MAX_QUEUE: return cli_parse_int(cmd, "--max-queue", arg, 0, 1024, &o->max_queue);
    }
    return cli_usage_error(cmd, "unknown option");
}

/* What the computation that holds the compute lock is doing, for GET
 * /api/progress. Guarded by server.prog_mu, held only for a few stores or
 * loads: the compute lock is held for the whole computation. */
typedef struct progress {
    bool busy;            /* a computation holds the compute lock */
    const char *endpoint; /* its endpoint: "explain", "head", "neuron", "ablate" */
    char request[41];     /* its client's X-Resid-Request id, or "" */
    char stage[48];       /* the stage begun last, or "" before the first */
    int step, n_steps;    /* that stage's number (1-based) and the request's
                             stage count, numbered over the whole request */
    double t0;            /* CLOCK_MONOTONIC seconds when it took the lock */
    int waiting;          /* requests blocked on the compute lock */
} progress;

typedef struct server {
    resid_model *m;
    const resid_model_info *info;
    const resid_tokenizer *tok;
    serve_opts o;
    bool loopback;
    pthread_mutex_t lock;    /* the compute lock: one computation at a time */
    pthread_mutex_t prog_mu; /* guards prog */
    progress prog;
} server;

/* One request's body, accumulated across calls. */
typedef struct conn {
    char *body;
    size_t len;
    bool too_big;
} conn;

/* ------------------------------------------------------------------------- */
/* Responses                                                                 */
/* ------------------------------------------------------------------------- */

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned status, const char *mime,
                                void *buf, size_t len, bool owned) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, buf, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned) free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", mime);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; style-src 'self' 'unsafe-inline'");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) {
        static char oom[] = "{\"error\":\"out of memory\"}";
        return send_buf(c, 500, "application/json", oom, sizeof oom - 1, false);
    }
    return send_buf(c, status, "application/json", text, strlen(text), true);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *j = cJSON_CreateObject();
    if (j) {
        cJSON_AddStringToObject(j, "error", msg);
        cJSON_AddNumberToObject(j, "status", status);
    }
    return send_json(c, status, j);
}

/* The HTTP status for a library error: bad input is the client's (400),
 * the rest is ours (500). */
static unsigned lib_status(resid_status s) {
    switch (s) {
    case RESID_E_ARG:
    case RESID_E_TOKENIZE:
    case RESID_E_CONTEXT: return 400;
    default: return 500;
    }
}

/* ------------------------------------------------------------------------- */
/* The compute lock and the progress of its holder                           */
/* ------------------------------------------------------------------------- */

static double mono_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The id a client gave its request (header X-Resid-Request: up to 40 of
 * [A-Za-z0-9_-], anything else is ignored), so a page can tell its own
 * computation from another's in /api/progress. */
static void request_id(struct MHD_Connection *c, char out[41]) {
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Resid-Request");
    out[0] = 0;
    size_t n =
        v ? strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") : 0;
    if (!v || n == 0 || n > 40 || v[n]) return;
    memcpy(out, v, n + 1);
}

/* Takes the compute lock for a computation of `endpoint` (a static
 * string), counted in `waiting` while it waits; the progress then shows
 * it, with no stage until compute_stage. compute_end releases it. Returns
 * false, taking nothing, when --max-queue computations already wait. */
static bool compute_begin(server *s, struct MHD_Connection *c, const char *endpoint) {
    progress *p = &s->prog;
    char rid[41];
    request_id(c, rid);
    pthread_mutex_lock(&s->prog_mu);
    if (p->busy && p->waiting >= s->o.max_queue) {
        pthread_mutex_unlock(&s->prog_mu);
        return false;
    }
    p->waiting++;
    pthread_mutex_unlock(&s->prog_mu);
    pthread_mutex_lock(&s->lock);
    pthread_mutex_lock(&s->prog_mu);
    p->waiting--;
    p->busy = true;
    p->endpoint = endpoint;
    memcpy(p->request, rid, sizeof rid);
    p->stage[0] = 0;
    p->step = p->n_steps = 0;
    p->t0 = mono_s();
    pthread_mutex_unlock(&s->prog_mu);
    return true;
}

/* The 429 of a computation refused by compute_begin. */
static enum MHD_Result send_busy(server *s, struct MHD_Connection *c, const char *what) {
    return send_error(c, 429,
                      "%s: the server is busy: one computation is running and %ld waiting, "
                      "the most --max-queue allows; try again shortly",
                      what, s->o.max_queue);
}

/* The holder of the compute lock begins stage `step` of `n_steps`. */
static void compute_stage(server *s, const char *stage, int step, int n_steps) {
    progress *p = &s->prog;
    pthread_mutex_lock(&s->prog_mu);
    snprintf(p->stage, sizeof p->stage, "%s", stage);
    p->step = step;
    p->n_steps = n_steps;
    pthread_mutex_unlock(&s->prog_mu);
}

static void compute_end(server *s) {
    progress *p = &s->prog;
    pthread_mutex_lock(&s->prog_mu);
    p->busy = false;
    p->endpoint = NULL;
    p->request[0] = p->stage[0] = 0;
    p->step = p->n_steps = 0;
    pthread_mutex_unlock(&s->prog_mu);
    pthread_mutex_unlock(&s->lock);
}

/* The library's progress callbacks (resid_progress_fn) for one request of
 * several phases: the explain report's stages, then rs_web_extras' three.
 * Steps are offset so the request's stages are numbered 1..n in a row. */
typedef struct phased {
    server *s;
    int before, after; /* stages of the request before / after this phase */
    int n_phase;       /* this phase's stage count, as the library last said */
} phased;

/* rs_web_extras' stages (src/output/html.h): lens grid, head details,
 * neuron details. */
enum { WEB_EXTRA_STAGES = 3 };

static void on_progress(void *user, const char *stage, int step, int n_steps) {
    phased *ph = user;
    ph->n_phase = n_steps;
    compute_stage(ph->s, stage, ph->before + step, ph->before + n_steps + ph->after);
}

/* GET /api/progress: a snapshot under the progress mutex only. */
static enum MHD_Result api_progress(server *s, struct MHD_Connection *c) {
    pthread_mutex_lock(&s->prog_mu);
    const progress v = s->prog;
    pthread_mutex_unlock(&s->prog_mu);
    cJSON *j = cJSON_CreateObject();
    if (j) {
        cJSON_AddBoolToObject(j, "busy", v.busy);
        if (v.busy) {
            cJSON_AddStringToObject(j, "endpoint", v.endpoint);
            if (v.request[0]) cJSON_AddStringToObject(j, "request", v.request);
            if (v.stage[0]) {
                cJSON_AddStringToObject(j, "stage", v.stage);
                cJSON_AddNumberToObject(j, "step", v.step);
                cJSON_AddNumberToObject(j, "n_steps", v.n_steps);
            }
            cJSON_AddNumberToObject(j, "elapsed_s", floor((mono_s() - v.t0) * 1e3 + 0.5) / 1e3);
        }
        cJSON_AddNumberToObject(j, "waiting", v.waiting);
    }
    return send_json(c, 200, j);
}

/* ------------------------------------------------------------------------- */
/* Requests                                                                  */
/* ------------------------------------------------------------------------- */

/* A parsed prompt request. */
typedef struct req {
    int32_t *ids;
    int32_t n;
    int32_t target, contrast;
    resid_lens lens;
    long top;
} req;

static const cJSON *field(const cJSON *b, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(b, name);
}

/* An integer field in [lo, hi]; absent: dflt. false with msg on error. */
static bool int_field(const cJSON *b, const char *name, long lo, long hi, long dflt, long *out,
                      char *msg, size_t n) {
    const cJSON *v = field(b, name);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return true;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        snprintf(msg, n, "\"%s\" must be an integer in [%ld, %ld]", name, lo, hi);
        return false;
    }
    *out = (long)v->valuedouble;
    return true;
}

/* The tokens of one prompt, given as text (`text`, tokenized as `resid
 * ablate -p` does: BOS as the tokenizer says) or as ids (`ids`, taken as
 * given); the other is NULL. `tname`/`iname` name the fields and `label`
 * the prompt in messages ("the prompt", "the clean prompt"). Checked
 * against --max-tokens (413) and the model's context (400). Returns 0 or
 * the HTTP status with msg filled; *out is malloc'd either way (may be
 * NULL), the caller frees it. */
static unsigned prompt_tokens(server *s, const cJSON *text, const cJSON *ids, const char *tname,
                              const char *iname, const char *label, int32_t **out, int32_t *n_out,
                              char *msg, size_t n) {
    const int32_t V = s->info->n_vocab;
    *out = NULL;
    *n_out = 0;
    resid_error err;
    if (text) {
        if (!cJSON_IsString(text)) return snprintf(msg, n, "\"%s\" must be a string", tname), 400;
        if (!s->tok)
            return snprintf(msg, n, "the model has no tokenizer: send \"%s\" (token ids)",
                            iname ? iname : tname),
                   400;
        resid_encode_opts eo = resid_encode_defaults(s->tok);
        if (resid_tokenize(s->tok, text->valuestring, -1, &eo, out, n_out, &err) != RESID_OK)
            return snprintf(msg, n, "%s: %s", label, err.msg), 400;
    } else {
        if (!cJSON_IsArray(ids))
            return snprintf(msg, n, "\"%s\" must be an array of token ids", iname), 400;
        const int na = cJSON_GetArraySize(ids);
        if (na > s->o.max_tokens)
            return snprintf(msg, n,
                            "%s is %d tokens; this server accepts at most %ld "
                            "(--max-tokens)",
                            label, na, s->o.max_tokens),
                   413;
        if (!(*out = malloc((size_t)(na + 1) * sizeof **out)))
            return snprintf(msg, n, "out of memory"), 500;
        const cJSON *e;
        cJSON_ArrayForEach(e, ids) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= V ||
                e->valuedouble != floor(e->valuedouble))
                return snprintf(msg, n, "\"%s\"[%d] is not a token id in [0, %d)", iname, *n_out,
                                V),
                       400;
            (*out)[(*n_out)++] = (int32_t)e->valuedouble;
        }
    }
    if (*n_out < 1) return snprintf(msg, n, "%s is empty", label), 400;
    if (*n_out > s->o.max_tokens)
        return snprintf(msg, n,
                        "%s is %d tokens; this server accepts at most %ld "
                        "(--max-tokens)",
                        label, *n_out, s->o.max_tokens),
               413;
    if (*n_out > s->info->n_ctx)
        return snprintf(msg, n, "%s is %d tokens; the model's context is %d", label, *n_out,
                        s->info->n_ctx),
               400;
    return 0;
}

/* Parses {prompt|ids, target?, target_id?, vs?, vs_id?, lens?, top?}.
 * Returns 0 or the HTTP status with msg filled. */
static unsigned parse_req(server *s, const cJSON *b, bool need_prompt, req *r, char *msg,
                          size_t n) {
    memset(r, 0, sizeof *r);
    r->target = r->contrast = -1;
    const int32_t V = s->info->n_vocab;
    const cJSON *p = field(b, "prompt"), *ids = field(b, "ids");
    if (p && ids) return snprintf(msg, n, "give \"prompt\" or \"ids\", not both"), 400;
    if (!p && !ids) {
        if (need_prompt)
            return snprintf(msg, n, "missing \"prompt\" (text) or \"ids\" (array)"), 400;
        return 0;
    }
    unsigned code =
        prompt_tokens(s, p, p ? NULL : ids, "prompt", "ids", "the prompt", &r->ids, &r->n, msg, n);
    if (code) return code;
    resid_error err;
    long v;
    if (!int_field(b, "target_id", 0, V - 1, -1, &v, msg, n)) return 400;
    r->target = (int32_t)v;
    if (!int_field(b, "vs_id", 0, V - 1, -1, &v, msg, n)) return 400;
    r->contrast = (int32_t)v;
    if (!int_field(b, "top", 1, 100, 10, &r->top, msg, n)) return 400;
    static const char *const tn[2] = {"target", "vs"};
    int32_t *const to[2] = {&r->target, &r->contrast};
    for (int i = 0; i < 2; i++) {
        const cJSON *t = field(b, tn[i]);
        if (!t || cJSON_IsNull(t) || (cJSON_IsString(t) && !t->valuestring[0])) continue;
        if (!cJSON_IsString(t)) return snprintf(msg, n, "\"%s\" must be a string", tn[i]), 400;
        if (!s->tok)
            return snprintf(msg, n, "the model has no tokenizer: use \"%s_id\"", tn[i]), 400;
        if (rs_report_resolve_token(s->tok, i ? "--vs" : "--target", t->valuestring,
                                    r->ids[r->n - 1], to[i], &err) != RESID_OK)
            return snprintf(msg, n, "%s", err.msg), 400;
    }
    const cJSON *l = field(b, "lens");
    if (l && !cJSON_IsNull(l)) {
        if (!cJSON_IsString(l) || resid_lens_parse(l->valuestring, &r->lens, &err) != RESID_OK)
            return snprintf(msg, n, "\"lens\" must be \"paper\", \"exact\" or \"logit-lens\""), 400;
    }
    return 0;
}

static enum MHD_Result api_explain(server *s, struct MHD_Connection *c, const cJSON *b,
                                   const char *what) {
    char msg[600];
    req r;
    unsigned code = parse_req(s, b, true, &r, msg, sizeof msg);
    if (code) {
        free(r.ids);
        return send_error(c, code, "%s: %s", what, msg);
    }
    long layer = -1, head = -1;
    if (!strcmp(what, "head") &&
        (!int_field(b, "layer", 0, INT32_MAX, -1, &layer, msg, sizeof msg) ||
         !int_field(b, "head", 0, INT32_MAX, -1, &head, msg, sizeof msg) || layer < 0 ||
         head < 0)) {
        free(r.ids);
        return send_error(c, 400, "head: %s",
                          layer < 0 || head < 0 ? "needs \"layer\" and \"head\"" : msg);
    }
    /* explain: "compare_scores": true adds the scoring-method comparison */
    const cJSON *cmp = field(b, "compare_scores");
    if (cmp && !cJSON_IsNull(cmp) && !cJSON_IsBool(cmp)) {
        free(r.ids);
        return send_error(c, 400, "%s: \"compare_scores\" must be true or false", what);
    }
    const bool compare = cJSON_IsTrue(cmp);
    resid_error err;
    resid_status st = RESID_OK;
    cJSON *out = NULL;
    rs_web_opts wo = rs_web_defaults();
    if (!compute_begin(s, c, what)) {
        free(r.ids);
        return send_busy(s, c, what);
    }
    if (!strcmp(what, "explain")) {
        /* the report's stages, then the extras', numbered in a row */
        phased ph = {s, 0, WEB_EXTRA_STAGES, 0};
        resid_explain_request rq = resid_explain_request_defaults();
        rq.progress = on_progress;
        rq.progress_user = &ph;
        rq.tokens = r.ids;
        rq.n_tokens = r.n;
        rq.target = r.target;
        rq.contrast = r.contrast;
        rq.lens = r.lens;
        rq.top_k = r.top;
        rq.compare_scores = compare;
        /* one computation for the report and its extra views */
        rs_explain_session *sess = NULL;
        rs_web_ctx *wc = NULL;
        st = rs_explain_session_new(s->m, &rq, true, &sess, &err);
        if (st == RESID_OK) st = rs_explain_session_json(sess, &out, &err);
        if (st == RESID_OK) st = rs_web_ctx_from_session(s->m, sess, &wc, &err);
        ph.before = ph.n_phase, ph.after = 0;
        wo.progress = on_progress;
        wo.progress_user = &ph;
        if (st == RESID_OK) st = rs_web_extras(wc, out, &wo, &err);
        rs_web_ctx_free(wc);
        rs_explain_session_free(sess);
    } else {
        rs_web_ctx *wc;
        compute_stage(s, "forward pass", 1, 2);
        st = rs_web_ctx_new(s->m, r.ids, r.n, r.target, r.contrast, r.lens, &wc, &err);
        compute_stage(s, "head details", 2, 2);
        if (st == RESID_OK) st = rs_web_head(wc, (int32_t)layer, (int32_t)head, &wo, &out, &err);
        rs_web_ctx_free(wc);
    }
    compute_end(s);
    free(r.ids);
    if (st != RESID_OK) {
        cJSON_Delete(out);
        return send_error(c, lib_status(st), "%s: %s", what, err.msg);
    }
    return send_json(c, 200, out);
}

/* Longest unit list and most mean prompts /api/ablate takes. */
enum { MAX_ABLATE_UNITS = 4096, MAX_MEAN_PROMPTS = 16 };

/* One unit of /api/ablate: an id string (the `resid ablate --units`
 * syntax) or {"kind": "ffn-neuron"|"head"|..., "layer", "head", "index"
 * (or "neuron"/"dim"), "pos"}; checked like the CLI's ids. */
static bool ablate_unit(server *s, const cJSON *e, const char *kind, int32_t T, resid_unit *u,
                        char *msg, size_t n) {
    char id[96];
    if (cJSON_IsString(e)) {
        snprintf(id, sizeof id, "%s", e->valuestring);
        if (strlen(e->valuestring) >= sizeof id) {
            snprintf(msg, n, "unit id too long");
            return false;
        }
    } else if (cJSON_IsObject(e)) {
        const cJSON *k = field(e, "kind");
        if (!cJSON_IsString(k)) {
            snprintf(msg, n, "a unit object needs \"kind\" (e.g. \"ffn-neuron\", \"head\")");
            return false;
        }
        int kk = -1;
        for (int i = 0; i < RESID_UNIT_KIND_COUNT; i++)
            if (!strcmp(k->valuestring, resid_unit_kind_name((resid_unit_kind)i))) kk = i;
        if (kk < 0) {
            snprintf(msg, n, "unit kind \"%.40s\" unknown", k->valuestring);
            return false;
        }
        long layer, head, index, pos, neuron, dim;
        if (!int_field(e, "layer", 0, INT32_MAX, -1, &layer, msg, n) ||
            !int_field(e, "head", 0, INT32_MAX, -1, &head, msg, n) ||
            !int_field(e, "index", 0, INT32_MAX, -1, &index, msg, n) ||
            !int_field(e, "neuron", 0, INT32_MAX, -1, &neuron, msg, n) ||
            !int_field(e, "dim", 0, INT32_MAX, -1, &dim, msg, n) ||
            !int_field(e, "pos", 0, INT32_MAX, -1, &pos, msg, n))
            return false;
        if (index < 0) index = neuron >= 0 ? neuron : dim;
        resid_unit v = {(resid_unit_kind)kk, (int32_t)layer, (int32_t)head, (int32_t)index,
                        (int32_t)pos};
        /* through the id syntax, so objects and strings get the same checks */
        cli_unit_format(&v, id, sizeof id);
        if (layer < 0 || strchr(id, '-')) {
            snprintf(msg, n, "unit %s: missing or negative field for kind %s", id, k->valuestring);
            return false;
        }
    } else {
        snprintf(msg, n, "\"units\" entries must be id strings or objects");
        return false;
    }
    return cli_unit_parse(id, kind, T, s->info, u, msg, n);
}

/* A parsed /api/ablate request. */
typedef struct ablate_req {
    req r;
    resid_iv_mode mode;
    resid_unit *u;
    int nu;
    int32_t *pos, n_pos;
    int32_t *clean, n_clean;   /* replace: the clean prompt */
    int32_t **mp, *mp_n, n_mp; /* mean: the mean prompts */
    double scale;              /* add */
    int32_t *layers, n_layers; /* add */
} ablate_req;

static void ablate_req_free(ablate_req *a) {
    free(a->r.ids), free(a->u), free(a->pos), free(a->clean), free(a->layers);
    for (int32_t i = 0; a->mp && i < a->n_mp; i++)
        free(a->mp[i]);
    free(a->mp), free(a->mp_n);
}

/* A field that only goes with one mode. */
static bool present(const cJSON *b, const char *name) {
    const cJSON *v = field(b, name);
    return v && !cJSON_IsNull(v);
}

/* The mode's own fields: replace's clean prompt, mean's prompts, add's
 * scale and layers. Returns 0 or the HTTP status with msg filled. */
static unsigned parse_mode_inputs(server *s, const cJSON *b, ablate_req *a, char *msg, size_t n) {
    static const struct {
        const char *name;
        resid_iv_mode mode;
    } own[] = {{"clean", RESID_IV_REPLACE},
               {"clean_ids", RESID_IV_REPLACE},
               {"mean_prompts", RESID_IV_MEAN},
               {"scale", RESID_IV_ADD},
               {"layers", RESID_IV_ADD}};
    for (size_t i = 0; i < sizeof own / sizeof *own; i++)
        if (a->mode != own[i].mode && present(b, own[i].name))
            return snprintf(msg, n, "\"%s\" goes with \"mode\": \"%s\"", own[i].name,
                            resid_iv_mode_name(own[i].mode)),
                   400;
    if (present(b, "means"))
        return snprintf(msg, n,
                        "\"means\" (raw unit means) is not served: give \"mode\": "
                        "\"mean\" with \"mean_prompts\" (texts the means are computed "
                        "over), or use resid ablate --means FILE"),
               400;
    if (present(b, "vector"))
        return snprintf(msg, n,
                        "\"vector\" is not served: \"mode\": \"add\" here adds each "
                        "unit's own vector at the last position; a d_model vector goes "
                        "to resid ablate --mode add --vector FILE"),
               400;
    unsigned code = 0;
    if (a->mode == RESID_IV_REPLACE) {
        const cJSON *ct = field(b, "clean"), *ci = field(b, "clean_ids");
        if (present(b, "clean") && present(b, "clean_ids"))
            return snprintf(msg, n, "give \"clean\" or \"clean_ids\", not both"), 400;
        if (!present(b, "clean") && !present(b, "clean_ids"))
            return snprintf(msg, n,
                            "mode \"replace\" needs one of \"clean\" (text) or "
                            "\"clean_ids\" (array): the prompt whose activations are "
                            "patched in, with as many tokens as the prompt"),
                   400;
        if ((code = prompt_tokens(s, present(b, "clean") ? ct : NULL,
                                  present(b, "clean") ? NULL : ci, "clean", "clean_ids",
                                  "the clean prompt", &a->clean, &a->n_clean, msg, n)))
            return code;
        if (a->n_clean != a->r.n)
            return snprintf(msg, n,
                            "the clean prompt has %d tokens but the prompt has %d: "
                            "replace needs the same length",
                            a->n_clean, a->r.n),
                   400;
    } else if (a->mode == RESID_IV_MEAN) {
        const cJSON *mp = field(b, "mean_prompts");
        if (!cJSON_IsArray(mp) || cJSON_GetArraySize(mp) < 1)
            return snprintf(msg, n,
                            "mode \"mean\" needs \"mean_prompts\": a non-empty array "
                            "of prompts (texts or id arrays) to compute the unit means "
                            "over"),
                   400;
        int64_t width;
        if (!cli_iv_mean_width(s->m, a->u, a->nu, &width, msg, n)) return 400;
        const int np = cJSON_GetArraySize(mp);
        if (np > MAX_MEAN_PROMPTS)
            return snprintf(msg, n, "%d mean prompts; this server takes at most %d", np,
                            MAX_MEAN_PROMPTS),
                   413;
        a->mp = calloc((size_t)np, sizeof *a->mp);
        a->mp_n = calloc((size_t)np, sizeof *a->mp_n);
        if (!a->mp || !a->mp_n) return snprintf(msg, n, "out of memory"), 500;
        const cJSON *e;
        cJSON_ArrayForEach(e, mp) {
            char name[32], label[48];
            const int i = a->n_mp++;
            snprintf(name, sizeof name, "mean_prompts[%d]", i);
            snprintf(label, sizeof label, "mean prompt %d (of \"mean_prompts\")", i);
            if (!cJSON_IsString(e) && !cJSON_IsArray(e))
                return snprintf(msg, n, "\"%s\" must be a text or an array of token ids", name),
                       400;
            if ((code = prompt_tokens(s, cJSON_IsString(e) ? e : NULL, cJSON_IsString(e) ? NULL : e,
                                      name, name, label, &a->mp[i], &a->mp_n[i], msg, n)))
                return code;
        }
    } else if (a->mode == RESID_IV_ADD) {
        const cJSON *sc = field(b, "scale"), *la = field(b, "layers");
        a->scale = 1.0;
        if (present(b, "scale")) {
            if (!cJSON_IsNumber(sc) || !isfinite(sc->valuedouble))
                return snprintf(msg, n, "\"scale\" must be a finite number"), 400;
            a->scale = sc->valuedouble;
        }
        const int32_t L = s->info->n_layer;
        if (!present(b, "layers")) {
            if (!(a->layers = malloc(sizeof *a->layers)))
                return snprintf(msg, n, "out of memory"), 500;
            a->layers[a->n_layers++] = L;
        } else {
            if (!cJSON_IsArray(la) || cJSON_GetArraySize(la) < 1 || cJSON_GetArraySize(la) > L + 1)
                return snprintf(msg, n,
                                "\"layers\" must be an array of 1 to %d residual "
                                "inputs in [0, %d] (%d = the final residual)",
                                L + 1, L, L),
                       400;
            if (!(a->layers = malloc((size_t)cJSON_GetArraySize(la) * sizeof *a->layers)))
                return snprintf(msg, n, "out of memory"), 500;
            const cJSON *e;
            cJSON_ArrayForEach(e, la) {
                if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
                    e->valuedouble < 0 || e->valuedouble > L)
                    return snprintf(msg, n, "\"layers\"[%d] is not a layer in [0, %d]", a->n_layers,
                                    L),
                           400;
                a->layers[a->n_layers++] = (int32_t)e->valuedouble;
            }
        }
    }
    return 0;
}

/* Parses the whole /api/ablate body. Returns 0 or the HTTP status with msg
 * filled; a->... is allocated either way (ablate_req_free). */
static unsigned parse_ablate(server *s, const cJSON *b, ablate_req *a, char *msg, size_t n) {
    memset(a, 0, sizeof *a);
    unsigned code = parse_req(s, b, true, &a->r, msg, n);
    if (code) return code;
    const cJSON *units = field(b, "units"), *mode = field(b, "mode"), *kind = field(b, "kind");
    const cJSON *positions = field(b, "positions");
    resid_error err;
    a->mode = RESID_IV_ZERO;
    if (mode && !cJSON_IsNull(mode) &&
        (!cJSON_IsString(mode) || resid_iv_mode_parse(mode->valuestring, &a->mode, &err)))
        return snprintf(msg, n, "\"mode\" must be \"zero\", \"mean\", \"replace\" or \"add\""), 400;
    if (kind && !(cJSON_IsString(kind) &&
                  (!strcmp(kind->valuestring, "neuron") || !strcmp(kind->valuestring, "head"))))
        return snprintf(msg, n, "\"kind\" must be \"neuron\" or \"head\""), 400;
    if (!cJSON_IsArray(units) || cJSON_GetArraySize(units) < 1)
        return snprintf(msg, n, "\"units\" must be a non-empty array"), 400;
    if (cJSON_GetArraySize(units) > MAX_ABLATE_UNITS)
        return snprintf(msg, n, "at most %d units", MAX_ABLATE_UNITS), 413;
    if (!(a->u = malloc((size_t)cJSON_GetArraySize(units) * sizeof *a->u)))
        return snprintf(msg, n, "out of memory"), 500;
    const cJSON *e;
    cJSON_ArrayForEach(e, units) {
        if (!ablate_unit(s, e, kind ? kind->valuestring : NULL, a->r.n, &a->u[a->nu++], msg, n))
            return 400;
    }
    if (present(b, "positions")) {
        if (!cJSON_IsArray(positions) || cJSON_GetArraySize(positions) < 1)
            return snprintf(msg, n, "\"positions\" must be a non-empty array"), 400;
        if (!(a->pos = malloc((size_t)cJSON_GetArraySize(positions) * sizeof *a->pos)))
            return snprintf(msg, n, "out of memory"), 500;
        cJSON_ArrayForEach(e, positions) {
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
                e->valuedouble < 0 || e->valuedouble >= a->r.n)
                return snprintf(msg, n, "\"positions\"[%d] is not a position in [0, %d)", a->n_pos,
                                a->r.n),
                       400;
            a->pos[a->n_pos++] = (int32_t)e->valuedouble;
        }
    }
    return parse_mode_inputs(s, b, a, msg, n);
}

/* /api/ablate: the target before and after the units' edits, with the
 * library calls of `resid ablate` (cli/intervene.c). */
static enum MHD_Result api_ablate(server *s, struct MHD_Connection *c, const cJSON *b) {
    char msg[600];
    ablate_req a;
    unsigned code = parse_ablate(s, b, &a, msg, sizeof msg);
    if (code) {
        ablate_req_free(&a);
        return send_error(c, code, "ablate: %s", msg);
    }
    const req *r = &a.r;
    resid_error err;
    resid_target_stats before, after;
    int32_t target = r->target;
    resid_intervention *iv = NULL;
    float *means = NULL, *vecs = NULL;
    int64_t n_means = 0;
    resid_status st = RESID_OK;
    if (!compute_begin(s, c, "ablate")) {
        ablate_req_free(&a);
        return send_busy(s, c, "ablate");
    }
    const int n_steps = 2 + (a.mode == RESID_IV_MEAN || a.mode == RESID_IV_ADD);
    if (a.mode == RESID_IV_MEAN) compute_stage(s, "unit means", 1, n_steps);
    if (a.mode == RESID_IV_ADD) compute_stage(s, "unit vectors", 1, n_steps);
    if (a.mode == RESID_IV_MEAN)
        st = resid_unit_means(s->m, (const int32_t *const *)a.mp, a.mp_n, a.n_mp, a.u, a.nu, &means,
                              &n_means, &err);
    if (st == RESID_OK && a.mode == RESID_IV_ADD)
        st = cli_iv_unit_vectors(s->m, r->ids, r->n, a.u, a.nu, &vecs, &err);
    compute_stage(s, "unedited run", n_steps - 1, n_steps);
    if (st == RESID_OK)
        st = resid_intervention_run(s->m, NULL, r->ids, r->n, r->target, &before, &target, NULL,
                                    NULL, &err);
    compute_stage(s, "edited run", n_steps, n_steps);
    if (st == RESID_OK) st = resid_intervention_new(s->m, &iv, &err);
    if (st == RESID_OK && a.clean) st = resid_intervention_set_clean(iv, a.clean, a.n_clean, &err);
    const cli_iv_spec spec = {.mode = a.mode,
                              .units = a.u,
                              .n_units = a.nu,
                              .pos = a.pos,
                              .n_pos = a.n_pos,
                              .means = means,
                              .vecs = vecs,
                              .n_vecs = a.nu,
                              .scale = a.scale,
                              .layers = a.layers,
                              .n_layers = a.n_layers};
    if (st == RESID_OK) st = cli_iv_build(s->m, iv, &spec, &err);
    if (st == RESID_OK)
        st = resid_intervention_run(s->m, iv, r->ids, r->n, target, &after, NULL, NULL, NULL, &err);
    compute_end(s);
    resid_intervention_free(iv);
    free(means), free(vecs);
    cJSON *out = NULL;
    if (st == RESID_OK && (out = cJSON_CreateObject())) {
        cJSON_AddItemToObject(out, "tokens", cli_json_tokens(s->tok, r->ids, r->n));
        cJSON_AddItemToObject(out, "target", cli_json_token(s->tok, r->ids[r->n - 1], target));
        cJSON_AddStringToObject(out, "mode", resid_iv_mode_name(a.mode));
        cJSON_AddItemToObject(out, "units", cli_json_units(a.u, a.nu));
        if (a.mode == RESID_IV_REPLACE)
            cJSON_AddItemToObject(out, "clean_tokens", cli_json_tokens(s->tok, a.clean, a.n_clean));
        if (a.mode == RESID_IV_MEAN) cJSON_AddNumberToObject(out, "n_mean_prompts", a.n_mp);
        if (a.mode == RESID_IV_ADD) {
            cJSON_AddNumberToObject(out, "scale", a.scale);
            cJSON *la = cJSON_AddArrayToObject(out, "layers");
            for (int32_t i = 0; la && i < a.n_layers; i++)
                cJSON_AddItemToArray(la, cJSON_CreateNumber(a.layers[i]));
        }
        cJSON_AddItemToObject(out, "before", cli_json_target_stats(&before));
        cJSON_AddItemToObject(out, "after", cli_json_target_stats(&after));
    }
    ablate_req_free(&a);
    if (st != RESID_OK) return send_error(c, lib_status(st), "ablate: %s", err.msg);
    return send_json(c, 200, out); /* NULL: a 500 "out of memory" */
}

static enum MHD_Result api_neuron(server *s, struct MHD_Connection *c, const cJSON *b) {
    char msg[600];
    req r;
    unsigned code = parse_req(s, b, false, &r, msg, sizeof msg);
    if (code) {
        free(r.ids);
        return send_error(c, code, "neuron: %s", msg);
    }
    const resid_model_info *in = s->info;
    long layer, k, head, dim, pos;
    if (!int_field(b, "layer", 0, INT32_MAX, -1, &layer, msg, sizeof msg) ||
        !int_field(b, "neuron", 0, INT32_MAX, -1, &k, msg, sizeof msg) ||
        !int_field(b, "head", 0, INT32_MAX, -1, &head, msg, sizeof msg) ||
        !int_field(b, "dim", 0, INT32_MAX, -1, &dim, msg, sizeof msg) ||
        !int_field(b, "pos", 0, INT32_MAX, -1, &pos, msg, sizeof msg)) {
        free(r.ids);
        return send_error(c, 400, "neuron: %s", msg);
    }
    const bool ffn = k >= 0;
    if (layer < 0 || (ffn ? head >= 0 : (head < 0 || dim < 0 || pos < 0))) {
        free(r.ids);
        return send_error(c, 400,
                          "neuron: give {\"layer\", \"neuron\"} (FFN) or {\"layer\", "
                          "\"head\", \"dim\", \"pos\"} (attention, with a prompt)");
    }
    if (layer >= in->n_layer || (ffn && k >= in->d_ffn) ||
        (!ffn && (head >= in->n_head || dim >= in->d_head))) {
        free(r.ids);
        return send_error(c, 400,
                          "neuron: unit out of range: the model has %d layers, %d FFN neurons "
                          "per layer, %d heads of %d dimensions",
                          in->n_layer, in->d_ffn, in->n_head, in->d_head);
    }
    if (!ffn && !r.ids) return send_error(c, 400, "neuron: an attention neuron needs a prompt");
    resid_unit u = ffn ? (resid_unit){RESID_UNIT_FFN_NEURON, (int32_t)layer, -1, (int32_t)k, -1}
                       : (resid_unit){RESID_UNIT_ATTN_NEURON, (int32_t)layer, (int32_t)head,
                                      (int32_t)dim, (int32_t)pos};
    resid_error err;
    resid_status st = RESID_OK;
    cJSON *out = NULL;
    enum { K = 10 };
    resid_token_value top[K], bot[K];
    int32_t nk = 0;
    if (!compute_begin(s, c, "neuron")) {
        free(r.ids);
        return send_busy(s, c, "neuron");
    }
    const int n_steps = r.ids ? 3 : 1;
    if (r.ids) {
        rs_web_ctx *wc;
        rs_web_opts wo = rs_web_defaults();
        compute_stage(s, "forward pass", 1, n_steps);
        st = rs_web_ctx_new(s->m, r.ids, r.n, r.target, r.contrast, r.lens, &wc, &err);
        compute_stage(s, "neuron details", 2, n_steps);
        if (st == RESID_OK) st = rs_web_neuron(wc, &u, &wo, &out, &err);
        rs_web_ctx_free(wc);
    } else {
        out = cJSON_CreateObject();
        char id[64];
        resid_unit_format(&u, id, sizeof id);
        if (!out || !cJSON_AddStringToObject(out, "id", id)) st = RESID_E_NOMEM;
    }
    compute_stage(s, "neuron tokens", n_steps, n_steps);
    if (st == RESID_OK)
        st = resid_project_param(s->m, ffn ? RESID_PARAM_FC2 : RESID_PARAM_WO, u.layer,
                                 ffn ? u.index : (int64_t)u.head * in->d_head + u.index, 1.0, 1.0,
                                 K, top, bot, &nk, &err);
    compute_end(s);
    const int32_t prev = r.ids ? r.ids[r.n - 1] : -1;
    cJSON *tt = st == RESID_OK ? cJSON_AddArrayToObject(out, "top_tokens") : NULL;
    cJSON *bt = tt ? cJSON_AddArrayToObject(out, "bottom_tokens") : NULL;
    for (int32_t i = 0; bt && i < nk; i++) {
        cJSON *a = rs_web_token(s->tok, prev, top[i].id),
              *z = rs_web_token(s->tok, prev, bot[i].id);
        if (a) cJSON_AddNumberToObject(a, "bs", top[i].value), cJSON_AddItemToArray(tt, a);
        if (z) cJSON_AddNumberToObject(z, "bs", bot[i].value), cJSON_AddItemToArray(bt, z);
    }
    free(r.ids);
    if (st != RESID_OK) {
        cJSON_Delete(out);
        return send_error(c, lib_status(st), "neuron: %s",
                          st == RESID_E_NOMEM ? "out of memory" : err.msg);
    }
    return send_json(c, 200, out);
}

static enum MHD_Result api_info(server *s, struct MHD_Connection *c) {
    const resid_model_info *in = s->info;
    cJSON *j = cJSON_CreateObject();
    if (j) {
        cJSON_AddStringToObject(j, "name", in->name);
        cJSON_AddStringToObject(j, "arch", resid_arch_name(in->arch));
        cJSON_AddNumberToObject(j, "n_layer", in->n_layer);
        cJSON_AddNumberToObject(j, "n_head", in->n_head);
        cJSON_AddNumberToObject(j, "d_head", in->d_head);
        cJSON_AddNumberToObject(j, "d_ffn", in->d_ffn);
        cJSON_AddNumberToObject(j, "n_vocab", in->n_vocab);
        cJSON_AddNumberToObject(j, "n_ctx", in->n_ctx);
        cJSON_AddNumberToObject(j, "max_tokens", (double)s->o.max_tokens);
        cJSON_AddNumberToObject(j, "max_body", (double)s->o.max_body);
        cJSON_AddStringToObject(j, "version", RESID_VERSION);
    }
    return send_json(c, 200, j);
}

/* ------------------------------------------------------------------------- */
/* The MHD callbacks                                                         */
/* ------------------------------------------------------------------------- */

static bool is_loopback(const struct sockaddr *a) {
    if (a->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
    if (a->sa_family == AF_INET6) {
        const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(x)) return true;
        if (IN6_IS_ADDR_V4MAPPED(x)) return x->s6_addr[12] == 127;
    }
    return false;
}

static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len) {
    server *s = cls;
    (void)len;
    return (!s->loopback || is_loopback(addr)) ? MHD_YES : MHD_NO;
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn *k = *con_cls;
    if (k) free(k->body), free(k);
    *con_cls = NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **con_cls) {
    server *s = cls;
    (void)version;
    const bool post = !strcmp(method, "POST");
    if (!*con_cls) {
        conn *k = calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        *con_cls = k;
        return MHD_YES;
    }
    conn *k = *con_cls;
    if (post && *data_size) {
        /* Accumulate, up to the limit; past it keep reading and drop. */
        if (!k->too_big && k->len + *data_size <= (size_t)s->o.max_body) {
            char *nb = realloc(k->body, k->len + *data_size + 1);
            if (!nb) return MHD_NO;
            memcpy(nb + k->len, data, *data_size);
            k->body = nb;
            k->len += *data_size;
            k->body[k->len] = 0;
        } else {
            k->too_big = true;
        }
        *data_size = 0;
        return MHD_YES;
    }
    if (!strcmp(method, "GET") || !strcmp(method, "HEAD")) {
        if (!strcmp(url, "/api/info")) return api_info(s, c);
        if (!strcmp(url, "/api/progress")) return api_progress(s, c);
        if (!strcmp(url, "/favicon.ico")) return send_buf(c, 204, "image/x-icon", "", 0, false);
        const rs_web_asset *a = rs_web_asset_find(!strcmp(url, "/") ? "index.html" : url + 1);
        if (a && strncmp(url, "/api/", 5))
            return send_buf(c, 200, a->mime, (void *)a->data, a->len, false);
        if (!strncmp(url, "/api/", 5))
            return send_error(c, 405, "%s: use POST with a JSON body", url);
        return send_error(c, 404, "%s: not found", url);
    }
    if (!post) return send_error(c, 405, "method %s not allowed", method);
    if (!strcmp(url, "/api/info") || !strcmp(url, "/api/progress"))
        return send_error(c, 405, "%s: use GET", url);
    if (k->too_big)
        return send_error(c, 413, "request body larger than %ld bytes (--max-body)", s->o.max_body);
    const char *api[] = {"/api/explain", "/api/head", "/api/neuron", "/api/ablate"};
    int which = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(url, api[i])) which = i;
    if (which < 0)
        return send_error(c, 404,
                          "%s: not found (POST /api/explain, /api/head, "
                          "/api/neuron, /api/ablate)",
                          url);
    const char *end = NULL;
    cJSON *b = k->body ? cJSON_ParseWithOpts(k->body, &end, true) : NULL;
    if (!cJSON_IsObject(b)) {
        char where[80] = "";
        if (k->body && end && end >= k->body)
            snprintf(where, sizeof where, " (at byte %ld)", (long)(end - k->body));
        cJSON_Delete(b);
        return send_error(c, 400, "%s: the body must be a JSON object%s", url, where);
    }
    enum MHD_Result ret = which == 0   ? api_explain(s, c, b, "explain")
                          : which == 1 ? api_explain(s, c, b, "head")
                          : which == 2 ? api_neuron(s, c, b)
                                       : api_ablate(s, c, b);
    cJSON_Delete(b);
    return ret;
}

/* ------------------------------------------------------------------------- */
/* The command                                                               */
/* ------------------------------------------------------------------------- */

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"allow-remote", no_argument, NULL, OPT_ALLOW_REMOTE},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {NULL, 0, NULL, 0},
    };
    server s;
    memset(&s, 0, sizeof s);
    s.o = (serve_opts){.host = "127.0.0.1",
                       .port = 8080,
                       .max_tokens = 256,
                       .max_body = 65536,
                       .timeout = 30,
                       .max_queue = 8};
    cli_args a;
    int r = cli_parse(cmd, argc, argv, 0, extra, NULL, on_opt, &s.o, &a);
    if (r != CLI_CONTINUE) return r;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s.o.port);
    const char *host = !strcmp(s.o.host, "localhost") ? "127.0.0.1" : s.o.host;
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return cli_usage_error(cmd, "--host expects an IPv4 address such as 127.0.0.1, got '%s'",
                               s.o.host);
    s.loopback = (ntohl(addr.sin_addr.s_addr) >> 24) == 127;
    if (!s.loopback && !s.o.allow_remote)
        return cli_usage_error(cmd,
                               "refusing to listen on non-loopback address %s: the server has "
                               "no authentication; add --allow-remote if you mean it",
                               s.o.host);
    if ((r = cli_open_model(&a, &s.m)) != CLI_EXIT_OK) return r;
    s.info = resid_model_get_info(s.m);
    s.tok = resid_model_tokenizer(s.m);
    pthread_mutex_init(&s.lock, NULL);
    pthread_mutex_init(&s.prog_mu, NULL);

    /* SIGINT/SIGTERM end the server: block them here (the MHD threads
     * inherit the mask) and wait for one below. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
            MHD_USE_ERROR_LOG,
        0, on_accept, &s, on_request, &s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_PER_IP_CONNECTION_LIMIT, 16u,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s.o.timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)128 * 1024, MHD_OPTION_NOTIFY_COMPLETED, on_done, &s, MHD_OPTION_END);
    if (!d) {
        resid_model_free(s.m);
        return cli_error("cannot listen on %s:%ld (address in use, or not this machine's?)",
                         s.o.host, s.o.port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    fprintf(stderr, "resid serve: %s on http://%s:%u/ (Ctrl-C to stop)\n", s.info->name, host,
            di ? (unsigned)di->port : (unsigned)s.o.port);
    fflush(stderr);
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "resid serve: stopping (signal %d)\n", sig);
    MHD_stop_daemon(d);
    pthread_mutex_destroy(&s.lock);
    pthread_mutex_destroy(&s.prog_mu);
    resid_model_free(s.m);
    return CLI_EXIT_OK;
}

const cli_command cli_cmd_serve = {"serve", "serve the explain views in the browser (HTTP)", help,
                                   run};
