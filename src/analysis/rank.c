/*
 * rank.c - exact top-K / bottom-K units, certified by bounds (METHOD.md §10).
 *
 * With b = bs(x), p = softmax(b) and c = bs(v):
 *
 *   LPI = c_w − log E_p[e^c]  <=  c_w − E_p[c] = v·g            (Jensen)
 *   LPI >= c_w − max_t c_t                                       (max)
 *   LPI >= v·g − (max_t c_t − min_t c_t)² / 8                    (Hoeffding)
 *
 * Every unit gets [lo, up] from O(D) work: max_t |c_t| <= ‖W_U‖_row·‖y‖
 * (y = lensmap(v)), or, once a direction has been projected, its exact
 * max/min, else bounds of them from the model's direction ranges
 * (ranges.c). Units are visited in order of their optimistic bound and
 * scored exactly in batches; the search stops when the next optimistic
 * bound is below the K-th best exact score, so every unit not visited is
 * provably outside the answer. Ties keep the enumeration order, as in the exhaustive
 * path, and the exact scores are computed by the same code: the two paths
 * return the same list, bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"

resid_rank_opts resid_rank_defaults(resid_unit_kind kind, int64_t k) {
    resid_rank_opts o = {kind, k, false, RESID_KEY_LPI, -1, false};
    return o;
}

/* The ranking value of a finished score (before the bottom flip). */
static double key_of(resid_rank_key key, const resid_score *sc) {
    switch (key) {
    case RESID_KEY_PROB_INC: return sc->prob_inc;
    case RESID_KEY_LOGIT: return sc->bs_target;
    case RESID_KEY_CONTRAST: return sc->contrast;
    default: return sc->lpi;
    }
}

/* ---------------------------------------------------------------------- */
/* A bounded heap of the K best (value, index): root is the worst kept.   */
/* ---------------------------------------------------------------------- */

typedef struct kv {
    double v;
    int64_t i;
} kv;

/* a ranks below b: lower value, or equal value and later index */
static inline bool worse(kv a, kv b) { return a.v < b.v || (a.v == b.v && a.i > b.i); }

typedef struct heap {
    kv *a;
    int64_t n, cap;
} heap;

/* Sifts a[i] down a binary heap of n whose root is the `first` of all
 * (worse: the kept top-K's weakest; before: the best candidate). */
static inline void sift_down(kv *a, int64_t n, int64_t i, bool (*first)(kv, kv)) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && first(a[l], a[m])) m = l;
        if (r < n && first(a[r], a[m])) m = r;
        if (m == i) return;
        kv t = a[i];
        a[i] = a[m], a[m] = t;
        i = m;
    }
}

static void heap_down(heap *h, int64_t i) { sift_down(h->a, h->n, i, worse); }

static void heap_push(heap *h, kv x) {
    if (h->n < h->cap) {
        int64_t i = h->n++;
        h->a[i] = x;
        while (i > 0) {
            int64_t p = (i - 1) / 2;
            if (!worse(h->a[i], h->a[p])) break;
            kv t = h->a[i];
            h->a[i] = h->a[p], h->a[p] = t;
            i = p;
        }
    } else if (h->cap > 0 && worse(h->a[0], x)) {
        h->a[0] = x;
        heap_down(h, 0);
    }
}

