/*
 * test_canon.c - the canonical projection rs_project_canon (the definition
 * of an exact score), for the AVX2+FMA kernels when the CPU has them and
 * for the generic ones, on random W_U of shapes that exercise every edge of
 * the kernels: V not a multiple of the 16-token panels (or smaller than
 * one), D a multiple of the d-block RS_CANON_KBLOCK, or with a last block
 * that is not a multiple of 8 d, and D < 8; and batches from 1 row (one
 * tile, which also packs W_U) to 40 (several tiles of up to 6 rows):
 *   - the definition: each score equals the test's own scalar rendering of
 *     it, bit for bit: d cut into blocks of RS_CANON_KBLOCK in order, one
 *     chain per block from +0 with s = fma(y_d, w_d, s) (AVX2) or
 *     s = s + y_d·w_d (generic, the product rounded first), and the blocks'
 *     sums added in order, c = ((s_0 + s_1) + s_2) + …;
 *   - row independence: every row of a batch, for batch sizes 1..7, 15, 16,
 *     17, 31, 32, 33 and 40 at several offsets, equals the row projected
 *     alone, bit for bit (so certified and exhaustive rankings agree), and
 *     a batch's result does not depend on the number of threads;
 *   - accuracy: each score is within γ_m·Σ_d|y_d w_d| of a double-precision
 *     dot product, m = K + B − 1 with K = min(D, RS_CANON_KBLOCK) and B
 *     blocks, γ_m = m·u/(1 − m·u), u = 2⁻²⁴. Derivation: write p_d = y_d w_d
 *     and a rounding as a factor (1 + δ), |δ| <= u. In a block's chain the
 *     first term is rounded at the first step (fma(y, w, 0) = p(1 + δ); or
 *     the product's rounding, the add to 0 being exact) and at each of the
 *     next K − 1 steps; any later term at most as often (its product and
 *     the adds from its step on). Folding the B sums adds at most B − 1
 *     factors. So c = Σ_d p_d·Π_{i<=m_d}(1 + δ_i) with m_d <= m, and
 *     |Π(1 + δ_i) − 1| <= γ_m (Higham, Lemma 3.1; no underflow here). The
 *     double reference's own error, below (D − 1)·2⁻⁵³·Σ|p| (its products
 *     are exact), is added to the bound. A wrong token, row or dropped term
 *     exceeds it by orders of magnitude.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "testutil.h"

#define NROWS 40

typedef struct shape {
    int V, D;
} shape;

/* The first two with V·D large enough that rs_project_canon runs its
 * OpenMP loop even for one row (RS_PAR_MIN_WORK); the others for the
 * edges: 3 full d-blocks; 3 and a tail of 3; 2 and a tail of 14; exactly
 * one; one and 1 more; one block with a tail of 5, of 0 (D = 8) and D < 8;
 * V of exact panels, of a panel and 1 token, of one partial panel. */
