/*
 * analysis.h - private state of the attribution core (lens.c, attrib.c,
 * rank.c). Public API: the "Attribution" section of resid.h.
 *
 * Everything is at the prediction position t*. Every "context" x (the
 * residual a unit is added to) gets its lens values precomputed once:
 * context 2l = x_in[l][t*] (attention units of layer l), 2l+1 = x_mid[l][t*]
 * (FFN units of layer l), 2L = x_L.
 *
 * A unit vector v is read through y = lensmap(v) = γ_f ⊙ centre(v) / s
 * (centre = minus own mean for GPT-2, identity for Llama), so that
 * bs(v) = W_U·y. "Directional" units (FFN neurons, attention neurons) are a
 * scalar a times a fixed parameter row d; then bs(v) = (a/s)·P with
 * P = W_U·(γ_f ⊙ centre(d)), one projection shared by all units on d.
 */
#ifndef RESID_ANALYSIS_H
#define RESID_ANALYSIS_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "resid.h"

/* Rows per batch of the certified ranking once its heap is full, and of
 * rs_project (a BLAS GEMM of exactly this many rows, zero-padded, so a
 * row's result does not depend on the rows sharing its batch). */
#define RS_PROJ_ROWS 32
/* Rows per canonical projection in exact scoring (rs_project_canon streams
 * W_U once per call, so fewer, larger calls are faster; c is
 * RS_CANON_ROWS × V floats, 51 MB for GPT-2). On GPT-2 small, 256 rather
 * than 128 took `explain --exhaustive` from 29-30 to 27.5-28 s; 384 was no
 * faster. */
#define RS_CANON_ROWS 256
/* The canonical projection's blocks of d: a score is the sum, in order, of
 * one sequential chain per block of this many d (canon.c). Part of the
 * definition of an exact score, and the packed W_U panel's depth
 * (16 tokens × 256 d = 16 KB, in L1). */
#define RS_CANON_KBLOCK 256
/* The certified ranking scores the first K candidates (which any ranking
 * must score) in one batch of up to this many rows, then RS_PROJ_ROWS at a
 * time while the bounds decide. */
#define RS_FILL_ROWS 512
/* Below this many floats of work a loop runs on one thread. */
#define RS_PAR_MIN_WORK (1 << 18)

/* Attributes of the hot loops (canon.c, lens.c): optimised even in Debug
 * builds (the test suite scores hundreds of thousands of units through
 * them); RS_AVX2 ones are compiled for AVX2+FMA and called only when
 * rs_kernels_avx2(). */
#if defined(__clang__) /* clang has no per-function optimize attribute */
#define RS_HOT
#define RS_AVX2 __attribute__((target("avx2,fma")))
#else
#define RS_HOT __attribute__((optimize("O2")))
#define RS_AVX2 __attribute__((optimize("O2"), target("avx2,fma")))
#endif

typedef struct rs_context {
    float *logp;  /* [V] log p_t = b_t − lse(b), in the lens */
    float lpmax;  /* max_t logp[t] */
    float *p;     /* [V] exp(logp[t]), for the series path, or NULL (not
                     owned: the explainer's ctx_p) */
    double psum;  /* Σ_t p[t] */
    double lse0;  /* log Σ_t exp(logp[t]) as the direct path sums it (~0) */
    double pw;    /* p(w|x) */
    double logpw; /* log p(w|x) */
    float *g;     /* [D] U(v) = v·g: centre(γ ⊙ (W_U[w] − W_Uᵀp)) / s */
} rs_context;

/* Per-direction constants of one layer's directions (FFN rows or W_O rows),
 * computed lazily. */
typedef struct rs_dirstats {
    int64_t n;     /* directions in the layer (N, or H·d_h) */
    float *dg;     /* [n] d·g_ctx            (U = a·dg) */
    float *dw;     /* [n] d·gw               (bs_w(v) = a·dw) */
    float *dc;     /* [n] d·gc (contrast) or NULL */
    float *nd;     /* [n] ‖γ ⊙ centre(d)‖ / s */
    float *pmax;   /* [n] max_t P_t / s once projected, else NAN */
    float *pmin;   /* [n] min_t P_t / s once projected, else NAN */
    /* Bounds only, from the explainer's direction ranges (NULL without):
     * bmax >= max_t P_t / s and bmin <= min_t P_t / s of the explainer's
     * own float projection, the cached values widened by a rounding
     * allowance. Never fed to an exact score (those use pmax/pmin). */
    float *bmax;   /* [n] */
    float *bmin;   /* [n] */
} rs_dirstats;

