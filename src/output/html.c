/*
 * html.c - the self-contained HTML report and the front end's extra views
 * (lens grid, head details, neuron query details). See html.h.
 */
#include "output/html.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "analysis/analysis.h"
#include "core/util.h"
#include "model/model.h"
#include "output/web_assets.h"
#include "tensor/tensor.h"

const rs_web_asset *rs_web_asset_find(const char *name) {
    for (int i = 0; name && i < rs_web_n_assets; i++)
        if (!strcmp(rs_web_assets[i].name, name)) return &rs_web_assets[i];
    return NULL;
}

rs_web_opts rs_web_defaults(void) {
    rs_web_opts o = {.n_head_detail = 12,
                     .n_tokens = 5,
                     .n_query = 8,
                     .grid_positions = 0,
                     .n_neuron_detail = INT32_MAX};
    return o;
}

struct rs_web_ctx {
    const resid_model *m;
    const resid_model_info *info;
    const resid_tokenizer *tok;
    int32_t *ids;
    int32_t n;
    resid_trace *tr;
    resid_explainer *ex;
    int32_t target, contrast;
    bool borrowed; /* tr and ex belong to an explain session */
};

/* ------------------------------------------------------------------------- */
/* Tokens                                                                    */
/* ------------------------------------------------------------------------- */

cJSON *rs_web_token(const resid_tokenizer *tok, int32_t prev, int32_t id) {
    return rs_report_token(tok, prev, id); /* the report's token format */
}

/* Token at prompt position j (as it reads after the previous one). */
static cJSON *prompt_token(const rs_web_ctx *c, int32_t j) {
    return rs_web_token(c->tok, j ? c->ids[j - 1] : -1, c->ids[j]);
}

/* An output token (as it would read after the last prompt token). */
static cJSON *out_token(const rs_web_ctx *c, int32_t id) {
    return rs_web_token(c->tok, c->ids[c->n - 1], id);
}

static bool add_token_values(const rs_web_ctx *c, cJSON *obj, const char *name,
                             const resid_token_value *t, int32_t n) {
    cJSON *arr = cJSON_AddArrayToObject(obj, name);
    for (int32_t i = 0; arr && i < n; i++) {
        cJSON *e = out_token(c, t[i].id);
        if (!e) return false;
        cJSON_AddItemToArray(arr, e);
        if (!cJSON_AddNumberToObject(e, "bs", t[i].value)) return false;
    }
    return arr != NULL;
}

/* ------------------------------------------------------------------------- */
/* Context                                                                   */
/* ------------------------------------------------------------------------- */

resid_status rs_web_ctx_new(const resid_model *m, const int32_t *ids, int32_t n, int32_t target,
                            int32_t contrast, resid_lens unit_lens, rs_web_ctx **out,
                            resid_error *err) {
    *out = NULL;
    if (!m || !ids || n < 1) return rs_err(err, RESID_E_ARG, "web: empty prompt");
    if (unit_lens == RESID_LENS_LOGIT) unit_lens = RESID_LENS_PAPER;
    rs_web_ctx *c = calloc(1, sizeof *c);
    if (!c || !(c->ids = malloc((size_t)n * sizeof *c->ids))) {
        free(c);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    }
    memcpy(c->ids, ids, (size_t)n * sizeof *ids);
    c->n = n;
    c->m = m;
    c->info = resid_model_get_info(m);
    c->tok = resid_model_tokenizer(m);
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_EXPLAIN_CAPTURE;
    to.positions = RESID_POS_ALL;
    resid_status st = resid_forward(m, ids, n, &to, &c->tr, err);
    if (st == RESID_OK) {
        resid_explain_opts eo = resid_explain_defaults();
        eo.lens = unit_lens;
        eo.target = target;
        eo.contrast = contrast;
        st = resid_explainer_new(m, c->tr, &eo, &c->ex, err);
    }
    if (st != RESID_OK) {
        rs_web_ctx_free(c);
        return st;
    }
    c->target = resid_explainer_target(c->ex);
    c->contrast = resid_explainer_contrast(c->ex);
    *out = c;
    return RESID_OK;
}

resid_status rs_web_ctx_from_session(const resid_model *m, rs_explain_session *s,
                                     rs_web_ctx **out, resid_error *err) {
    *out = NULL;
    const resid_trace *tr = rs_explain_session_trace(s);
    const resid_explain_request *rq = rs_explain_session_request(s);
    if (!tr || tr->n_cap != tr->n_tokens || tr->n_tokens != rq->n_tokens)
        return rs_err(err, RESID_E_ARG, "web: the explain session lacks every position "
                                        "(rs_explain_session_new with all_positions)");
    rs_web_ctx *c = calloc(1, sizeof *c);
    if (!c || !(c->ids = malloc((size_t)rq->n_tokens * sizeof *c->ids))) {
        free(c);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    }
    memcpy(c->ids, rq->tokens, (size_t)rq->n_tokens * sizeof *c->ids);
    c->n = rq->n_tokens;
    c->m = m;
    c->info = resid_model_get_info(m);
    c->tok = resid_model_tokenizer(m);
    c->tr = (resid_trace *)tr;
    c->ex = rs_explain_session_explainer(s);
    c->borrowed = true;
    c->target = resid_explainer_target(c->ex);
    c->contrast = resid_explainer_contrast(c->ex);
    *out = c;
    return RESID_OK;
}

void rs_web_ctx_free(rs_web_ctx *c) {
    if (!c) return;
    if (!c->borrowed) {
        resid_explainer_free(c->ex);
        resid_trace_free(c->tr);
    }
    free(c->ids);
    free(c);
}

/* ------------------------------------------------------------------------- */
/* Lens grid                                                                 */
/* ------------------------------------------------------------------------- */

static bool add_cells(const rs_web_ctx *c, cJSON *rows, const char *name, int32_t layer,
                      const char *kind, const resid_lens_cell *cells, int32_t n_pos) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return false;
    cJSON_AddItemToArray(rows, r);
    cJSON *arr = cJSON_AddStringToObject(r, "name", name) &&
                         cJSON_AddNumberToObject(r, "layer", layer) &&
                         cJSON_AddStringToObject(r, "kind", kind)
                     ? cJSON_AddArrayToObject(r, "cells")
                     : NULL;
    if (!arr) return false;
    for (int32_t t = 0; t < n_pos; t++) {
        cJSON *e = cJSON_CreateObject(), *tk = e ? out_token(c, cells[t].top1) : NULL;
        if (!tk) {
            cJSON_Delete(e);
            return false;
        }
        cJSON_AddItemToArray(arr, e);
        cJSON_AddItemToObject(e, "top1", tk);
        if (!cJSON_AddNumberToObject(e, "p", cells[t].p_target) ||
            !cJSON_AddNumberToObject(e, "rank", cells[t].rank_target) ||
            !cJSON_AddNumberToObject(e, "p_top1", cells[t].p_top1))
            return false;
    }
    return true;
}