static const shape shapes[] = {{1037, RS_CANON_KBLOCK * 3},     {1031, RS_CANON_KBLOCK * 3 + 3},
                               {600, RS_CANON_KBLOCK * 2 + 14}, {48, RS_CANON_KBLOCK},
                               {33, RS_CANON_KBLOCK + 1},       {521, 13},
                               {403, 8},                        {259, 5},
                               {7, 16}};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static float rnd(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The definition of an exact score written out in scalars. */
static float canon_ref(const float *y, const float *w, int D, bool fma_steps) {
    float c = 0.0f;
    for (int k0 = 0; k0 < D; k0 += RS_CANON_KBLOCK) {
        const int k1 = D - k0 < RS_CANON_KBLOCK ? D : k0 + RS_CANON_KBLOCK;
        float s = 0.0f;
        for (int d = k0; d < k1; d++) {
            if (fma_steps) {
                s = fmaf(y[d], w[d], s);
            } else {
                const float p = y[d] * w[d];
                s = s + p;
            }
        }
        c = k0 == 0 ? s : c + s;
    }
    return c;
}

/* Index of the first float where a and b differ (n if none). */
static int first_diff(const float *a, const float *b, int n) {
    int t = 0;
    while (t < n && !memcmp(a + t, b + t, sizeof(float))) t++;
    return t;
}

static void check_kernel(bool avx2, const shape *sh) {
    const int V = sh->V, D = sh->D;
    const char *kname = avx2 ? "avx2" : "generic";
    float *wu = malloc(sizeof(float) * (size_t)V * D);
    float *y = malloc(sizeof(float) * (size_t)NROWS * D);
    float *alone = malloc(sizeof(float) * (size_t)NROWS * V);
    float *c = malloc(sizeof(float) * (size_t)NROWS * V);
    assert_non_null(wu), assert_non_null(y), assert_non_null(alone), assert_non_null(c);
    for (size_t i = 0; i < (size_t)V * D; i++)
        wu[i] = rnd();
    /* rows of different scales; row 5 is zero */
    for (int r = 0; r < NROWS; r++)
        for (int d = 0; d < D; d++)
            y[(size_t)r * D + d] = r == 5 ? 0.0f : rnd() * (float)(1 + r % 4 * 10);
    resid_explainer e;
    memset(&e, 0, sizeof e);
    e.V = V, e.D = D, e.wu = wu;

    for (int r = 0; r < NROWS; r++)
        rs_project_canon(&e, y + (size_t)r * D, 1, alone + (size_t)r * V);
    assert_int_equal(e.n_proj, NROWS);

    /* the definition and the accuracy bound */
    const int K = D < RS_CANON_KBLOCK ? D : RS_CANON_KBLOCK;
    const int B = (D + RS_CANON_KBLOCK - 1) / RS_CANON_KBLOCK;
    const double u = ldexp(1.0, -24), m = K + B - 1;
    const double gamma = m * u / (1 - m * u) + (D - 1) * ldexp(1.0, -53);
    double worst = 0; /* max error / bound */
    int64_t bad_def = 0;
    for (int r = 0; r < NROWS; r++)
        for (int t = 0; t < V; t++) {
            const float *yr = y + (size_t)r * D, *wt = wu + (size_t)t * D;
            const float got = alone[(size_t)r * V + t];
            double ref = 0, mag = 0;
            for (int d = 0; d < D; d++)
                ref += (double)yr[d] * wt[d], mag += fabs((double)yr[d] * wt[d]);
            const double bound = gamma * mag;
            const double err = fabs(got - ref);
            if (!(err <= bound)) {
                print_error("%s V=%d D=%d row %d token %d: %.9g vs double %.17g (bound %.3g)\n",
                            kname, V, D, r, t, got, ref, bound);
                fail();
            }
            if (bound > 0 && err / bound > worst) worst = err / bound;
#if FLT_EVAL_METHOD == 0
            const float def = canon_ref(yr, wt, D, avx2);
            if (memcmp(&def, &got, sizeof got) != 0) {
                if (bad_def++ < 5)
                    print_error("%s V=%d D=%d row %d token %d: %.9g, the definition gives %.9g\n",
                                kname, V, D, r, t, got, def);
            }
#endif
        }
    assert_int_equal(bad_def, 0);

    /* row independence: batches of several sizes at several offsets */
    static const int sizes[] = {1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 31, 32, 33, 40};
    int64_t batches = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int b = sizes[si];
        for (int off = 0; off < 3 && off + b <= NROWS; off++)
            for (int r0 = off; r0 + b <= NROWS; r0 += b) {
                if (b == 1 && r0 > off + 2) break; /* (the rows alone already) */
                memset(c, 0xff, sizeof(float) * (size_t)b * V); /* NaN: unwritten shows */
                rs_project_canon(&e, y + (size_t)r0 * D, b, c);
                batches++;
                for (int q = 0; q < b; q++) {
                    const float *a = alone + (size_t)(r0 + q) * V, *g = c + (size_t)q * V;
                    const int t = first_diff(g, a, V);
                    if (t < V) {
                        print_error("%s V=%d D=%d: row %d in a batch of %d at %d differs from the "
                                    "row alone at token %d (%.9g vs %.9g)\n",
                                    kname, V, D, r0 + q, b, r0, t, g[t], a[t]);
                        fail();
                    }
                }
            }
    }

    /* threads: the whole batch on 1, 2 and 3 threads (when its work is
     * above the threshold of the parallel loop) */
    const int nthreads = omp_get_max_threads();
    for (int th = 1; th <= 3; th++) {
        omp_set_num_threads(th);
        memset(c, 0xff, sizeof(float) * (size_t)NROWS * V);
        rs_project_canon(&e, y, NROWS, c);
        const int t = first_diff(c, alone, NROWS * V);
        if (t < NROWS * V) {
            print_error("%s V=%d D=%d: %d threads: row %d token %d differs from the row alone\n",
                        kname, V, D, th, t / V, t % V);
            fail();
        }
    }
    omp_set_num_threads(nthreads);

    printf("%-7s V=%-5d D=%-4d %lld batches equal row by row; worst error %.3f of the bound\n",
           kname, V, D, (long long)batches, worst);
    free(wu), free(y), free(alone), free(c);
}

static void test_avx2(void **state) {
    (void)state;
    if (!rs_canon_use_generic(false)) {
        printf("no AVX2+FMA on this CPU: only the generic kernels are tested\n");
        skip();
    }
    for (int i = 0; i < N_SHAPES; i++)
        check_kernel(true, &shapes[i]);
}

static void test_generic(void **state) {
    (void)state;
    assert_false(rs_canon_use_generic(true));
    for (int i = 0; i < N_SHAPES; i++)
        check_kernel(false, &shapes[i]);
    rs_canon_use_generic(false);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_avx2),
        cmocka_unit_test(test_generic),
    };
    if (getenv("RESID_TEST_FILTER")) cmocka_set_test_filter(getenv("RESID_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
