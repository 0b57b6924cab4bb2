/*
 * cmd_batch.c - `resid batch MODEL --in prompts.jsonl --out results.jsonl`:
 * the explain report (src/output/report.c) for every prompt of a JSON Lines
 * file, one compact JSON line per prompt, plus (--ablate) the scoring-method
 * comparison of the intervention API.
 *
 * Crash safety: each output line is written with one write() of the whole
 * line and its '\n', so a record is complete or absent; the file is fsync'd
 * every --fsync-every records and at the end. --resume reads the output
 * back, cuts a trailing partial line and skips the indices already there.
 * SIGINT finishes the current record, then stops cleanly.
 *
 * Distribution (built with MPI, run under mpirun): rank r of K takes the
 * prompts with index % K == r and writes OUT.rank<r>.part; when every rank
 * is done, rank 0 merges OUT and the parts by index into OUT. The weights
 * are mmap'd read-only and shared (MAP_SHARED), so K ranks do not hold K
 * copies.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef RESID_HAVE_MPI
#include <mpi.h>
#endif

#include "common.h"
#include "core/util.h"
#include "output/jsonl.h"
#include "output/report.h"

static const char help[] =
    "Usage: resid batch MODEL --in PROMPTS.jsonl --out RESULTS.jsonl [OPTIONS]\n"
    "\n"
    "Explains the next-token prediction of every prompt of a JSON Lines file\n"
    "and writes one JSON line per prompt (the fields of `resid explain --json`,\n"
    "docs/explain-json.md, with compact unit lists) in input order. Input lines:\n"
    "    {\"prompt\": TEXT, \"target\": TEXT or id, \"type\": TEXT, \"id\": any}\n"
    "(\"ids\": [...] instead of \"prompt\" for models without a tokenizer; only\n"
    "the prompt is required; blank lines are skipped). Output records add\n"
    "\"index\" (0-based, counting non-blank input lines), \"id\", \"type\",\n"
    "\"prompt\", \"time_ms\". A bad line (invalid JSON or UTF-8, a target of\n"
    "several tokens, a prompt longer than the context) gives a record with\n"
    "\"error\" and the run goes on. Summarise the result with resid summarize.\n"
    "\n"
    "A record is written with one write() of the whole line, so after a crash\n"
    "or Ctrl-C (which finishes the current prompt) every record is complete\n"
    "or absent: rerun with --resume to finish. OUT.meta records the input's\n"
    "hash and the record options; --resume refuses a changed input.\n"
    "\n"
    "Options:\n"
    "      --in FILE        the prompts (JSON Lines; - = stdin)\n"
    "      --out FILE       the results (JSON Lines)\n"
    "      --resume         keep the records already in --out (a trailing\n"
    "                       partial line is cut) and do the rest\n"
    "      --force          overwrite an existing --out; with --resume: resume\n"
    "                       even though the input or the record options have\n"
    "                       changed since the output was started (OUT.meta)\n"
    "  -k, --top K          head x position list length (default 10)\n"
    "      --neurons K      FFN and attention neuron list length (default 300)\n"
    "      --tokens N       with --full: top/bottom tokens per unit (default 5)\n"
    "      --full           full unit entries (tokens, coefficients) instead of\n"
    "                       {id, lpi}; and the prompt's token list\n"
    "      --lens NAME      paper (default), exact or logit-lens (as explain)\n"
    "      --exhaustive     score every unit exactly (slower; for checking)\n"
    "      --no-query       leave out the Q1 query layers\n"
    "      --query-neurons K\n"
    "                       the top-K query FFN neurons of the top attention\n"
    "                       value neurons (Q3, METHOD.md 5.2) as \"query_neurons\"\n"
    "                       [{id, q}] (default 300; 0 = leave them out). The\n"
    "                       trace then holds every position.\n"
    "      --query-attn N   attention value neurons Q3 starts from (default 30)\n"
    "      --ablate         also the scoring-method comparison per prompt: the\n"
    "                       top --ablate-k FFN neurons by each score (a)-(h)\n"
    "                       zeroed, and as many random ones (MRR, prob)\n"
    "      --ablate-k K     neurons zeroed per method (default 10)\n"
    "      --seed N         seed of the random neurons (default 1)\n"
    "      --fsync-every N  fsync the output every N records (default 16)\n"
    "      --progress-every SEC\n"
    "                       without a terminal: a progress line every SEC\n"
    "                       seconds (default 10; 0 = only at the end)\n"
    "      --max-line N     longest input line in bytes (default 1048576)\n" CLI_HELP_GLOBAL "\n"
    "Distributed (when built with MPI): mpirun -n K resid batch ... shards the\n"
    "prompts round robin by index; rank 0 writes the one merged, ordered file.\n"
    "\n"
    "Examples:\n"
    "  resid batch $RESID_MODELS/tinyllamas/stories260K.bin \\\n"
    "      --in data/stories260K-prompts.jsonl --out results.jsonl\n"
    "  mpirun -n 4 resid batch gpt2/ --in prompts.jsonl --out r.jsonl --ablate\n"
    "  resid summarize results.jsonl\n";

enum {
    OPT_TOP = 'k',
    OPT_IN = 300,
    OPT_OUT,
    OPT_RESUME,
    OPT_FORCE,
    OPT_NEURONS,
    OPT_TOKENS,
    OPT_FULL,
    OPT_LENS,
    OPT_EXHAUSTIVE,
    OPT_NO_QUERY,
    OPT_ABLATE,
    OPT_ABLATE_K,
    OPT_SEED,
    OPT_FSYNC,
    OPT_PROGRESS,
    OPT_MAX_LINE,
    OPT_QUERY_NEURONS,
    OPT_QUERY_ATTN,
};

typedef struct batch_opts {
    const char *in, *out;
    bool resume, force, full, exhaustive, no_query, ablate;
    long top, neurons, n_tokens, ablate_k, fsync_every, progress_every, max_line;
    long query_neurons, query_attn; /* Q3: list length (0 = off), N_a */
    unsigned long long seed;
    resid_lens lens;
} batch_opts;

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    batch_opts *o = user;
    long v;
    int r;
    switch (opt) {
    case OPT_IN: o->in = arg; return CLI_CONTINUE;
    case OPT_OUT: o->out = arg; return CLI_CONTINUE;
    case OPT_RESUME: o->resume = true; return CLI_CONTINUE;
    case OPT_FORCE: o->force = true; return CLI_CONTINUE;
    case OPT_FULL: o->full = true; return CLI_CONTINUE;
    case OPT_EXHAUSTIVE: o->exhaustive = true; return CLI_CONTINUE;
    case OPT_NO_QUERY: o->no_query = true; return CLI_CONTINUE;
    case OPT_ABLATE: o->ablate = true; return CLI_CONTINUE;
    case OPT_TOP: return cli_parse_int(cmd, "--top", arg, 1, INT32_MAX, &o->top);
    case OPT_NEURONS: return cli_parse_int(cmd, "--neurons", arg, 1, INT32_MAX, &o->neurons);
    case OPT_TOKENS: return cli_parse_int(cmd, "--tokens", arg, 0, 1000, &o->n_tokens);
    case OPT_ABLATE_K: return cli_parse_int(cmd, "--ablate-k", arg, 1, 100000, &o->ablate_k);
    case OPT_FSYNC: return cli_parse_int(cmd, "--fsync-every", arg, 1, INT32_MAX, &o->fsync_every);
    case OPT_PROGRESS:
        return cli_parse_int(cmd, "--progress-every", arg, 0, 86400, &o->progress_every);
    case OPT_QUERY_NEURONS:
        return cli_parse_int(cmd, "--query-neurons", arg, 0, INT32_MAX, &o->query_neurons);
    case OPT_QUERY_ATTN:
        return cli_parse_int(cmd, "--query-attn", arg, 1, INT32_MAX, &o->query_attn);
    case OPT_MAX_LINE: return cli_parse_int(cmd, "--max-line", arg, 16, 1L << 30, &o->max_line);
    case OPT_SEED:
        r = cli_parse_int(cmd, "--seed", arg, 0, INT32_MAX, &v);
        o->seed = (unsigned long long)v;
        return r;
    case OPT_LENS: return cli_parse_lens(cmd, arg, &o->lens);
    }
    return cli_usage_error(cmd, "unknown option");
}