/* Largest projection output held at once (rows x V floats). */
#define PROJ_MAX_BYTES ((size_t)128 << 20)

/* out[n][V] = y[n][D]·W_Uᵀ through the canonical projection (the exact
 * scores' kernel, faster than BLAS at these row counts), RS_CANON_ROWS rows
 * per call. */
static void project_rows(const rs_web_ctx *c, const float *y, int64_t n, float *out) {
    const int32_t D = c->ex->D, V = c->ex->V;
    for (int64_t r0 = 0; r0 < n; r0 += RS_CANON_ROWS) {
        const int64_t nb = n - r0 < RS_CANON_ROWS ? n - r0 : RS_CANON_ROWS;
        rs_project_canon(c->ex, y + (size_t)r0 * D, (int)nb, out + (size_t)r0 * V);
    }
}

/* Rows per projection buffer: all n when they fit PROJ_MAX_BYTES. */
static int64_t proj_rows_fit(const rs_web_ctx *c, int64_t n) {
    int64_t cap = (int64_t)(PROJ_MAX_BYTES / ((size_t)c->ex->V * sizeof(float)));
    if (cap < 32) cap = 32;
    return n < cap ? n : cap;
}

/* A lens-grid cell from logits z[V] (minus sub[V] when given): top-1
 * (lowest id on ties), its probability, p(w) and w's 0-based rank, as
 * resid_lens_grid_new computes them. */
static void cell_from(const float *z, const double *sub, int32_t V, int32_t w,
                      resid_lens_cell *cell) {
    if (!sub) { /* floats: the exact scores' log-sum-exp */
        float zb, zmin;
        rs_minmax(z, V, &zb, &zmin);
        int32_t best = 0;
        while (best < V - 1 && z[best] != zb) best++; /* the lowest id on ties */
        const float fw = z[w];
        int32_t rank = 0;
        for (int32_t t = 0; t < V; t++) rank += z[t] > fw;
        for (int32_t t = 0; t < w; t++) rank += z[t] == fw;
        const double lse = rs_logsumexp(z, V);
        cell->top1 = best;
        cell->p_top1 = exp(zb - lse);
        cell->p_target = exp(fw - lse);
        cell->rank_target = rank;
        return;
    }
    int32_t best = 0;
    double zb = z[0] - sub[0];
    for (int32_t t = 1; t < V; t++) {
        const double zt = z[t] - sub[t];
        if (zt > zb) best = t, zb = zt;
    }
    const double zw = z[w] - sub[w];
    double sum = 0;
    int32_t rank = 0;
    for (int32_t t = 0; t < V; t++) {
        const double zt = z[t] - sub[t];
        sum += exp(zt - zb);
        rank += zt > zw || (zt == zw && t < w);
    }
    cell->top1 = best;
    cell->p_top1 = 1.0 / sum;
    cell->p_target = exp(zw - zb) / sum;
    cell->rank_target = rank;
}

/* Scale of the final norm of x (σ or rms, with eps), as the lenses use. */
static double final_scale(const rs_web_ctx *c, const float *x) {
    const int32_t D = c->info->d_model;
    double mean = 0, ss = 0;
    if (c->info->arch == RESID_ARCH_GPT2) {
        for (int32_t d = 0; d < D; d++) mean += x[d];
        mean /= D;
    }
    for (int32_t d = 0; d < D; d++) ss += (x[d] - mean) * (x[d] - mean);
    return sqrt(ss / D + (double)c->m->hp.norm_eps);
}

/* y[D] = the lens's input to W_U for residual v (see resid_lens_grid_new). */
static void grid_y(const rs_web_ctx *c, resid_lens lens, double scale, const float *v, float *y) {
    const resid_model *m = c->m;
    const int32_t D = c->info->d_model;
    double mean = 0;
    if (c->info->arch == RESID_ARCH_GPT2) {
        for (int32_t d = 0; d < D; d++) mean += v[d];
        mean /= D;
    }
    if (lens == RESID_LENS_LOGIT) scale = final_scale(c, v);
    const double inv = 1.0 / (scale > 0 ? scale : 1.0);
    const bool beta = lens != RESID_LENS_PAPER && m->out_norm_b;
    for (int32_t d = 0; d < D; d++) {
        const double g = m->out_norm_w ? m->out_norm_w[d] : 1.0;
        y[d] = (float)(g * (v[d] - mean) * inv + (beta ? m->out_norm_b[d] : 0.0));
    }
}

/* The lens grid (same cells as resid_lens_grid_new, within float
 * rounding) with the work shared: the x_L row from the trace's logits
 * when it has them (minus W_U·β_f in the paper lens), the t* column from
 * the explainer's contexts when the grid is in the unit lens, and every
 * other cell through the canonical projection. */
