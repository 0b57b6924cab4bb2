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

/* ---------------------------------------------------------------------- */
/* A map from units to entry numbers 0, 1, ... (open addressing)          */
/* ---------------------------------------------------------------------- */

typedef struct umap {
    int64_t n, cap;   /* entries */
    resid_unit *keys; /* [cap] */
    int64_t *index;   /* [nidx]: entry or -1 */
    int64_t nidx;     /* a power of two, 4·cap */
} umap;

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

/* The entry of key, or -1; *slot: where it is or would go. */
static int64_t umap_find(const umap *m, const resid_unit *key, int64_t *slot) {
    if (m->nidx == 0) return -1;
    const uint64_t mask = (uint64_t)m->nidx - 1;
    for (uint64_t i = key_hash(key) & mask;; i = (i + 1) & mask) {
        int64_t at = m->index[i];
        if (at < 0 || same_key(&m->keys[at], key)) {
            *slot = (int64_t)i;
            return at;
        }
    }
}

/* Room for one more entry (m->n < m->cap); false when out of memory. */
static bool umap_room(umap *m) {
    if (m->n < m->cap) return true;
    int64_t cap = m->cap ? 2 * m->cap : 256, nidx = 4 * cap;
    resid_unit *keys = realloc(m->keys, (size_t)cap * sizeof *keys);
    if (!keys) return false;
    m->keys = keys;
    int64_t *index = malloc((size_t)nidx * sizeof *index);
    if (!index) return false;
    free(m->index);
    m->index = index, m->nidx = nidx, m->cap = cap;
    for (int64_t i = 0; i < nidx; i++) index[i] = -1;
    for (int64_t e = 0; e < m->n; e++) {
        int64_t slot;
        umap_find(m, &m->keys[e], &slot);
        index[slot] = e;
    }
    return true;
}

/* Adds an absent key (after umap_room); returns its entry. */
static int64_t umap_add(umap *m, const resid_unit *key) {
    int64_t slot;
    umap_find(m, key, &slot);
    m->keys[m->n] = *key;
    m->index[slot] = m->n;
    return m->n++;
}

static void umap_free(umap *m) { free(m->keys), free(m->index); }

/* ---------------------------------------------------------------------- */
/* Token lists                                                            */
/* ---------------------------------------------------------------------- */

struct rs_tokcache {
    int32_t k;
    umap map;
    resid_token_value *tv; /* [map.cap][2k]: top k, then bottom k */
    int64_t tv_cap;
};

static resid_unit cache_key(const resid_unit *u) {
    resid_unit k = *u;
    if (rs_unit_is_directional(u->kind)) k.pos = -1;
    return k;
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
    umap_free(&c->map);
    free(c->tv);
    free(c);
}

void rs_tokcache_put(resid_explainer *e, const resid_unit *u, const resid_token_value *top,
                     const resid_token_value *bottom) {
    rs_tokcache *c = e->tok;
    if (!c) return;
    const resid_unit key = cache_key(u);
    int64_t slot;
    if (umap_find(&c->map, &key, &slot) >= 0) return;
    if (!umap_room(&c->map)) return; /* a cache: a miss is recomputed */
    const size_t k = (size_t)c->k;
    if (c->tv_cap < c->map.cap) {
        size_t b;
        if (!rs_mul_size((size_t)c->map.cap * 2 * k, sizeof *c->tv, &b)) return;
        resid_token_value *tv = realloc(c->tv, b);
        if (!tv) return;
        c->tv = tv, c->tv_cap = c->map.cap;
    }
    const int64_t at = umap_add(&c->map, &key);
    memcpy(c->tv + (size_t)at * 2 * k, top, k * sizeof *top);
    memcpy(c->tv + (size_t)at * 2 * k + k, bottom, k * sizeof *bottom);
}

bool rs_tokcache_get(const resid_explainer *e, const resid_unit *u, int32_t k,
                     resid_token_value *top, resid_token_value *bottom) {
    const rs_tokcache *c = e->tok;
    if (!c || k > c->k) return false;
    const resid_unit key = cache_key(u);
    int64_t slot, at = umap_find(&c->map, &key, &slot);
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

/* The state of one pass of rs_tokcache_extremes after its first k. */
typedef struct extremes {
    resid_token_value *top, *bottom;
    int32_t nt, nb, k;
    float hi, lo; /* the k-th largest and smallest so far */
} extremes;

/* Takes c[t] into the lists if it beats the k-th largest or smallest. */
static inline void extremes_take(extremes *x, int32_t t, float v) {
    if (v > x->hi) {
        keep(x->top, &x->nt, x->k, t, v, false);
        x->hi = (float)x->top[x->k - 1].value;
    }
    if (v < x->lo) { /* both, when V < 2k */
        keep(x->bottom, &x->nb, x->k, t, v, true);
        x->lo = (float)x->bottom[x->k - 1].value;
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* extremes_take for t = t0 .. V−1, 8 values compared at a time: a block
 * none of whose values passes either threshold is skipped, the others go
 * through extremes_take in order (the same insertions, the same result). */
RS_AVX2 static int32_t extremes_avx2(extremes *x, const float *c, int32_t t0, int32_t V) {
    int32_t t = t0;
    for (; t + 8 <= V; t += 8) {
        const __m256 v = _mm256_loadu_ps(c + t);
        const __m256 m = _mm256_or_ps(_mm256_cmp_ps(v, _mm256_set1_ps(x->hi), _CMP_GT_OQ),
                                      _mm256_cmp_ps(v, _mm256_set1_ps(x->lo), _CMP_LT_OQ));
        if (_mm256_movemask_ps(m))
            for (int32_t q = 0; q < 8; q++) extremes_take(x, t + q, c[t + q]);
    }
    return t;
}
#endif

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
    extremes x = {top, bottom, nt, nb, k, (float)top[k - 1].value, (float)bottom[k - 1].value};
#if defined(__x86_64__) || defined(__i386__)
    if (rs_kernels_avx2()) t = extremes_avx2(&x, c, t, V);
#endif
    for (; t < V; t++) extremes_take(&x, t, c[t]);
    if (scale != 1.0)
        for (int32_t i = 0; i < k; i++) top[i].value *= scale, bottom[i].value *= scale;
}

/* ---------------------------------------------------------------------- */
/* Exact LPIs                                                             */
/* ---------------------------------------------------------------------- */

struct rs_lpimemo {
    umap map;
    double *lpi; /* [lpi_cap] */
    int64_t lpi_cap;
};

void rs_lpimemo_free(rs_lpimemo *c) {
    if (!c) return;
    umap_free(&c->map);
    free(c->lpi);
    free(c);
}

void rs_lpimemo_put(resid_explainer *e, const resid_unit *u, double lpi) {
    if (!e->memo && !(e->memo = calloc(1, sizeof *e->memo))) return;
    rs_lpimemo *c = e->memo;
    int64_t slot;
    if (umap_find(&c->map, u, &slot) >= 0) return;
    if (!umap_room(&c->map)) return; /* a memo: a miss is recomputed */
    if (c->lpi_cap < c->map.cap) {
        double *l = realloc(c->lpi, (size_t)c->map.cap * sizeof *l);
        if (!l) return;
        c->lpi = l, c->lpi_cap = c->map.cap;
    }
    c->lpi[umap_add(&c->map, u)] = lpi;
}

bool rs_lpimemo_get(const resid_explainer *e, const resid_unit *u, double *lpi) {
    const rs_lpimemo *c = e->memo;
    if (!c) return false;
    int64_t slot, at = umap_find(&c->map, u, &slot);
    if (at < 0) return false;
    *lpi = c->lpi[at];
    return true;
}