/* ------------------------------------------------------------------------- */
/* Signals, time, progress                                                   */
/* ------------------------------------------------------------------------- */

static volatile sig_atomic_t g_stop;

/* First SIGINT/SIGTERM: stop after the current record. A second one kills
 * (the handler resets itself). */
static void on_signal(int sig) {
    g_stop = 1;
    signal(sig, SIG_DFL);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_dur(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

typedef struct progress {
    bool tty;
    double t0, last, every;
    int64_t total, done, errors; /* this rank's share */
    int rank, n_ranks;
} progress;

static void progress_show(progress *p, bool final) {
    const double t = now_s();
    if (!final && t - p->last < (p->tty ? 0.2 : p->every)) return;
    if (!final && !p->tty && p->every <= 0) return;
    p->last = t;
    const double el = t - p->t0, rate = el > 0 ? (double)p->done / el : 0;
    char eta[32], elapsed[32];
    fmt_dur(rate > 0 ? (double)(p->total - p->done) / rate : NAN, eta, sizeof eta);
    fmt_dur(el, elapsed, sizeof elapsed);
    char who[32] = "";
    if (p->n_ranks > 1) snprintf(who, sizeof who, " rank %d/%d", p->rank, p->n_ranks);
    if (p->tty) {
        enum { W = 30 };
        const int fill = p->total ? (int)((double)W * (double)p->done / (double)p->total) : W;
        char bar[W + 1];
        for (int i = 0; i < W; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[W] = 0;
        fprintf(stderr, "\r[%s] %lld/%lld%s  %.2f/s  ETA %s  errors %lld ", bar, (long long)p->done,
                (long long)p->total, who, rate, eta, (long long)p->errors);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr,
                "resid batch%s: %lld/%lld prompts (%.1f%%), %lld errors, %.2f/s, elapsed %s, "
                "ETA %s\n",
                who, (long long)p->done, (long long)p->total,
                p->total ? 100.0 * (double)p->done / (double)p->total : 100.0, (long long)p->errors,
                rate, elapsed, eta);
    }
    fflush(stderr);
}

/* ------------------------------------------------------------------------- */
/* Output                                                                    */
/* ------------------------------------------------------------------------- */

/* Writes s[0..n) (a whole record line ending in '\n') with one write();
 * a short write (rare, e.g. a full disk) is completed by more calls. */
static bool write_line(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        s += w;
        n -= (size_t)w;
    }
    return true;
}

/* The record's first fields: index, id, type. */
static cJSON *record_head(int64_t index, const rs_batch_input *in) {
    cJSON *rec = cJSON_CreateObject();
    if (!rec || !cJSON_AddNumberToObject(rec, "index", (double)index)) goto fail;
    if (in && in->id) {
        cJSON *id = cJSON_Duplicate(in->id, false);
        if (!id) goto fail;
        cJSON_AddItemToObject(rec, "id", id);
    } else if (!cJSON_AddNullToObject(rec, "id")) {
        goto fail;
    }
    if (in && in->type ? !cJSON_AddStringToObject(rec, "type", in->type)
                       : !cJSON_AddNullToObject(rec, "type"))
        goto fail;
    return rec;
fail:
    cJSON_Delete(rec);
    return NULL;
}

static bool add_stats(cJSON *o, const char *name, const resid_target_stats *s) {
    cJSON *e = cJSON_AddObjectToObject(o, name);
    return e && cJSON_AddNumberToObject(e, "prob", s->model_prob) &&
           cJSON_AddNumberToObject(e, "logprob", s->model_logprob) &&
           cJSON_AddNumberToObject(e, "rr", s->model_rr) &&
           cJSON_AddNumberToObject(e, "rank", s->model_rank + 1);
}

/* The scoring-method comparison (METHOD.md §3.5) of one prompt. */
static resid_status add_ablation(const resid_model *m, const batch_opts *o, const int32_t *ids,
                                 int32_t n, int32_t target, cJSON *rec, resid_error *err) {
    resid_score_compare *c;
    resid_status st =
        resid_compare_scores(m, ids, n, target, (int32_t)o->ablate_k, (uint64_t)o->seed, &c, err);
    if (st != RESID_OK) return st;
    cJSON *ab = cJSON_AddObjectToObject(rec, "ablation");
    bool ok = ab && cJSON_AddNumberToObject(ab, "k", c->k) &&
              cJSON_AddNumberToObject(ab, "target", c->target) &&
              add_stats(ab, "original", &c->original) && add_stats(ab, "random", &c->random);
    cJSON *me = ok ? cJSON_AddObjectToObject(ab, "methods") : NULL;
    ok = me != NULL;
    for (int s = 0; ok && s < RESID_FSCORE_COUNT; s++)
        ok = add_stats(me, resid_fscore_name((resid_fscore)s), &c->method[s]);
    resid_score_compare_free(c);
    return ok ? RESID_OK : (rs_err(err, RESID_E_NOMEM, "out of memory"), RESID_E_NOMEM);
}

/* ------------------------------------------------------------------------- */
/* One record                                                                */
/* ------------------------------------------------------------------------- */

/* Tokens of an input record: "ids" checked against V, or the prompt
 * tokenized as `resid explain -p` does (the model's BOS; an empty prompt is
 * BOS alone). */
static resid_status record_ids(const resid_model *m, const rs_batch_input *in, int32_t **ids,
                               int32_t *n, resid_error *err) {
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    const int32_t V = resid_model_get_info(m)->n_vocab;
    *ids = NULL;
    *n = 0;
    if (in->ids) {
        for (int32_t i = 0; i < in->n_ids; i++)
            if (in->ids[i] >= V)
                return rs_err(err, RESID_E_ARG, "\"ids\"[%d] = %d is out of range [0, %d)", i,
                              in->ids[i], V);
        *ids = malloc((size_t)in->n_ids * sizeof **ids);
        if (!*ids) return rs_err(err, RESID_E_NOMEM, "out of memory");
        memcpy(*ids, in->ids, (size_t)in->n_ids * sizeof **ids);
        *n = in->n_ids;
        return RESID_OK;
    }
    if (!tok)
        return rs_err(err, RESID_E_ARG,
                      "the model has no tokenizer: give the prompt as \"ids\": [...]");
    resid_encode_opts eo = resid_encode_defaults(tok);
    resid_status st = resid_tokenize(tok, in->prompt, -1, &eo, ids, n, err);
    if (st != RESID_OK) return st;
    if (*n == 0) {
        const int32_t bos = resid_tokenizer_bos(tok), eos = resid_tokenizer_eos(tok);
        const int32_t id = bos >= 0 ? bos : eos;
        if (id < 0) return rs_err(err, RESID_E_ARG, "the prompt gives no tokens");
        (*ids)[0] = id;
        *n = 1;
    }
    return RESID_OK;
}

/* After rs_report_resolve_token refused a target of several tokens: the
 * message says how the text tokenizes (as `resid explain` shows it), e.g.
 * target " big ball" is 3 tokens: " big" (2210) + " b" (…) + "all" (…); give
 * one token or its id. The tokenization is that of rs_report_resolve_token
 * (no BOS; SentencePiece: the leading space is the encoder's own). */
static void target_split_detail(const resid_tokenizer *tok, const char *text, int32_t prev,
                                resid_error *err) {
    resid_encode_opts eo = resid_encode_defaults(tok);
    eo.add_bos = false;
    const char *enc = text;
    if (resid_tokenizer_get_kind(tok) == RESID_TOKENIZER_SPM && text[0] == ' ') enc = text + 1;
    int32_t *ids = NULL, n = 0;
    resid_error e2;
    if (resid_tokenize(tok, enc, -1, &eo, &ids, &n, &e2) != RESID_OK || n < 2) {
        free(ids);
        return; /* keep the library's message */
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        free(ids);
        return;
    }
    fputs("target ", f);
    cli_fput_quoted(f, text, strlen(text));
    fprintf(f, " is %d tokens: ", n);
    cli_fput_pieces(f, tok, prev, ids, n);
    fputs("; give one token or its id", f);
    if (fclose(f) == 0 && buf) snprintf(err->msg, sizeof err->msg, "%s", buf);
    free(buf);
    free(ids);
}

/* The Q3 query neurons of a session into rec: "query_neurons" [{id, q}]
 * (score descending; neurons with q = 0 exactly, in layers no selected
 * attention neuron reads, are left out, so the list may be shorter) and "query_neuron_info"
 * {n_attn, n_query_value}; a failing analysis gives "query_neuron_info": {"error": msg} instead
 * (the rest of the record stands, as for the report's Q1 "query"). */
static resid_status add_query_neurons(rs_explain_session *sess, const batch_opts *o, cJSON *rec,
                                      resid_error *err) {
    resid_query_opts qo = resid_query_defaults();
    qo.n_attn = (int32_t)o->query_attn;
    qo.n_top = (int32_t)o->query_neurons;
    resid_query_neurons *q = NULL;
    resid_error qerr;
    cJSON *info = cJSON_AddObjectToObject(rec, "query_neuron_info");
    bool ok = info != NULL;
    if (ok &&
        resid_query_neurons_new(rs_explain_session_explainer(sess), &qo, &q, &qerr) != RESID_OK) {
        ok = cJSON_AddStringToObject(info, "error", qerr.msg) != NULL;
        return ok ? RESID_OK : rs_err(err, RESID_E_NOMEM, "out of memory");
    }
    ok = ok && cJSON_AddNumberToObject(info, "n_attn", q->n_attn) &&
         cJSON_AddNumberToObject(info, "n_query_value", q->n_query_value);
    cJSON *arr = ok ? cJSON_AddArrayToObject(rec, "query_neurons") : NULL;
    ok = arr != NULL;
    for (int32_t i = 0; ok && i < q->n_query; i++) {
        if (q->query[i].score == 0) continue; /* no attention neuron above it */
        char id[48];
        snprintf(id, sizeof id, "%d_%d", q->query[i].layer, q->query[i].index);
        cJSON *e = cJSON_CreateObject();
        ok = e && cJSON_AddStringToObject(e, "id", id) &&
             cJSON_AddNumberToObject(e, "q", q->query[i].score);
        if (e) cJSON_AddItemToArray(arr, e);
    }
    resid_query_neurons_free(q);
    return ok ? RESID_OK : rs_err(err, RESID_E_NOMEM, "out of memory");
}

/* The explain fields (and the ablation) of one parsed input into rec. */
static resid_status explain_record(const resid_model *m, const batch_opts *o,
                                   const rs_batch_input *in, cJSON *rec, resid_error *err) {
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    const int32_t V = resid_model_get_info(m)->n_vocab;
    int32_t *ids = NULL, n = 0, target = -1;
    resid_status st = record_ids(m, in, &ids, &n, err);
    if (st == RESID_OK && in->target_text) {
        st = rs_report_resolve_token(tok, "target", in->target_text, ids[n - 1], &target, err);
        if (st == RESID_E_ARG && tok) target_split_detail(tok, in->target_text, ids[n - 1], err);
    } else if (st == RESID_OK && in->target_id >= 0) {
        if (in->target_id >= V)
            st = rs_err(err, RESID_E_ARG, "target id %lld is out of range [0, %d)",
                        (long long)in->target_id, V);
        target = (int32_t)in->target_id;
    }
    cJSON *rep = NULL;
    rs_explain_session *sess = NULL;
    if (st == RESID_OK) {
        resid_explain_request rq = resid_explain_request_defaults();
        rq.tokens = ids;
        rq.n_tokens = n;
        rq.target = target;
        rq.lens = o->lens;
        rq.top_k = o->top;
        rq.neuron_top_k = o->neurons;
        rq.n_unit_tokens = o->full ? (int32_t)o->n_tokens : 0;
        rq.exhaustive = o->exhaustive;
        rq.query = !o->no_query;
        rq.prompt_tokens = o->full;
        rq.compact = !o->full;
        /* Q3 needs every position in the trace: the report then comes from
         * a session (the same fields; model_prob may differ from the
         * last-position run in the last float bits). */
        if (o->query_neurons > 0) {
            st = rs_explain_session_new(m, &rq, true, &sess, err);
            if (st == RESID_OK) st = rs_explain_session_json(sess, &rep, err);
        } else {
            st = rs_explain_cjson(m, &rq, &rep, err);
        }
    }
    if (st == RESID_OK) {
        if (!cJSON_AddNumberToObject(rec, "n_tokens", n)) st = RESID_E_NOMEM;
        /* Move the report's fields into the record. */
        while (st == RESID_OK && rep->child) {
            cJSON *item = cJSON_DetachItemViaPointer(rep, rep->child);
            cJSON_AddItemToObject(rec, item->string, item);
        }
        if (st != RESID_OK) rs_err(err, st, "out of memory");
    }
    if (st == RESID_OK && sess) st = add_query_neurons(sess, o, rec, err);
    rs_explain_session_free(sess);
    if (st == RESID_OK && o->ablate) {
        const cJSON *tg = cJSON_GetObjectItemCaseSensitive(rec, "target");
        const cJSON *tid = cJSON_GetObjectItemCaseSensitive(tg, "id");
        st = add_ablation(m, o, ids, n, (int32_t)tid->valuedouble, rec, err);
    }
    cJSON_Delete(rep);
    free(ids);
    return st;
}

/* Builds the output line of input line `line` (index `index`); malloc'd,
 * ending in '\n'. *is_error tells whether it is an error record. NULL on
 * out of memory. */
static char *make_record(const resid_model *m, const batch_opts *o, int64_t index, const char *line,
                         size_t len, const char *read_error, bool *is_error) {
    const double t0 = now_s();
    rs_batch_input in;
    resid_error err = {RESID_OK, ""};
    resid_status st;
    if (read_error) {
        memset(&in, 0, sizeof in);
        st = RESID_E_FORMAT;
        snprintf(err.msg, sizeof err.msg, "%s", read_error);
    } else {
        st = rs_jsonl_parse_input(line, len, &in, &err);
    }
    cJSON *rec = record_head(index, &in);
    if (!rec) {
        rs_batch_input_free(&in);
        return NULL;
    }
    if (st == RESID_OK && in.prompt && !cJSON_AddStringToObject(rec, "prompt", in.prompt))
        st = rs_err(&err, RESID_E_NOMEM, "out of memory");
    if (st == RESID_OK) st = explain_record(m, o, &in, rec, &err);
    *is_error = st != RESID_OK;
    if (st != RESID_OK) {
        /* An error record: index, id, type (when they could be read), the
         * prompt, the error; nothing half-done. */
        cJSON_Delete(rec);
        rec = record_head(index, &in);
        if (!rec || (in.prompt && !cJSON_AddStringToObject(rec, "prompt", in.prompt)) ||
            !cJSON_AddStringToObject(rec, "error", err.msg) ||
            !cJSON_AddStringToObject(rec, "error_kind", resid_status_str(st))) {
            cJSON_Delete(rec);
            rs_batch_input_free(&in);
            return NULL;
        }
    }
    rs_batch_input_free(&in);
    if (!cJSON_AddNumberToObject(rec, "time_ms", floor((now_s() - t0) * 1e4 + 0.5) / 10)) {
        cJSON_Delete(rec);
        return NULL;
    }
    char *s = cJSON_PrintUnformatted(rec);
    cJSON_Delete(rec);
    if (!s) return NULL;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return NULL;
    }
    t[n] = '\n';
    t[n + 1] = 0;
    return t;
}