static resid_status grid_fast(rs_web_ctx *c, resid_lens lens, int32_t n_cols,
                              resid_lens_grid **out, resid_error *err) {
    *out = NULL;
    const resid_trace *tr = c->tr;
    const resid_explainer *e = c->ex;
    const int32_t L = c->info->n_layer, D = c->info->d_model, V = c->info->n_vocab;
    const int32_t PT = tr->n_cap, w = c->target;
    /* columns: trace rows P0..PT-1 (the last P) */
    const int32_t P = n_cols > 0 && n_cols < PT ? n_cols : PT, P0 = PT - P;
    const bool from_ctx = lens == e->lens;
    const bool from_logits = tr->logits && (lens != RESID_LENS_PAPER || e->wu_beta || !c->m->out_norm_b);
    resid_lens_grid *g = calloc(1, sizeof *g);
    int64_t n_rows = 0;
    /* the GEMM's rows: (slot, t) with slot 0..L-1 = x_in, L..2L-1 = x_mid, 2L = x_L */
    int32_t(*job)[2] = malloc((size_t)(2 * L + 1) * P * sizeof *job);
    double *sc = malloc((size_t)P * sizeof *sc);
    if (g) {
        g->in = malloc((size_t)(L + 1) * P * sizeof *g->in);
        g->mid = malloc((size_t)L * P * sizeof *g->mid);
    }
    if (!g || !job || !sc || !g->in || !g->mid) {
        resid_lens_grid_free(g);
        free(job), free(sc);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory for the lens grid");
    }
    g->lens = lens, g->target = w, g->n_layer = L, g->pos_first = tr->pos_first + P0, g->n_pos = P;
    const float *xl = tr->x_in + ((size_t)L * PT + P0) * D; /* x_L at column 0 */
    for (int32_t t = 0; t < P; t++) sc[t] = final_scale(c, xl + (size_t)t * D);
    for (int32_t slot = 0; slot <= 2 * L; slot++)
        for (int32_t t = 0; t < P; t++) {
            if (slot == 2 * L && from_logits) continue;
            if (t == P - 1 && from_ctx) continue;
            job[n_rows][0] = slot, job[n_rows][1] = t, n_rows++;
        }
    const int64_t nb = proj_rows_fit(c, n_rows);
    float *y = malloc(((size_t)nb + 1) * D * sizeof *y);
    float *z = rs_proj_buf(c->ex, ((size_t)nb + 1) * V); /* no fresh pages */
    if (!y || !z) {
        resid_lens_grid_free(g);
        free(job), free(sc), free(y);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory for the lens grid");
    }
#define GRID_CELL(slot, t)                                                                         \
    ((slot) < L ? &g->in[(size_t)(slot) * P + (t)]                                              \
                : (slot) < 2 * L ? &g->mid[(size_t)((slot) - L) * P + (t)] : &g->in[(size_t)L * P + (t)])
    for (int64_t r0 = 0; r0 < n_rows; r0 += nb) {
        const int64_t n = n_rows - r0 < nb ? n_rows - r0 : nb;
        for (int64_t i = 0; i < n; i++) {
            const int32_t slot = job[r0 + i][0], t = job[r0 + i][1];
            const float *x = slot < L       ? tr->x_in + ((size_t)slot * PT + P0 + t) * D
                             : slot < 2 * L ? tr->x_mid + ((size_t)(slot - L) * PT + P0 + t) * D
                                            : xl + (size_t)t * D;
            grid_y(c, lens, sc[t], x, y + (size_t)i * D);
        }
        project_rows(c, y, n, z);
#pragma omp parallel for schedule(static) if (n * (int64_t)V >= RS_PAR_MIN_WORK)
        for (int64_t i = 0; i < n; i++)
            cell_from(z + (size_t)i * V, NULL, V, w, GRID_CELL(job[r0 + i][0], job[r0 + i][1]));
    }
    if (from_ctx) /* context 2L is x_L */
#pragma omp parallel for schedule(dynamic) if ((int64_t)(2 * L + 1) * V >= RS_PAR_MIN_WORK)
        for (int32_t slot = 0; slot <= 2 * L; slot++) {
            const int ci = slot == 2 * L ? 2 * L : slot < L ? 2 * slot : 2 * (slot - L) + 1;
            if (slot < 2 * L || !from_logits)
                cell_from(e->ctx[ci].logp, NULL, V, w, GRID_CELL(slot, P - 1));
        }
    if (from_logits) {
        const double *sub = lens == RESID_LENS_PAPER ? e->wu_beta : NULL;
#pragma omp parallel for schedule(static) if ((int64_t)P * V >= RS_PAR_MIN_WORK)
        for (int32_t t = 0; t < P; t++)
            cell_from(tr->logits + (size_t)(P0 + t) * V, sub, V, w, GRID_CELL(2 * L, t));
    }
#undef GRID_CELL
    free(job), free(sc), free(y);
    *out = g;
    return RESID_OK;
}

