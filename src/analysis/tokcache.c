/*
 * tokcache.c - the top and bottom tokens of every unit the explainer has
 * projected exactly.
 *
 * An exact score projects the unit's vector (or its direction) onto the
 * whole vocabulary; a report then lists each ranked unit's top and bottom
 * tokens, which are that same projection. Keeping the k extreme tokens of
 * every exact projection saves projecting the winners a second time.
 *
 * Keys: a vector unit is its own key; a directional unit (FFN or attention
 * neuron) is keyed by its direction (pos = -1), shared by every source
 * position, and its values are those of the raw parameter row (scale 1),
 * the convention of resid_param_vector + resid_lens_vector.
 *
 * The same file keeps the exact LPI of every unit scored through the
 * canonical projection (rs_lpimemo_*): an explainer's target, lens and
 * contexts never change, so a unit ranked twice (the report's lists, then
 * the query analysis's own top-N_v) is projected once. The memo returns the
 * very double the canonical path computed, so nothing changes but time.
 */
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"

struct rs_tokcache {
    int32_t k;
    int64_t n, cap;          /* entries */
    resid_unit *keys;        /* [cap] */
    resid_token_value *tv;   /* [cap][2k]: top k, then bottom k */
    int64_t *index;          /* [nidx] open addressing: entry or -1 */
    int64_t nidx;            /* power of two, > 2·cap */
};

static resid_unit cache_key(const resid_unit *u) {
    resid_unit k = *u;
    if (rs_unit_is_directional(u->kind)) k.pos = -1;
    return k;
}

static bool same_key(const resid_unit *a, const resid_unit *b) {
    return a->kind == b->kind && a->layer == b->layer && a->head == b->head &&
           a->index == b->index && a->pos == b->pos;
}

static uint64_t key_hash(const resid_unit *u) {
    uint64_t h = 1469598103934665603ull;
    const int32_t f[5] = {(int32_t)u->kind, u->layer, u->head, u->index, u->pos};
    for (int i = 0; i < 5; i++) {
        h ^= (uint32_t)f[i];
        h *= 1099511628211ull;
        h ^= h >> 29;
    }
    return h;
}

static int64_t find(const rs_tokcache *c, const resid_unit *key, int64_t *slot) {
    const uint64_t mask = (uint64_t)c->nidx - 1;
    for (uint64_t i = key_hash(key) & mask;; i = (i + 1) & mask) {
        int64_t at = c->index[i];
        if (at < 0 || same_key(&c->keys[at], key)) {
            *slot = (int64_t)i;
            return at;
        }
    }
}

static bool grow(rs_tokcache *c) {
    int64_t cap = c->cap ? 2 * c->cap : 256, nidx = 4 * cap;
    size_t tvb;
    if (!rs_mul_size((size_t)cap * 2, (size_t)c->k * sizeof(resid_token_value), &tvb))
        return false;
    resid_unit *keys = realloc(c->keys, (size_t)cap * sizeof *keys);
    if (keys) c->keys = keys;
    resid_token_value *tv = keys ? realloc(c->tv, tvb) : NULL;
    if (tv) c->tv = tv;
    int64_t *index = tv ? malloc((size_t)nidx * sizeof *index) : NULL;
    if (!index) return false;
    free(c->index);
    c->index = index;
    c->nidx = nidx;
    c->cap = cap;
    for (int64_t i = 0; i < nidx; i++) index[i] = -1;
    for (int64_t e = 0; e < c->n; e++) {
        int64_t slot;
        find(c, &c->keys[e], &slot);
        index[slot] = e;
    }
    return true;
}

resid_status rs_tokcache_enable(resid_explainer *e, int32_t k, resid_error *err) {
    rs_tokcache_free(e->tok);
    e->tok = NULL;
    if (k <= 0) return RESID_OK;
    if (k > e->V) k = e->V;
    e->tok = calloc(1, sizeof *e->tok);
    if (!e->tok) return rs_err(err, RESID_E_NOMEM, "token cache: out of memory");
    e->tok->k = k;
    return RESID_OK;
}

int32_t rs_tokcache_k(const resid_explainer *e) { return e->tok ? e->tok->k : 0; }

void rs_tokcache_free(rs_tokcache *c) {
    if (!c) return;
    free(c->keys), free(c->tv), free(c->index);
    free(c);
}

void rs_tokcache_put(resid_explainer *e, const resid_unit *u, const resid_token_value *top,
                     const resid_token_value *bottom) {
    rs_tokcache *c = e->tok;
    if (!c) return;
    const resid_unit key = cache_key(u);
    int64_t slot;
    if (c->nidx > 0 && find(c, &key, &slot) >= 0) return;
    if (c->n == c->cap && !grow(c)) return; /* a cache: a miss is recomputed */
    find(c, &key, &slot);
    const size_t k = (size_t)c->k;
    c->keys[c->n] = key;
    memcpy(c->tv + (size_t)c->n * 2 * k, top, k * sizeof *top);
    memcpy(c->tv + (size_t)c->n * 2 * k + k, bottom, k * sizeof *bottom);
    c->index[slot] = c->n++;
}