/* ------------------------------------------------------------------------- */
/* Input                                                                     */
/* ------------------------------------------------------------------------- */

/* Every non-blank input line (or the error that replaced it). */
typedef struct input_line {
    char *text;
    size_t len;
    char *error; /* a line over the cap: its message */
} input_line;

static int read_input(const batch_opts *o, input_line **out, int64_t *n_out) {
    FILE *f = strcmp(o->in, "-") ? fopen(o->in, "rb") : stdin;
    if (!f) return cli_error("%s: cannot open: %s", o->in, strerror(errno));
    resid_error err;
    rs_jsonl_reader *rd;
    if (rs_jsonl_reader_new(f, o->in, (size_t)o->max_line, &rd, &err) != RESID_OK) {
        if (f != stdin) fclose(f);
        return cli_lib_error(&err);
    }
    input_line *v = NULL;
    int64_t n = 0, cap = 0;
    int rc = CLI_EXIT_OK;
    for (;;) {
        const char *line;
        size_t len;
        int64_t line_no;
        bool eof;
        resid_status st = rs_jsonl_next(rd, &line, &len, &line_no, &eof, &err);
        if (st == RESID_OK && eof) break;
        if (st != RESID_OK && st != RESID_E_FORMAT) {
            rc = cli_lib_error(&err);
            break;
        }
        if (st == RESID_OK) {
            size_t i = 0;
            while (i < len && (line[i] == ' ' || line[i] == '\t'))
                i++;
            if (i == len) continue; /* blank */
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            input_line *nv = realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) {
                rc = cli_error("out of memory reading %s", o->in);
                break;
            }
            v = nv;
        }
        input_line *e = &v[n];
        memset(e, 0, sizeof *e);
        if (st == RESID_OK) {
            e->text = malloc(len + 1);
            if (e->text) memcpy(e->text, line, len + 1);
            e->len = len;
        } else {
            e->error = strdup(err.msg);
        }
        if (!e->text && !e->error) {
            rc = cli_error("out of memory reading %s", o->in);
            break;
        }
        n++;
    }
    rs_jsonl_reader_free(rd);
    if (f != stdin) fclose(f);
    *out = v;
    *n_out = n;
    return rc;
}