resid_status rs_web_lens_grid(rs_web_ctx *c, resid_lens lens, const rs_web_opts *o, cJSON **out,
                              resid_error *err) {
    (void)o;
    *out = NULL;
    resid_lens_grid *g;
    resid_status st = grid_fast(c, lens, o ? o->grid_positions : 0, &g, err);
    if (st != RESID_OK) return st;
    const int32_t L = g->n_layer, P = g->n_pos;
    cJSON *root = cJSON_CreateObject(), *rows = NULL;
    bool ok = root && cJSON_AddStringToObject(root, "lens", resid_lens_name(lens)) &&
              cJSON_AddNumberToObject(root, "target", g->target) &&
              cJSON_AddNumberToObject(root, "pos_first", g->pos_first) &&
              (rows = cJSON_AddArrayToObject(root, "rows")) != NULL;
    char name[48];
    for (int32_t l = 0; ok && l < L; l++) {
        snprintf(name, sizeof name, "x_in[%d]", l);
        ok = add_cells(c, rows, name, l, "in", g->in + (size_t)l * P, P);
        snprintf(name, sizeof name, "x_mid[%d]", l);
        ok = ok && add_cells(c, rows, name, l, "mid", g->mid + (size_t)l * P, P);
    }
    ok = ok && add_cells(c, rows, "x_L", L, "out", g->in + (size_t)L * P, P);
    resid_lens_grid_free(g);
    if (!ok) {
        cJSON_Delete(root);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory building the lens grid");
    }
    *out = root;
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* Heads                                                                     */
/* ------------------------------------------------------------------------- */

static bool add_score_fields(const rs_web_ctx *c, cJSON *e, const resid_score *s) {
    bool ok = cJSON_AddNumberToObject(e, "lpi", s->lpi) &&
              cJSON_AddNumberToObject(e, "prob_inc", s->prob_inc) &&
              cJSON_AddNumberToObject(e, "bs_target", s->bs_target);
    if (ok && c->contrast >= 0) ok = cJSON_AddNumberToObject(e, "contrast", s->contrast) != NULL;
    return ok;
}

/* The attention row of head (l, h) at t*: α[T]. */
static const float *attn_row(const rs_web_ctx *c, int32_t l, int32_t h) {
    const resid_trace *tr = c->tr;
    return tr->attn + (((size_t)l * tr->n_head + h) * tr->n_cap + (tr->n_cap - 1)) * tr->n_tokens;
}

static bool add_attention(const rs_web_ctx *c, cJSON *e, int32_t l, int32_t h) {
    const float *a = attn_row(c, l, h);
    cJSON *arr = cJSON_AddArrayToObject(e, "attention");
    for (int32_t j = 0; arr && j < c->n; j++) {
        cJSON *v = cJSON_CreateNumber(a[j]);
        if (!v) return false;
        cJSON_AddItemToArray(arr, v);
    }
    return arr != NULL;
}

/* Fills a head's details: s[0] the head's score, s[1 + j] its unit at
 * source position j; top/bot[k] its tokens. false on out of memory. */
static bool head_fill(const rs_web_ctx *c, cJSON *root, int32_t layer, int32_t head,
                      const resid_score *s, const resid_token_value *top,
                      const resid_token_value *bot, int32_t k) {
    const int32_t T = c->n;
    char id[32];
    snprintf(id, sizeof id, "%d_%d", layer, head);
    bool ok = cJSON_AddStringToObject(root, "id", id) &&
              cJSON_AddNumberToObject(root, "layer", layer) &&
              cJSON_AddNumberToObject(root, "head", head) && add_score_fields(c, root, &s[0]) &&
              add_attention(c, root, layer, head) &&
              add_token_values(c, root, "top_tokens", top, k) &&
              add_token_values(c, root, "bottom_tokens", bot, k);
    cJSON *pos = ok ? cJSON_AddArrayToObject(root, "positions") : NULL;
    ok = pos != NULL;
    for (int32_t j = 0; ok && j < T; j++) {
        cJSON *e = cJSON_CreateObject(), *tk = e ? prompt_token(c, j) : NULL;
        if (!tk) {
            cJSON_Delete(e);
            ok = false;
            break;
        }
        cJSON_AddItemToArray(pos, e);
        ok = cJSON_AddNumberToObject(e, "pos", j) && cJSON_AddItemToObject(e, "source", tk) &&
             cJSON_AddNumberToObject(e, "coef", s[j + 1].coef) &&
             add_score_fields(c, e, &s[j + 1]);
    }
    return ok;
}

/* Details of heads idx[0..nd): the head itself (the report's scores), each
 * of its head × positions scored exactly (the canonical path: the values
 * the report's head_positions list shows, and free for the units it has
 * already scored), and the head's top and bottom tokens (from the
 * explainer's token cache when the report projected it). */
static resid_status heads_batch(rs_web_ctx *c, const cJSON *heads, const int32_t *idx,
                                int32_t nd, int32_t K, cJSON **outs, resid_error *err) {
    resid_explainer *e = c->ex;
    const int32_t H = c->info->n_head, T = c->n, D = e->D;
    const int64_t per = (int64_t)T + 1, n = (int64_t)nd * per;
    if (K < 0) K = 0;
    if (K > e->V) K = e->V;
    resid_unit *u = malloc(((size_t)n + 1) * sizeof *u);
    const resid_unit **hp = malloc(((size_t)n + 1) * sizeof *hp);
    resid_score *sc = malloc(((size_t)n + 1) * sizeof *sc);
    double *lpi = malloc(((size_t)n + 1) * sizeof *lpi);
    resid_token_value *tops = malloc(((size_t)nd * K + 1) * sizeof *tops);
    resid_token_value *bots = malloc(((size_t)nd * K + 1) * sizeof *bots);
    int32_t *miss = malloc(((size_t)nd + 1) * sizeof *miss);
    float *y = malloc(((size_t)nd + 1) * D * sizeof *y);
    resid_token_value *mt = malloc(((size_t)nd * K + 1) * sizeof *mt);
    resid_token_value *mb = malloc(((size_t)nd * K + 1) * sizeof *mb);
    resid_status st = RESID_OK;
    if (!u || !hp || !sc || !lpi || !tops || !bots || !miss || !y || !mt || !mb) {
        st = rs_err(err, RESID_E_NOMEM, "web: out of memory for the head details");
        goto done;
    }
    int64_t nhp = 0;
    for (int32_t q = 0; q < nd; q++) {
        const int32_t l = idx[q] / H, h = idx[q] % H;
        u[q * per] = (resid_unit){RESID_UNIT_HEAD, l, h, -1, -1};
        for (int32_t j = 0; j < T; j++) {
            u[q * per + 1 + j] = (resid_unit){RESID_UNIT_HEAD_POS, l, h, -1, j};
            hp[nhp++] = &u[q * per + 1 + j];
        }
    }
    if ((st = rs_units_prepare(e, u, n, err)) != RESID_OK) goto done;
    /* head × positions: exact scores in the order hp lists them */
    double *lhp = lpi + nd;
    if ((st = rs_exact_lpi(e, hp, nhp, lhp, err)) != RESID_OK) goto done;
    for (int64_t i = 0, q = 0; q < nd; q++)
        for (int32_t j = 0; j < T; j++) lpi[q * per + 1 + j] = lhp[i++];
    /* the heads' tokens: cached, else projected here */
    int32_t nm = 0;
    for (int32_t q = 0; q < nd && K > 0; q++)
        if (!rs_tokcache_get(e, &u[q * per], K, tops + (size_t)q * K, bots + (size_t)q * K)) {
            if ((st = resid_unit_lens_vector(e, &u[q * per], y + (size_t)nm * D, err)) != RESID_OK)
                goto done;
            miss[nm++] = q;
        }
    if (nm > 0) {
        if ((st = resid_project_many_topk(c->m, y, nm, K, mt, mb, NULL, err)) != RESID_OK)
            goto done;
        for (int32_t i = 0; i < nm; i++) {
            memcpy(tops + (size_t)miss[i] * K, mt + (size_t)i * K, (size_t)K * sizeof *mt);
            memcpy(bots + (size_t)miss[i] * K, mb + (size_t)i * K, (size_t)K * sizeof *mb);
        }
    }
    for (int64_t r = 0; r < n; r++) {
        if (r % per) {
            rs_score_linear(e, &u[r], &sc[r]);
            rs_score_finish(e, &sc[r], lpi[r]);
            continue;
        }
        /* the head itself: the report's exact score */
        rs_score_linear(e, &u[r], &sc[r]);
        sc[r].lpi = sc[r].prob_inc = NAN;
        const cJSON *hj = cJSON_GetArrayItem(heads, idx[r / per]);
        const cJSON *f;
        if ((f = cJSON_GetObjectItemCaseSensitive(hj, "lpi")) && cJSON_IsNumber(f))
            sc[r].lpi = f->valuedouble;
        if ((f = cJSON_GetObjectItemCaseSensitive(hj, "prob_inc")) && cJSON_IsNumber(f))
            sc[r].prob_inc = f->valuedouble;
        if ((f = cJSON_GetObjectItemCaseSensitive(hj, "bs_target")) && cJSON_IsNumber(f))
            sc[r].bs_target = f->valuedouble;
        if ((f = cJSON_GetObjectItemCaseSensitive(hj, "contrast")) && cJSON_IsNumber(f))
            sc[r].contrast = f->valuedouble;
        if (isnan(sc[r].lpi)) { /* no report entry (cannot happen): score it */
            const resid_unit *pu = &u[r];
            if ((st = rs_exact_lpi(e, &pu, 1, &lpi[r], err)) != RESID_OK) goto done;
            rs_score_finish(e, &sc[r], lpi[r]);
        }
    }
    for (int32_t q = 0; q < nd; q++) {
        outs[q] = cJSON_CreateObject();
        if (!outs[q] || !head_fill(c, outs[q], idx[q] / H, idx[q] % H, sc + q * per,
                                   tops + (size_t)q * K, bots + (size_t)q * K, K)) {
            st = rs_err(err, RESID_E_NOMEM, "web: out of memory for the head details");
            for (int32_t i = 0; i <= q; i++) {
                cJSON_Delete(outs[i]);
                outs[i] = NULL;
            }
            goto done;
        }
    }
done:
    free(u), free(hp), free(sc), free(lpi), free(tops), free(bots), free(miss), free(y);
    free(mt), free(mb);
    return st;
}

resid_status rs_web_head(rs_web_ctx *c, int32_t layer, int32_t head, const rs_web_opts *o,
                         cJSON **out, resid_error *err) {
    *out = NULL;
    const int32_t L = c->info->n_layer, H = c->info->n_head, T = c->n;
    if (layer < 0 || layer >= L || head < 0 || head >= H)
        return rs_err(err, RESID_E_ARG, "head %d_%d: out of range (%d layers, %d heads)", layer,
                      head, L, H);
    rs_web_opts d = o ? *o : rs_web_defaults();
    resid_unit *u = malloc((size_t)(T + 1) * sizeof *u);
    resid_score *s = malloc((size_t)(T + 1) * sizeof *s);
    int32_t K = d.n_tokens > 0 ? d.n_tokens : 0;
    resid_token_value *top = malloc((size_t)(K + 1) * sizeof *top);
    resid_token_value *bot = malloc((size_t)(K + 1) * sizeof *bot);
    cJSON *root = cJSON_CreateObject();
    resid_status st = RESID_OK;
    if (!u || !s || !top || !bot || !root) {
        st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
        goto done;
    }
    u[0] = (resid_unit){RESID_UNIT_HEAD, layer, head, -1, -1};
    for (int32_t j = 0; j < T; j++)
        u[j + 1] = (resid_unit){RESID_UNIT_HEAD_POS, layer, head, -1, j};
    if ((st = resid_score_units(c->ex, u, T + 1, s, err)) != RESID_OK) goto done;
    int32_t k = 0;
    if (K > 0 && (st = resid_project_unit(c->ex, &u[0], K, top, bot, &k, err)) != RESID_OK)
        goto done;
    char id[32];
    snprintf(id, sizeof id, "%d_%d", layer, head);
    const bool ok = head_fill(c, root, layer, head, s, top, bot, k);
    if (!ok) st = rs_err(err, RESID_E_NOMEM, "web: out of memory building head %s", id);
done:
    free(u), free(s), free(top), free(bot);
    if (st != RESID_OK) {
        cJSON_Delete(root);
        return st;
    }
    *out = root;
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* Neurons                                                                   */
/* ------------------------------------------------------------------------- */

/* One input key of a neuron: its pre-activation split by slot. */
static resid_status add_key(rs_web_ctx *c, cJSON *keys, const char *name, resid_subkey key,
                            int32_t layer, int32_t index, int32_t pos, double *sigma,
                            resid_error *err) {
    resid_preact *p;
    resid_status st = resid_preact_new(c->m, c->tr, key, layer, index, pos, &p, err);
    if (st != RESID_OK) return st;
    if (sigma) *sigma = p->sigma;
    cJSON *e = cJSON_CreateObject(), *slots = NULL;
    bool ok = e != NULL;
    if (ok) cJSON_AddItemToArray(keys, e);
    ok = ok && cJSON_AddStringToObject(e, "key", name) &&
         cJSON_AddNumberToObject(e, "pre", p->pre) &&
         cJSON_AddNumberToObject(e, "mean_term", p->mean_term) &&
         cJSON_AddNumberToObject(e, "bias_term", p->bias_term) &&
         (slots = cJSON_AddArrayToObject(e, "slots")) != NULL;
    for (int32_t j = 0; ok && j < p->n_slots; j++) {
        char lab[16];
        rs_report_slot_name(j, lab, sizeof lab);
        cJSON *s = cJSON_CreateObject();
        ok = s != NULL;
        if (ok) cJSON_AddItemToArray(slots, s);
        ok = ok && cJSON_AddStringToObject(s, "slot", lab) &&
             cJSON_AddNumberToObject(s, "share", p->share[j]);
    }
    resid_preact_free(p);
    return ok ? RESID_OK : rs_err(err, RESID_E_NOMEM, "web: out of memory");
}

/* One neuron whose query neurons are wanted: key K[D] (γ ⊙ row), σ, the
 * position its input is read at, and the layers below it. */
typedef struct query_job {
    const resid_unit *u;
    float *K;
    double sigma;
    int32_t pos;
    double *contrib; /* [layer][N]: m_i·(fc2_i·K)/σ for layers < u->layer */
} query_job;

/* Fills every job's contributions: each layer's w_down (D x N: row d,
 * column k = fc2_k[d]) read once and multiplied by the keys of all the
 * jobs above that layer in one GEMM. */
static resid_status query_contrib(rs_web_ctx *c, query_job *jobs, int32_t n_jobs,
                                  resid_error *err) {
    const int32_t L = c->info->n_layer, D = c->info->d_model, N = c->info->d_ffn;
    float *w = malloc((size_t)D * (size_t)N * sizeof *w);
    float *kq = malloc(((size_t)n_jobs + 1) * (size_t)D * sizeof *kq);
    float *g = malloc(((size_t)n_jobs + 1) * (size_t)N * sizeof *g);
    int32_t *which = malloc(((size_t)n_jobs + 1) * sizeof *which);
    if (!w || !kq || !g || !which) {
        free(w), free(kq), free(g), free(which);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    }
    const resid_trace *tr = c->tr;
    for (int32_t i = 0; i < L; i++) {
        /* the jobs above layer i: G = K·W_down (one GEMM per layer) */
        int32_t nq = 0;
        for (int32_t q = 0; q < n_jobs; q++)
            if (jobs[q].u->layer > i) {
                memcpy(kq + (size_t)nq * D, jobs[q].K, (size_t)D * sizeof *kq);
                which[nq++] = q;
            }
        if (!nq) continue;
        const rs_tensor *wd = c->m->layers[i].w_down;
        if (wd->dtype == RESID_DTYPE_F32 && wd->transposed) {
            /* fc2_k are the mapped weights' rows: each read once for
             * all the keys, no packed copy */
            rs_canon_gemm((const float *)wd->data, N, D, kq, nq, g);
        } else if (wd->dtype == RESID_DTYPE_F32) { /* straight from the mapped weights */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, wd->transposed ? CblasTrans : CblasNoTrans,
                        nq, N, D, 1.0f, kq, D, (const float *)wd->data, wd->transposed ? D : N,
                        0.0f, g, N);
        } else {
            rs_tensor_rows(wd, 0, D, w);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, N, D, 1.0f, kq, D, w, N,
                        0.0f, g, N);
        }
        for (int32_t p = 0; p < nq; p++) {
            query_job *jb = &jobs[which[p]];
            const float *gq = g + (size_t)p * N;
            const float *coef =
                tr->ffn_coef + ((size_t)i * tr->n_cap + (size_t)(jb->pos - tr->pos_first)) * N;
            for (int32_t k = 0; k < N; k++)
                jb->contrib[(size_t)i * N + k] = coef[k] * (double)gq[k] / jb->sigma;
        }
    }
    free(w), free(kq), free(g), free(which);
    return RESID_OK;
}

