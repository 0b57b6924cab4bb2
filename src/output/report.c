/*
 * report.c - the explain report (docs/explain-json.md) as a cJSON tree.
 *
 * One computation for `resid explain` (text and --json) and `resid batch`:
 * run the prompt once, build an explainer in the unit lens, the layer table
 * in the lens asked for, the ranked unit lists (heads: all, exactly; the
 * other kinds: the certified top-K) and the Q1 query layers, then write it
 * all as JSON. Never prints.
 */
#include "output/report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"
#include "model/model.h"

resid_explain_request resid_explain_request_defaults(void) {
    resid_explain_request r;
    memset(&r, 0, sizeof r);
    r.target = r.contrast = -1;
    r.lens = RESID_LENS_PAPER;
    r.top_k = 10;
    r.neuron_top_k = 0;
    r.n_unit_tokens = 5;
    r.query = true;
    r.prompt_tokens = true;
    r.compare_k = 10;
    r.compare_seed = 1;
    return r;
}

/* ------------------------------------------------------------------------- */
/* Tokens                                                                    */
/* ------------------------------------------------------------------------- */

/* Valid UTF-8 copy of s[0..n) (see rs_report_token); malloc'd. */
static char *utf8_sanitize(const char *s, size_t n, bool *changed) {
    const uint8_t *u = (const uint8_t *)s;
    char *out = malloc(3 * n + 1); /* a replaced byte takes at most 3 */
    if (!out) return NULL;
    size_t k = 0;
    bool ch = false;
    for (size_t i = 0; i < n;) {
        int l = rs_utf8_seq_len(u + i, n - i);
        if (u[i] == 0) { /* U+2400 SYMBOL FOR NULL */
            memcpy(out + k, "\xE2\x90\x80", 3);
            k += 3;
            i++;
            ch = true;
        } else if (l > 0) {
            memcpy(out + k, u + i, (size_t)l);
            k += (size_t)l;
            i += (size_t)l;
        } else { /* byte b -> U+00bb */
            out[k++] = (char)(0xC0 | (u[i] >> 6));
            out[k++] = (char)(0x80 | (u[i] & 0x3F));
            i++;
            ch = true;
        }
    }
    out[k] = 0;
    *changed = ch;
    return out;
}

bool rs_report_add_text(cJSON *obj, const char *name, const char *s, size_t n) {
    bool changed;
    char *clean = utf8_sanitize(s, n, &changed);
    if (!clean) return false;
    bool ok = cJSON_AddStringToObject(obj, name, clean) != NULL;
    free(clean);
    if (ok && changed) {
        char *hex = malloc(3 * n + 1);
        if (!hex) return false;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += (size_t)snprintf(hex + k, 4, i ? " %02x" : "%02x", (unsigned)(uint8_t)s[i]);
        hex[k] = 0;
        ok = cJSON_AddStringToObject(obj, "bytes", hex) != NULL;
        free(hex);
    }
    return ok;
}

cJSON *rs_report_token(const resid_tokenizer *tok, int32_t prev, int32_t id) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddNumberToObject(o, "id", id)) goto fail;
    if (tok) {
        size_t len;
        const char *b = resid_token_bytes(tok, prev, id, &len);
        if (b && !rs_report_add_text(o, "text", b, len)) goto fail;
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static cJSON *json_tokens(const resid_tokenizer *tok, const int32_t *ids, int32_t n) {
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return NULL;
    for (int32_t i = 0; i < n; i++) {
        cJSON *t = rs_report_token(tok, i ? ids[i - 1] : -1, ids[i]);
        if (!t) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, t);
    }
    return arr;
}

resid_status rs_report_resolve_token(const resid_tokenizer *tok, const char *what, const char *text,
                                     int32_t prev, int32_t *out, resid_error *err) {
    if (!tok) return rs_err(err, RESID_E_ARG, "the model has no tokenizer: give %s as an id", what);
    const size_t tl = strlen(text);
    if (rs_utf8_validate(text, tl) >= 0)
        return rs_err(err, RESID_E_TOKENIZE, "%s is not valid UTF-8 (byte %lld)", what,
                      (long long)rs_utf8_validate(text, tl));
    const int32_t V = resid_tokenizer_n_vocab(tok);
    for (int32_t id = 0; id < V && tl > 0; id++) {
        size_t len;
        const char *b = resid_token_bytes(tok, prev, id, &len);
        if (b && len == tl && memcmp(b, text, tl) == 0) {
            *out = id;
            return RESID_OK;
        }
    }
    resid_encode_opts eo = resid_encode_defaults(tok);
    eo.add_bos = false;
    const char *enc = text;
    if (resid_tokenizer_get_kind(tok) == RESID_TOKENIZER_SPM && text[0] == ' ') enc = text + 1;
    int32_t *ids = NULL, n = 0;
    resid_status st = resid_tokenize(tok, enc, -1, &eo, &ids, &n, err);
    if (st != RESID_OK) return st;
    if (n == 1) {
        *out = ids[0];
        free(ids);
        return RESID_OK;
    }
    free(ids);
    return rs_err(err, RESID_E_ARG, "%s \"%.200s\" is %d tokens, not one", what, text, n);
}

