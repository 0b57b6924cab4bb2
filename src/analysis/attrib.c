/*
 * attrib.c - the units of METHOD.md §3.2 and their exact scores.
 *
 * A unit is either a vector built from the trace (layer outputs, heads,
 * head × position and per-position subvalues), projected row by row, or a
 * coefficient times a fixed parameter row (FFN neurons: m_k·fc2_k;
 * attention neurons: α_j v_j[n]·W_O^h[n,:]), projected once per row and
 * shared by every unit on it. Exact scores go through rs_project_canon,
 * whose operation order is fixed per row, so a unit's score does not depend
 * on its batch, and the explainer remembers every exact score it made (the
 * LPI memo) and, on request, the projection's top and bottom tokens.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"

/* ---------------------------------------------------------------------- */
/* Ids                                                                    */
/* ---------------------------------------------------------------------- */

const char *resid_unit_kind_name(resid_unit_kind k) {
    switch (k) {
    case RESID_UNIT_ATTN_LAYER: return "attn-layer";
    case RESID_UNIT_FFN_LAYER: return "ffn-layer";
    case RESID_UNIT_HEAD: return "head";
    case RESID_UNIT_HEAD_POS: return "head-pos";
    case RESID_UNIT_ATTN_NEURON: return "attn-neuron";
    case RESID_UNIT_FFN_NEURON: return "ffn-neuron";
    case RESID_UNIT_POS: return "pos";
    default: return "?";
    }
}

int resid_unit_format(const resid_unit *u, char *buf, size_t n) {
    switch (u->kind) {
    case RESID_UNIT_ATTN_LAYER: return snprintf(buf, n, "a%d", u->layer);
    case RESID_UNIT_FFN_LAYER: return snprintf(buf, n, "f%d", u->layer);
    case RESID_UNIT_HEAD: return snprintf(buf, n, "%d_%d", u->layer, u->head);
    case RESID_UNIT_HEAD_POS: return snprintf(buf, n, "%d_%d_%d", u->layer, u->head, u->pos);
    case RESID_UNIT_ATTN_NEURON:
        return snprintf(buf, n, "%d_%d_%d_%d", u->layer, u->head, u->index, u->pos);
    case RESID_UNIT_FFN_NEURON: return snprintf(buf, n, "%d_%d", u->layer, u->index);
    case RESID_UNIT_POS: return snprintf(buf, n, "a%d_%d", u->layer, u->pos);
    default: return snprintf(buf, n, "?");
    }
}

/* Field layout of each kind's id: prefix letter (0: none) and the meaning
 * of each '_'-separated number. */
enum { F_LAYER, F_HEAD, F_INDEX_N, F_INDEX_K, F_POS };
static const struct {
    char prefix;
    int n;
    int fields[4];
    const char *syntax;
} id_syntax[RESID_UNIT_KIND_COUNT] = {
    [RESID_UNIT_ATTN_LAYER] = {'a', 1, {F_LAYER}, "aL"},
    [RESID_UNIT_FFN_LAYER] = {'f', 1, {F_LAYER}, "fL"},
    [RESID_UNIT_HEAD] = {0, 2, {F_LAYER, F_HEAD}, "L_H"},
    [RESID_UNIT_HEAD_POS] = {0, 3, {F_LAYER, F_HEAD, F_POS}, "L_H_J"},
    [RESID_UNIT_ATTN_NEURON] = {0, 4, {F_LAYER, F_HEAD, F_INDEX_N, F_POS}, "L_H_N_J"},
    [RESID_UNIT_FFN_NEURON] = {0, 2, {F_LAYER, F_INDEX_K}, "L_K"},
    [RESID_UNIT_POS] = {'a', 2, {F_LAYER, F_POS}, "aL_J"},
};