/* Builds the neurons' JSON (keys, query layers, query neurons). */
static resid_status neurons_json(rs_web_ctx *c, const resid_unit *units, int32_t n_units,
                                 const rs_web_opts *o, cJSON **outs, resid_error *err) {
    const int32_t L = c->info->n_layer, D = c->info->d_model, N = c->info->d_ffn;
    const int32_t H = c->info->n_head, Hkv = c->info->n_kv_head, dh = c->info->d_head;
    const bool llama = c->info->arch == RESID_ARCH_LLAMA;
    for (int32_t q = 0; q < n_units; q++)
        outs[q] = NULL; /* every entry defined before any failure path frees them */
    query_job *jobs = calloc((size_t)n_units + 1, sizeof *jobs);
    float *v = malloc((size_t)D * sizeof *v);
    resid_status st = RESID_OK;
    if (!jobs || !v) {
        st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
        goto done;
    }
    for (int32_t q = 0; q < n_units; q++) {
        const resid_unit *u = &units[q];
        if (u->kind != RESID_UNIT_FFN_NEURON && u->kind != RESID_UNIT_ATTN_NEURON) {
            st = rs_err(err, RESID_E_ARG, "web: neuron details need an FFN or attention neuron");
            goto done;
        }
        const bool ffn = u->kind == RESID_UNIT_FFN_NEURON;
        if (u->layer < 0 || u->layer >= L || (ffn && (u->index < 0 || u->index >= N)) ||
            (!ffn && (u->head < 0 || u->head >= H || u->index < 0 || u->index >= dh ||
                      u->pos < 0 || u->pos >= c->n))) {
            char id[64];
            resid_unit_format(u, id, sizeof id);
            st = rs_err(err, RESID_E_ARG,
                        "neuron %s: out of range (%d layers, %d FFN neurons, %d heads of %d "
                        "dims, %d tokens)",
                        id, L, N, H, dh, c->n);
            goto done;
        }
        query_job *jb = &jobs[q];
        jb->u = u;
        jb->pos = ffn ? c->n - 1 : u->pos;
        jb->K = malloc((size_t)D * sizeof *jb->K);
        jb->contrib = calloc((size_t)(u->layer > 0 ? u->layer : 1) * (size_t)N, sizeof(double));
        cJSON *root = cJSON_CreateObject();
        outs[q] = root;
        cJSON *keys = root ? cJSON_AddArrayToObject(root, "keys") : NULL;
        if (!jb->K || !jb->contrib || !keys) {
            st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
            goto done;
        }
        char id[64];
        resid_unit_format(u, id, sizeof id);
        if (!cJSON_AddStringToObject(root, "id", id) ||
            !cJSON_AddStringToObject(root, "kind", resid_unit_kind_name(u->kind)) ||
            !cJSON_AddNumberToObject(root, "layer", u->layer) ||
            !cJSON_AddNumberToObject(root, "pos", jb->pos)) {
            st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
            goto done;
        }
        const float *gamma;
        if (ffn) {
            st = add_key(c, keys, llama ? "up" : "fc1", RESID_SUBKEY_UP, u->layer, u->index,
                         jb->pos, &jb->sigma, err);
            if (st == RESID_OK && llama)
                st = add_key(c, keys, "gate", RESID_SUBKEY_GATE, u->layer, u->index, jb->pos,
                             NULL, err);
            if (st == RESID_OK)
                st = resid_param_vector(c->m, RESID_PARAM_FC1, u->layer, u->index, v, err);
            gamma = c->m->layers[u->layer].ffn_norm_w;
        } else {
            const int32_t hkv = u->head / (H / Hkv);
            st = add_key(c, keys, "wv", RESID_SUBKEY_VALUE, u->layer, u->head * dh + u->index,
                         jb->pos, &jb->sigma, err);
            if (st == RESID_OK)
                st = resid_param_vector(c->m, RESID_PARAM_WV, u->layer,
                                        (int64_t)hkv * dh + u->index, v, err);
            gamma = c->m->layers[u->layer].attn_norm_w;
        }
        if (st != RESID_OK) goto done;
        for (int32_t d = 0; d < D; d++)
            jb->K[d] = (gamma ? gamma[d] : 1.0f) * v[d];
        if (!(jb->sigma > 0)) jb->sigma = 1;
    }
    if ((st = query_contrib(c, jobs, n_units, err)) != RESID_OK) goto done;
    /* The lower FFN neurons with the largest |contribution|. */
    for (int32_t q = 0; q < n_units; q++) {
        query_job *jb = &jobs[q];
        const int64_t n = (int64_t)jb->u->layer * N;
        cJSON *arr = cJSON_AddArrayToObject(outs[q], "query_neurons");
        if (!arr) {
            st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
            goto done;
        }
        if (n == 0) continue;
        rs_keyed *r = malloc((size_t)n * sizeof *r);
        if (!r) {
            st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
            goto done;
        }
        const int32_t kq = o->n_query > 0 ? o->n_query : 8;
        /* the best kq in order in r[0..kq) (insertion: n is large, kq small) */
        int64_t nr = 0;
        for (int64_t i = 0; i < n; i++) {
            const rs_keyed x = {fabs(jb->contrib[i]), i};
            if (nr == kq && rs_keyed_cmp(&x, &r[nr - 1]) >= 0) continue;
            int64_t j = nr < kq ? nr++ : nr - 1;
            for (; j > 0 && rs_keyed_cmp(&x, &r[j - 1]) < 0; j--)
                r[j] = r[j - 1];
            r[j] = x;
        }
        bool ok = true;
        for (int64_t i = 0; ok && i < n && i < kq; i++) {
            const int32_t li = (int32_t)(r[i].i / N), k = (int32_t)(r[i].i % N);
            const resid_trace *tr = c->tr;
            const float m_k =
                tr->ffn_coef[((size_t)li * tr->n_cap + (jb->pos - tr->pos_first)) * N + k];
            char id[32];
            snprintf(id, sizeof id, "%d_%d", li, k);
            cJSON *e = cJSON_CreateObject();
            ok = e != NULL;
            if (ok) cJSON_AddItemToArray(arr, e);
            ok = ok && cJSON_AddStringToObject(e, "id", id) &&
                 cJSON_AddNumberToObject(e, "layer", li) &&
                 cJSON_AddNumberToObject(e, "neuron", k) &&
                 cJSON_AddNumberToObject(e, "coef", m_k) &&
                 cJSON_AddNumberToObject(e, "contribution", jb->contrib[r[i].i]);
        }
        free(r);
        if (!ok) {
            st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
            goto done;
        }
    }
done:
    for (int32_t q = 0; jobs && q < n_units; q++) {
        free(jobs[q].K);
        free(jobs[q].contrib);
    }
    free(jobs), free(v);
    if (st != RESID_OK)
        for (int32_t q = 0; q < n_units; q++) {
            cJSON_Delete(outs[q]);
            outs[q] = NULL;
        }
    return st;
}