static void free_input(input_line *v, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        free(v[i].text), free(v[i].error);
    free(v);
}

/* ------------------------------------------------------------------------- */
/* The sidecar OUT.meta: what the records were made from                     */
/* ------------------------------------------------------------------------- */

/* FNV-1a 64 of the non-blank input lines as read (each line's bytes and a
 * '\n'; a line over the cap counts as its message), so blank lines and a
 * final newline do not matter but any change to a record does. */
static uint64_t input_hash(const input_line *v, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) {
        const char *s = v[i].text ? v[i].text : v[i].error;
        const size_t len = v[i].text ? v[i].len : strlen(v[i].error);
        for (size_t k = 0; k < len; k++)
            h = (h ^ (uint8_t)s[k]) * 1099511628211ull;
        h = (h ^ (uint8_t)'\n') * 1099511628211ull;
    }
    return h;
}

/* The options that change what a record holds (not --fsync-every etc.). */
static cJSON *record_options(const batch_opts *o) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    bool ok = cJSON_AddStringToObject(j, "lens", resid_lens_name(o->lens)) &&
              cJSON_AddNumberToObject(j, "top", (double)o->top) &&
              cJSON_AddNumberToObject(j, "neurons", (double)o->neurons) &&
              cJSON_AddBoolToObject(j, "full", o->full) &&
              cJSON_AddNumberToObject(j, "tokens", o->full ? (double)o->n_tokens : 0) &&
              cJSON_AddBoolToObject(j, "exhaustive", o->exhaustive) &&
              cJSON_AddBoolToObject(j, "query", !o->no_query) &&
              cJSON_AddNumberToObject(j, "query_neurons", (double)o->query_neurons) &&
              cJSON_AddNumberToObject(j, "query_attn",
                                      o->query_neurons > 0 ? (double)o->query_attn : 0) &&
              cJSON_AddBoolToObject(j, "ablate", o->ablate) &&
              cJSON_AddNumberToObject(j, "ablate_k", o->ablate ? (double)o->ablate_k : 0) &&
              cJSON_AddNumberToObject(j, "seed", o->ablate ? (double)o->seed : 0);
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static char *meta_path(const char *out) {
    size_t n = strlen(out) + 8;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s.meta", out);
    return p;
}

