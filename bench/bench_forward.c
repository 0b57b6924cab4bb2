/*
 * bench_forward.c - times resid_forward with the full trace (RESID_CAP_ALL,
 * RESID_POS_ALL) on a fixed list of token ids, and reports the peak RSS.
 *
 *   bench_forward MODEL --ids 464,2068,... [--runs 7] [--warmup 1]
 *                 [--logits-out FILE] [--capture MASK]
 *
 * One warm-up forward (it also faults the memory-mapped weights in), then
 * --runs timed forwards, each allocating and freeing its trace as a caller
 * would. --logits-out writes the last position's logits (raw float32) so the
 * PyTorch peer (peer_forward.py --compare) can check the two agree.
 * --capture overrides RESID_CAP_ALL (e.g. 32 = logits only) to see what the
 * captures cost; the logits are always captured.
 *
 * Prints `key=value` lines for scripts/bench.sh. The peak RSS is this
 * process's ru_maxrss at the end: the mmap'd weights count once touched, plus
 * the trace and the forward's scratch. The thread count is whatever OpenMP
 * and OpenBLAS take from OMP_NUM_THREADS / OPENBLAS_NUM_THREADS.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "resid.h"

/* Parses "1,2,3" into a malloc'd array; returns the count or -1. */
static int32_t parse_ids(const char *s, int32_t **out) {
    int32_t cap = 16, n = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) return -1;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *grown = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!grown) {
                free(ids);
                return -1;
            }
            ids = grown;
        }
        ids[n++] = (int32_t)v;
        s = *end ? end + 1 : end;
    }
    *out = ids;
    return n;
}

int main(int argc, char **argv) {
    const char *path = NULL, *ids_arg = NULL, *logits_out = NULL;
    int runs = 7, warmup = 1;
    unsigned long capture = RESID_CAP_ALL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ids") && i + 1 < argc)
            ids_arg = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--logits-out") && i + 1 < argc)
            logits_out = argv[++i];
        else if (!strcmp(argv[i], "--capture") && i + 1 < argc)
            capture = strtoul(argv[++i], NULL, 0) & RESID_CAP_ALL;
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "bench_forward: bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path || !ids_arg || runs < 1 || warmup < 0) {
        fprintf(stderr,
                "usage: %s MODEL --ids ID,ID,... [--runs N] [--warmup N] "
                "[--logits-out FILE] [--capture MASK]\n",
                argv[0]);
        return 2;
    }
    int32_t *ids = NULL;
    int32_t n = parse_ids(ids_arg, &ids);
    if (n < 1) {
        fprintf(stderr, "bench_forward: --ids: expected comma-separated token ids\n");
        return 2;
    }

    resid_error err = {0};
    resid_model *m = NULL;
    double t0 = bu_now();
    if (resid_model_open(path, NULL, &m, &err) != RESID_OK) {
        fprintf(stderr, "bench_forward: %s\n", err.msg);
        return 1;
    }
    double t_open = bu_now() - t0;
    const resid_model_info *info = resid_model_get_info(m);
    int64_t rss_open = bu_peak_rss_bytes();

    resid_trace_opts to = resid_trace_defaults();
    to.capture = (uint32_t)capture | RESID_CAP_LOGITS;
    to.positions = RESID_POS_ALL;
    size_t trace_bytes = resid_trace_bytes(m, n, &to);

    double *times = malloc((size_t)runs * sizeof *times);
    if (!times) return 1;
    resid_trace *tr = NULL;
    for (int r = 0; r < warmup + runs; r++) {
        resid_trace_free(tr);
        tr = NULL;
        double t = bu_now();
        if (resid_forward(m, ids, n, &to, &tr, &err) != RESID_OK) {
            fprintf(stderr, "bench_forward: %s\n", err.msg);
            return 1;
        }
        if (r >= warmup) times[r - warmup] = bu_now() - t;
    }
    int64_t rss_peak = bu_peak_rss_bytes();

    if (!tr->logits || tr->n_cap != n) {
        fprintf(stderr, "bench_forward: the trace lacks all-position logits (n_cap %d of %d)\n",
                tr->n_cap, n);
        return 1;
    }
    const float *last = tr->logits + (size_t)(tr->n_cap - 1) * (size_t)info->n_vocab;
    int32_t best = 0;
    for (int32_t v = 1; v < info->n_vocab; v++)
        if (last[v] > last[best]) best = v;
    if (logits_out) {
        FILE *f = fopen(logits_out, "wb");
        if (!f || fwrite(last, sizeof(float), (size_t)info->n_vocab, f) != (size_t)info->n_vocab ||
            fclose(f) != 0) {
            fprintf(stderr, "bench_forward: %s: cannot write: %s\n", logits_out, strerror(errno));
            return 1;
        }
    }

    double min = times[0];
    for (int r = 1; r < runs; r++)
        if (times[r] < min) min = times[r];
    printf("resid_model=%s\n", info->path ? info->path : path);
    printf("resid_n_tokens=%d\n", n);
    printf("resid_n_params=%lld\n", (long long)info->n_params);
    printf("resid_weight_bytes=%lld\n", (long long)info->n_bytes);
    printf("resid_open_ms=%.3f\n", 1e3 * t_open);
    printf("resid_capture=0x%x\n", to.capture);
    printf("resid_trace_bytes=%zu\n", trace_bytes);
    printf("resid_forward_ms_median=%.3f\n", 1e3 * bu_median(times, runs));
    printf("resid_forward_ms_min=%.3f\n", 1e3 * min);
    printf("resid_rss_after_open_bytes=%lld\n", (long long)rss_open);
    printf("resid_peak_rss_bytes=%lld\n", (long long)rss_peak);
    printf("resid_last_argmax=%d\n", best);

    resid_trace_free(tr);
    resid_model_free(m);
    free(times);
    free(ids);
    return 0;
}