resid_status rs_web_neuron(rs_web_ctx *c, const resid_unit *u, const rs_web_opts *o, cJSON **out,
                           resid_error *err) {
    rs_web_opts d = o ? *o : rs_web_defaults();
    return neurons_json(c, u, 1, &d, out, err);
}

/* ------------------------------------------------------------------------- */
/* Extras                                                                    */
/* ------------------------------------------------------------------------- */

static double num(const cJSON *o, const char *name, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

void rs_web_auto(rs_web_opts *o, const resid_model_info *info, int32_t T, double neuron_macs) {
    const int32_t L = info->n_layer, H = info->n_head;
    const double proj = (double)info->n_vocab * info->d_model; /* multiply-adds */
    if (o->grid_positions < 0)
        o->grid_positions = 2.0 * L * (T - 1) * proj <= RS_WEB_CHEAP_MACS ? 0 : 1;
    if (o->n_head_detail < 0)
        o->n_head_detail = (double)L * H * T * proj <= RS_WEB_CHEAP_MACS ? L * H : 1;
    if (o->n_neuron_detail < 0)
        o->n_neuron_detail = neuron_macs <= RS_WEB_CHEAP_MACS ? INT32_MAX : RS_WEB_AUTO_NEURONS;
}

resid_status rs_web_extras(rs_web_ctx *c, cJSON *report, const rs_web_opts *o, resid_error *err) {
    rs_web_opts d = o ? *o : rs_web_defaults();
    const int32_t L = c->info->n_layer, H = c->info->n_head;
    static const char *lists[] = {"ffn_neurons", "attn_neurons"};
    double neuron_macs = 0;
    for (int li = 0; li < 2; li++) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(report, lists[li])) {
            neuron_macs += num(e, "layer", 0) * c->info->d_ffn * c->info->d_model;
        }
    }
    rs_web_auto(&d, c->info, c->n, neuron_macs);
    resid_status st;
    resid_lens lens = RESID_LENS_PAPER;
    const cJSON *ln = cJSON_GetObjectItemCaseSensitive(report, "lens");
    if (cJSON_IsString(ln) && resid_lens_parse(ln->valuestring, &lens, err) != RESID_OK)
        return RESID_E_ARG;
    cJSON *grid;
    if (d.progress) d.progress(d.progress_user, "lens grid", 1, 3);
    if ((st = rs_web_lens_grid(c, lens, &d, &grid, err)) != RESID_OK) return st;
    cJSON_AddItemToObject(report, "lens_grid", grid);

    /* Heads: the attention row of each; details for the best ones by the
     * report's score (contrast with --vs, else LPI). */
    if (d.progress) d.progress(d.progress_user, "head details", 2, 3);
    const cJSON *heads = cJSON_GetObjectItemCaseSensitive(report, "heads");
    const int32_t nh = L * H;
    rs_keyed *r = malloc((size_t)nh * sizeof *r);
    if (!r) return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    const bool by_contrast = c->contrast >= 0;
    for (int32_t i = 0; i < nh; i++) {
        const cJSON *h = cJSON_GetArrayItem(heads, i);
        r[i] = (rs_keyed){h ? num(h, by_contrast ? "contrast" : "lpi", 0) : 0, i};
    }
    rs_keyed_sort(r, (size_t)nh);
    bool *detail = calloc((size_t)nh, sizeof *detail);
    cJSON *hd = cJSON_AddArrayToObject(report, "head_details");
    if (!detail || !hd) {
        free(r), free(detail);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    }
    int32_t n_detail = 0;
    int32_t *idx = malloc(((size_t)nh + 1) * sizeof *idx);
    cJSON **douts = calloc((size_t)nh + 1, sizeof *douts);
    if (!idx || !douts) {
        free(r), free(detail), free(idx), free(douts);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    }
    for (int32_t i = 0; i < nh && i < d.n_head_detail; i++)
        detail[r[i].i] = true;
    free(r);
    for (int32_t i = 0; i < nh; i++)
        if (detail[i]) idx[n_detail++] = i;
    st = heads_batch(c, heads, idx, n_detail, d.n_tokens, douts, err);
    for (int32_t i = 0, q = 0; st == RESID_OK && i < nh; i++) {
        cJSON *e = NULL;
        if (detail[i]) {
            e = douts[q];
            douts[q++] = NULL;
        } else {
            char id[32];
            snprintf(id, sizeof id, "%d_%d", i / H, i % H);
            e = cJSON_CreateObject();
            if (!e || !cJSON_AddStringToObject(e, "id", id) ||
                !cJSON_AddNumberToObject(e, "layer", i / H) ||
                !cJSON_AddNumberToObject(e, "head", i % H) || !add_attention(c, e, i / H, i % H))
                st = rs_err(err, RESID_E_NOMEM, "web: out of memory");
        }
        if (e) cJSON_AddItemToArray(hd, e);
    }
    for (int32_t q = 0; q < n_detail; q++)
        cJSON_Delete(douts[q]);
    free(idx), free(douts);
    free(detail);
    if (st != RESID_OK) return st;

    /* Neurons of the two neuron lists. */
    if (d.progress) d.progress(d.progress_user, "neuron details", 3, 3);
    int32_t n_units = 0, n_list[2];
    for (int li = 0; li < 2; li++) {
        n_list[li] = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(report, lists[li]));
        if (n_list[li] > d.n_neuron_detail) n_list[li] = d.n_neuron_detail;
        n_units += n_list[li];
    }
    resid_unit *units = calloc((size_t)n_units + 1, sizeof *units);
    cJSON **outs = calloc((size_t)n_units + 1, sizeof *outs);
    cJSON *nd = cJSON_AddObjectToObject(report, "neuron_details");
    if (!units || !outs || !nd) {
        free(units), free(outs);
        return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    }
    int32_t q = 0;
    for (int li = 0; li < 2; li++) {
        const cJSON *e;
        int32_t i = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(report, lists[li])) {
            if (i++ == n_list[li]) break;
            resid_unit *u = &units[q++];
            u->layer = (int32_t)num(e, "layer", -1);
            if (li == 0) {
                *u = (resid_unit){RESID_UNIT_FFN_NEURON, u->layer, -1, (int32_t)num(e, "neuron", -1),
                                  -1};
            } else {
                *u = (resid_unit){RESID_UNIT_ATTN_NEURON, u->layer, (int32_t)num(e, "head", -1),
                                  (int32_t)num(e, "dim", -1), (int32_t)num(e, "pos", -1)};
            }
        }
    }
    st = neurons_json(c, units, n_units, &d, outs, err);
    for (int32_t i = 0; st == RESID_OK && i < n_units; i++) {
        char id[64];
        resid_unit_format(&units[i], id, sizeof id);
        cJSON_AddItemToObject(nd, id, outs[i]);
    }
    free(units), free(outs);
    return st;
}