bool rs_tokcache_get(const resid_explainer *e, const resid_unit *u, int32_t k,
                     resid_token_value *top, resid_token_value *bottom) {
    const rs_tokcache *c = e->tok;
    if (!c || c->n == 0 || k > c->k) return false;
    const resid_unit key = cache_key(u);
    int64_t slot, at = find(c, &key, &slot);
    if (at < 0) return false;
    const resid_token_value *tv = c->tv + (size_t)at * 2 * (size_t)c->k;
    memcpy(top, tv, (size_t)k * sizeof *top);
    memcpy(bottom, tv + c->k, (size_t)k * sizeof *bottom);
    return true;
}

/* Inserts (id, v) into a[0..*n) (capacity k), kept best first: by value
 * (descending for the top list, ascending for the bottom), then by id. Ids
 * arrive in increasing order, so a value equal to a kept one goes after it. */
static inline void keep(resid_token_value *a, int32_t *n, int32_t k, int32_t id, float v,
                        bool lowest) {
    int32_t i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && (lowest ? a[i - 1].value > v : a[i - 1].value < v)) {
        a[i] = a[i - 1];
        i--;
    }
    a[i] = (resid_token_value){id, v};
}

void rs_tokcache_extremes(const resid_explainer *e, const float *c, double scale,
                          resid_token_value *top, resid_token_value *bottom) {
    /* The k largest and smallest of c[V] in one pass, in the order (and
     * with the ties) of resid_top_bottom: after the first k entries only
     * values beyond the current k-th are inserted, which is rare. */
    const int32_t k = e->tok->k, V = e->V;
    int32_t nt = 0, nb = 0, t = 0;
    for (; t < V && nt < k; t++) {
        keep(top, &nt, k, t, c[t], false);
        keep(bottom, &nb, k, t, c[t], true);
    }
    float hi = (float)top[k - 1].value, lo = (float)bottom[k - 1].value;
    for (; t < V; t++) {
        const float x = c[t];
        if (x > hi) {
            keep(top, &nt, k, t, x, false);
            hi = (float)top[k - 1].value;
        }
        if (x < lo) { /* both, when V < 2k */
            keep(bottom, &nb, k, t, x, true);
            lo = (float)bottom[k - 1].value;
        }
    }
    if (scale != 1.0)
        for (int32_t i = 0; i < k; i++) top[i].value *= scale, bottom[i].value *= scale;
}

/* ---------------------------------------------------------------------- */
/* Exact LPIs                                                             */
/* ---------------------------------------------------------------------- */

struct rs_lpimemo {
    int64_t n, cap;
    resid_unit *keys; /* [cap] */
    double *lpi;      /* [cap] */
    int64_t *index;   /* [nidx], entry or -1 */
    int64_t nidx;
};

static int64_t memo_find(const rs_lpimemo *c, const resid_unit *key, int64_t *slot) {
    const uint64_t mask = (uint64_t)c->nidx - 1;
    for (uint64_t i = key_hash(key) & mask;; i = (i + 1) & mask) {
        int64_t at = c->index[i];
        if (at < 0 || same_key(&c->keys[at], key)) {
            *slot = (int64_t)i;
            return at;
        }
    }
}

static bool memo_grow(rs_lpimemo *c) {
    int64_t cap = c->cap ? 2 * c->cap : 1024, nidx = 4 * cap;
    resid_unit *keys = realloc(c->keys, (size_t)cap * sizeof *keys);
    if (keys) c->keys = keys;
    double *lpi = keys ? realloc(c->lpi, (size_t)cap * sizeof *lpi) : NULL;
    if (lpi) c->lpi = lpi;
    int64_t *index = lpi ? malloc((size_t)nidx * sizeof *index) : NULL;
    if (!index) return false;
    free(c->index);
    c->index = index;
    c->nidx = nidx;
    c->cap = cap;
    for (int64_t i = 0; i < nidx; i++) index[i] = -1;
    for (int64_t e = 0; e < c->n; e++) {
        int64_t slot;
        memo_find(c, &c->keys[e], &slot);
        index[slot] = e;
    }
    return true;
}

void rs_lpimemo_free(rs_lpimemo *c) {
    if (!c) return;
    free(c->keys), free(c->lpi), free(c->index);
    free(c);
}

void rs_lpimemo_put(resid_explainer *e, const resid_unit *u, double lpi) {
    if (!e->memo && !(e->memo = calloc(1, sizeof *e->memo))) return;
    rs_lpimemo *c = e->memo;
    int64_t slot;
    if (c->nidx > 0 && memo_find(c, u, &slot) >= 0) return;
    if (c->n == c->cap && !memo_grow(c)) return; /* a memo: a miss is recomputed */
    memo_find(c, u, &slot);
    c->keys[c->n] = *u;
    c->lpi[c->n] = lpi;
    c->index[slot] = c->n++;
}

bool rs_lpimemo_get(const resid_explainer *e, const resid_unit *u, double *lpi) {
    const rs_lpimemo *c = e->memo;
    if (!c || c->n == 0) return false;
    int64_t slot, at = memo_find(c, u, &slot);
    if (at < 0) return false;
    *lpi = c->lpi[at];
    return true;
}