/* resid_ranges (ranges.c): per layer, the max and min over the vocabulary
 * of every direction's projection at scale 1, P1 = W_U·(γ ⊙ centre(d)). */
struct resid_ranges {
    resid_arch arch;
    int32_t L, D, N, H, dh, V; /* n_layer, d_model, d_ffn, n_head, d_head, n_vocab */
    uint64_t fingerprint;      /* of the model's weights (ranges.c) */
    float *ffn_max, *ffn_min;   /* [L][N] */
    float *attn_max, *attn_min; /* [L][H·d_h] */
};

struct resid_explainer {
    const resid_model *m;
    const resid_trace *tr;
    resid_lens lens;
    int32_t target, contrast;
    int32_t L, D, H, Hkv, dh, N, V, T;
    int32_t tstar; /* row of t* in the trace (n_cap − 1) */
    bool centre;   /* GPT-2 LayerNorm: centre vectors */
    double s;      /* lens scale of x_L */

    const float *wu;  /* [V][D] unembedding, float32 (maybe wu_own) */
    float *wu_own;    /* owned dequantised copy, or NULL */
    float *gamma;     /* [D] final-norm gain (ones if absent) */
    double *wu_beta;  /* [V] W_U·β_f (GPT-2), or NULL */
    double mnorm;     /* max_t ‖W_U[t]‖ */

    rs_context *ctx;  /* [2L+1] */
    float *gw;        /* [D] centre(γ ⊙ W_U[w]) / s: bs_w(v) = v·gw */
    float *gc;        /* [D] same for the contrast token, or NULL */

    rs_dirstats *ffn_dirs;  /* [L], lazily filled (n == 0 until then) */
    rs_dirstats *attn_dirs; /* [L] */
    const float **wo_t;     /* [L] W_O transposed [H·d_h][D], lazily (the weights
                               themselves when stored so in float32) */

    int64_t n_proj; /* projections done (for stats) */
    float *proj_buf; /* rs_proj_buf's reused output of the exact scores */
    float *ctx_p;    /* [2L+1][V] the contexts' p (their rs_context.p) */
    size_t proj_buf_n;

    const resid_ranges *ranges; /* direction ranges (bounds only), or NULL */

    struct rs_tokcache *tok; /* token lists of exact projections, or NULL */
    struct rs_lpimemo *memo; /* exact LPIs scored so far, or NULL */
};

/* ---- tokcache.c ------------------------------------------------------ */

/* The k top and bottom tokens of every unit projected exactly from now on
 * (k <= 0: none; replaces an earlier cache). Vector units are keyed by
 * themselves, FFN and attention neurons by their direction, with the values
 * of the raw parameter row (lens scale 1). */
typedef struct rs_tokcache rs_tokcache;
resid_status rs_tokcache_enable(resid_explainer *e, int32_t k, resid_error *err);
int32_t rs_tokcache_k(const resid_explainer *e); /* 0 when off */
void rs_tokcache_free(rs_tokcache *c);
/* Adds a unit's lists (k = rs_tokcache_k each); a full cache drops them. */
void rs_tokcache_put(resid_explainer *e, const resid_unit *u, const resid_token_value *top,
                     const resid_token_value *bottom);
/* The first k <= rs_tokcache_k of a unit's lists; false if not cached. */
bool rs_tokcache_get(const resid_explainer *e, const resid_unit *u, int32_t k,
                     resid_token_value *top, resid_token_value *bottom);
/* The cache's k extremes of a projection c[V], values times scale. */
void rs_tokcache_extremes(const resid_explainer *e, const float *c, double scale,
                          resid_token_value *top, resid_token_value *bottom);

/* The exact (canonical) LPI of every unit scored so far: rs_exact_lpi
 * consults and fills it. A full memo drops entries silently. */
typedef struct rs_lpimemo rs_lpimemo;
void rs_lpimemo_free(rs_lpimemo *c);
void rs_lpimemo_put(resid_explainer *e, const resid_unit *u, double lpi);
bool rs_lpimemo_get(const resid_explainer *e, const resid_unit *u, double *lpi);

/* ---- canon.c --------------------------------------------------------- */