resid_status rs_web_extras_for(const resid_model *m, cJSON *report, const rs_web_opts *o,
                               resid_error *err) {
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(report, "tokens");
    const int32_t n = cJSON_GetArraySize(toks);
    if (n < 1) return rs_err(err, RESID_E_ARG, "web: the report has no tokens");
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) return rs_err(err, RESID_E_NOMEM, "web: out of memory");
    int32_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, toks) ids[i++] = (int32_t)num(t, "id", -1);
    const cJSON *ul = cJSON_GetObjectItemCaseSensitive(report, "unit_lens");
    resid_lens lens = RESID_LENS_PAPER;
    if (cJSON_IsString(ul) && resid_lens_parse(ul->valuestring, &lens, err) != RESID_OK) {
        free(ids);
        return RESID_E_ARG;
    }
    rs_web_ctx *c;
    resid_status st = rs_web_ctx_new(
        m, ids, n, (int32_t)num(cJSON_GetObjectItemCaseSensitive(report, "target"), "id", -1),
        (int32_t)num(cJSON_GetObjectItemCaseSensitive(report, "contrast"), "id", -1), lens, &c,
        err);
    free(ids);
    if (st != RESID_OK) return st;
    st = rs_web_extras(c, report, o, err);
    rs_web_ctx_free(c);
    return st;
}

