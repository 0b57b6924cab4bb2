/*
 * bench_util.h - helpers shared by the benchmark programs. Header-only: each
 * bench .c file is its own executable, so shared code cannot live in a .c.
 *
 *  - a wall clock in seconds,
 *  - a small deterministic RNG (splitmix64 seeding xoshiro256+) with a
 *    Box-Muller normal sampler, fast enough to fill ~124M weights in ~1 s,
 *  - the median of a few timings, peak RSS.
 */
#ifndef RESID_BENCH_UTIL_H
#define RESID_BENCH_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline double bu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Peak resident set size of this process so far, in bytes. */
static inline int64_t bu_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (int64_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}

static int bu_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v in place). */
static inline double bu_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bu_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- deterministic RNG ---------------------------------------------------- */

typedef struct bu_rng {
    uint64_t s[4];
    int have_spare;
    float spare;
} bu_rng;

static inline uint64_t bu_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void bu_rng_seed(bu_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        r->s[i] = bu_splitmix64(&seed);
    r->have_spare = 0;
}

static inline uint64_t bu_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t bu_next(bu_rng *r) { /* xoshiro256+ */
    uint64_t *s = r->s;
    uint64_t result = s[0] + s[3], t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = bu_rotl(s[3], 45);
    return result;
}

/* Uniform in (0, 1]: never 0, so log() below is finite. */
static inline double bu_uniform(bu_rng *r) {
    return ((double)(bu_next(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* Standard normal, Box-Muller (two values per pair of uniforms). */
static inline float bu_normal(bu_rng *r) {
    if (r->have_spare) {
        r->have_spare = 0;
        return r->spare;
    }
    double u1 = bu_uniform(r), u2 = bu_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), ang = 6.283185307179586 * u2;
    r->spare = (float)(rad * sin(ang));
    r->have_spare = 1;
    return (float)(rad * cos(ang));
}

#endif
