/*
 * canon.c - the canonical projection c[n][V] = y[n][D]·W_Uᵀ: the definition
 * of an exact score (rs_project_canon). Each row's result depends on that
 * row alone, bit for bit, whatever the batch, the tile or the thread that
 * computes it, so the certified top-K and the exhaustive ranking agree.
 * The exact scores' log-sum-exp and the kernel choice (AVX2 or generic)
 * are in lens.c.
 */
#include <stdbool.h>
#include <stdint.h>

#include "analysis/analysis.h"

/*
 * The canonical dot product y·w (the definition of an exact score): 8 lanes
 * accumulated in order over d, a fixed reduction tree, then the tail. Every
 * exact score goes through this exact sequence of float operations,
 * whatever the batch, the tile or the thread that computes it.
 *
 * Two implementations, chosen once per process: AVX2 with FMA (lane update
 * acc = fma(y, w, acc)) when the CPU has it, else generic vectors (acc +=
 * y·w, rounded twice). Within one process every score uses the same one, so
 * the certified and exhaustive rankings stay bit-identical; across machines
 * the last bits of a score may differ.
 *
 * The hot loops are optimised even in Debug builds (the test suite scores
 * hundreds of thousands of units through them).
 */

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
/* (macros, not functions: vector arguments would change the ABI without AVX) */
#define reduce8(a) ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])))
#define load8(p) (*(const v8f_u *)(p))

bool rs_canon_use_generic(bool generic) {
    rs_kernels_set_generic(generic);
    return rs_kernels_avx2();
}

/* Tokens per block: the block's W_U rows (4·D floats, 12 KB for GPT-2)
 * stay in L1 while every row of y streams past them from L2, so each W_U
 * row is read from memory once per call (a multiple of 4 and of 2, the
 * micro-kernels' token counts). */
#define CANON_TOKEN_BLOCK 4

/* ---- generic vectors ---- */

RS_HOT static float dot_canon(const float *a, const float *b, int D) {
    v8f acc = {0};
    int d = 0;
    for (; d + 8 <= D; d += 8) acc += load8(a + d) * load8(b + d);
    float s = reduce8(acc);
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

RS_HOT static void canon_block_generic(const float *y, int n, const float *wu, int D, int V,
                                       int t0, int t1, float *c) {
    const int D8 = D / 8 * 8;
    int r = 0;
    /* 4 rows x 2 tokens: eight independent accumulators, each doing the
     * same operations as dot_canon */
    for (; r + 4 <= n; r += 4) {
        const float *y0 = y + (size_t)r * D, *y1 = y0 + D, *y2 = y1 + D, *y3 = y2 + D;
        int t = t0;
        for (; t + 2 <= t1; t += 2) {
            const float *w0 = wu + (size_t)t * D, *w1 = w0 + D;
            v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};
            v8f a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
            for (int d = 0; d < D8; d += 8) {
                v8f x0 = load8(w0 + d), x1 = load8(w1 + d);
                v8f z0 = load8(y0 + d), z1 = load8(y1 + d);
                v8f z2 = load8(y2 + d), z3 = load8(y3 + d);
                a00 += z0 * x0, a01 += z0 * x1, a10 += z1 * x0, a11 += z1 * x1;
                a20 += z2 * x0, a21 += z2 * x1, a30 += z3 * x0, a31 += z3 * x1;
            }
            float s[8] = {reduce8(a00), reduce8(a01), reduce8(a10), reduce8(a11),
                          reduce8(a20), reduce8(a21), reduce8(a30), reduce8(a31)};
            const float *yy[4] = {y0, y1, y2, y3};
            for (int q = 0; q < 4; q++)
                for (int d = D8; d < D; d++) {
                    s[2 * q] += yy[q][d] * w0[d];
                    s[2 * q + 1] += yy[q][d] * w1[d];
                }
            for (int q = 0; q < 4; q++) {
                c[(size_t)(r + q) * V + t] = s[2 * q];
                c[(size_t)(r + q) * V + t + 1] = s[2 * q + 1];
            }
        }
        for (; t < t1; t++)
            for (int q = 0; q < 4; q++)
                c[(size_t)(r + q) * V + t] = dot_canon(y + (size_t)(r + q) * D, wu + (size_t)t * D, D);
    }
    for (; r < n; r++)
        for (int t = t0; t < t1; t++)
            c[(size_t)r * V + t] = dot_canon(y + (size_t)r * D, wu + (size_t)t * D, D);
}

/* ---- AVX2 + FMA ---- */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* reduce8 of four accumulators at once: lane j of the result is reduce8 of
 * the j-th argument, bit for bit. hadd adds neighbours within each 128-bit
 * half, so two rounds leave (x0+x1)+(x2+x3) in the low half and
 * (x4+x5)+(x6+x7) in the high half, and the final add joins them. */
RS_AVX2 __attribute__((always_inline)) static inline __m128 reduce8x4(__m256 a, __m256 b, __m256 c,
                                                                      __m256 d) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/*
 * c[q][k] = y_q·w_k for R <= 3 rows of y (stride D) and T <= 4 tokens of
 * W_U (stride D), c with row stride V. R, T and PF are constants after
 * inlining: the R·T accumulators, R rows and one W vector fill the 16 ymm
 * registers at 3 x 4 (7 loads per 12 FMAs). Each accumulator does the
 * operations of dot_canon in its order, with the lane update
 * acc = fma(y, w, acc): 8 lanes over d, reduce8, then the scalar tail.
 * PF: also prefetch the 4 W_U rows at pf (4·D floats) into L2.
 */
