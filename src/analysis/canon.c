/*
 * canon.c - the canonical projection c[n][V] = y[n][D]·W_Uᵀ: the definition
 * of an exact score (rs_project_canon). Each row's result depends on that
 * row alone, bit for bit, whatever the batch, the tile or the thread that
 * computes it, so the certified top-K and the exhaustive ranking agree.
 * The exact scores' log-sum-exp and the kernel choice (AVX2 or generic)
 * are in lens.c.
 *
 * The definition. d = 0..D−1 is cut into blocks of RS_CANON_KBLOCK in
 * order (the last one shorter when D is not a multiple). Block j gives one
 * sequential chain over its d, in order, from +0:
 *
 *     s ← fma(y_d, w_d, s)       AVX2+FMA kernels (one rounding per step)
 *     s ← s + y_d·w_d            generic kernels (the product rounded, then
 *                                the sum: two roundings per step)
 *
 * and the score is c = (((s_0 + s_1) + s_2) + …) (c = s_0 when
 * D <= RS_CANON_KBLOCK). The order depends on D alone, never on n, tiles or
 * threads. Within one process every score uses the same kernels, so the
 * certified and exhaustive rankings stay bit-identical; across machines
 * (FMA or not) the last bits of a score may differ.
 *
 * Accuracy: with p_d = y_d·w_d, K = min(D, RS_CANON_KBLOCK) and B blocks,
 * a term passes through at most m = K + B − 1 roundings (its block's chain
 * from its step on, with or without FMA, then the folds), so |c − Σp| <=
 * γ_m Σ|p_d|, γ_m = m·u/(1 − m·u), u = 2⁻²⁴, barring underflow
 * (tests/test_canon.c derives it): ~1.5e-5·Σ|p| for GPT-2 (K = 256,
 * B = 3), where one chain over all 768 terms would allow 4.6e-5.
 *
 * The kernels (BLAS-style outer products). Tokens go in panels of
 * CANON_NR = 16, which threads take in turn. For each panel and d-block
 * the W_U rows are packed transposed into wp[kc][16] (16 KB on the thread's
 * stack, in L1), and tiles of up to CANON_MR = 6 rows of y run over it:
 * 12 ymm accumulators (6 rows × 2 × 8 tokens), y broadcast, 2 loads of W
 * per d, each lane one (row, token) chain; at the end of the block their
 * sums are folded into c (the first block's stored as is). The rows of y
 * are copied once per call into the tiles' order (canon_pack_rows), so a
 * tile's broadcasts read one short contiguous stream. The block's
 * first tile, of up to CANON_PACK_ROWS rows, packs the panel 8 d ahead of
 * its own FMAs, so the loads of W_U (from memory: each element is used by
 * all n rows once) and the transposes overlap FMA work, and it prefetches
 * the panel CANON_PREFETCH_PANELS ahead at the same pace. For few rows the
 * packing is most of the work; for many it is amortised over the tiles.
 *
 * The hot loops are optimised even in Debug builds (RS_HOT, RS_AVX2 in
 * analysis.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "analysis/analysis.h"

/* Tokens per panel (two 8-float vectors) and rows of y per tile: the
 * 6 × 2 accumulators, two W vectors and a broadcast fill 15 of the 16 ymm
 * registers. */
#define CANON_NR 16
#define CANON_MR 6
/* Rows of the tile that packs a block: few, so that the transposes have
 * registers to work in and the FMA chains (2 per row) leave room for them. */
#define CANON_PACK_ROWS 4
/* Panels ahead whose W_U rows are prefetched into L2 (the hardware
 * prefetchers see 16 short strided streams and stop at page boundaries). */
#define CANON_PREFETCH_PANELS 2

bool rs_canon_use_generic(bool generic) {
    rs_kernels_set_generic(generic);
    return rs_kernels_avx2();
}

/* c = s (first block) or c + s (later blocks): the fold of the definition. */
#define CANON_FOLD(first, c, s) ((first) ? (s) : (c) + (s))

/* ---- generic vectors ---- */

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));

/* wp[d][k] = w[k][d] for k < nt tokens (row stride D), 0 for k >= nt,
 * d < kc. */