/* ------------------------------------------------------------------------- */
/* The computation                                                           */
/* ------------------------------------------------------------------------- */

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

/* One ranked list. */
typedef struct unit_list {
    const char *name; /* JSON key: "head_positions", ... */
    resid_unit_kind kind;
    resid_score *s;
    int64_t n;
    resid_rank_stats st;
    bool all_exact; /* listed from resid_score_all (heads) */
    bool bottom;    /* the bottom-K, lowest first */
    bool used;      /* computed (the bottom lists: on request) */
} unit_list;

enum {
    LIST_HEADS,
    LIST_HEAD_POS,
    LIST_FFN,
    LIST_ATTN,
    LIST_FIRST_BOTTOM, /* the same three kinds, bottom-K */
    N_LISTS = LIST_FIRST_BOTTOM + 3
};

typedef struct report {
    const resid_model *m;
    const resid_explain_request *rq;
    const resid_model_info *info;
    const resid_tokenizer *tok;
    resid_trace *tr;
    resid_explainer *ex;      /* units: paper or exact lens */
    int32_t target, contrast; /* contrast -1: none */
    double prob, model_prob;  /* p(w|x_L) in the lens, and the model's */
    double c_prob, c_model_prob;
    double c_diff_initial, c_diff_final;  /* (bs_w − bs_c)(x_in[0]), (x_L) */
    resid_layer_row *rows;                /* [L], in the lens */
    double *attn_contrast, *ffn_contrast; /* [L] or NULL */
    double logp_initial, logp_final;
    unit_list lists[N_LISTS];
    resid_query_layers *q1;   /* may be NULL (with q1_error) */
    resid_score_compare *cmp; /* rq->compare_scores, else NULL */
    char q1_error[512];
    resid_rank_key key;
    bool all_positions; /* capture every position (sessions for the HTML) */
} report;

static void report_free(report *r) {
    free(r->rows);
    free(r->attn_contrast);
    free(r->ffn_contrast);
    for (int i = 0; i < N_LISTS; i++)
        free(r->lists[i].s);
    resid_query_layers_free(r->q1);
    resid_score_compare_free(r->cmp);
    resid_explainer_free(r->ex);
    resid_trace_free(r->tr);
}

/* The stages the progress callback sees (resid_explain_request). */
static int n_stages(const resid_explain_request *rq) {
    return 7 + (rq->compare_scores ? 1 : 0);
}

static void stage(const resid_explain_request *rq, int step, const char *name) {
    if (rq->progress) rq->progress(rq->progress_user, name, step, n_stages(rq));
}