/* The sidecar of this run: {"resid_batch": 1, "input", "input_size",
 * "input_mtime", "n_prompts", "input_hash", "options"}. */
static cJSON *meta_new(const batch_opts *o, const input_line *v, int64_t n) {
    cJSON *j = cJSON_CreateObject();
    struct stat sb;
    const bool st = strcmp(o->in, "-") && stat(o->in, &sb) == 0;
    char hash[40];
    snprintf(hash, sizeof hash, "fnv1a64:%016llx", (unsigned long long)input_hash(v, n));
    cJSON *opt = record_options(o);
    bool ok =
        j && opt && cJSON_AddNumberToObject(j, "resid_batch", 1) &&
        cJSON_AddStringToObject(j, "input", o->in) &&
        (st ? cJSON_AddNumberToObject(j, "input_size", (double)sb.st_size) &&
                  cJSON_AddNumberToObject(j, "input_mtime", (double)sb.st_mtime)
            : cJSON_AddNullToObject(j, "input_size") && cJSON_AddNullToObject(j, "input_mtime")) &&
        cJSON_AddNumberToObject(j, "n_prompts", (double)n) &&
        cJSON_AddStringToObject(j, "input_hash", hash);
    if (ok) {
        cJSON_AddItemToObject(j, "options", opt);
        opt = NULL;
    }
    cJSON_Delete(opt);
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* Writes the sidecar (through a temporary file and rename). */
static int meta_write(const char *path, const cJSON *meta) {
    char *s = cJSON_PrintUnformatted(meta);
    size_t n = strlen(path) + 8;
    char *tmp = malloc(n);
    if (!s || !tmp) {
        free(s), free(tmp);
        return cli_error("out of memory");
    }
    snprintf(tmp, n, "%s.tmp", path);
    int rc = CLI_EXIT_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f)
        rc = cli_error("%s: cannot create: %s", tmp, strerror(errno));
    else {
        const bool bad = fprintf(f, "%s\n", s) < 0;
        if (fclose(f) != 0 || bad) rc = cli_error("%s: write failed", tmp);
    }
    if (rc == CLI_EXIT_OK && rename(tmp, path) != 0)
        rc = cli_error("cannot rename %s to %s: %s", tmp, path, strerror(errno));
    free(s), free(tmp);
    return rc;
}

/* --resume: the sidecar left by the earlier run against this run's. A
 * changed input (other records, or another count) or other record options
 * refuse the resume (exit 2) unless --force; no sidecar (a file from an
 * older resid, or copied without it) is a warning. The sidecar is then
 * rewritten for this run. */