RS_HOT static void canon_pack_generic(const float *w, int D, int nt, int kc, float *wp) {
    for (int d = 0; d < kc; d++)
        for (int k = 0; k < CANON_NR; k++)
            wp[(size_t)d * CANON_NR + k] = k < nt ? w[(size_t)k * D + d] : 0.0f;
}

/* One tile: R <= 6 rows of y (stride D, offset to the block) against the
 * packed panel wp[kc][16]; folds the block sums into c (row stride V,
 * tokens k < nt). R is a constant after inlining. */
RS_HOT __attribute__((always_inline)) static inline void
canon_tile_generic(const float *y, int D, const float *wp, int kc, float *c, int V, int nt,
                   bool first, const int R) {
    v8f acc[CANON_MR][2];
#pragma GCC unroll 6
    for (int q = 0; q < R; q++) acc[q][0] = acc[q][1] = (v8f){0};
    for (int d = 0; d < kc; d++) {
        const v8f w0 = *(const v8f *)(wp + (size_t)d * CANON_NR);
        const v8f w1 = *(const v8f *)(wp + (size_t)d * CANON_NR + 8);
#pragma GCC unroll 6
        for (int q = 0; q < R; q++) {
            const float x = y[(size_t)q * D + d];
            const v8f b = {x, x, x, x, x, x, x, x};
            acc[q][0] = acc[q][0] + b * w0; /* (no contraction: -ffp-contract=off) */
            acc[q][1] = acc[q][1] + b * w1;
        }
    }
#pragma GCC unroll 6
    for (int q = 0; q < R; q++) {
        float *cq = c + (size_t)q * V;
        if (nt == CANON_NR) {
            v8f_u *c0 = (v8f_u *)cq, *c1 = (v8f_u *)(cq + 8);
            *c0 = first ? acc[q][0] : (v8f)*c0 + acc[q][0];
            *c1 = first ? acc[q][1] : (v8f)*c1 + acc[q][1];
        } else {
            for (int k = 0; k < nt; k++)
                cq[k] = CANON_FOLD(first, cq[k], acc[q][k / 8][k % 8]);
        }
    }
}

/* c[n][t0 .. t0+16) for one panel (fewer tokens at the end of V). */
RS_HOT static void canon_panel_generic(const float *y, int n, const float *wu, int D, int V,
                                       int t0, float *c) {
    float wp[RS_CANON_KBLOCK * CANON_NR] __attribute__((aligned(32)));
    const int nt = V - t0 < CANON_NR ? V - t0 : CANON_NR;
    for (int k0 = 0; k0 < D; k0 += RS_CANON_KBLOCK) {
        const int kc = D - k0 < RS_CANON_KBLOCK ? D - k0 : RS_CANON_KBLOCK;
        const bool first = k0 == 0;
        canon_pack_generic(wu + (size_t)t0 * D + k0, D, nt, kc, wp);
        int r = 0;
        for (; r + CANON_MR <= n; r += CANON_MR)
            canon_tile_generic(y + (size_t)r * D + k0, D, wp, kc, c + (size_t)r * V + t0, V, nt,
                               first, CANON_MR);
        const float *yr = y + (size_t)r * D + k0;
        float *cr = c + (size_t)r * V + t0;
        switch (n - r) {
        case 5: canon_tile_generic(yr, D, wp, kc, cr, V, nt, first, 5); break;
        case 4: canon_tile_generic(yr, D, wp, kc, cr, V, nt, first, 4); break;
        case 3: canon_tile_generic(yr, D, wp, kc, cr, V, nt, first, 3); break;
        case 2: canon_tile_generic(yr, D, wp, kc, cr, V, nt, first, 2); break;
        case 1: canon_tile_generic(yr, D, wp, kc, cr, V, nt, first, 1); break;
        default: break;
        }
    }
}

/* The row tiles of a call of n >= 1 rows, as the AVX2 kernels run them
 * and canon_pack_rows lays y out: tile 0 is the first min(n, 4) rows (the
 * tile that packs the W_U panel), the others split the rest in tiles of
 * up to 6, as even as can be. */
static inline int canon_ntiles(int n) {
    const int m = n - (n < CANON_PACK_ROWS ? n : CANON_PACK_ROWS);
    return 1 + (m + CANON_MR - 1) / CANON_MR;
}