/* c[n][V] = y[n][D]·W_Uᵀ computed so that each row's result depends on
 * that row alone (a fixed operation order, independent of n, tiles and
 * threads): the definition of an exact score. */
void rs_project_canon(resid_explainer *e, const float *y, int n, float *c);
/* c[n][nw] = y[n][D]·wᵀ for any float32 rows w[nw][D], in the same
 * order (rs_project_canon is this on W_U, counted in e->n_proj). */
void rs_canon_gemm(const float *w, int nw, int D, const float *y, int n, float *c);
/* Sets e->wu (W_U as float32 rows: the weights in place when so stored,
 * else the owned copy e->wu_own; vd = V·D) and e->gamma (the final-norm
 * gain, ones without one), what rs_lensmap and rs_project_canon read.
 * false: out of memory (the caller frees what was set). */
bool rs_explainer_unembed(resid_explainer *e, const resid_model *m, size_t vd);
/* A buffer of at least n floats owned by the explainer, kept from call to
 * call (the exact scores' projections: no fresh pages each batch), or NULL
 * when out of memory. Valid until the next call or the explainer's end. */
float *rs_proj_buf(resid_explainer *e, size_t n);
/* For tests: true selects the generic canonical kernels (and lse), false
 * the CPU's best again. Returns whether the AVX2 kernels are now in use.
 * Not to be called while anything is being scored. */
bool rs_canon_use_generic(bool generic);

/* ---- lens.c ---------------------------------------------------------- */

/* y[D] = γ ⊙ centre(v) / s. */
void rs_lensmap(const resid_explainer *e, const float *v, float *y);
/* c[n][V] = y[n][D]·W_Uᵀ for n <= RS_PROJ_ROWS rows, through one GEMM of
 * exactly RS_PROJ_ROWS rows. `pad` is scratch [RS_PROJ_ROWS][D]. */
void rs_project(resid_explainer *e, const float *y, int n, float *pad, float *c);
/* log Σ_t exp(z_t) over z[n], shifted by the max (AVX2 when available). */
double rs_logsumexp(const float *z, int n);
/* The kernel choice of the exact scores (canon.c and the log-sum-exp):
 * true when the AVX2+FMA kernels are in use (the CPU is checked once per
 * process). */
bool rs_kernels_avx2(void);
/* true: the generic kernels from now on; false: the CPU's best again. */
void rs_kernels_set_generic(bool generic);
/* y[i] = exp(x[i]) for x[i] <= 0 (log-probabilities): the AVX2 kernel of
 * the exact scores' log-sum-exp (~1 ulp) when the CPU has it, else expf. */
void rs_exp_array(const float *x, float *y, int n);
/* log Σ_t p_t·exp(κ c_t) for the context, double accumulation, through a
 * fixed, vectorised exp (deterministic within a process). cmax and cmin,
 * the largest and smallest c_t, give the shift of a one-pass sum; NAN (or
 * a sum too small for it) falls back to two passes. The result depends on
 * (c, κ, cmax, cmin) alone: pass the values rs_minmax gives. */
double rs_lse_shift(const resid_explainer *e, const rs_context *cx, const float *c,
                    float kappa, float cmax, float cmin);
/* LPI of κ·c in the context, the direct path: κ c_w − (rs_lse_shift −
 * cx->lse0), so that κ = 0 gives 0 exactly. */
double rs_lpi_from(const resid_explainer *e, const rs_context *cx, const float *c,
                   float kappa, float cmax, float cmin);
/* The series path. When ρ = |κ|·max_t |c_t| <= RS_SERIES_RHO, the change
 * of the log-sum-exp is log1p(Σ_k (κm)^k S_k / (k! S_0)), m = max_t |c_t|,
 * S_k = Σ_t p_t (c_t/m)^k, S_0 = Σ_t p_t: e^x's Taylor series to order
 * RS_SERIES_K, whose remainder is at most ρ^(K+1)/(K+1)!·e^(2ρ) = 2.0e-8
 * of the sum (K = 6, ρ <= 1/4), below the direct path's rounding. The
 * moments S_k take one pass over c, shared by every κ on the same row c
 * and context: one pass for a W_O row's T attention neurons, where the
 * direct path takes T. */