static int meta_check(const cli_command *cmd, const batch_opts *o, const char *path,
                      const cJSON *now) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT) return cli_error("%s: cannot open: %s", path, strerror(errno));
        fprintf(stderr,
                "resid batch: warning: %s is missing, so the input cannot be checked against "
                "the one %s was made from\n",
                path, o->out);
        return CLI_EXIT_OK;
    }
    char buf[8192];
    const size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *old = cJSON_Parse(buf);
    const char *why = NULL;
    char what[512] = "";
    if (!cJSON_IsObject(old)) {
        why = "unreadable";
        snprintf(what, sizeof what, "%s is not a resid batch sidecar", path);
    } else {
        const cJSON *oh = cJSON_GetObjectItemCaseSensitive(old, "input_hash");
        const cJSON *nh = cJSON_GetObjectItemCaseSensitive(now, "input_hash");
        const cJSON *on = cJSON_GetObjectItemCaseSensitive(old, "n_prompts");
        const cJSON *nn = cJSON_GetObjectItemCaseSensitive(now, "n_prompts");
        if (!cJSON_IsString(oh) || strcmp(oh->valuestring, nh->valuestring) ||
            !cJSON_IsNumber(on) || on->valuedouble != nn->valuedouble) {
            why = "input";
            snprintf(what, sizeof what,
                     "the input has changed since %s was started (%.0f prompts, %s then; %.0f, "
                     "%s now)",
                     o->out, cJSON_IsNumber(on) ? on->valuedouble : -1.0,
                     cJSON_IsString(oh) ? oh->valuestring : "?", nn->valuedouble, nh->valuestring);
        } else {
            char *a = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(old, "options"));
            char *b = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(now, "options"));
            if (!a || !b || strcmp(a, b)) {
                why = "options";
                snprintf(what, sizeof what,
                         "the record options differ from those %s was started with (%.200s "
                         "then, %.200s now)",
                         o->out, a ? a : "?", b ? b : "?");
            }
            free(a), free(b);
        }
    }
    cJSON_Delete(old);
    if (!why) return CLI_EXIT_OK;
    if (o->force) {
        fprintf(stderr, "resid batch: warning: %s; resuming anyway (--force)\n", what);
        return CLI_EXIT_OK;
    }
    return cli_usage_error(cmd,
                           "%s: the records already there would not match the new ones; "
                           "start afresh with --force (without --resume), or give --resume "
                           "--force to finish anyway",
                           what);
}

/* ------------------------------------------------------------------------- */
/* Merging (MPI parts, or an out-of-order file after a resume)               */
/* ------------------------------------------------------------------------- */

static char *part_path(const char *out, int rank) {
    size_t n = strlen(out) + 32;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s.rank%d.part", out, rank);
    return p;
}

/* The existing part files of `out` (glob OUT.rank*.part). */
static int list_parts(const char *out, glob_t *g) {
    size_t n = strlen(out) * 2 + 32;
    char *pat = malloc(n), *q = pat;
    if (!pat) return -1;
    for (const char *s = out; *s; s++) { /* escape glob metacharacters */
        if (strchr("*?[]\\", *s)) *q++ = '\\';
        *q++ = *s;
    }
    strcpy(q, ".rank*.part");
    int r = glob(pat, 0, NULL, g);
    free(pat);
    if (r == GLOB_NOMATCH) {
        g->gl_pathc = 0;
        return 0;
    }
    return r == 0 ? 0 : -1;
}

/* Reads the complete record lines of `path` into lines[index] (the first
 * one of an index wins). */