static int cmp_best_first(const void *pa, const void *pb) {
    kv a = *(const kv *)pa, b = *(const kv *)pb;
    if (worse(a, b)) return 1;
    if (worse(b, a)) return -1;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Bounds                                                                 */
/* ---------------------------------------------------------------------- */

/* How far a float32 LPI may sit from the true one, or two float32
 * computations of it from each other, for a unit with ‖lensmap(v)‖ = ny:
 * each bs value is a D-term float dot product, off by at most
 * γ_D·Σ|W_U[t,d] y_d| <= γ_D·‖W_U[t]‖·ny (γ_D = D·u/(1 − D·u)), and the
 * LPI moves by at most twice the largest bs change. */
static double rounding_allowance(const resid_explainer *e, double ny) {
    const double u = 0x1p-24, gd = e->D * u / (1 - e->D * u);
    return 2 * gd * e->mnorm * ny + 1e-6;
}

/* [lo, up] on the LPI of unit u, widened by a rounding allowance. */
static void lpi_bounds(resid_explainer *e, const resid_unit *u, float *vbuf, float *ybuf,
                       double *lo, double *up) {
    double U, cw, ny, lo1, lo2;
    if (rs_unit_is_directional(u->kind)) {
        int64_t row;
        double a = rs_unit_coef(e, u, &row);
        const rs_dirstats *ds = u->kind == RESID_UNIT_FFN_NEURON ? &e->ffn_dirs[u->layer]
                                                                 : &e->attn_dirs[u->layer];
        U = a * ds->dg[row];
        cw = a * ds->dw[row];
        ny = fabs(a) * ds->nd[row];
        /* the direction's own max/min once projected, else the bounds
         * from the direction ranges, else none */
        float pmax = ds->pmax[row], pmin = ds->pmin[row];
        if (isnan(pmax) && ds->bmax) pmax = ds->bmax[row], pmin = ds->bmin[row];
        if (!isnan(pmax)) {
            double mx = a >= 0 ? a * pmax : a * pmin;
            double range = fabs(a) * ((double)pmax - pmin);
            lo1 = cw - mx;
            lo2 = U - range * range / 8;
        } else {
            lo1 = cw - e->mnorm * ny;
            lo2 = U - e->mnorm * e->mnorm * ny * ny / 2;
        }
    } else {
        rs_unit_vector(e, u, vbuf);
        rs_lensmap(e, vbuf, ybuf);
        const rs_context *cx = &e->ctx[rs_unit_ctx(u)];
        U = rs_dot(vbuf, cx->g, e->D);
        cw = rs_dot(vbuf, e->gw, e->D);
        double ss = 0;
        for (int d = 0; d < e->D; d++) ss += (double)ybuf[d] * ybuf[d];
        ny = sqrt(ss);
        lo1 = cw - e->mnorm * ny;
        lo2 = U - e->mnorm * e->mnorm * ny * ny / 2;
    }
    /* float32 projections and log-probabilities: allow for their rounding */
    double tol = 1e-6 * (1 + fabs(U)) + rounding_allowance(e, ny);
    *up = U + tol;
    *lo = (lo1 > lo2 ? lo1 : lo2) - tol;
    if (*lo > *up) *lo = *up; /* cannot happen in exact arithmetic */
}

/* ---------------------------------------------------------------------- */
/* Ranking                                                                */
/* ---------------------------------------------------------------------- */

typedef struct rank_job {
    resid_explainer *e;
    const resid_rank_opts *o;
    resid_unit *u;   /* [n] enumeration */
    int64_t n, k;
    double *lpi;     /* [n] exact LPI or NAN */
    double *sk;      /* [n] signed key (flipped for bottom) of scored units */
    int64_t n_exact;
} rank_job;

static double signed_key(const rank_job *j, double key) { return j->o->bottom ? -key : key; }

/* Fills lpi/sk of units idx[0..m) (pointers p) from their exact LPIs l. */
static void finish_exact(rank_job *j, const int64_t *idx, int64_t m, const resid_unit *const *p,
                         const double *l) {
    /* the linear parts recompute vector units' vectors: in parallel */
#pragma omp parallel for schedule(static) if (m * (int64_t)j->e->D * j->e->dh >= RS_PAR_MIN_WORK)
    for (int64_t i = 0; i < m; i++) {
        resid_score sc;
        rs_score_linear(j->e, p[i], &sc);
        rs_score_finish(j->e, &sc, l[i]);
        j->lpi[idx[i]] = l[i];
        j->sk[idx[i]] = signed_key(j, key_of(j->o->key, &sc));
    }
    j->n_exact += m;
}

/* Scores the units idx[0..m) of each of the nj jobs (m[q] of job q) exactly,
 * all in one rs_exact_lpi call (shared projections), and fills their
 * lpi/sk. */
static resid_status score_exact_many(rank_job *const *jobs, const int64_t *const *idx,
                                     const int64_t *m, int nj, resid_error *err) {
    int64_t total = 0;
    for (int q = 0; q < nj; q++) total += m[q];
    const resid_unit **p = calloc((size_t)(total ? total : 1), sizeof *p);
    double *l = malloc((size_t)(total ? total : 1) * sizeof *l);
    if (!p || !l) {
        free(p), free(l);
        return rs_err(err, RESID_E_NOMEM, "rank: out of memory");
    }
    for (int q = 0, at = 0; q < nj; q++)
        for (int64_t i = 0; i < m[q]; i++) p[at++] = &jobs[q]->u[idx[q][i]];
    resid_status st = total ? rs_exact_lpi(jobs[0]->e, p, total, l, err) : RESID_OK;
    for (int q = 0, at = 0; !st && q < nj; at += m[q], q++)
        finish_exact(jobs[q], idx[q], m[q], p + at, l + at);
    free(p), free(l);
    return st;
}

/* Scores units idx[0..m) of one job exactly, fills lpi/sk. */
static resid_status score_exact(rank_job *j, const int64_t *idx, int64_t m, resid_error *err) {
    return score_exact_many(&j, &idx, &m, 1, err);
}

/* Units sharing unit i's direction: [*b0, *b1) in enumeration order. */
static void direction_group(const rank_job *j, int64_t i, int64_t *b0, int64_t *b1) {
    if (j->o->kind == RESID_UNIT_ATTN_NEURON) {
        const int64_t T = j->e->T;
        *b0 = i - i % T;
        *b1 = *b0 + T;
    } else {
        *b0 = i;
        *b1 = i + 1;
    }
}

/* The candidates in bound order, lazily: a binary heap under
 * cmp_best_first (best at the root), popped one at a time, so the search
 * pays for the few hundred units it visits instead of sorting them all.
 * The pops come in exactly the sorted order (the index breaks ties). */
static inline bool before(kv a, kv b) { return worse(b, a); }

static void cand_down(kv *a, int64_t n, int64_t i) { sift_down(a, n, i, before); }

static kv cand_pop(kv *a, int64_t *n) {
    kv top = a[0];
    a[0] = a[--*n];
    cand_down(a, *n, 0);
    return top;
}

/* A certified search in progress: the candidates in bound order and the
 * round being scored. */
typedef struct cert {
    kv *ord;        /* the candidates not yet popped: a heap, best bound first */
    int64_t left;   /* how many */
    char *queued;   /* [n] scored or in the round */
    int64_t *batch; /* the round's units */
    int64_t m;      /* how many */
} cert;

static void cert_free(cert *c) { free(c->ord), free(c->queued), free(c->batch); }

/* Every unit's optimistic bound, the candidates in that order. */
static resid_status cert_begin(rank_job *j, cert *c, resid_error *err) {
    resid_explainer *e = j->e;
    const int64_t n = j->n;
    const resid_rank_key key = j->o->key;
    *c = (cert){malloc((size_t)(n ? n : 1) * sizeof *c->ord), n,
                calloc((size_t)(n ? n : 1), 1),
                malloc((size_t)RS_FILL_ROWS * (e->T + 1) * sizeof *c->batch), 0};
    if (!c->ord || !c->batch || !c->queued) {
        cert_free(c);
        return rs_err(err, RESID_E_NOMEM, "rank: out of memory");
    }
    /* Optimistic bound of every unit in signed-key space (O(D) each,
     * independent: in parallel). */
    bool nomem = false;
#pragma omp parallel if (n * (int64_t)e->D >= RS_PAR_MIN_WORK)
    {
        float *vb = malloc((size_t)e->D * sizeof(float)), *yb = malloc((size_t)e->D * sizeof(float));
        if (!vb || !yb) {
#pragma omp atomic write
            nomem = true;
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            if (!vb || !yb) continue;
            double lo, up;
            lpi_bounds(e, &j->u[i], vb, yb, &lo, &up);
            double best = j->o->bottom ? lo : up;
            if (key == RESID_KEY_PROB_INC) {
                double pw = e->ctx[rs_unit_ctx(&j->u[i])].pw;
                best = pw * expm1(best);
            }
            best = signed_key(j, best);
            c->ord[i] = (kv){isnan(best) ? INFINITY : best, i};
        }
        free(vb), free(yb);
    }
    if (nomem) {
        cert_free(c);
        return rs_err(err, RESID_E_NOMEM, "rank: out of memory");
    }
    for (int64_t i = n / 2 - 1; i >= 0; i--) cand_down(c->ord, n, i);
    return RESID_OK;
}

/* The next round's units into c->batch (c->m; 0: the search is over):
 * until the heap of the K best is full every candidate in bound order,
 * whatever the bounds say, in one round; then RS_PROJ_ROWS rows at a time
 * while the next optimistic bound can still beat the K-th best exact
 * score. */
static void cert_round(rank_job *j, const heap *h, cert *c) {
    const bool dirl = rs_unit_is_directional(j->o->kind);
    /* units per row: an attention neuron's direction carries all T positions */
    const int64_t per_row = j->o->kind == RESID_UNIT_ATTN_NEURON ? j->e->T : 1;
    int64_t lim = (h->cap - h->n + per_row - 1) / per_row;
    if (lim > RS_FILL_ROWS) lim = RS_FILL_ROWS;
    if (lim < RS_PROJ_ROWS) lim = RS_PROJ_ROWS;
    int64_t m = 0, rows = 0;
    while (c->left > 0 && rows < lim) {
        if (h->n == h->cap && c->ord[0].v < h->a[0].v) break;
        kv x = cand_pop(c->ord, &c->left);
        if (c->queued[x.i]) continue;
        if (dirl) {
            int64_t b0, b1;
            direction_group(j, x.i, &b0, &b1);
            for (int64_t q = b0; q < b1; q++) c->batch[m++] = q, c->queued[q] = 1;
        } else {
            c->batch[m++] = x.i, c->queued[x.i] = 1;
        }
        rows++;
    }
    c->m = m;
}

/* Takes the scored round into the heap; false when the search is over. */
static bool cert_take(rank_job *j, heap *h, cert *c) {
    for (int64_t q = 0; q < c->m; q++) heap_push(h, (kv){j->sk[c->batch[q]], c->batch[q]});
    return c->left > 0 && !(h->n == h->cap && c->ord[0].v < h->a[0].v);
}

static resid_status check_opts(const resid_explainer *e, const resid_rank_opts *o,
                               resid_error *err) {
    if (!o) return rs_err(err, RESID_E_ARG, "rank: options required");
    if ((unsigned)o->kind >= RESID_UNIT_KIND_COUNT)
        return rs_err(err, RESID_E_ARG, "rank: unit kind %d unknown", (int)o->kind);
    if (o->key < RESID_KEY_LPI || o->key > RESID_KEY_CONTRAST)
        return rs_err(err, RESID_E_ARG, "rank: key %d unknown", (int)o->key);
    if (o->key == RESID_KEY_CONTRAST && e->contrast < 0)
        return rs_err(err, RESID_E_ARG, "rank: the contrast key needs a contrast token");
    if (o->layer < -1 || o->layer >= e->L)
        return rs_err(err, RESID_E_ARG, "rank: layer %d out of range [0, %d)", o->layer, e->L);
    if (o->k < 0) return rs_err(err, RESID_E_ARG, "rank: k = %lld is negative", (long long)o->k);
    if (e->lens == RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG,
                      "the logit lens is not linear: only the layer table accepts it");
    return RESID_OK;
}

/* One ranking of rs_rank_many. */
typedef struct rank_run {
    resid_rank_opts o;
    rank_job j;
    heap h;
    cert c;
    bool searching; /* its certified search has rounds to go */
    int64_t proj;   /* projections done for it (a shared round counts whole) */
} rank_run;

/* Sets up ranking r and runs it unless it is a certified search, which is
 * left searching (cert_begin done). */
static resid_status run_begin(resid_explainer *e, rank_run *r, resid_error *err) {
    const resid_rank_opts *o = &r->o;
    rank_job *j = &r->j;
    *j = (rank_job){e, o, NULL, rs_unit_count_layer(e, o->kind, o->layer), 0, NULL, NULL, 0};
    j->k = o->k < j->n ? o->k : j->n;
    const int64_t n = j->n, proj0 = e->n_proj;
    j->u = malloc((size_t)(n ? n : 1) * sizeof *j->u);
    j->lpi = malloc((size_t)(n ? n : 1) * sizeof *j->lpi);
    j->sk = malloc((size_t)(n ? n : 1) * sizeof *j->sk);
    r->h = (heap){malloc((size_t)(j->k ? j->k : 1) * sizeof(kv)), 0, j->k};
    if (!j->u || !j->lpi || !j->sk || !r->h.a)
        return rs_err(err, RESID_E_NOMEM, "rank: out of memory (%lld units)", (long long)n);
    for (int64_t i = 0; i < n; i++) {
        rs_unit_from_index(e, o->kind, o->layer, i, &j->u[i]);
        j->lpi[i] = NAN;
    }
    resid_status st = rs_units_prepare(e, j->u, n, err);
    if (st) return st;
    heap *h = &r->h;
    if (o->exhaustive) {
        int64_t *all = calloc((size_t)(n ? n : 1), sizeof *all);
        if (!all) return rs_err(err, RESID_E_NOMEM, "rank: out of memory");
        for (int64_t i = 0; i < n; i++) all[i] = i;
        /* Every unit through the canonical projection (as fast as BLAS at
         * this batch size), so the scores are the exact ones themselves.
         * The token cache sits this out: keeping every unit's tokens would
         * cost a selection pass per projection and memory for lists nobody
         * shows (a report projects its few listed units again). */
        rs_tokcache *tok = e->tok;
        e->tok = NULL;
        st = score_exact(j, all, n, err);
        e->tok = tok;
        if (!st)
            for (int64_t i = 0; i < n; i++) heap_push(h, (kv){j->sk[i], i});
        free(all);
    } else if (o->key == RESID_KEY_LOGIT || o->key == RESID_KEY_CONTRAST) {
        /* Linear keys are exact in O(D): select, then score the winners. */
        for (int64_t i = 0; i < n; i++) {
            resid_score sc;
            rs_score_linear(e, &j->u[i], &sc);
            heap_push(h, (kv){signed_key(j, key_of(o->key, &sc)), i});
        }
        int64_t *win = malloc((size_t)(h->n ? h->n : 1) * sizeof *win);
        if (!win) return rs_err(err, RESID_E_NOMEM, "rank: out of memory");
        for (int64_t q = 0; q < h->n; q++) win[q] = h->a[q].i;
        st = score_exact(j, win, h->n, err);
        free(win);
    } else if (j->k > 0) {
        st = cert_begin(j, &r->c, err);
        r->searching = st == RESID_OK;
    }
    r->proj += e->n_proj - proj0;
    return st;
}

/* The best first list of ranking r (its heap, sorted) into *out. */
static resid_status run_end(resid_explainer *e, rank_run *r, resid_score **out, int64_t *n_out,
                            resid_rank_stats *stats, resid_error *err) {
    heap *h = &r->h;
    resid_score *res = malloc((size_t)(h->n ? h->n : 1) * sizeof *res);
    if (!res) return rs_err(err, RESID_E_NOMEM, "rank: out of memory");
    qsort(h->a, (size_t)h->n, sizeof(kv), cmp_best_first);
#pragma omp parallel for schedule(static) if (h->n * (int64_t)e->D * e->dh >= RS_PAR_MIN_WORK)
    for (int64_t q = 0; q < h->n; q++) {
        rs_score_linear(e, &r->j.u[h->a[q].i], &res[q]);
        rs_score_finish(e, &res[q], r->j.lpi[h->a[q].i]);
    }
    if (stats) {
        stats->n_units = r->j.n;
        stats->k_requested = r->o.k;
        stats->k = h->n;
        stats->clamped = r->o.k > r->j.n;
        stats->n_exact = r->j.n_exact;
        stats->n_projections = r->proj;
    }
    *out = res;
    *n_out = h->n;
    return RESID_OK;
}

static void run_free(rank_run *r) {
    free(r->j.u), free(r->j.lpi), free(r->j.sk), free(r->h.a);
    if (r->searching) cert_free(&r->c);
}

resid_status rs_rank_many(resid_explainer *e, const resid_rank_opts *opts, int n,
                          resid_score **out, int64_t *n_out, resid_rank_stats *stats,
                          resid_error *err) {
    for (int i = 0; i < n; i++) out[i] = NULL, n_out[i] = 0;
    for (int i = 0; i < n; i++) {
        resid_status st = check_opts(e, &opts[i], err);
        if (st) return st;
    }
    rank_run *r = calloc((size_t)(n ? n : 1), sizeof *r);
    rank_job **jobs = malloc((size_t)(n ? n : 1) * sizeof *jobs);
    const int64_t **idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    int64_t *m = malloc((size_t)(n ? n : 1) * sizeof *m);
    int *who = malloc((size_t)(n ? n : 1) * sizeof *who);
    resid_status st = RESID_OK;
    if (!r || !jobs || !idx || !m || !who) {
        st = rs_err(err, RESID_E_NOMEM, "rank: out of memory");
        goto done;
    }
    for (int i = 0; i < n && !st; i++) {
        r[i].o = opts[i];
        st = run_begin(e, &r[i], err);
    }
    /* The certified searches in lockstep: each round's units of all of
     * them scored together, so their projections share the calls. */
    while (!st) {
        int nj = 0;
        for (int i = 0; i < n; i++) {
            if (!r[i].searching) continue;
            cert_round(&r[i].j, &r[i].h, &r[i].c);
            if (r[i].c.m == 0) {
                cert_free(&r[i].c);
                r[i].searching = false;
                continue;
            }
            jobs[nj] = &r[i].j, idx[nj] = r[i].c.batch, m[nj] = r[i].c.m, who[nj++] = i;
        }
        if (nj == 0) break;
        const int64_t proj0 = e->n_proj;
        if ((st = score_exact_many(jobs, idx, m, nj, err))) break;
        for (int q = 0; q < nj; q++) {
            rank_run *ri = &r[who[q]];
            ri->proj += e->n_proj - proj0;
            if (!cert_take(&ri->j, &ri->h, &ri->c)) {
                cert_free(&ri->c);
                ri->searching = false;
            }
        }
    }
    for (int i = 0; i < n && !st; i++)
        st = run_end(e, &r[i], &out[i], &n_out[i], stats ? &stats[i] : NULL, err);
    if (st)
        for (int i = 0; i < n; i++) {
            free(out[i]);
            out[i] = NULL, n_out[i] = 0;
        }
done:
    for (int i = 0; r && i < n; i++) run_free(&r[i]);
    free(r), free(jobs), free(idx), free(m), free(who);
    return st;
}

resid_status resid_rank(resid_explainer *e, const resid_rank_opts *opts, resid_score **out,
                        int64_t *n_out, resid_rank_stats *stats, resid_error *err) {
    *out = NULL;
    *n_out = 0;
    if (!opts) return rs_err(err, RESID_E_ARG, "rank: options required");
    return rs_rank_many(e, opts, 1, out, n_out, stats, err);
}