static inline int canon_tile_rows(int n, int i) {
    const int r0 = n < CANON_PACK_ROWS ? n : CANON_PACK_ROWS;
    if (i == 0) return r0;
    const int m = n - r0, nt = canon_ntiles(n) - 1;
    return m / nt + (i - 1 < m % nt);
}

/* ---- AVX2 + FMA ---- */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* The 8 × 8 block at w (row stride D) transposed into wp (row stride 16):
 * wp[j][i] = w[i][j]. Rows i and i+4 share a register (halves loaded
 * apart), so two rounds of in-lane shuffles finish the transpose. */
RS_AVX2 __attribute__((always_inline)) static inline void canon_transpose8_avx2(const float *w,
                                                                               size_t D, float *wp) {
#define CANON_LOAD2(i, j)                                                                   \
    _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(w + (i) * D + (j))), \
                         _mm_loadu_ps(w + ((i) + 4) * D + (j)), 1)
    const __m256 r0 = CANON_LOAD2(0, 0), r1 = CANON_LOAD2(1, 0);
    const __m256 r2 = CANON_LOAD2(2, 0), r3 = CANON_LOAD2(3, 0);
    const __m256 r4 = CANON_LOAD2(0, 4), r5 = CANON_LOAD2(1, 4);
    const __m256 r6 = CANON_LOAD2(2, 4), r7 = CANON_LOAD2(3, 4);
#undef CANON_LOAD2
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    _mm256_store_ps(wp + 0 * CANON_NR, _mm256_shuffle_ps(t0, t2, 0x44));
    _mm256_store_ps(wp + 1 * CANON_NR, _mm256_shuffle_ps(t0, t2, 0xee));
    _mm256_store_ps(wp + 2 * CANON_NR, _mm256_shuffle_ps(t1, t3, 0x44));
    _mm256_store_ps(wp + 3 * CANON_NR, _mm256_shuffle_ps(t1, t3, 0xee));
    _mm256_store_ps(wp + 4 * CANON_NR, _mm256_shuffle_ps(t4, t6, 0x44));
    _mm256_store_ps(wp + 5 * CANON_NR, _mm256_shuffle_ps(t4, t6, 0xee));
    _mm256_store_ps(wp + 6 * CANON_NR, _mm256_shuffle_ps(t5, t7, 0x44));
    _mm256_store_ps(wp + 7 * CANON_NR, _mm256_shuffle_ps(t5, t7, 0xee));
}

/* The 16 rows at w (stride D), d = d0 .. d0+8, into wp (stride 16, at d0). */
RS_AVX2 __attribute__((always_inline)) static inline void canon_pack8_avx2(const float *w, int D,
                                                                          int d0, float *wp) {
    /* (an opaque stride: GCC would otherwise keep 16 row pointers, more
     * than the registers, and reload them from the stack) */
    size_t ld = (size_t)D;
    __asm__("" : "+r"(ld));
    canon_transpose8_avx2(w + d0, ld, wp + (size_t)d0 * CANON_NR);
    canon_transpose8_avx2(w + 8 * ld + d0, ld, wp + (size_t)d0 * CANON_NR + 8);
}

/* The R·2 accumulators over d = 0 .. nd of wp (row stride 16) and of the
 * tile's R rows of y, packed as y[d][R], lane update fma(y, w, acc). */
#define CANON_STEPS_AVX2(acc, y, wp, nd, R)                                                        \
    _Pragma("GCC unroll 4") for (int d_ = 0; d_ < (nd); d_++) {                                    \
        __m256 w0_ = _mm256_load_ps((wp) + (size_t)d_ * CANON_NR);                                 \
        __m256 w1_ = _mm256_load_ps((wp) + (size_t)d_ * CANON_NR + 8);                             \
        __asm__("" : "+x"(w0_), "+x"(w1_)); /* (loaded once, not once per FMA) */                  \
        _Pragma("GCC unroll 6") for (int q_ = 0; q_ < (R); q_++) {                                 \
            const __m256 b_ = _mm256_broadcast_ss((y) + (size_t)d_ * (R) + q_);                    \
            acc[q_][0] = _mm256_fmadd_ps(b_, w0_, acc[q_][0]);                                     \
            acc[q_][1] = _mm256_fmadd_ps(b_, w1_, acc[q_][1]);                                     \
        }                                                                                          \
    }