static int collect(const char *path, char **lines, int64_t n_index) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? CLI_EXIT_OK
                               : cli_error("%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = CLI_EXIT_OK;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[got - 1] != '\n') break; /* partial */
        cJSON *j = cJSON_ParseWithLength(line, (size_t)got);
        const cJSON *ix = cJSON_GetObjectItemCaseSensitive(j, "index");
        const double d = cJSON_IsNumber(ix) ? ix->valuedouble : -1;
        cJSON_Delete(j);
        if (!(d >= 0 && d < (double)n_index)) continue;
        if (!lines[(int64_t)d] && !(lines[(int64_t)d] = strdup(line))) {
            rc = cli_error("out of memory merging %s", path);
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

/* Rewrites `out` as out + every part, ordered by index, through a
 * temporary file and rename(); then removes the parts. */
static int merge(const char *out, int64_t n_index, int64_t *n_written) {
    char **lines = calloc((size_t)n_index + 1, sizeof *lines);
    if (!lines) return cli_error("out of memory merging %s", out);
    glob_t g;
    if (list_parts(out, &g) != 0) {
        free(lines);
        return cli_error("%s: cannot list the part files", out);
    }
    int rc = collect(out, lines, n_index);
    for (size_t i = 0; rc == CLI_EXIT_OK && i < g.gl_pathc; i++)
        rc = collect(g.gl_pathv[i], lines, n_index);
    char *tmp = NULL;
    if (rc == CLI_EXIT_OK) {
        size_t n = strlen(out) + 16;
        tmp = malloc(n);
        if (!tmp)
            rc = cli_error("out of memory");
        else
            snprintf(tmp, n, "%s.merge.tmp", out);
    }
    int fd = -1;
    if (rc == CLI_EXIT_OK && (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        rc = cli_error("%s: cannot create: %s", tmp, strerror(errno));
    *n_written = 0;
    for (int64_t i = 0; rc == CLI_EXIT_OK && i < n_index; i++) {
        if (!lines[i]) continue;
        if (!write_line(fd, lines[i], strlen(lines[i])))
            rc = cli_error("%s: write failed: %s", tmp, strerror(errno));
        (*n_written)++;
    }
    if (fd >= 0) {
        if (rc == CLI_EXIT_OK && fsync(fd) != 0)
            rc = cli_error("%s: fsync failed: %s", tmp, strerror(errno));
        if (close(fd) != 0 && rc == CLI_EXIT_OK) rc = cli_error("%s: close failed", tmp);
    }
    if (rc == CLI_EXIT_OK && rename(tmp, out) != 0)
        rc = cli_error("cannot rename %s to %s: %s", tmp, out, strerror(errno));
    for (size_t i = 0; rc == CLI_EXIT_OK && i < g.gl_pathc; i++)
        unlink(g.gl_pathv[i]);
    globfree(&g);
    for (int64_t i = 0; i < n_index; i++)
        free(lines[i]);
    free(lines);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* MPI                                                                       */
/* ------------------------------------------------------------------------- */

typedef struct world {
    int rank, size;
    bool mpi;
} world;

static void world_init(world *w, int *argc, char ***argv) {
    w->rank = 0;
    w->size = 1;
    w->mpi = false;
#ifdef RESID_HAVE_MPI
    /* Only under a launcher: a plain run stays a plain process. */
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) {
        MPI_Init(argc, argv);
        MPI_Comm_rank(MPI_COMM_WORLD, &w->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &w->size);
        w->mpi = true;
    }
#endif
}

/* All ranks' rc: the worst (max). */
static int world_sync_rc(const world *w, int rc) {
#ifdef RESID_HAVE_MPI
    if (w->mpi) {
        int all = rc;
        MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        return all;
    }
#endif
    return rc;
}

static int64_t world_sum(const world *w, int64_t v) {
#ifdef RESID_HAVE_MPI
    if (w->mpi) {
        long long in = v, all = v;
        MPI_Allreduce(&in, &all, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        return all;
    }
#endif
    return v;
}

static void world_finish(world *w) {
#ifdef RESID_HAVE_MPI
    if (w->mpi) MPI_Finalize();
#endif
    (void)w;
}

/* ------------------------------------------------------------------------- */
/* The command                                                               */
/* ------------------------------------------------------------------------- */

static int run_batch(const cli_command *cmd, const world *w, const batch_opts *o, cli_args *a) {
    /* Preparation on rank 0: refuse or clear the output; cut partial lines. */
    int rc = CLI_EXIT_OK;
    input_line *input = NULL;
    int64_t n_input = 0;
    rc = read_input(o, &input, &n_input);
    if (w->rank == 0 && rc == CLI_EXIT_OK) {
        struct stat sb;
        const bool exists = stat(o->out, &sb) == 0 && sb.st_size > 0;
        glob_t g;
        memset(&g, 0, sizeof g);
        if (list_parts(o->out, &g) != 0) rc = cli_error("%s: cannot list part files", o->out);
        const bool parts = g.gl_pathc > 0;
        if (rc == CLI_EXIT_OK && (exists || parts) && !o->resume && !o->force)
            rc = cli_usage_error(cmd,
                                 "%s exists: give --resume to finish it or --force to "
                                 "overwrite it",
                                 exists ? o->out : g.gl_pathv[0]);
        /* The sidecar: checked before anything is cut (--resume). */
        cJSON *meta = rc == CLI_EXIT_OK ? meta_new(o, input, n_input) : NULL;
        char *mpath = meta_path(o->out);
        if (rc == CLI_EXIT_OK && (!meta || !mpath)) rc = cli_error("out of memory");
        if (rc == CLI_EXIT_OK && o->resume && (exists || parts))
            rc = meta_check(cmd, o, mpath, meta);
        resid_error err;
        int64_t nd, cut;
        bool *tmp = calloc((size_t)n_input + 1, 1);
        if (rc == CLI_EXIT_OK && !tmp) rc = cli_error("out of memory");
        if (rc == CLI_EXIT_OK && o->resume) {
            if (rs_jsonl_scan_done(o->out, true, tmp, n_input, &nd, &cut, &err) != RESID_OK)
                rc = cli_lib_error(&err);
            else if (cut)
                fprintf(stderr, "resid batch: %s: cut a partial last line (%lld bytes)\n", o->out,
                        (long long)cut);
            for (size_t i = 0; rc == CLI_EXIT_OK && i < g.gl_pathc; i++)
                if (rs_jsonl_scan_done(g.gl_pathv[i], true, tmp, n_input, &nd, &cut, &err) !=
                    RESID_OK)
                    rc = cli_lib_error(&err);
        } else if (rc == CLI_EXIT_OK) { /* --force, or nothing there */
            if (exists && unlink(o->out) != 0)
                rc = cli_error("%s: cannot remove: %s", o->out, strerror(errno));
            for (size_t i = 0; i < g.gl_pathc; i++)
                unlink(g.gl_pathv[i]);
        }
        if (rc == CLI_EXIT_OK) rc = meta_write(mpath, meta);
        cJSON_Delete(meta);
        free(mpath);
        free(tmp);
        globfree(&g);
    }
    rc = world_sync_rc(w, rc);
    if (rc != CLI_EXIT_OK) {
        free_input(input, n_input);
        return rc;
    }

    /* The indices done already (every rank reads the output and the parts). */
    bool *done = calloc((size_t)n_input + 1, sizeof *done);
    int64_t n_done = 0;
    if (!done) rc = cli_error("out of memory");
    bool prefix = true; /* the done indices are 0..n_done-1 (single-file order holds) */
    if (rc == CLI_EXIT_OK && o->resume) {
        resid_error err;
        int64_t nd, cut;
        glob_t g;
        if (rs_jsonl_scan_done(o->out, false, done, n_input, &nd, &cut, &err) != RESID_OK)
            rc = cli_lib_error(&err);
        if (rc == CLI_EXIT_OK && list_parts(o->out, &g) == 0) {
            for (size_t i = 0; rc == CLI_EXIT_OK && i < g.gl_pathc; i++) {
                prefix = false;
                if (rs_jsonl_scan_done(g.gl_pathv[i], false, done, n_input, &nd, &cut, &err) !=
                    RESID_OK)
                    rc = cli_lib_error(&err);
            }
            globfree(&g);
        }
        for (int64_t i = 0; i < n_input; i++)
            n_done += done[i];
        for (int64_t i = 0; i < n_done; i++)
            prefix = prefix && done[i];
    }
    rc = world_sync_rc(w, rc);

    resid_model *m = NULL;
    if (rc == CLI_EXIT_OK) rc = world_sync_rc(w, cli_open_model(a, &m));
    if (rc != CLI_EXIT_OK) {
        resid_model_free(m);
        free(done);
        free_input(input, n_input);
        return rc;
    }

    /* This rank's output: the file itself when alone, else its part. */
    char *path = w->size > 1 ? part_path(o->out, w->rank) : strdup(o->out);
    int fd = path ? open(path, O_WRONLY | O_CREAT | O_APPEND, 0644) : -1;
    if (!path)
        rc = cli_error("out of memory");
    else if (fd < 0)
        rc = cli_error("%s: cannot open for writing: %s", path, strerror(errno));

    progress p = {isatty(2), now_s(), 0, (double)o->progress_every, 0, 0, 0, w->rank, w->size};
    p.last = p.t0;
    for (int64_t i = w->rank; i < n_input; i += w->size)
        p.total += !done[i];
    if (w->rank == 0 && rc == CLI_EXIT_OK && n_done)
        fprintf(stderr, "resid batch: resuming: %lld of %lld prompts done already\n",
                (long long)n_done, (long long)n_input);

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    g_stop = 0;

    int64_t since_sync = 0;
    for (int64_t i = w->rank; rc == CLI_EXIT_OK && i < n_input && !g_stop; i += w->size) {
        if (done[i]) continue;
        bool is_error = false;
        char *line = make_record(m, o, i, input[i].text, input[i].len, input[i].error, &is_error);
        if (!line) {
            rc = cli_error("out of memory building record %lld", (long long)i);
            break;
        }
        if (!write_line(fd, line, strlen(line)))
            rc = cli_error("%s: write failed: %s", path, strerror(errno));
        free(line);
        p.done++;
        p.errors += is_error;
        if (rc == CLI_EXIT_OK && ++since_sync >= o->fsync_every) {
            fsync(fd);
            since_sync = 0;
        }
        progress_show(&p, false);
    }
    if (fd >= 0) {
        if (fsync(fd) != 0 && rc == CLI_EXIT_OK)
            rc = cli_error("%s: fsync failed: %s", path, strerror(errno));
        close(fd);
    }
    progress_show(&p, true);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    const bool stopped = g_stop != 0;

    /* Merge when there are parts, or a resume left the file out of order. */
    rc = world_sync_rc(w, rc);
    const int64_t n_stopped = world_sum(w, stopped);
    const int64_t n_new = world_sum(w, p.done), n_err = world_sum(w, p.errors);
    if (rc == CLI_EXIT_OK && w->rank == 0) {
        if (n_stopped)
            fprintf(stderr,
                    "resid batch: interrupted: %lld new records written; rerun with --resume to "
                    "finish\n",
                    (long long)n_new);
        int64_t total = 0;
        if (!n_stopped && (w->size > 1 || !prefix))
            rc = merge(o->out, n_input, &total);
        else
            total = n_done + n_new;
        if (rc == CLI_EXIT_OK)
            fprintf(stderr,
                    "resid batch: %lld records (%lld new, %lld errors) of %lld prompts "
                    "in %s\n",
                    (long long)total, (long long)n_new, (long long)n_err, (long long)n_input,
                    o->out);
        if (n_stopped && rc == CLI_EXIT_OK) rc = CLI_EXIT_ERR;
    }
    rc = world_sync_rc(w, rc);
    free(path);
    resid_model_free(m);
    free(done);
    free_input(input, n_input);
    return rc;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"in", required_argument, NULL, OPT_IN},
        {"out", required_argument, NULL, OPT_OUT},
        {"resume", no_argument, NULL, OPT_RESUME},
        {"force", no_argument, NULL, OPT_FORCE},
        {"top", required_argument, NULL, OPT_TOP},
        {"neurons", required_argument, NULL, OPT_NEURONS},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"full", no_argument, NULL, OPT_FULL},
        {"lens", required_argument, NULL, OPT_LENS},
        {"exhaustive", no_argument, NULL, OPT_EXHAUSTIVE},
        {"no-query", no_argument, NULL, OPT_NO_QUERY},
        {"ablate", no_argument, NULL, OPT_ABLATE},
        {"ablate-k", required_argument, NULL, OPT_ABLATE_K},
        {"seed", required_argument, NULL, OPT_SEED},
        {"fsync-every", required_argument, NULL, OPT_FSYNC},
        {"progress-every", required_argument, NULL, OPT_PROGRESS},
        {"max-line", required_argument, NULL, OPT_MAX_LINE},
        {"query-neurons", required_argument, NULL, OPT_QUERY_NEURONS},
        {"query-attn", required_argument, NULL, OPT_QUERY_ATTN},
        {NULL, 0, NULL, 0},
    };
    batch_opts o;
    memset(&o, 0, sizeof o);
    o.top = 10;
    o.neurons = 300;
    o.n_tokens = 5;
    o.ablate_k = 10;
    o.seed = 1;
    o.fsync_every = 16;
    o.progress_every = 10;
    o.max_line = (long)RS_JSONL_MAX_LINE;
    o.query_neurons = 300;
    o.query_attn = 30;
    o.lens = RESID_LENS_PAPER;
    cli_args a;
    int r = cli_parse(cmd, argc, argv, 0, extra, "k:", on_opt, &o, &a);
    if (r != CLI_CONTINUE) return r;
    if (!o.in) return cli_usage_error(cmd, "missing --in PROMPTS.jsonl");
    if (!o.out) return cli_usage_error(cmd, "missing --out RESULTS.jsonl");
    if (!strcmp(o.out, "-")) return cli_usage_error(cmd, "--out must be a file (not stdout)");

    world w;
    world_init(&w, &argc, &argv);
    if (w.size > 1 && a.threads == 0) {
        /* K ranks on one machine: share the cores instead of oversubscribing. */
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        int t = nc > w.size ? (int)(nc / w.size) : 1;
        cli_set_threads(t);
    }
    if (w.size > 1 && !strcmp(o.in, "-")) {
        world_finish(&w);
        return cli_usage_error(cmd, "--in - (stdin) cannot be shared by several ranks");
    }
    r = run_batch(cmd, &w, &o, &a);
    world_finish(&w);
    return r;
}

const cli_command cli_cmd_batch = {
    "batch", "explain every prompt of a JSON Lines file (resumable, MPI)", help, run};