static resid_status prescore_layers_heads(resid_explainer *e, int32_t L, int32_t H,
                                          resid_error *err) {
    const int64_t n = (int64_t)L * (2 + H);
    resid_unit *u = malloc((size_t)n * sizeof *u);
    const resid_unit **p = malloc((size_t)n * sizeof *p);
    double *lpi = malloc((size_t)n * sizeof *lpi);
    resid_status st = RESID_OK;
    if (!u || !p || !lpi) {
        st = rs_err(err, RESID_E_NOMEM, "explain: out of memory");
        goto done;
    }
    int64_t k = 0;
    for (int32_t l = 0; l < L; l++) {
        u[k++] = (resid_unit){RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
        u[k++] = (resid_unit){RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
        for (int32_t h = 0; h < H; h++) u[k++] = (resid_unit){RESID_UNIT_HEAD, l, h, -1, -1};
    }
    for (int64_t i = 0; i < n; i++) p[i] = &u[i];
    if ((st = rs_units_prepare(e, u, n, err)) == RESID_OK) st = rs_exact_lpi(e, p, n, lpi, err);
done:
    free(u), free(p), free(lpi);
    return st;
}

static resid_status compute(report *r, resid_error *err) {
    const resid_model *m = r->m;
    const resid_explain_request *rq = r->rq;
    const int32_t L = r->info->n_layer, V = r->info->n_vocab, D = r->info->d_model;
    if (!rq->tokens || rq->n_tokens <= 0)
        return rs_err(err, RESID_E_ARG, "explain: the prompt has no tokens");
    if (rq->target >= V || rq->contrast >= V)
        return rs_err(err, RESID_E_ARG, "explain: token id %d is out of range [0, %d)",
                      rq->target >= V ? rq->target : rq->contrast, V);
    if (rq->top_k < 1) return rs_err(err, RESID_E_ARG, "explain: top_k must be at least 1");
    if (rq->bottom_k < 0) return rs_err(err, RESID_E_ARG, "explain: bottom_k is negative");
    if (rq->n_unit_tokens < 0 || rq->n_unit_tokens > V)
        return rs_err(err, RESID_E_ARG, "explain: n_unit_tokens %d is out of range [0, %d]",
                      rq->n_unit_tokens, V);

    stage(rq, 1, "forward pass");
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_EXPLAIN_CAPTURE;
    to.positions = r->all_positions ? RESID_POS_ALL : RESID_POS_LAST;
    resid_status st = resid_forward(m, rq->tokens, rq->n_tokens, &to, &r->tr, err);
    if (st != RESID_OK) return st;
    const resid_trace *tr = r->tr;

    /* The model's logits at t*, from x_L exactly as the forward pass makes
     * its last row: the same bits with or without every position captured
     * (the HTML session), and no other position's logits computed. */
    float *logits = malloc((size_t)V * sizeof *logits);
    if (!logits) return rs_err(err, RESID_E_NOMEM, "explain: out of memory");
    st = rs_final_logits(
        m, tr->x_in + ((size_t)L * (size_t)tr->n_cap + (size_t)(tr->n_cap - 1)) * D, logits, err);
    if (st != RESID_OK) {
        free(logits);
        return st;
    }
    r->target = rq->target >= 0 ? rq->target : argmax(logits, V);
    r->contrast = rq->contrast >= 0 ? rq->contrast : -1;
    r->model_prob = exp(log_softmax_at(logits, V, r->target));
    if (r->contrast >= 0) r->c_model_prob = exp(log_softmax_at(logits, V, r->contrast));
    free(logits);

    stage(rq, 2, "contexts");
    resid_explain_opts eo = resid_explain_defaults();
    eo.lens = rq->lens == RESID_LENS_LOGIT ? RESID_LENS_PAPER : rq->lens;
    eo.target = r->target;
    eo.contrast = r->contrast;
    eo.ranges = rq->ranges;
    if ((st = resid_explainer_new(m, tr, &eo, &r->ex, err)) != RESID_OK) return st;
    const double s = resid_explainer_scale(r->ex);
    /* The units' token lists come from their exact projections. */
    if ((st = rs_tokcache_enable(r->ex, rq->compact ? 0 : rq->n_unit_tokens, err)) != RESID_OK)
        return st;

    /* Probabilities in the lens, and the contrast's logit differences. */
    const float *x0 = tr->x_in + (size_t)(tr->n_cap - 1) * (size_t)D;
    const float *xl = tr->x_in + ((size_t)L * (size_t)tr->n_cap + (size_t)(tr->n_cap - 1)) * D;
    /* The paper and exact lenses' p(target) is the explainer's x_L context;
     * the logit lens and the contrast need x_L's lens values. */
    r->prob = resid_explainer_target_prob(r->ex);
    if (rq->lens == RESID_LENS_LOGIT || r->contrast >= 0) {
        float *bs = malloc((size_t)V * sizeof *bs);
        if (!bs) return rs_err(err, RESID_E_NOMEM, "explain: out of memory");
        st = resid_lens_apply(m, rq->lens, s, xl, bs, err);
        if (st == RESID_OK && rq->lens == RESID_LENS_LOGIT)
            r->prob = exp(log_softmax_at(bs, V, r->target));
        if (st == RESID_OK && r->contrast >= 0) {
            r->c_prob = exp(log_softmax_at(bs, V, r->contrast));
            /* The logit difference is the same in the paper and exact lens. */
            st = resid_lens_apply(m, RESID_LENS_PAPER, s, xl, bs, err);
            if (st == RESID_OK) {
                r->c_diff_final = (double)bs[r->target] - bs[r->contrast];
                st = resid_lens_apply(m, RESID_LENS_PAPER, s, x0, bs, err);
                if (st == RESID_OK) r->c_diff_initial = (double)bs[r->target] - bs[r->contrast];
            }
        }
        free(bs);
        if (st != RESID_OK) return st;
    }

    /* The layer table, in the lens asked for. */
    stage(rq, 3, "layer table");
    /* The layers and the heads, every one of which is scored, in one batch
     * of projections (the LPI memo then serves the table and the list). */
    if (rq->lens != RESID_LENS_LOGIT && (st = prescore_layers_heads(r->ex, L, r->info->n_head, err)))
        return st;
    r->rows = calloc((size_t)L, sizeof *r->rows);
    if (!r->rows) return rs_err(err, RESID_E_NOMEM, "explain: out of memory");
    if (rq->lens == RESID_LENS_LOGIT) {
        resid_explainer *lx;
        eo.lens = RESID_LENS_LOGIT;
        eo.contrast = -1;
        if ((st = resid_explainer_new(m, tr, &eo, &lx, err)) != RESID_OK) return st;
        st = resid_layer_table(lx, r->rows, err);
        resid_explainer_free(lx);
        if (st != RESID_OK) return st;
    } else if ((st = resid_layer_table(r->ex, r->rows, err)) != RESID_OK) {
        return st;
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
            return rs_err(err, RESID_E_NOMEM, "explain: out of memory");
        }
        for (int32_t l = 0; l < L; l++) {
            u[2 * l] = (resid_unit){RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
            u[2 * l + 1] = (resid_unit){RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
        }
        st = resid_score_units(r->ex, u, 2 * L, sc, err);
        if (st == RESID_OK)
            for (int32_t l = 0; l < L; l++) {
                r->attn_contrast[l] = sc[2 * l].contrast;
                r->ffn_contrast[l] = sc[2 * l + 1].contrast;
            }
        free(u), free(sc);
        if (st != RESID_OK) return st;
    }

    /* Heads: all of them, exactly, in enumeration order. */
    r->key = r->contrast >= 0 ? RESID_KEY_CONTRAST : RESID_KEY_LPI;
    static const struct {
        const char *name;
        resid_unit_kind kind;
    } defs[N_LISTS] = {
        {"heads", RESID_UNIT_HEAD},
        {"head_positions", RESID_UNIT_HEAD_POS},
        {"ffn_neurons", RESID_UNIT_FFN_NEURON},
        {"attn_neurons", RESID_UNIT_ATTN_NEURON},
        {"head_positions_bottom", RESID_UNIT_HEAD_POS},
        {"ffn_neurons_bottom", RESID_UNIT_FFN_NEURON},
        {"attn_neurons_bottom", RESID_UNIT_ATTN_NEURON},
    };
    const int64_t nk = rq->neuron_top_k > 0 ? rq->neuron_top_k : rq->top_k;
    /* the other lists' rankings, together (rs_rank_many) */
    resid_rank_opts ro[N_LISTS];
    resid_score *rs[N_LISTS];
    int64_t rn[N_LISTS];
    resid_rank_stats rst[N_LISTS];
    int which[N_LISTS], nr = 0;
    for (int i = 0; i < N_LISTS; i++) {
        unit_list *ul = &r->lists[i];
        ul->name = defs[i].name;
        ul->kind = defs[i].kind;
        ul->bottom = i >= LIST_FIRST_BOTTOM;
        if (ul->bottom && rq->bottom_k <= 0) continue;
        ul->used = true;
        const int64_t k = ul->bottom                          ? rq->bottom_k
                          : i == LIST_FFN || i == LIST_ATTN ? nk
                                                            : rq->top_k;
        if (i == LIST_HEADS) {
            stage(rq, 4, "heads");
            if ((st = resid_score_all(r->ex, ul->kind, &ul->s, &ul->n, err)) != RESID_OK) return st;
            ul->all_exact = true;
            ul->st.n_units = ul->st.n_exact = ul->n;
            ul->st.k_requested = k;
            ul->st.k = k < ul->n ? k : ul->n;
            ul->st.clamped = k > ul->n;
            continue;
        }
        ro[nr] = resid_rank_defaults(ul->kind, k);
        ro[nr].key = r->key;
        ro[nr].exhaustive = rq->exhaustive;
        ro[nr].bottom = ul->bottom;
        which[nr++] = i;
    }
    stage(rq, 5, "head x positions and neurons");
    /* the top lists, then the bottom ones, whose bounds then use the max
     * and min of every direction the top lists projected */
    int nt = 0;
    while (nt < nr && !ro[nt].bottom) nt++;
    if ((st = rs_rank_many(r->ex, ro, nt, rs, rn, rst, err)) != RESID_OK ||
        (st = rs_rank_many(r->ex, ro + nt, nr - nt, rs + nt, rn + nt, rst + nt, err)) !=
            RESID_OK) {
        for (int q = 0; q < nt; q++) free(rs[q]);
        return st;
    }
    for (int q = 0; q < nr; q++) {
        unit_list *ul = &r->lists[which[q]];
        ul->s = rs[q], ul->n = rn[q], ul->st = rst[q];
    }

    /* Q1: which lower layers activate the top FFN value neurons. */
    stage(rq, 6, "query layers");
    if (rq->query) {
        resid_query_opts qo = resid_query_defaults();
        resid_error qerr;
        if (resid_query_layers_new(r->ex, RESID_UNIT_FFN_NEURON, &qo, &r->q1, &qerr) != RESID_OK) {
            r->q1 = NULL;
            snprintf(r->q1_error, sizeof r->q1_error, "%s", qerr.msg);
        }
    }

    /* The scoring-method comparison: its own runs of the prompt (paper
     * lens, plain and with each method's top-k FFN neurons zeroed). Asked
     * for explicitly, so a failure (e.g. k too large) fails the report. */
    if (rq->compare_scores) {
        stage(rq, 7, "scoring-method comparison");
        st = resid_compare_scores(m, rq->tokens, rq->n_tokens, r->target, rq->compare_k,
                                  rq->compare_seed, &r->cmp, err);
        if (st != RESID_OK) return st;
    }
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* JSON                                                                      */
/* ------------------------------------------------------------------------- */

/* Token lists computed at once: at most this many (units × k) per batch. */
#define TOKEN_LIST_BUDGET (1 << 20)

/* A parameter row (FFN or attention neuron direction) and the unit using it. */
typedef struct dir_key {
    int32_t kind, layer;
    int64_t row, i;
} dir_key;

static int cmp_dir_key(const void *pa, const void *pb) {
    const dir_key *a = pa, *b = pb;
    if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
    if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
    if (a->row != b->row) return a->row < b->row ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* Top and bottom tokens of the units s[0..n) with want[i] (want NULL: all)
 * into top/bottom + i·k (k <= V). FFN and attention neurons: of the raw
 * parameter row (fc2_k, W_O row; coefficient not applied, as the notebooks
 * print them), projected once per distinct row. Heads and head × positions:
 * of the unit's vector itself. One batched projection for all of them. */
static resid_status unit_tokens(const report *r, const resid_score *s, const bool *want,
                                int64_t n, int32_t k, resid_token_value *top,
                                resid_token_value *bottom, resid_error *err) {
    const int32_t D = r->info->d_model, dh = r->info->d_head;
    if (k <= 0 || n <= 0) return RESID_OK;
    size_t ny, nt;
    if (!rs_mul_size((size_t)n, (size_t)D, &ny) || !rs_mul_size(ny, sizeof(float), &ny) ||
        !rs_mul_size((size_t)n, (size_t)k, &nt) || !rs_mul_size(nt, sizeof *top, &nt))
        return rs_err(err, RESID_E_NOMEM, "explain: token lists of %lld units overflow",
                      (long long)n);
    float *v = malloc((size_t)D * sizeof *v), *y = malloc(ny);
    int64_t *slot = malloc((size_t)n * sizeof *slot);
    dir_key *keys = malloc((size_t)n * sizeof *keys);
    resid_token_value *dt = malloc(nt), *db = malloc(nt);
    resid_status st = RESID_OK;
    if (!v || !y || !slot || !keys || !dt || !db) {
        st = rs_err(err, RESID_E_NOMEM, "explain: out of memory for token lists");
        goto done;
    }
    int64_t nk = 0, nv = 0;
    for (int64_t i = 0; i < n; i++) {
        const resid_unit *u = &s[i].unit;
        slot[i] = -1;
        if (want && !want[i]) continue;
        if (rs_tokcache_get(r->ex, u, k, top + (size_t)i * k, bottom + (size_t)i * k)) {
            slot[i] = -2; /* done */
            continue;
        }
        if (u->kind == RESID_UNIT_FFN_NEURON)
            keys[nk++] = (dir_key){RESID_PARAM_FC2, u->layer, u->index, i};
        else if (u->kind == RESID_UNIT_ATTN_NEURON)
            keys[nk++] =
                (dir_key){RESID_PARAM_WO, u->layer, (int64_t)u->head * dh + u->index, i};
    }
    qsort(keys, (size_t)nk, sizeof *keys, cmp_dir_key);
    for (int64_t j = 0; !st && j < nk; j++) {
        const dir_key *a = &keys[j];
        if (j == 0 || a->kind != a[-1].kind || a->layer != a[-1].layer || a->row != a[-1].row) {
            st = resid_param_vector(r->m, (resid_param)a->kind, a->layer, a->row, v, err);
            if (!st)
                st = resid_lens_vector(r->m, RESID_LENS_PAPER, 1.0, v, y + (size_t)nv * D, err);
            nv++;
        }
        slot[a->i] = nv - 1;
    }
    for (int64_t i = 0; !st && i < n; i++) {
        if ((want && !want[i]) || slot[i] != -1) continue;
        st = resid_unit_lens_vector(r->ex, &s[i].unit, y + (size_t)nv * D, err);
        slot[i] = nv++;
    }
    if (!st && nv > 0) st = resid_project_many_topk(r->m, y, nv, k, dt, db, NULL, err);
    for (int64_t i = 0; !st && i < n; i++) {
        if (slot[i] < 0) continue;
        memcpy(top + (size_t)i * k, dt + (size_t)slot[i] * k, (size_t)k * sizeof *top);
        memcpy(bottom + (size_t)i * k, db + (size_t)slot[i] * k, (size_t)k * sizeof *bottom);
    }
done:
    free(v), free(y), free(slot), free(keys), free(dt), free(db);
    return st;
}

static cJSON *json_token(const report *r, int32_t id) {
    return rs_report_token(r->tok, r->rq->tokens[r->rq->n_tokens - 1], id);
}

static bool add_tokens(const report *r, cJSON *obj, const char *name, const resid_token_value *t,
                       int32_t n) {
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

void rs_report_slot_name(int32_t j, char *buf, size_t n) {
    if (j == 0)
        snprintf(buf, n, "emb");
    else
        snprintf(buf, n, "%c%d", (j % 2) ? 'a' : 'f', (j - 1) / 2);
}

/* One entry of a unit list. */
static bool add_unit(const report *r, cJSON *arr, int li, const resid_score *sc, bool tokens,
                     const resid_token_value *top, const resid_token_value *bot) {
    const resid_unit *u = &sc->unit;
    const int32_t *ids = r->rq->tokens;
    char id[64];
    resid_unit_format(u, id, sizeof id);
    cJSON *e = cJSON_CreateObject();
    if (!e) return false;
    cJSON_AddItemToArray(arr, e);
    if (r->rq->compact)
        return cJSON_AddStringToObject(e, "id", id) && cJSON_AddNumberToObject(e, "lpi", sc->lpi) &&
               (r->contrast < 0 || cJSON_AddNumberToObject(e, "contrast", sc->contrast));
    bool ok = cJSON_AddNumberToObject(e, "layer", u->layer) != NULL;
    if (ok && u->kind != RESID_UNIT_FFN_NEURON)
        ok = cJSON_AddNumberToObject(e, "head", u->head) != NULL;
    if (ok && u->kind == RESID_UNIT_ATTN_NEURON)
        ok = cJSON_AddNumberToObject(e, "dim", u->index) &&
             cJSON_AddNumberToObject(e, "row", (double)u->head * r->info->d_head + u->index);
    if (ok && u->kind == RESID_UNIT_FFN_NEURON)
        ok = cJSON_AddNumberToObject(e, "neuron", u->index) != NULL;
    if (ok && u->pos >= 0) {
        ok = cJSON_AddNumberToObject(e, "pos", u->pos) != NULL;
        cJSON *src =
            ok ? rs_report_token(r->tok, u->pos ? ids[u->pos - 1] : -1, ids[u->pos]) : NULL;
        ok = src != NULL;
        if (ok) cJSON_AddItemToObject(e, "source", src);
    }
    if (ok && !isnan(sc->coef)) ok = cJSON_AddNumberToObject(e, "coef", sc->coef) != NULL;
    ok = ok && cJSON_AddStringToObject(e, "id", id) && cJSON_AddNumberToObject(e, "lpi", sc->lpi) &&
         cJSON_AddNumberToObject(e, "prob_inc", sc->prob_inc) &&
         cJSON_AddNumberToObject(e, "bs_target", sc->bs_target);
    if (ok && r->contrast >= 0) ok = cJSON_AddNumberToObject(e, "contrast", sc->contrast) != NULL;
    if (ok && tokens) {
        const int32_t k = r->rq->n_unit_tokens; /* <= V (checked in compute) */
        ok = add_tokens(r, e, "top_tokens", top, k) && add_tokens(r, e, "bottom_tokens", bot, k);
    }
    return ok;
}

/* The target's statistics after an intervention (rank 1-based, as
 * `resid ablate --json` writes them). */
static bool add_stats(cJSON *o, const resid_target_stats *s) {
    return cJSON_AddNumberToObject(o, "prob", s->prob) &&
           cJSON_AddNumberToObject(o, "logprob", s->logprob) &&
           cJSON_AddNumberToObject(o, "rank", (double)s->rank + 1) &&
           cJSON_AddNumberToObject(o, "rr", s->rr) &&
           cJSON_AddNumberToObject(o, "model_prob", s->model_prob) &&
           cJSON_AddNumberToObject(o, "model_logprob", s->model_logprob) &&
           cJSON_AddNumberToObject(o, "model_rank", (double)s->model_rank + 1) &&
           cJSON_AddNumberToObject(o, "model_rr", s->model_rr);
}

/* {"name", "letter"?, "units": ["n:L_K", ...], stats} */
static cJSON *compare_row(const char *name, char letter, const resid_unit *u, int32_t k,
                          const resid_target_stats *s) {
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "name", name);
    if (ok && letter) {
        const char l[2] = {letter, 0};
        ok = cJSON_AddStringToObject(o, "letter", l) != NULL;
    }
    cJSON *ua = ok && u ? cJSON_AddArrayToObject(o, "units") : NULL;
    ok = ok && (!u || ua);
    for (int32_t i = 0; ok && u && i < k; i++) {
        char id[64] = "n:";
        resid_unit_format(&u[i], id + 2, sizeof id - 2);
        cJSON *e = cJSON_CreateString(id);
        ok = e != NULL;
        if (ok) cJSON_AddItemToArray(ua, e);
    }
    ok = ok && add_stats(o, s);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* "score_compare": the comparison of resid_compare_scores. */
static bool add_score_compare(const report *r, cJSON *root) {
    const resid_score_compare *c = r->cmp;
    cJSON *o = cJSON_AddObjectToObject(root, "score_compare");
    bool ok = o && cJSON_AddNumberToObject(o, "k", c->k) &&
              cJSON_AddNumberToObject(o, "seed", (double)r->rq->compare_seed) &&
              cJSON_AddNumberToObject(o, "target", c->target) &&
              cJSON_AddStringToObject(o, "lens", "paper");
    cJSON *orig = ok ? compare_row("original", 0, NULL, 0, &c->original) : NULL;
    ok = orig != NULL;
    if (ok) cJSON_AddItemToObject(o, "original", orig);
    cJSON *ma = ok ? cJSON_AddArrayToObject(o, "methods") : NULL;
    ok = ma != NULL;
    for (int f = 0; ok && f < RESID_FSCORE_COUNT; f++) {
        cJSON *e = compare_row(resid_fscore_name((resid_fscore)f), (char)('a' + f),
                               c->units + (size_t)f * c->k, c->k, &c->method[f]);
        ok = e != NULL;
        if (ok) cJSON_AddItemToArray(ma, e);
    }
    cJSON *rnd = ok ? compare_row("random", 0, c->units + (size_t)RESID_FSCORE_COUNT * c->k, c->k,
                                  &c->random)
                    : NULL;
    ok = rnd != NULL;
    if (ok) cJSON_AddItemToObject(o, "random", rnd);
    return ok;
}

/* Builds the tree; on failure *st says why (RESID_E_NOMEM unless a
 * projection failed). */
static cJSON *build_json(const report *r, resid_status *st, resid_error *err) {
    const resid_model_info *info = r->info;
    const resid_explain_request *rq = r->rq;
    stage(rq, n_stages(rq), "report");
    const int32_t L = info->n_layer;
    *st = RESID_E_NOMEM;
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    /* token lists of up to `chunk` units of a list at a time */
    const int32_t kt = rq->compact ? 0 : rq->n_unit_tokens;
    const int64_t chunk = kt > 0 && TOKEN_LIST_BUDGET / kt > 0 ? TOKEN_LIST_BUDGET / kt : 1;
    int64_t n_max = 1;
    for (int li = 0; li < N_LISTS; li++)
        if (r->lists[li].n > n_max) n_max = r->lists[li].n;
    const size_t n_tok = (size_t)(n_max < chunk ? n_max : chunk) * (size_t)kt + 1;
    resid_token_value *top = malloc(n_tok * sizeof *top);
    resid_token_value *bot = malloc(n_tok * sizeof *bot);
    bool ok = top && bot;
    cJSON *mo = ok ? cJSON_AddObjectToObject(root, "model") : NULL;
    ok = mo && cJSON_AddStringToObject(mo, "name", info->name) &&
         cJSON_AddStringToObject(mo, "arch", resid_arch_name(info->arch)) &&
         cJSON_AddNumberToObject(mo, "n_layer", L) &&
         cJSON_AddNumberToObject(mo, "n_head", info->n_head) &&
         cJSON_AddNumberToObject(mo, "d_head", info->d_head) &&
         cJSON_AddNumberToObject(mo, "d_ffn", info->d_ffn) &&
         cJSON_AddNumberToObject(mo, "n_vocab", info->n_vocab);
    if (ok && rq->prompt_tokens) {
        cJSON *toks = json_tokens(r->tok, rq->tokens, rq->n_tokens);
        ok = toks != NULL;
        if (ok) cJSON_AddItemToObject(root, "tokens", toks);
    }

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
    ok = ok && cJSON_AddStringToObject(root, "lens", resid_lens_name(rq->lens)) &&
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
         cJSON_AddNumberToObject(ranking, "top_requested", (double)rq->top_k) &&
         cJSON_AddNumberToObject(ranking, "projections", (double)r->ex->n_proj);
    if (ok && rq->bottom_k > 0)
        ok = cJSON_AddNumberToObject(ranking, "bottom_requested", (double)rq->bottom_k) != NULL;
    for (int li = 0; ok && li < N_LISTS; li++) {
        const unit_list *ul = &r->lists[li];
        if (!ul->used) continue;
        cJSON *rk = cJSON_AddObjectToObject(ranking, ul->name);
        ok = rk &&
             cJSON_AddStringToObject(
                 rk, "method", ul->all_exact || rq->exhaustive ? "exhaustive" : "certified") &&
             cJSON_AddNumberToObject(rk, "units_total", (double)ul->st.n_units) &&
             cJSON_AddNumberToObject(rk, "units_scored_exactly", (double)ul->st.n_exact) &&
             cJSON_AddNumberToObject(rk, "k", (double)(ul->all_exact ? ul->n : ul->st.k)) &&
             cJSON_AddBoolToObject(rk, "clamped", ul->st.clamped);
        if (ok && (li == LIST_FFN || li == LIST_ATTN) && rq->neuron_top_k > 0 && !ul->bottom)
            ok = cJSON_AddNumberToObject(rk, "k_requested", (double)ul->st.k_requested) != NULL;
        cJSON *arr = ok ? cJSON_AddArrayToObject(root, ul->name) : NULL;
        ok = arr != NULL;
        /* Heads get tokens only on request, the top_k by score. */
        bool *want = NULL;
        if (li == LIST_HEADS && rq->head_tokens && !rq->compact) {
            want = calloc((size_t)ul->n + 1, sizeof *want);
            rs_keyed *order = malloc(((size_t)ul->n + 1) * sizeof *order);
            ok = want && order;
            for (int64_t i = 0; ok && i < ul->n; i++)
                order[i] =
                    (rs_keyed){r->key == RESID_KEY_CONTRAST ? ul->s[i].contrast : ul->s[i].lpi, i};
            if (ok) rs_keyed_sort(order, (size_t)ul->n);
            for (int64_t i = 0; ok && i < ul->st.k; i++)
                want[order[i].i] = true;
            free(order);
        }
        const bool any_tokens = kt > 0 && (li != LIST_HEADS || want);
        for (int64_t i = 0; ok && i < ul->n; i++) {
            if (any_tokens && i % chunk == 0) {
                const int64_t nc = ul->n - i < chunk ? ul->n - i : chunk;
                resid_status ts = unit_tokens(r, ul->s + i, want ? want + i : NULL, nc, kt, top,
                                              bot, err);
                if (ts != RESID_OK) {
                    *st = ts;
                    ok = false;
                }
            }
            const size_t o = (size_t)(i % chunk) * (size_t)kt;
            ok = ok && add_unit(r, arr, li, &ul->s[i], li != LIST_HEADS || (want && want[i]),
                                top + o, bot + o);
            if (!ok && *st != RESID_E_NOMEM) {
                free(want);
                free(top), free(bot);
                cJSON_Delete(root);
                return NULL;
            }
        }
        free(want);
    }

    /* Query layers (Q1). */
    if (ok && rq->query) {
        cJSON *ql = cJSON_AddArrayToObject(root, "query_layers");
        ok = ql != NULL;
        if (ok && r->q1) {
            const resid_query_layers *q = r->q1;
            for (int32_t j = 0; ok && j < q->n_slots; j++) {
                char lab[16];
                rs_report_slot_name(j, lab, sizeof lab);
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
    }
    if (ok && r->cmp) ok = add_score_compare(r, root);
    free(top), free(bot);
    if (!ok) {
        cJSON_Delete(root);
        rs_err(err, RESID_E_NOMEM, "explain: out of memory building the report");
        return NULL;
    }
    *st = RESID_OK;
    return root;
}

/* ------------------------------------------------------------------------- */
/* Entry points                                                              */
/* ------------------------------------------------------------------------- */

resid_status rs_explain_cjson(const resid_model *m, const resid_explain_request *rq, cJSON **out,
                              resid_error *err) {
    *out = NULL;
    if (!m || !rq) return rs_err(err, RESID_E_ARG, "explain: no model or no request");
    report r;
    memset(&r, 0, sizeof r);
    r.m = m;
    r.rq = rq;
    r.info = resid_model_get_info(m);
    r.tok = resid_model_tokenizer(m);
    resid_status st = compute(&r, err);
    if (st == RESID_OK) *out = build_json(&r, &st, err);
    report_free(&r);
    return st;
}

resid_status resid_explain_json(const resid_model *m, const resid_explain_request *rq, char **json,
                                resid_error *err) {
    *json = NULL;
    cJSON *root;
    resid_status st = rs_explain_cjson(m, rq, &root, err);
    if (st != RESID_OK) return st;
    *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!*json) return rs_err(err, RESID_E_NOMEM, "explain: out of memory printing the report");
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* Sessions                                                                  */
/* ------------------------------------------------------------------------- */

struct rs_explain_session {
    report r;
    resid_explain_request rq; /* r.rq points here */
    int32_t *tokens;          /* rq.tokens: owned copy */
};

void rs_explain_session_free(rs_explain_session *s) {
    if (!s) return;
    report_free(&s->r);
    free(s->tokens);
    free(s);
}

resid_status rs_explain_session_new(const resid_model *m, const resid_explain_request *rq,
                                    bool all_positions, rs_explain_session **out,
                                    resid_error *err) {
    *out = NULL;
    if (!m || !rq) return rs_err(err, RESID_E_ARG, "explain: no model or no request");
    rs_explain_session *s = calloc(1, sizeof *s);
    const size_t nt = rq->tokens && rq->n_tokens > 0 ? (size_t)rq->n_tokens : 0;
    if (!s || !(s->tokens = malloc((nt ? nt : 1) * sizeof *s->tokens))) {
        free(s);
        return rs_err(err, RESID_E_NOMEM, "explain: out of memory");
    }
    if (nt) memcpy(s->tokens, rq->tokens, nt * sizeof *s->tokens);
    s->rq = *rq;
    s->rq.tokens = nt ? s->tokens : NULL;
    s->r.m = m;
    s->r.rq = &s->rq;
    s->r.info = resid_model_get_info(m);
    s->r.tok = resid_model_tokenizer(m);
    s->r.all_positions = all_positions;
    resid_status st = compute(&s->r, err);
    if (st != RESID_OK) {
        rs_explain_session_free(s);
        return st;
    }
    *out = s;
    return RESID_OK;
}

resid_status rs_explain_session_json(rs_explain_session *s, cJSON **out, resid_error *err) {
    resid_status st;
    *out = build_json(&s->r, &st, err);
    return st;
}

const resid_trace *rs_explain_session_trace(const rs_explain_session *s) { return s->r.tr; }

resid_explainer *rs_explain_session_explainer(rs_explain_session *s) { return s->r.ex; }

const resid_explain_request *rs_explain_session_request(const rs_explain_session *s) {
    return &s->rq;
}