/* ------------------------------------------------------------------------- */
/* The HTML file                                                             */
/* ------------------------------------------------------------------------- */

char *rs_html_json_escaped(const cJSON *report) {
    char *json = cJSON_PrintUnformatted(report);
    if (!json) return NULL;
    size_t n = 0, len = strlen(json);
    for (size_t i = 0; i < len; i++)
        n += (json[i] == '<' || json[i] == '>' || json[i] == '&') ? 6 : 1;
    char *out = malloc(n + 1);
    if (out) {
        size_t w = 0;
        for (size_t i = 0; i < len; i++) {
            const char ch = json[i];
            if (ch == '<' || ch == '>' || ch == '&')
                w += (size_t)snprintf(out + w, 7, "\\u%04x", (unsigned)ch);
            else
                out[w++] = ch;
        }
        out[w] = 0;
    }
    free(json);
    return out;
}

/* Writes text[0..n) replacing every case-insensitive "</tag" by "<\/tag"
 * (the asset then cannot close its inline <script>/<style> element). */
static void put_guarded(FILE *f, const char *text, size_t n, const char *tag) {
    const size_t tl = strlen(tag);
    size_t i = 0, from = 0;
    while (i + 2 + tl <= n) {
        if (text[i] == '<' && text[i + 1] == '/' && !strncasecmp(text + i + 2, tag, tl)) {
            fwrite(text + from, 1, i + 1 - from, f);
            fputc('\\', f);
            from = i + 1;
        }
        i++;
    }
    fwrite(text + from, 1, n - from, f);
}

static const char *find(const char *hay, size_t n, const char *needle, size_t from) {
    const size_t nl = strlen(needle);
    for (size_t i = from; i + nl <= n; i++)
        if (!memcmp(hay + i, needle, nl)) return hay + i;
    return NULL;
}

resid_status rs_html_write(FILE *f, const cJSON *report, resid_error *err) {
    const rs_web_asset *page = rs_web_asset_find("index.html");
    const rs_web_asset *css = rs_web_asset_find("app.css");
    const rs_web_asset *js = rs_web_asset_find("app.js");
    if (!page || !css || !js) return rs_err(err, RESID_E_IO, "html: web assets missing");
    static const char m_css[] = "<link rel=\"stylesheet\" href=\"app.css\">";
    static const char m_js[] = "<script src=\"app.js\"></script>";
    static const char m_data[] = "<!-- resid:data -->";
    const char *p = (const char *)page->data;
    const size_t n = page->len;
    const char *a = find(p, n, m_css, 0), *b = a ? find(p, n, m_data, (size_t)(a - p)) : NULL;
    const char *c = b ? find(p, n, m_js, (size_t)(b - p)) : NULL;
    if (!a || !b || !c)
        return rs_err(err, RESID_E_FORMAT, "html: web/index.html lacks its css/data/js markers");
    char *json = rs_html_json_escaped(report);
    if (!json) return rs_err(err, RESID_E_NOMEM, "html: out of memory serialising the report");
    fwrite(p, 1, (size_t)(a - p), f);
    fputs("<style>\n", f);
    put_guarded(f, (const char *)css->data, css->len, "style");
    fputs("</style>", f);
    a += sizeof m_css - 1;
    fwrite(a, 1, (size_t)(b - a), f);
    fputs("<script type=\"application/json\" id=\"resid-data\">", f);
    fputs(json, f);
    fputs("</script>", f);
    b += sizeof m_data - 1;
    fwrite(b, 1, (size_t)(c - b), f);
    fputs("<script>\n", f);
    put_guarded(f, (const char *)js->data, js->len, "script");
    fputs("</script>", f);
    c += sizeof m_js - 1;
    fwrite(c, 1, n - (size_t)(c - p), f);
    free(json);
    return ferror(f) ? rs_err(err, RESID_E_IO, "html: write error") : RESID_OK;
}

resid_status rs_html_write_file(const char *path, const cJSON *report, resid_error *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return rs_err(err, RESID_E_IO, "%s: cannot create: %s", path, strerror(errno));
    resid_status st = rs_html_write(f, report, err);
    if (fclose(f) != 0 && st == RESID_OK)
        st = rs_err(err, RESID_E_IO, "%s: write error: %s", path, strerror(errno));
    return st;
}