#define RS_SERIES_K 6
#define RS_SERIES_RHO 0.25
typedef struct rs_series {
    const rs_context *cx; /* the context of s[], or NULL: not taken yet */
    double s[RS_SERIES_K + 1];
} rs_series;
/* LPI of κ·c in the context (cmax, cmin: c's range, as rs_minmax gives
 * it): the series path when ρ is small enough and cx has p, else the
 * direct path. sr caches the row's moments: zero it for each new row c;
 * NULL: the direct path always. */
double rs_lpi_row(const resid_explainer *e, const rs_context *cx, const float *c, float kappa,
                  float cmax, float cmin, rs_series *sr);
/* Sets cx->p = p (exp of cx->logp, written into p[V], which the caller
 * keeps), cx->psum and cx->lse0. */
void rs_context_series(const resid_explainer *e, rs_context *cx, float *p);
/* The largest and smallest of c[0..n) (NaN-free input). */
void rs_minmax(const float *c, int n, float *mx, float *mn);
double rs_dot(const float *a, const float *b, int64_t n);

/* ---- ranges.c -------------------------------------------------------- */

/* How far the explainer's float projection of a direction, max_t or
 * min_t P_t / s, may sit from the cached value at scale 1 divided by s,
 * for a direction with ‖lensmap(d)‖ <= nd (ranges.c derives it). */
double rs_ranges_allowance(const resid_explainer *e, double nd);

/* ---- attrib.c -------------------------------------------------------- */

bool rs_unit_is_directional(resid_unit_kind k);
/* Context index of a unit (2l or 2l+1). */
int rs_unit_ctx(const resid_unit *u);
/* Number of units of a kind in layer l (or all layers when l < 0), and
 * the enumeration → unit map. */
int64_t rs_unit_count_layer(const resid_explainer *e, resid_unit_kind k, int32_t l);
void rs_unit_from_index(const resid_explainer *e, resid_unit_kind k, int32_t l,
                        int64_t i, resid_unit *u);
/* Checks a unit against the explainer's dimensions. */
resid_status rs_unit_check(const resid_explainer *e, const resid_unit *u,
                           resid_error *err);
/* Vector units: v[D]; directional units: the coefficient a and the
 * direction (layer, row) with *dir_row. Returns the coefficient (NAN for
 * vector kinds). */
double rs_unit_coef(const resid_explainer *e, const resid_unit *u, int64_t *dir_row);
void rs_unit_vector(resid_explainer *e, const resid_unit *u, float *v);
/* The direction statistics of layer l for a directional kind (computed
 * on first use). NULL on allocation failure. */
rs_dirstats *rs_dirs(resid_explainer *e, resid_unit_kind k, int32_t l, resid_error *err);
/* Writes direction `row` of layer l (unscaled parameter row) into d[D]. */
void rs_dir_row(resid_explainer *e, resid_unit_kind k, int32_t l, int64_t row, float *d);
/* Fills the cheap linear parts of a score (bs_target, contrast, coef, unit). */
void rs_score_linear(resid_explainer *e, const resid_unit *u, resid_score *sc);
/* Checks units and builds the per-layer data they need (W_Oᵀ, direction
 * statistics). Call before the functions below. */
resid_status rs_units_prepare(resid_explainer *e, const resid_unit *u, int64_t n,
                              resid_error *err);
/* Exact LPIs of n prepared units (any mix of kinds) into lpi[n], through
 * rs_project_canon (the definition of an exact score) or the LPI memo.
 * Vector units are projected RS_CANON_ROWS per call, directional units
 * once per distinct direction (which also fills the direction's
 * pmax/pmin); the token cache, when on, keeps their tokens. */
resid_status rs_exact_lpi(resid_explainer *e, const resid_unit *const *u, int64_t n,
                          double *lpi, resid_error *err);
/* n rankings (resid_rank each, results in out[i], n_out[i], stats[i] when
 * stats is given) with their certified searches in lockstep: each round's
 * units of all of them are scored in one rs_exact_lpi, so they share the
 * projections' calls. The results are those of n resid_rank calls;
 * stats[i].n_projections counts every shared round whole. */
resid_status rs_rank_many(resid_explainer *e, const resid_rank_opts *opts, int n,
                          resid_score **out, int64_t *n_out, resid_rank_stats *stats,
                          resid_error *err);
/* Sets sc->lpi and sc->prob_inc = p(w|x)·expm1(lpi). */
void rs_score_finish(resid_explainer *e, resid_score *sc, double lpi);

#endif
