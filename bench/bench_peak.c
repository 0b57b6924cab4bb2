/*
 * bench_peak.c - what this CPU can do at most, for reading the explain
 * figures of `make bench` (scripts/bench.sh, section 4):
 *
 *   fma_peak_gflops   float32 FMA throughput on every thread (OpenMP), from
 *                     12 independent 8-lane FMA chains per thread: the
 *                     ceiling of any exact float32 projection code here;
 *   canon_gflops      resid's canonical projection (rs_project_canon, the
 *                     kernel of every exact score) on a GPT-2-sized W_U
 *                     (V = 50257, D = 768) with RS_CANON_ROWS rows (the
 *                     batch of exact scoring), median of --runs;
 *   canon_rows        that batch.
 *
 * An exact LPI needs one V×D projection (2·V·D flops), so a run that did P
 * projections cannot take less than P·2·V·D / fma_peak seconds, whatever
 * the code: bench.sh prints that floor next to the measured times.
 *
 *     bench_peak [--runs N]
 *
 * Prints `key=value` lines. x86-64 with AVX2+FMA only for the peak (else
 * fma_peak_gflops=n/a).
 */
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "bench_util.h"

#if defined(__x86_64__)
/* iters × 12 FMAs of 8 lanes: 192 flops an iteration, chains independent */
__attribute__((target("avx2,fma"), noinline)) static void fma_chains(long iters) {
    __asm__ volatile("vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
                     "vmovaps %%ymm0, %%ymm1\n\t"
                     "vmovaps %%ymm0, %%ymm2\n\t"
                     "vmovaps %%ymm0, %%ymm3\n\t"
                     "vmovaps %%ymm0, %%ymm4\n\t"
                     "vmovaps %%ymm0, %%ymm5\n\t"
                     "vmovaps %%ymm0, %%ymm6\n\t"
                     "vmovaps %%ymm0, %%ymm7\n\t"
                     "vmovaps %%ymm0, %%ymm8\n\t"
                     "vmovaps %%ymm0, %%ymm9\n\t"
                     "vmovaps %%ymm0, %%ymm10\n\t"
                     "vmovaps %%ymm0, %%ymm11\n\t"
                     "vmovaps %%ymm0, %%ymm14\n\t"
                     "vmovaps %%ymm0, %%ymm15\n\t"
                     "1:\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm10\n\t"
                     "vfmadd231ps %%ymm14, %%ymm15, %%ymm11\n\t"
                     "dec %0\n\t"
                     "jnz 1b\n\t"
                     "vzeroupper"
                     : "+r"(iters)
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm14", "xmm15", "cc");
}

/* Best of `runs` timings of every thread running the chains at once. */
static double fma_peak_gflops(int runs) {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return -1;
    const long iters = 100000000;
    const int nt = omp_get_max_threads();
    double best = 0;
    for (int r = 0; r < runs; r++) {
        const double t0 = bu_now();
#pragma omp parallel
        fma_chains(iters);
        const double g = (double)nt * iters * 192.0 / (bu_now() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}
#else
static double fma_peak_gflops(int runs) {
    (void)runs;
    return -1;
}
#endif

/* Median GFLOPS of rs_project_canon with n rows on a synthetic W_U. */
static double canon_gflops(int V, int D, int n, int runs) {
    float *wu = malloc(sizeof(float) * (size_t)V * D);
    float *y = malloc(sizeof(float) * (size_t)n * D);
    float *c = malloc(sizeof(float) * (size_t)n * V);
    double *t = malloc(sizeof(double) * (size_t)runs);
    if (!wu || !y || !c || !t) {
        free(wu), free(y), free(c), free(t);
        return -1;
    }
    bu_rng rng;
    bu_rng_seed(&rng, 42);
    for (size_t i = 0; i < (size_t)V * D; i++) wu[i] = bu_normal(&rng) * 0.02f;
    for (size_t i = 0; i < (size_t)n * D; i++) y[i] = bu_normal(&rng);
    /* the fields rs_project_canon reads */
    struct resid_explainer e;
    memset(&e, 0, sizeof e);
    e.D = D, e.V = V, e.wu = wu;
    rs_project_canon(&e, y, n, c); /* warm-up: pages, caches */
    for (int r = 0; r < runs; r++) {
        const double t0 = bu_now();
        rs_project_canon(&e, y, n, c);
        t[r] = bu_now() - t0;
    }
    const double g = 2.0 * n * (double)D * V / bu_median(t, runs) / 1e9;
    free(wu), free(y), free(c), free(t);
    return g;
}

int main(int argc, char **argv) {
    int runs = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            runs = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--runs N]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    const double peak = fma_peak_gflops(runs);
    const double canon = canon_gflops(50257, 768, RS_CANON_ROWS, runs);
    printf("canon_rows=%d\n", RS_CANON_ROWS);
    printf("threads=%d\n", omp_get_max_threads());
    if (peak > 0)
        printf("fma_peak_gflops=%.1f\n", peak);
    else
        printf("fma_peak_gflops=n/a\n");
    if (canon > 0) printf("canon_gflops=%.1f\n", canon);
    return canon > 0 ? 0 : 1;
}