/* Folds the R rows' block sums acc into c (row stride V), tokens < nt. */
RS_AVX2 __attribute__((always_inline)) static inline void
canon_fold_avx2(__m256 acc[][2], float *c, int V, int nt, bool first, const int R) {
#pragma GCC unroll 6
    for (int q = 0; q < R; q++) {
        float *cq = c + (size_t)q * V;
        if (nt == CANON_NR) {
            if (first) {
                _mm256_storeu_ps(cq, acc[q][0]);
                _mm256_storeu_ps(cq + 8, acc[q][1]);
            } else {
                _mm256_storeu_ps(cq, _mm256_add_ps(_mm256_loadu_ps(cq), acc[q][0]));
                _mm256_storeu_ps(cq + 8, _mm256_add_ps(_mm256_loadu_ps(cq + 8), acc[q][1]));
            }
        } else {
            float s[CANON_NR];
            _mm256_storeu_ps(s, acc[q][0]);
            _mm256_storeu_ps(s + 8, acc[q][1]);
            for (int k = 0; k < nt; k++) cq[k] = CANON_FOLD(first, cq[k], s[k]);
        }
    }
}

/* canon_tile_generic with the lane update fma(y, w, acc), 8 d at a time.
 * With PACK (the block's first tile), each 8 d of the full panel's W_U rows
 * w (stride D) are first transposed into wp, so the loads of W_U and the
 * transposes overlap the FMAs, and the 8 matching cache lines of the panel
 * ahead (pf, or NULL) are prefetched into L2. R and PACK are constants
 * after inlining. */
RS_AVX2 __attribute__((always_inline)) static inline void
canon_tile_avx2(const float *y, int D, const float *w, float *wp, int kc, float *c, int V, int nt,
                bool first, const float *pf, const int R, const int PACK) {
    __m256 acc[CANON_MR][2];
#pragma GCC unroll 6
    for (int q = 0; q < R; q++) acc[q][0] = acc[q][1] = _mm256_setzero_ps();
    const int k8 = kc / 8 * 8;
    if (!PACK) {
        CANON_STEPS_AVX2(acc, y, wp, kc, R)
    } else {
        /* software-pipelined: the 8 d after the current ones are packed
         * (and the lines of the panel ahead prefetched) before the FMAs of
         * the current ones, which wait for nothing */
        if (k8 > 0) canon_pack8_avx2(w, D, 0, wp);
        for (int d = 0; d < k8; d += 8) {
            if (d + 8 < k8) canon_pack8_avx2(w, D, d + 8, wp);
            if (pf) {
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    _mm_prefetch((const char *)(pf + (size_t)(d + i) * 16), _MM_HINT_T1);
            }
            CANON_STEPS_AVX2(acc, y + (size_t)d * R, wp + (size_t)d * CANON_NR, 8, R)
        }
        for (int e = k8; e < kc; e++) /* the tail of D */
            for (int k = 0; k < CANON_NR; k++) wp[(size_t)e * CANON_NR + k] = w[(size_t)k * D + e];
        CANON_STEPS_AVX2(acc, y + (size_t)k8 * R, wp + (size_t)k8 * CANON_NR, kc - k8, R)
    }
    canon_fold_avx2(acc, c, V, nt, first, R);
}

/* The tiles of block k0 over the rows packed at yp (canon_pack_rows), in
 * the rows' tiles (canon_tile_rows): the first packs the block (PACK)
 * unless wp already holds it (packed). */
RS_AVX2 __attribute__((always_inline)) static inline void
canon_tiles_avx2(const float *yp, int n, int D, int k0, const float *w, float *wp, int kc, float *c,
                 int V, int nt, bool first, const float *pf, bool packed) {
    const int ntile = canon_ntiles(n);
    for (int i = 0, r = 0; i < ntile; i++) {
        const int R = canon_tile_rows(n, i);
        const float *y = yp + (size_t)r * D + (size_t)k0 * R;
        float *cr = c + (size_t)r * V;
        if (i == 0 && !packed) {
            switch (R) { /* R <= CANON_PACK_ROWS */
            case 4: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 4, 1); break;
            case 3: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 3, 1); break;
            case 2: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 2, 1); break;
            default: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 1, 1); break;
            }
        } else {
            switch (R) {
            case 6: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 6, 0); break;
            case 5: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 5, 0); break;
            case 4: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 4, 0); break;
            case 3: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 3, 0); break;
            case 2: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 2, 0); break;
            default: canon_tile_avx2(y, D, w, wp, kc, cr, V, nt, first, pf, 1, 0); break;
            }
        }
        r += R;
    }
}

