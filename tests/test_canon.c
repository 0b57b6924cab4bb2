/*
 * test_canon.c - the canonical projection rs_project_canon (the definition
 * of an exact score), for the AVX2+FMA kernels when the CPU has them and
 * for the generic ones, on random W_U of shapes that exercise every tile
 * edge (V not a multiple of the token block, D with and without a tail,
 * D < 8):
 *   - row independence: every row of a batch, for batch sizes 1..7, 31,
 *     32, 33 and 40 at several offsets, equals the row projected alone,
 *     bit for bit (so certified and exhaustive rankings agree);
 *   - the definition: each score equals the test's own scalar rendering of
 *     the canonical order (8 lanes over d, lane update fma(y, w, acc) with
 *     AVX2 or acc + y·w without, the reduction tree ((l0+l1)+(l2+l3)) +
 *     ((l4+l5)+(l6+l7)), then the tail d = 8⌊D/8⌋..D−1 added in order), bit
 *     for bit;
 *   - accuracy: each score is within (⌈D/8⌉ + 3 + D mod 8)·2u·Σ_d|y_d w_d|
 *     of a double-precision dot product (u = 2⁻²⁴: one or two roundings per
 *     step of the longest chain), which a wrong token, row or term breaks.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "testutil.h"

#define NROWS 40

typedef struct shape {
    int V, D;
} shape;

/* V·D large enough that rs_project_canon runs its OpenMP loop even for
 * one row (RS_PAR_MIN_WORK), and small shapes for the edges */
static const shape shapes[] = {{1037, 768}, {1031, 771}, {521, 13}, {403, 8}, {259, 5}, {7, 16}};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static float rnd(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The canonical dot product written out in scalars. */
static float canon_ref(const float *y, const float *w, int D, bool fma_lanes) {
    float l[8] = {0};
    const int D8 = D / 8 * 8;
    for (int d = 0; d < D8; d++) {
        float p = y[d] * w[d];
        l[d % 8] = fma_lanes ? fmaf(y[d], w[d], l[d % 8]) : l[d % 8] + p;
    }
    float s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    for (int d = D8; d < D; d++) {
        float p = y[d] * w[d];
        s = s + p;
    }
    return s;
}

static void check_kernel(bool avx2, const shape *sh) {
    const int V = sh->V, D = sh->D;
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
    const double u = ldexp(1.0, -24), k = (D + 7) / 8 + 3 + D % 8;
    double worst = 0; /* max error / bound */
    int64_t bad_def = 0;
    for (int r = 0; r < NROWS; r++)
        for (int t = 0; t < V; t++) {
            const float *yr = y + (size_t)r * D, *wt = wu + (size_t)t * D;
            const float got = alone[(size_t)r * V + t];
            double ref = 0, mag = 0;
            for (int d = 0; d < D; d++)
                ref += (double)yr[d] * wt[d], mag += fabs((double)yr[d] * wt[d]);
            const double bound = k * 2 * u * mag;
            const double err = fabs(got - ref);
            if (err > bound) {
                print_error("%s V=%d D=%d row %d token %d: %.9g vs double %.17g (bound %.3g)\n",
                            avx2 ? "avx2" : "generic", V, D, r, t, got, ref, bound);
                fail();
            }
            if (bound > 0 && err / bound > worst) worst = err / bound;
#if FLT_EVAL_METHOD == 0
            const float def = canon_ref(yr, wt, D, avx2);
            if (memcmp(&def, &got, sizeof got) != 0) {
                if (bad_def++ < 5)
                    print_error("%s V=%d D=%d row %d token %d: %.9g, the definition gives %.9g\n",
                                avx2 ? "avx2" : "generic", V, D, r, t, got, def);
            }
#endif
        }
    assert_int_equal(bad_def, 0);

    /* row independence: batches of several sizes at several offsets */
    static const int sizes[] = {2, 3, 4, 5, 6, 7, 31, 32, 33, 40};
    int64_t batches = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int b = sizes[si];
        for (int off = 0; off < 3 && off + b <= NROWS; off++)
            for (int r0 = off; r0 + b <= NROWS; r0 += b) {
                memset(c, 0xff, sizeof(float) * (size_t)b * V); /* NaN: unwritten shows */
                rs_project_canon(&e, y + (size_t)r0 * D, b, c);
                batches++;
                for (int q = 0; q < b; q++)
                    if (memcmp(c + (size_t)q * V, alone + (size_t)(r0 + q) * V,
                               sizeof(float) * V)) {
                        int t = 0;
                        while (!memcmp(c + (size_t)q * V + t, alone + (size_t)(r0 + q) * V + t,
                                       sizeof(float)))
                            t++;
                        print_error(
                            "%s V=%d D=%d: row %d in a batch of %d at %d differs from the row "
                            "alone at token %d (%.9g vs %.9g)\n",
                            avx2 ? "avx2" : "generic", V, D, r0 + q, b, r0, t, c[(size_t)q * V + t],
                            alone[(size_t)(r0 + q) * V + t]);
                        fail();
                    }
            }
    }
    printf("%-7s V=%-5d D=%-4d %lld batches equal row by row; worst error %.3f of the bound\n",
           avx2 ? "avx2" : "generic", V, D, (long long)batches, worst);
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