RS_AVX2 __attribute__((always_inline)) static inline void
canon_tile_avx2(const float *y, const float *w, int D, int V, float *c, const int R, const int T,
                const int PF, const float *pf) {
    const int D8 = D / 8 * 8;
    __m256 acc[3][4];
#pragma GCC unroll 3
    for (int q = 0; q < R; q++)
#pragma GCC unroll 4
        for (int k = 0; k < T; k++)
            acc[q][k] = _mm256_setzero_ps();
    for (int d = 0; d < D8; d += 8) {
        if (PF) {
            _mm_prefetch((const char *)(pf + 4 * d), _MM_HINT_T1);
            _mm_prefetch((const char *)(pf + 4 * d + 16), _MM_HINT_T1);
        }
        __m256 z[3];
#pragma GCC unroll 3
        for (int q = 0; q < R; q++) {
            z[q] = _mm256_loadu_ps(y + (size_t)q * D + d);
            __asm__("" : "+x"(z[q])); /* (see x below) */
        }
#pragma GCC unroll 4
        for (int k = 0; k < T; k++) {
            __m256 x = _mm256_loadu_ps(w + (size_t)k * D + d);
            /* keep x and z in registers: tuned for Zen, GCC otherwise
             * folds the loads into the FMAs (15 loads per 12 FMAs) */
            __asm__("" : "+x"(x));
#pragma GCC unroll 3
            for (int q = 0; q < R; q++)
                acc[q][k] = _mm256_fmadd_ps(z[q], x, acc[q][k]);
        }
    }
#pragma GCC unroll 3
    for (int q = 0; q < R; q++) {
        float *cq = c + (size_t)q * V;
        if (T == 4) {
            _mm_storeu_ps(cq, reduce8x4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]));
        } else {
            float l[4];
            _mm_storeu_ps(l, reduce8x4(acc[q][0], acc[q][T > 1], acc[q][T > 2 ? 2 : 0], acc[q][0]));
            for (int k = 0; k < T; k++)
                cq[k] = l[k];
        }
        for (int k = 0; D8 < D && k < T; k++) {
            float s = cq[k];
            for (int d = D8; d < D; d++)
                s += y[(size_t)q * D + d] * w[(size_t)k * D + d];
            cq[k] = s;
        }
    }
}

RS_AVX2 static void canon_block_avx2(const float *y, int n, const float *wu, int D, int V, int t0,
                                     int t1, float *c) {
    int t = t0;
    /* 4 tokens at a time, every row passing over them 3 at a time; the
     * first tile also prefetches the 4 tokens 16 ahead (the hardware
     * prefetchers stop at page boundaries, and at 32 rows a block takes
     * only ~2 µs) */
    for (; t + 4 <= t1; t += 4) {
        const float *w = wu + (size_t)t * D, *pf = wu + (size_t)(t + 20 <= V ? t + 16 : t) * D;
        float *ct = c + t;
        int r = n < 3 ? n : 3;
        if (r == 3) canon_tile_avx2(y, w, D, V, ct, 3, 4, 1, pf);
        if (r == 2) canon_tile_avx2(y, w, D, V, ct, 2, 4, 1, pf);
        if (r == 1) canon_tile_avx2(y, w, D, V, ct, 1, 4, 1, pf);
        for (; r + 3 <= n; r += 3)
            canon_tile_avx2(y + (size_t)r * D, w, D, V, ct + (size_t)r * V, 3, 4, 0, NULL);
        if (n - r == 2)
            canon_tile_avx2(y + (size_t)r * D, w, D, V, ct + (size_t)r * V, 2, 4, 0, NULL);
        if (n - r == 1)
            canon_tile_avx2(y + (size_t)r * D, w, D, V, ct + (size_t)r * V, 1, 4, 0, NULL);
    }
    for (; t < t1; t++) {
        const float *w = wu + (size_t)t * D;
        int r = 0;
        for (; r + 3 <= n; r += 3)
            canon_tile_avx2(y + (size_t)r * D, w, D, V, c + (size_t)r * V + t, 3, 1, 0, NULL);
        for (; r < n; r++)
            canon_tile_avx2(y + (size_t)r * D, w, D, V, c + (size_t)r * V + t, 1, 1, 0, NULL);
    }
}
#else
#define canon_block_avx2 canon_block_generic
#endif

RS_HOT void rs_project_canon(resid_explainer *e, const float *y, int n, float *c) {
    const int D = e->D, V = e->V;
    const float *wu = e->wu;
    const int nblk = (V + CANON_TOKEN_BLOCK - 1) / CANON_TOKEN_BLOCK;
    const bool avx2 = rs_kernels_avx2();
#pragma omp parallel for schedule(static) if ((int64_t)n * V * D >= RS_PAR_MIN_WORK)
    for (int b = 0; b < nblk; b++) {
        const int t0 = b * CANON_TOKEN_BLOCK;
        const int t1 = t0 + CANON_TOKEN_BLOCK < V ? t0 + CANON_TOKEN_BLOCK : V;
        if (avx2)
            canon_block_avx2(y, n, wu, D, V, t0, t1, c);
        else
            canon_block_generic(y, n, wu, D, V, t0, t1, c);
    }
    e->n_proj += n;
}
