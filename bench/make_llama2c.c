/*
 * make_llama2c.c - writes a llama2.c checkpoint (legacy v0 float32 format)
 * with random weights, for benchmarking generation against run.c.
 *
 *   make_llama2c OUT_FILE [--dim 288] [--hidden 768] [--n-layer 6]
 *                [--n-head 6] [--n-kv-head 6] [--n-vocab 32000]
 *                [--seq-len 256] [--seed 1234]
 *
 * The default is stories15M's shape (~24M floats with its own classifier).
 * Layout, as run.c's memory_map_weights reads it: a 7-int32 header (dim,
 * hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then
 * token_embedding [V][D], rms_att [L][D], wq [L][D][D], wk [L][D][kv],
 * wv [L][D][kv], wo [L][D][D], rms_ffn [L][D], w1 [L][F][D], w2 [L][D][F],
 * w3 [L][F][D], rms_final [D], freq_cis_real/imag [seq][d_h/2], wcls [V][D].
 *
 * The classifier is NOT shared (vocab_size is written negative), and its row
 * for BOS (id 1) is zero: that logit is exactly 0 while the maximum of the
 * other 31999 random logits is positive, so greedy decoding never emits BOS
 * and run.c (which stops at BOS) runs every requested step. Matrices are
 * N(0, 0.02), RMSNorm gains 1 + N(0, 0.02). Deterministic for a given seed;
 * written to OUT_FILE.tmp and renamed.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

enum { BOS_ID = 1 };

static int parse_i32(const char *s, int32_t *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v <= 0 || v > 1 << 24) return -1;
    *out = (int32_t)v;
    return 0;
}

/* Writes rows*cols floats N(mean, std); returns 0 or -1 on a write error. */
static int write_normal(FILE *f, bu_rng *r, int64_t n, float std, float mean) {
    enum { CHUNK = 1 << 16 };
    static float buf[CHUNK];
    while (n > 0) {
        int64_t k = n < CHUNK ? n : CHUNK;
        for (int64_t i = 0; i < k; i++)
            buf[i] = mean + std * bu_normal(r);
        if (fwrite(buf, sizeof(float), (size_t)k, f) != (size_t)k) return -1;
        n -= k;
    }
    return 0;
}

int main(int argc, char **argv) {
    int32_t dim = 288, hidden = 768, n_layer = 6, n_head = 6, n_kv_head = 6, n_vocab = 32000,
            seq_len = 256, seed = 1234;
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr,
                "usage: %s OUT_FILE [--dim D] [--hidden F] [--n-layer L] [--n-head H] "
                "[--n-kv-head K] [--n-vocab V] [--seq-len S] [--seed N]\n",
                argv[0]);
        return 2;
    }
    const char *out = argv[1];
    for (int i = 2; i < argc; i += 2) {
        int32_t *dst = !strcmp(argv[i], "--dim")         ? &dim
                       : !strcmp(argv[i], "--hidden")    ? &hidden
                       : !strcmp(argv[i], "--n-layer")   ? &n_layer
                       : !strcmp(argv[i], "--n-head")    ? &n_head
                       : !strcmp(argv[i], "--n-kv-head") ? &n_kv_head
                       : !strcmp(argv[i], "--n-vocab")   ? &n_vocab
                       : !strcmp(argv[i], "--seq-len")   ? &seq_len
                       : !strcmp(argv[i], "--seed")      ? &seed
                                                         : NULL;
        if (!dst || i + 1 >= argc || parse_i32(argv[i + 1], dst)) {
            fprintf(stderr, "make_llama2c: bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (dim % n_head || n_head % n_kv_head || (dim / n_head) % 2 || n_vocab <= BOS_ID) {
        fprintf(stderr, "make_llama2c: inconsistent shape (dim %d, heads %d/%d, vocab %d)\n", dim,
                n_head, n_kv_head, n_vocab);
        return 2;
    }
    const int64_t D = dim, F = hidden, L = n_layer, V = n_vocab, S = seq_len;
    const int64_t d_h = D / n_head, kv = d_h * n_kv_head;
    const float std = 0.02f;

    size_t plen = strlen(out) + 8;
    char *tmp = malloc(plen);
    if (!tmp) return 1;
    snprintf(tmp, plen, "%s.tmp", out);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "make_llama2c: %s: cannot open: %s\n", tmp, strerror(errno));
        return 1;
    }
    double t0 = bu_now();
    bu_rng rng;
    bu_rng_seed(&rng, (uint64_t)seed);
    int32_t hdr[7] = {dim, hidden, n_layer, n_head, n_kv_head, -n_vocab, seq_len};
    int bad = fwrite(hdr, sizeof hdr, 1, f) != 1;
    bad = bad || write_normal(f, &rng, V * D, std, 0);      /* token_embedding */
    bad = bad || write_normal(f, &rng, L * D, std, 1);      /* rms_att */
    bad = bad || write_normal(f, &rng, L * D * D, std, 0);  /* wq */
    bad = bad || write_normal(f, &rng, L * D * kv, std, 0); /* wk */
    bad = bad || write_normal(f, &rng, L * D * kv, std, 0); /* wv */
    bad = bad || write_normal(f, &rng, L * D * D, std, 0);  /* wo */
    bad = bad || write_normal(f, &rng, L * D, std, 1);      /* rms_ffn */
    bad = bad || write_normal(f, &rng, L * F * D, std, 0);  /* w1 */
    bad = bad || write_normal(f, &rng, L * D * F, std, 0);  /* w2 */
    bad = bad || write_normal(f, &rng, L * F * D, std, 0);  /* w3 */
    bad = bad || write_normal(f, &rng, D, std, 1);          /* rms_final */
    /* freq_cis_real, freq_cis_imag: unused by run.c, written as v0 did */
    for (int part = 0; part < 2 && !bad; part++)
        for (int64_t p = 0; p < S && !bad; p++)
            for (int64_t i = 0; i < d_h / 2 && !bad; i++) {
                double freq = 1.0 / pow(10000.0, (double)(2 * i) / (double)d_h);
                float v = (float)(part == 0 ? cos((double)p * freq) : sin((double)p * freq));
                bad = fwrite(&v, sizeof v, 1, f) != 1;
            }
    /* wcls [V][D], with the BOS row zero */
    bad = bad || write_normal(f, &rng, BOS_ID * D, std, 0);
    for (int64_t i = 0; i < D && !bad; i++) {
        float zero = 0;
        bad = fwrite(&zero, sizeof zero, 1, f) != 1;
    }
    bad = bad || write_normal(f, &rng, (V - BOS_ID - 1) * D, std, 0);
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, out) != 0) {
        fprintf(stderr, "make_llama2c: %s: write failed: %s\n", out, strerror(errno));
        remove(tmp);
        return 1;
    }
    printf("make_llama2c: wrote %s (dim %d, hidden %d, %d layers, %d/%d heads, vocab %d, "
           "seq %d) in %.2f s\n",
           out, dim, hidden, n_layer, n_head, n_kv_head, n_vocab, seq_len, bu_now() - t0);
    free(tmp);
    return 0;
}