resid_status resid_unit_parse(const char *s, resid_unit_kind kind, const resid_trace *tr,
                              resid_unit *out, resid_error *err) {
    if ((unsigned)kind >= RESID_UNIT_KIND_COUNT)
        return rs_err(err, RESID_E_ARG, "unit kind %d unknown", (int)kind);
    const char *syn = id_syntax[kind].syntax;
    if (!s) return rs_err(err, RESID_E_ARG, "unit id missing (expected %s)", syn);
    const char *p = s;
    if (id_syntax[kind].prefix) {
        if (*p != id_syntax[kind].prefix)
            return rs_err(err, RESID_E_ARG, "unit id '%s': expected %s", s, syn);
        p++;
    }
    resid_unit u = {kind, -1, -1, -1, -1};
    for (int i = 0; i < id_syntax[kind].n; i++) {
        if (i > 0) {
            if (*p != '_') return rs_err(err, RESID_E_ARG, "unit id '%s': expected %s", s, syn);
            p++;
        }
        if (*p < '0' || *p > '9')
            return rs_err(err, RESID_E_ARG, "unit id '%s': expected %s", s, syn);
        errno = 0;
        char *end;
        long v = strtol(p, &end, 10);
        if (errno || v > INT32_MAX)
            return rs_err(err, RESID_E_ARG, "unit id '%s': number too large", s);
        p = end;
        switch (id_syntax[kind].fields[i]) {
        case F_LAYER: u.layer = (int32_t)v; break;
        case F_HEAD: u.head = (int32_t)v; break;
        case F_INDEX_N:
        case F_INDEX_K: u.index = (int32_t)v; break;
        case F_POS: u.pos = (int32_t)v; break;
        }
    }
    if (*p) return rs_err(err, RESID_E_ARG, "unit id '%s': expected %s", s, syn);
    if (tr) {
        if (u.layer >= tr->n_layer)
            return rs_err(err, RESID_E_ARG, "unit %s: layer %d out of range (model has %d)",
                          s, u.layer, tr->n_layer);
        if (u.head >= tr->n_head)
            return rs_err(err, RESID_E_ARG, "unit %s: head %d out of range (model has %d)", s,
                          u.head, tr->n_head);
        if (kind == RESID_UNIT_ATTN_NEURON && u.index >= tr->d_head)
            return rs_err(err, RESID_E_ARG,
                          "unit %s: head dimension %d out of range (d_head is %d)", s, u.index,
                          tr->d_head);
        if (kind == RESID_UNIT_FFN_NEURON && u.index >= tr->d_ffn)
            return rs_err(err, RESID_E_ARG,
                          "unit %s: FFN neuron %d out of range (layer has %d)", s, u.index,
                          tr->d_ffn);
        if (u.pos >= tr->n_tokens)
            return rs_err(err, RESID_E_ARG,
                          "unit %s: position %d out of range (prompt has %d tokens)", s, u.pos,
                          tr->n_tokens);
    }
    *out = u;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Enumeration                                                            */
/* ---------------------------------------------------------------------- */

bool rs_unit_is_directional(resid_unit_kind k) {
    return k == RESID_UNIT_ATTN_NEURON || k == RESID_UNIT_FFN_NEURON;
}

int rs_unit_ctx(const resid_unit *u) {
    bool ffn = u->kind == RESID_UNIT_FFN_LAYER || u->kind == RESID_UNIT_FFN_NEURON;
    return 2 * u->layer + (ffn ? 1 : 0);
}

static int64_t per_layer(const resid_explainer *e, resid_unit_kind k) {
    switch (k) {
    case RESID_UNIT_ATTN_LAYER:
    case RESID_UNIT_FFN_LAYER: return 1;
    case RESID_UNIT_HEAD: return e->H;
    case RESID_UNIT_HEAD_POS: return (int64_t)e->H * e->T;
    case RESID_UNIT_ATTN_NEURON: return (int64_t)e->H * e->dh * e->T;
    case RESID_UNIT_FFN_NEURON: return e->N;
    case RESID_UNIT_POS: return e->T;
    default: return 0;
    }
}

int64_t rs_unit_count_layer(const resid_explainer *e, resid_unit_kind k, int32_t l) {
    return per_layer(e, k) * (l < 0 ? e->L : 1);
}

int64_t resid_unit_count(const resid_explainer *e, resid_unit_kind kind) {
    return rs_unit_count_layer(e, kind, -1);
}

void rs_unit_from_index(const resid_explainer *e, resid_unit_kind k, int32_t l, int64_t i,
                        resid_unit *u) {
    const int64_t pl = per_layer(e, k);
    *u = (resid_unit){k, -1, -1, -1, -1};
    if (l < 0) {
        l = (int32_t)(i / pl);
        i %= pl;
    }
    u->layer = l;
    switch (k) {
    case RESID_UNIT_HEAD: u->head = (int32_t)i; break;
    case RESID_UNIT_HEAD_POS:
        u->head = (int32_t)(i / e->T);
        u->pos = (int32_t)(i % e->T);
        break;
    case RESID_UNIT_ATTN_NEURON:
        u->pos = (int32_t)(i % e->T);
        i /= e->T;
        u->index = (int32_t)(i % e->dh);
        u->head = (int32_t)(i / e->dh);
        break;
    case RESID_UNIT_FFN_NEURON: u->index = (int32_t)i; break;
    case RESID_UNIT_POS: u->pos = (int32_t)i; break;
    default: break;
    }
}

resid_status resid_unit_at(const resid_explainer *e, resid_unit_kind kind, int64_t i,
                           resid_unit *out, resid_error *err) {
    if ((unsigned)kind >= RESID_UNIT_KIND_COUNT)
        return rs_err(err, RESID_E_ARG, "unit kind %d unknown", (int)kind);
    int64_t n = resid_unit_count(e, kind);
    if (i < 0 || i >= n)
        return rs_err(err, RESID_E_ARG, "%s unit %lld out of range (%lld units)",
                      resid_unit_kind_name(kind), (long long)i, (long long)n);
    rs_unit_from_index(e, kind, -1, i, out);
    return RESID_OK;
}

resid_status rs_unit_check(const resid_explainer *e, const resid_unit *u, resid_error *err) {
    if ((unsigned)u->kind >= RESID_UNIT_KIND_COUNT)
        return rs_err(err, RESID_E_ARG, "unit kind %d unknown", (int)u->kind);
    const resid_unit_kind k = u->kind;
    bool head = k == RESID_UNIT_HEAD || k == RESID_UNIT_HEAD_POS || k == RESID_UNIT_ATTN_NEURON;
    bool pos = k == RESID_UNIT_HEAD_POS || k == RESID_UNIT_ATTN_NEURON || k == RESID_UNIT_POS;
    char id[64];
    /* the id is formatted only for an error: this runs for every unit */
#define UNIT_ID (resid_unit_format(u, id, sizeof id), id)
    if (u->layer < 0 || u->layer >= e->L)
        return rs_err(err, RESID_E_ARG, "unit %s: layer out of range [0, %d)", UNIT_ID, e->L);
    if (head && (u->head < 0 || u->head >= e->H))
        return rs_err(err, RESID_E_ARG, "unit %s: head out of range [0, %d)", UNIT_ID, e->H);
    if (pos && (u->pos < 0 || u->pos >= e->T))
        return rs_err(err, RESID_E_ARG, "unit %s: position out of range [0, %d)", UNIT_ID, e->T);
    if (k == RESID_UNIT_ATTN_NEURON && (u->index < 0 || u->index >= e->dh))
        return rs_err(err, RESID_E_ARG, "unit %s: head dimension out of range [0, %d)", UNIT_ID,
                      e->dh);
    if (k == RESID_UNIT_FFN_NEURON && (u->index < 0 || u->index >= e->N))
        return rs_err(err, RESID_E_ARG, "unit %s: FFN neuron out of range [0, %d)", UNIT_ID, e->N);
#undef UNIT_ID
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Unit vectors                                                           */
/* ---------------------------------------------------------------------- */

static inline float alpha_at(const resid_explainer *e, int32_t l, int32_t h, int32_t j) {
    const resid_trace *tr = e->tr;
    return tr->attn[(((size_t)l * e->H + h) * tr->n_cap + e->tstar) * e->T + j];
}

static inline const float *value_at(const resid_explainer *e, int32_t l, int32_t h,
                                    int32_t j) {
    int32_t kvh = h / (e->H / e->Hkv);
    return e->tr->values + (((size_t)l * e->T + j) * e->Hkv + kvh) * e->dh;
}

/* W_O of layer l transposed: row h·d_h+n is W_O^h[n,:]. NULL on OOM. */
static const float *wo_t(resid_explainer *e, int32_t l) {
    if (e->wo_t[l]) return e->wo_t[l];
    const rs_tensor *wo = e->m->layers[l].wo;
    if (wo->dtype == RESID_DTYPE_F32 && wo->transposed) /* (GPT-2): read in place */
        return e->wo_t[l] = wo->data;
    float *t = malloc((size_t)(wo->n_rows * wo->n_cols) * sizeof(float));
    if (!t) return NULL;
    rs_tensor_cols(wo, t);
    e->wo_t[l] = t;
    return t;
}

double rs_unit_coef(const resid_explainer *e, const resid_unit *u, int64_t *dir_row) {
    switch (u->kind) {
    case RESID_UNIT_FFN_NEURON:
        if (dir_row) *dir_row = u->index;
        return e->tr->ffn_coef[((size_t)u->layer * e->tr->n_cap + e->tstar) * e->N + u->index];
    case RESID_UNIT_ATTN_NEURON:
        if (dir_row) *dir_row = (int64_t)u->head * e->dh + u->index;
        return (double)(alpha_at(e, u->layer, u->head, u->pos) *
                        value_at(e, u->layer, u->head, u->pos)[u->index]);
    case RESID_UNIT_HEAD_POS: return alpha_at(e, u->layer, u->head, u->pos);
    default: return NAN;
    }
}

/* v[D] of a vector unit (also works for directional ones). The caller has
 * made wo_t(l) available (rs_units_prepare). */
void rs_unit_vector(resid_explainer *e, const resid_unit *u, float *v) {
    const int D = e->D, dh = e->dh, l = u->layer;
    const resid_trace *tr = e->tr;
    const size_t row = ((size_t)l * tr->n_cap + e->tstar) * D;
    if (u->kind == RESID_UNIT_ATTN_LAYER) {
        memcpy(v, tr->attn_out + row, (size_t)D * sizeof(float));
        return;
    }
    if (u->kind == RESID_UNIT_FFN_LAYER) {
        memcpy(v, tr->ffn_out + row, (size_t)D * sizeof(float));
        return;
    }
    if (u->kind == RESID_UNIT_FFN_NEURON) {
        float a = (float)rs_unit_coef(e, u, NULL);
        rs_tensor_col(e->m->layers[l].w_down, u->index, v);
        for (int d = 0; d < D; d++) v[d] *= a;
        return;
    }
    /* Attention units: v = Σ_{h,n} z[h·d_h+n] · W_O^h[n,:]. */
    const float *wt = e->wo_t[l];
    double acc[D];
    memset(acc, 0, sizeof acc);
    int h0 = 0, h1 = e->H;
    if (u->kind != RESID_UNIT_POS) h0 = u->head, h1 = u->head + 1;
    for (int h = h0; h < h1; h++) {
        float z[dh];
        memset(z, 0, sizeof z);
        for (int j = 0; j < e->T; j++) {
            if (u->kind != RESID_UNIT_HEAD && j != u->pos) continue;
            float a = alpha_at(e, l, h, j);
            const float *vj = value_at(e, l, h, j);
            for (int n = 0; n < dh; n++) z[n] += a * vj[n];
        }
        for (int n = 0; n < dh; n++) {
            if (u->kind == RESID_UNIT_ATTN_NEURON && n != u->index) continue;
            const float *w = wt + ((size_t)h * dh + n) * D;
            const double zn = z[n];
            /* element-wise (no reduction): vectorising keeps every bit */
#pragma omp simd
            for (int d = 0; d < D; d++) acc[d] += zn * w[d];
        }
    }
    for (int d = 0; d < D; d++) v[d] = (float)acc[d];
}

/* ---------------------------------------------------------------------- */
/* Direction statistics                                                   */
/* ---------------------------------------------------------------------- */

void rs_dir_row(resid_explainer *e, resid_unit_kind k, int32_t l, int64_t row, float *d) {
    if (k == RESID_UNIT_FFN_NEURON)
        rs_tensor_col(e->m->layers[l].w_down, row, d);
    else
        memcpy(d, e->wo_t[l] + (size_t)row * e->D, (size_t)e->D * sizeof(float));
}

rs_dirstats *rs_dirs(resid_explainer *e, resid_unit_kind k, int32_t l, resid_error *err) {
    const bool ffn = k == RESID_UNIT_FFN_NEURON;
    rs_dirstats *ds = ffn ? &e->ffn_dirs[l] : &e->attn_dirs[l];
    if (ds->n) return ds;
    const int64_t D = e->D, n = ffn ? e->N : (int64_t)e->H * e->dh;
    /* rows[n][D]: the directions as rows: W_Oᵀ, or w_down's columns, read
     * in place when stored that way (GPT-2 F32) */
    const rs_tensor *wd = ffn ? e->m->layers[l].w_down : NULL;
    const bool in_place = !ffn || (wd->transposed && wd->dtype == RESID_DTYPE_F32);
    float *own = in_place ? NULL : malloc((size_t)(n * D) * sizeof(float));
    rs_dirstats t;
    memset(&t, 0, sizeof t);
    t.n = n;
    t.dg = malloc((size_t)n * sizeof(float));
    t.dw = malloc((size_t)n * sizeof(float));
    t.nd = malloc((size_t)n * sizeof(float));
    t.pmax = malloc((size_t)n * sizeof(float));
    t.pmin = malloc((size_t)n * sizeof(float));
    t.dc = e->gc ? malloc((size_t)n * sizeof(float)) : NULL;
    t.bmax = e->ranges ? malloc((size_t)n * sizeof(float)) : NULL;
    t.bmin = e->ranges ? malloc((size_t)n * sizeof(float)) : NULL;
    if ((!in_place && !own) || !t.dg || !t.dw || !t.nd || !t.pmax || !t.pmin || (e->gc && !t.dc) ||
        (e->ranges && (!t.bmax || !t.bmin)) || (!ffn && !wo_t(e, l))) {
        free(own), free(t.dg), free(t.dw), free(t.nd), free(t.pmax), free(t.pmin), free(t.dc);
        free(t.bmax), free(t.bmin);
        rs_err(err, RESID_E_NOMEM, "direction statistics: out of memory");
        return NULL;
    }
    if (own) rs_tensor_cols(wd, own); /* w_down is [D][N] */
    const float *rows = own ? own : ffn ? (const float *)wd->data : e->wo_t[l];
    const float *g = e->ctx[2 * l + (ffn ? 1 : 0)].g;
    /* the cached max/min of P1 = s·P of this layer's directions */
    const float *rmax = !e->ranges ? NULL
                        : ffn      ? e->ranges->ffn_max + (size_t)l * n
                                   : e->ranges->attn_max + (size_t)l * n;
    const float *rmin = !e->ranges ? NULL
                        : ffn      ? e->ranges->ffn_min + (size_t)l * n
                                   : e->ranges->attn_min + (size_t)l * n;
#pragma omp parallel for schedule(static) if (n * D >= RS_PAR_MIN_WORK)
    for (int64_t c = 0; c < n; c++) {
        const float *r = rows + c * D;
        t.dg[c] = (float)rs_dot(r, g, D);
        t.dw[c] = (float)rs_dot(r, e->gw, D);
        if (t.dc) t.dc[c] = (float)rs_dot(r, e->gc, D);
        /* ‖lensmap(r)‖ = ‖γ ⊙ centre(r)‖ / s: four independent sums, one
         * division (the 1e-6 keeps it an upper bound of the float value) */
        double mean = 0, q[4] = {0, 0, 0, 0};
        if (e->centre) {
            for (int64_t d = 0; d + 4 <= D; d += 4)
                for (int k = 0; k < 4; k++) q[k] += r[d + k];
            mean = (q[0] + q[1]) + (q[2] + q[3]);
            for (int64_t d = D / 4 * 4; d < D; d++) mean += r[d];
            mean /= (double)D;
            q[0] = q[1] = q[2] = q[3] = 0;
        }
        for (int64_t d = 0; d + 4 <= D; d += 4)
            for (int k = 0; k < 4; k++) {
                const double y = e->gamma[d + k] * (r[d + k] - mean);
                q[k] += y * y;
            }
        double ss = (q[0] + q[1]) + (q[2] + q[3]);
        for (int64_t d = D / 4 * 4; d < D; d++) {
            const double y = e->gamma[d] * (r[d] - mean);
            ss += y * y;
        }
        t.nd[c] = (float)(sqrt(ss) / e->s * (1 + 1e-6));
        t.pmax[c] = NAN;
        t.pmin[c] = NAN;
        if (rmax) {
            /* bounds of this explainer's own float max/min of P/s: the
             * cache's divided by s, widened by the rounding allowance,
             * rounded outwards to float */
            const double tol = rs_ranges_allowance(e, t.nd[c]);
            const double hi = rmax[c] / e->s, lo = rmin[c] / e->s;
            const double bh = hi + tol + 1e-6 * fabs(hi), bl = lo - tol - 1e-6 * fabs(lo);
            float fh = (float)bh, fl = (float)bl;
            if ((double)fh < bh) fh = nextafterf(fh, INFINITY);
            if ((double)fl > bl) fl = nextafterf(fl, -INFINITY);
            t.bmax[c] = fh;
            t.bmin[c] = fl;
        }
    }
    free(own);
    *ds = t;
    return ds;
}

/* ---------------------------------------------------------------------- */
/* Exact scores                                                           */
/* ---------------------------------------------------------------------- */

void rs_score_linear(resid_explainer *e, const resid_unit *u, resid_score *sc) {
    sc->unit = *u;
    sc->coef = rs_unit_coef(e, u, NULL);
    sc->contrast = NAN;
    if (rs_unit_is_directional(u->kind)) {
        int64_t row;
        double a = rs_unit_coef(e, u, &row);
        rs_dirstats *ds = u->kind == RESID_UNIT_FFN_NEURON ? &e->ffn_dirs[u->layer]
                                                           : &e->attn_dirs[u->layer];
        sc->bs_target = a * ds->dw[row];
        if (ds->dc) sc->contrast = a * ((double)ds->dw[row] - ds->dc[row]);
        return;
    }
    float v[e->D];
    rs_unit_vector(e, u, v);
    sc->bs_target = rs_dot(v, e->gw, e->D);
    if (e->gc) sc->contrast = sc->bs_target - rs_dot(v, e->gc, e->D);
}

/* Makes the lazily built per-layer data (W_Oᵀ, direction statistics) of
 * every unit's layer available. */
static resid_status prepare(resid_explainer *e, const resid_unit *u, int64_t n,
                            resid_error *err) {
    for (int64_t i = 0; i < n; i++) {
        resid_status st = rs_unit_check(e, &u[i], err);
        if (st) return st;
        const resid_unit_kind k = u[i].kind;
        const int32_t l = u[i].layer;
        if (k != RESID_UNIT_ATTN_LAYER && k != RESID_UNIT_FFN_LAYER &&
            k != RESID_UNIT_FFN_NEURON && !wo_t(e, l))
            return rs_err(err, RESID_E_NOMEM, "W_O of layer %d: out of memory", l);
        if (rs_unit_is_directional(k) && !rs_dirs(e, k, l, err)) return RESID_E_NOMEM;
    }
    return RESID_OK;
}

/* Raw rows (unscaled) of nb directions into d[nb][D]. Columns of a
 * quantised, row-major FFN down-projection (Llama GGUF) are gathered a
 * block at a time, each block dequantised once for every direction of the
 * batch in it (rs_tensor_col would dequantise it once per direction). */
static void fetch_dirs(resid_explainer *e, int nb, const resid_unit_kind *kind,
                       const int32_t *layer, const int64_t *row, float *d) {
    const int D = e->D;
    int i = 0;
    while (i < nb) {
        const rs_tensor *wd = kind[i] == RESID_UNIT_FFN_NEURON ? e->m->layers[layer[i]].w_down : NULL;
        const int64_t be = wd ? rs_dtype_block_elems(wd->dtype) : 1;
        int j = i + 1;
        while (j < nb && kind[j] == kind[i] && layer[j] == layer[i]) j++;
        if (!wd || wd->transposed || be <= 1 || j - i < 2) {
            for (; i < j; i++) rs_dir_row(e, kind[i], layer[i], row[i], d + (size_t)i * D);
            continue;
        }
        size_t rb;
        if (!rs_dtype_nbytes(wd->dtype, 1, wd->n_cols, &rb)) { /* cannot happen: model loaded */
            for (; i < j; i++) rs_dir_row(e, kind[i], layer[i], row[i], d + (size_t)i * D);
            continue;
        }
        const size_t bb = rs_dtype_block_bytes(wd->dtype);
        float tmp[be];
        for (int64_t r = 0; r < wd->n_rows; r++) {
            const uint8_t *base = (const uint8_t *)wd->data + (size_t)r * rb;
            int64_t have = -1;
            for (int q = i; q < j; q++) { /* rows ascend: blocks come in order */
                int64_t blk = row[q] / be;
                if (blk != have) {
                    rs_dequantize(wd->dtype, base + (size_t)blk * bb, tmp, be);
                    have = blk;
                }
                d[(size_t)q * D + r] = tmp[row[q] % be];
            }
        }
        i = j;
    }
}

typedef struct dir_ref {
    int64_t key; /* (kind, layer, row) packed */
    int64_t unit;
} dir_ref;

static int cmp_dir_ref(const void *a, const void *b) {
    const dir_ref *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->unit < y->unit ? -1 : x->unit > y->unit;
}

/* Exact LPIs of nv vector units (into lv) and nd directional units (into
 * ld), projected together RS_CANON_ROWS rows at a time: a row is a vector
 * unit, or a direction, once for all the units on it (which also records
 * its max/min). The token cache, when on, keeps every row's tokens. */
static resid_status exact_rows(resid_explainer *e, const resid_unit *const *vec, int64_t nv,
                               const resid_unit *const *dir, int64_t nd, double *lv,
                               double *ld, resid_error *err) {
    const int D = e->D, V = e->V;
    const int64_t maxrow = (int64_t)e->N > (int64_t)e->H * e->dh ? e->N : (int64_t)e->H * e->dh;
    const int B = RS_CANON_ROWS;
    dir_ref *refs = malloc((size_t)(nd ? nd : 1) * sizeof *refs);
    int64_t *first = malloc((size_t)(nd + 1) * sizeof *first); /* the directions in refs */
    float *y = malloc((size_t)B * D * sizeof(float));
    float *c = rs_proj_buf(e, (size_t)B * V);
    float *d = malloc((size_t)B * D * sizeof(float));
    const int32_t kt = rs_tokcache_k(e);
    resid_token_value *tv = kt ? malloc((size_t)B * 2 * kt * sizeof *tv) : NULL;
    resid_unit_kind bk[RS_CANON_ROWS];
    int32_t bl[RS_CANON_ROWS];
    int64_t brow[RS_CANON_ROWS];
    if (!refs || !first || !y || !c || !d || (kt && !tv)) {
        free(refs), free(first), free(y), free(d), free(tv);
        return rs_err(err, RESID_E_NOMEM, "scoring: out of memory");
    }
    for (int64_t i = 0; i < nd; i++) {
        int64_t row;
        rs_unit_coef(e, dir[i], &row);
        refs[i].key = ((int64_t)dir[i]->kind * e->L + dir[i]->layer) * maxrow + row;
        refs[i].unit = i;
    }
    qsort(refs, (size_t)nd, sizeof *refs, cmp_dir_ref);
    int64_t ndir = 0;
    for (int64_t i = 0; i < nd; i++)
        if (i == 0 || refs[i].key != refs[i - 1].key) first[ndir++] = i;
    first[ndir] = nd;
    /* rows 0 .. nv-1: the vector units; nv .. nv+ndir-1: the directions */
    const int64_t nrow = nv + ndir;
    for (int64_t r0 = 0; r0 < nrow; r0 += B) {
        const int nb = (int)(nrow - r0 < B ? nrow - r0 : B);
        const int nbv = r0 < nv ? (int)(nv - r0 < nb ? nv - r0 : nb) : 0;
        const int ndc = nb - nbv;             /* the chunk's directions, */
        const int64_t q0 = r0 + nbv - nv;     /* from this one (when ndc > 0) */
        /* the vector rows, independent: in parallel */
#pragma omp parallel for schedule(static) if ((int64_t)nbv * D * e->dh >= RS_PAR_MIN_WORK)
        for (int r = 0; r < nbv; r++) {
            float vr[D];
            rs_unit_vector(e, vec[r0 + r], vr);
            rs_lensmap(e, vr, y + (size_t)r * D);
        }
        for (int r = 0; r < ndc; r++) {
            const resid_unit *uu = dir[refs[first[q0 + r]].unit];
            rs_unit_coef(e, uu, &brow[r]);
            bk[r] = uu->kind, bl[r] = uu->layer;
        }
        fetch_dirs(e, ndc, bk, bl, brow, d);
        for (int r = 0; r < ndc; r++)
            rs_lensmap(e, d + (size_t)r * D, y + (size_t)(nbv + r) * D);
        rs_project_canon(e, y, nb, c);
        const int64_t nunits = nbv + (ndc ? first[q0 + ndc] - first[q0] : 0);
#pragma omp parallel for schedule(dynamic) if (nunits * (int64_t)V >= RS_PAR_MIN_WORK)
        for (int r = 0; r < nb; r++) {
            const float *P = c + (size_t)r * V;
            if (r < nbv) { /* a vector unit */
                float cmax, cmin;
                rs_minmax(P, V, &cmax, &cmin);
                rs_series sr = {0};
                lv[r0 + r] =
                    rs_lpi_row(e, &e->ctx[rs_unit_ctx(vec[r0 + r])], P, 1.0f, cmax, cmin, &sr);
                if (kt)
                    rs_tokcache_extremes(e, P, 1.0, tv + (size_t)r * 2 * kt,
                                         tv + ((size_t)r * 2 + 1) * kt);
                continue;
            }
            const int64_t q = q0 + r - nbv;
            const resid_unit *u0 = dir[refs[first[q]].unit];
            int64_t row;
            rs_unit_coef(e, u0, &row);
            rs_dirstats *ds = u0->kind == RESID_UNIT_FFN_NEURON ? &e->ffn_dirs[u0->layer]
                                                                : &e->attn_dirs[u0->layer];
            if (isnan(ds->pmax[row])) rs_minmax(P, V, &ds->pmax[row], &ds->pmin[row]);
            rs_series sr = {0}; /* the row's moments, for all its units */
            for (int64_t i = first[q]; i < first[q + 1]; i++) {
                const resid_unit *uq = dir[refs[i].unit];
                float a = (float)rs_unit_coef(e, uq, NULL);
                ld[refs[i].unit] = rs_lpi_row(e, &e->ctx[rs_unit_ctx(uq)], P, a, ds->pmax[row],
                                              ds->pmin[row], &sr);
            }
            /* P is the row's paper lens at the explainer's scale s */
            if (kt)
                rs_tokcache_extremes(e, P, e->s, tv + (size_t)r * 2 * kt,
                                     tv + ((size_t)r * 2 + 1) * kt);
        }
        for (int r = 0; kt && r < nb; r++)
            rs_tokcache_put(e, r < nbv ? vec[r0 + r] : dir[refs[first[q0 + r - nbv]].unit],
                            tv + (size_t)r * 2 * kt, tv + ((size_t)r * 2 + 1) * kt);
    }
    free(refs), free(first), free(y), free(d), free(tv);
    return RESID_OK;
}

/* Exact LPIs of any mix of units (pointers), checked and prepared. */
resid_status rs_exact_lpi(resid_explainer *e, const resid_unit *const *u, int64_t n,
                          double *lpi, resid_error *err) {
    if (e->lens == RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG,
                      "the logit lens is not linear: only the layer table accepts it");
    const resid_unit **vec = malloc((size_t)(n ? n : 1) * sizeof *vec);
    const resid_unit **dir = malloc((size_t)(n ? n : 1) * sizeof *dir);
    int64_t *vi = malloc((size_t)(n ? n : 1) * sizeof *vi);
    int64_t *di = malloc((size_t)(n ? n : 1) * sizeof *di);
    double *lv = malloc((size_t)(n ? n : 1) * sizeof *lv);
    double *ld = malloc((size_t)(n ? n : 1) * sizeof *ld);
    resid_status st = RESID_OK;
    if (!vec || !dir || !vi || !di || !lv || !ld) {
        st = rs_err(err, RESID_E_NOMEM, "scoring: out of memory");
        goto done;
    }
    int64_t nv = 0, nd = 0;
    for (int64_t i = 0; i < n; i++) {
        if (rs_lpimemo_get(e, u[i], &lpi[i])) continue; /* scored before */
        if (rs_unit_is_directional(u[i]->kind))
            dir[nd] = u[i], di[nd++] = i;
        else
            vec[nv] = u[i], vi[nv++] = i;
    }
    if ((nv || nd) && (st = exact_rows(e, vec, nv, dir, nd, lv, ld, err))) goto done;
    for (int64_t i = 0; i < nv; i++) lpi[vi[i]] = lv[i];
    for (int64_t i = 0; i < nd; i++) lpi[di[i]] = ld[i];
    for (int64_t i = 0; i < nv; i++) rs_lpimemo_put(e, vec[i], lv[i]);
    for (int64_t i = 0; i < nd; i++) rs_lpimemo_put(e, dir[i], ld[i]);
done:
    free(vec), free(dir), free(vi), free(di), free(lv), free(ld);
    return st;
}

resid_status rs_units_prepare(resid_explainer *e, const resid_unit *u, int64_t n,
                              resid_error *err) {
    return prepare(e, u, n, err);
}

/* Completes a score from its exact LPI. */
void rs_score_finish(resid_explainer *e, resid_score *sc, double lpi) {
    sc->lpi = lpi;
    sc->prob_inc = e->ctx[rs_unit_ctx(&sc->unit)].pw * expm1(lpi);
}

resid_status resid_score_units(resid_explainer *e, const resid_unit *units, int64_t n,
                               resid_score *out, resid_error *err) {
    if (n < 0 || (n > 0 && (!units || !out)))
        return rs_err(err, RESID_E_ARG, "score: bad unit list");
    if (e->lens == RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG,
                      "the logit lens is not linear: only the layer table accepts it");
    resid_status st = prepare(e, units, n, err);
    if (st) return st;
    const resid_unit **p = calloc((size_t)(n ? n : 1), sizeof *p);
    double *lpi = malloc((size_t)(n ? n : 1) * sizeof *lpi);
    if (!p || !lpi) {
        free(p), free(lpi);
        return rs_err(err, RESID_E_NOMEM, "score: out of memory");
    }
    for (int64_t i = 0; i < n; i++) p[i] = &units[i];
    st = rs_exact_lpi(e, p, n, lpi, err);
    if (!st)
        for (int64_t i = 0; i < n; i++) {
            rs_score_linear(e, &units[i], &out[i]);
            rs_score_finish(e, &out[i], lpi[i]);
        }
    free(p), free(lpi);
    return st;
}

resid_status resid_score_all(resid_explainer *e, resid_unit_kind kind, resid_score **out,
                             int64_t *n, resid_error *err) {
    *out = NULL;
    *n = 0;
    if ((unsigned)kind >= RESID_UNIT_KIND_COUNT)
        return rs_err(err, RESID_E_ARG, "unit kind %d unknown", (int)kind);
    int64_t cnt = resid_unit_count(e, kind);
    resid_unit *u = malloc((size_t)(cnt ? cnt : 1) * sizeof *u);
    resid_score *sc = malloc((size_t)(cnt ? cnt : 1) * sizeof *sc);
    if (!u || !sc) {
        free(u), free(sc);
        return rs_err(err, RESID_E_NOMEM, "score: out of memory (%lld units)", (long long)cnt);
    }
    for (int64_t i = 0; i < cnt; i++) rs_unit_from_index(e, kind, -1, i, &u[i]);
    resid_status st = resid_score_units(e, u, cnt, sc, err);
    free(u);
    if (st) {
        free(sc);
        return st;
    }
    *out = sc;
    *n = cnt;
    return RESID_OK;
}