/* c[n][t0 .. t0+16) for one panel (fewer tokens at the end of V); y as
 * canon_pack_rows packs it. */
RS_AVX2 static void canon_panel_avx2(const float *y, int n, const float *wu, int D, int V, int t0,
                                     float *c) {
    float wp[RS_CANON_KBLOCK * CANON_NR] __attribute__((aligned(32)));
    const int nt = V - t0 < CANON_NR ? V - t0 : CANON_NR;
    const int tp = t0 + CANON_PREFETCH_PANELS * CANON_NR; /* prefetched panel */
    const float *pf = tp + CANON_NR <= V ? wu + (size_t)tp * D : NULL;
    for (int k0 = 0; k0 < D; k0 += RS_CANON_KBLOCK) {
        const int kc = D - k0 < RS_CANON_KBLOCK ? D - k0 : RS_CANON_KBLOCK;
        const float *w = wu + (size_t)t0 * D + k0;
        /* a partial panel is packed beforehand (its missing rows as 0); the
         * panel's 16 rows are contiguous, so block k0 prefetches lines
         * k0 .. k0+kc of the D lines of the panel ahead */
        if (nt < CANON_NR) canon_pack_generic(w, D, nt, kc, wp);
        canon_tiles_avx2(y, n, D, k0, w, wp, kc, c + t0, V, nt, k0 == 0,
                         pf ? pf + (size_t)k0 * 16 : NULL, nt < CANON_NR);
    }
}
#else
#define canon_panel_avx2 canon_panel_generic
#endif

/* The rows of y in their tiles (canon_tile_rows), each tile's block k0 as
 * [kc][R] at yp + r·D + k0·R: the kernels' broadcasts read it in order. */
static void canon_pack_rows(const float *y, int n, int D, float *yp) {
    const int ntile = canon_ntiles(n);
    for (int i = 0, r = 0; i < ntile; i++) {
        const int R = canon_tile_rows(n, i);
        for (int k0 = 0; k0 < D; k0 += RS_CANON_KBLOCK) {
            const int kc = D - k0 < RS_CANON_KBLOCK ? D - k0 : RS_CANON_KBLOCK;
            float *t = yp + (size_t)r * D + (size_t)k0 * R;
            for (int q = 0; q < R; q++)
                for (int d = 0; d < kc; d++)
                    t[(size_t)d * R + q] = y[(size_t)(r + q) * D + k0 + d];
        }
        r += R;
    }
}

RS_HOT void rs_canon_gemm(const float *w, int nw, int D, const float *y, int n, float *c) {
    const int npanel = (nw + CANON_NR - 1) / CANON_NR;
    const bool avx2 = rs_kernels_avx2();
    if (n <= 0) return;
    /* the AVX2 kernels read y in tiles (canon_pack_rows); one row is its
     * own tile */
    float *yp = NULL;
    if (avx2 && n > 1) {
        yp = malloc((size_t)n * D * sizeof(float));
        if (!yp) { /* row by row: the same bits, no buffer */
            for (int r = 0; r < n; r++)
                rs_canon_gemm(w, nw, D, y + (size_t)r * D, 1, c + (size_t)r * nw);
            return;
        }
        canon_pack_rows(y, n, D, yp);
    }
#pragma omp parallel for schedule(dynamic, 16) if ((int64_t)n * nw * D >= RS_PAR_MIN_WORK)
    for (int p = 0; p < npanel; p++) {
        if (avx2)
            canon_panel_avx2(yp ? yp : y, n, w, D, nw, p * CANON_NR, c);
        else
            canon_panel_generic(y, n, w, D, nw, p * CANON_NR, c);
    }
    free(yp);
}

void rs_project_canon(resid_explainer *e, const float *y, int n, float *c) {
    rs_canon_gemm(e->wu, e->V, e->D, y, n, c);
    if (n > 0) e->n_proj += n;
}
