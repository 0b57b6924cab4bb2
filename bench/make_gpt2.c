/*
 * make_gpt2.c - writes a GPT-2 model with random weights as a Hugging Face
 * folder (config.json + model.safetensors), for benchmarking.
 *
 *   make_gpt2 OUT_DIR [--n-layer 12] [--d-model 768] [--n-head 12]
 *             [--d-ffn 3072] [--n-vocab 50257] [--n-ctx 1024] [--seed 1234]
 *
 * The default is GPT-2 small's shape (124M parameters, ~498 MB in F32).
 * Tensor names are Hugging Face's without the "transformer." prefix, Conv1D
 * weights are stored [in][out], and lm_head is tied to wte (absent).
 *
 * Statistics follow GPT2PreTrainedModel._init_weights: every weight
 * N(0, 0.02), the residual projections (attn.c_proj, mlp.c_proj)
 * N(0, 0.02/sqrt(2L)). Biases and LayerNorm parameters are not left at their
 * init (0 and 1) but get small noise, N(0, 0.02) and 1 + N(0, 0.02), so that a
 * peer implementation that mishandles a bias disagrees visibly.
 *
 * Deterministic: the same arguments give the same bytes. The files are
 * written under temporary names and renamed, so a half-written model is never
 * mistaken for a finished one.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_util.h"

typedef struct gpt2_shape {
    int64_t n_layer, d_model, n_head, d_ffn, n_vocab, n_ctx;
} gpt2_shape;

/* One tensor of the file: name, shape (1 or 2 dims), and how to fill it. */
typedef struct tensor_spec {
    char name[64];
    int64_t shape[2];
    int n_dim;
    float std;  /* > 0: N(0, std) (+ mean) */
    float mean; /* LayerNorm gains: 1 */
} tensor_spec;

static int add(tensor_spec *t, int *n, const char *name, int n_dim, int64_t d0, int64_t d1,
               float std, float mean) {
    tensor_spec *s = &t[(*n)++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->n_dim = n_dim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->std = std;
    s->mean = mean;
    return 0;
}

static int64_t numel(const tensor_spec *s) {
    return s->n_dim == 1 ? s->shape[0] : s->shape[0] * s->shape[1];
}

static int write_tensor(FILE *f, bu_rng *r, const tensor_spec *s) {
    enum { CHUNK = 1 << 16 };
    static float buf[CHUNK];
    int64_t n = numel(s);
    while (n > 0) {
        int64_t k = n < CHUNK ? n : CHUNK;
        for (int64_t i = 0; i < k; i++)
            buf[i] = s->mean + s->std * bu_normal(r);
        if (fwrite(buf, sizeof(float), (size_t)k, f) != (size_t)k) return -1;
        n -= k;
    }
    return 0;
}

static int parse_i64(const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v <= 0) return -1;
    *out = v;
    return 0;
}

static int write_config(const char *path, const gpt2_shape *g) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\n"
            "  \"architectures\": [\"GPT2LMHeadModel\"],\n"
            "  \"model_type\": \"gpt2\",\n"
            "  \"activation_function\": \"gelu_new\",\n"
            "  \"n_layer\": %lld,\n"
            "  \"n_embd\": %lld,\n"
            "  \"n_head\": %lld,\n"
            "  \"n_inner\": %lld,\n"
            "  \"vocab_size\": %lld,\n"
            "  \"n_positions\": %lld,\n"
            "  \"n_ctx\": %lld,\n"
            "  \"layer_norm_epsilon\": 1e-05,\n"
            "  \"initializer_range\": 0.02,\n"
            "  \"bos_token_id\": 50256,\n"
            "  \"eos_token_id\": 50256,\n"
            "  \"scale_attn_weights\": true,\n"
            "  \"tie_word_embeddings\": true,\n"
            "  \"torch_dtype\": \"float32\"\n"
            "}\n",
            (long long)g->n_layer, (long long)g->d_model, (long long)g->n_head, (long long)g->d_ffn,
            (long long)g->n_vocab, (long long)g->n_ctx, (long long)g->n_ctx);
    return fclose(f) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    gpt2_shape g = {12, 768, 12, 3072, 50257, 1024};
    int64_t seed = 1234;
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr,
                "usage: %s OUT_DIR [--n-layer L] [--d-model D] [--n-head H] "
                "[--d-ffn N] [--n-vocab V] [--n-ctx C] [--seed S]\n",
                argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    for (int i = 2; i < argc; i += 2) {
        int64_t *dst = !strcmp(argv[i], "--n-layer")   ? &g.n_layer
                       : !strcmp(argv[i], "--d-model") ? &g.d_model
                       : !strcmp(argv[i], "--n-head")  ? &g.n_head
                       : !strcmp(argv[i], "--d-ffn")   ? &g.d_ffn
                       : !strcmp(argv[i], "--n-vocab") ? &g.n_vocab
                       : !strcmp(argv[i], "--n-ctx")   ? &g.n_ctx
                       : !strcmp(argv[i], "--seed")    ? &seed
                                                       : NULL;
        if (!dst || i + 1 >= argc || parse_i64(argv[i + 1], dst)) {
            fprintf(stderr, "make_gpt2: bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (g.d_model % g.n_head) {
        fprintf(stderr, "make_gpt2: d_model %lld is not a multiple of n_head %lld\n",
                (long long)g.d_model, (long long)g.n_head);
        return 2;
    }

    /* The tensor list, in file order. */
    int n_max = 2 + 12 * (int)g.n_layer + 2, n = 0;
    tensor_spec *t = calloc((size_t)n_max, sizeof *t);
    if (!t) {
        fprintf(stderr, "make_gpt2: out of memory\n");
        return 1;
    }
    const float std = 0.02f, std_proj = 0.02f / sqrtf(2.0f * (float)g.n_layer);
    const int64_t D = g.d_model, N = g.d_ffn;
    add(t, &n, "wte.weight", 2, g.n_vocab, D, std, 0);
    add(t, &n, "wpe.weight", 2, g.n_ctx, D, std, 0);
    for (int64_t l = 0; l < g.n_layer; l++) {
        char nm[64];
#define ADD(suffix, nd, d0, d1, sd, mean)                                                          \
    do {                                                                                           \
        snprintf(nm, sizeof nm, "h.%lld.%s", (long long)l, suffix);                                \
        add(t, &n, nm, nd, d0, d1, sd, mean);                                                      \
    } while (0)
        ADD("ln_1.weight", 1, D, 0, std, 1);
        ADD("ln_1.bias", 1, D, 0, std, 0);
        ADD("attn.c_attn.weight", 2, D, 3 * D, std, 0);
        ADD("attn.c_attn.bias", 1, 3 * D, 0, std, 0);
        ADD("attn.c_proj.weight", 2, D, D, std_proj, 0);
        ADD("attn.c_proj.bias", 1, D, 0, std, 0);
        ADD("ln_2.weight", 1, D, 0, std, 1);
        ADD("ln_2.bias", 1, D, 0, std, 0);
        ADD("mlp.c_fc.weight", 2, D, N, std, 0);
        ADD("mlp.c_fc.bias", 1, N, 0, std, 0);
        ADD("mlp.c_proj.weight", 2, N, D, std_proj, 0);
        ADD("mlp.c_proj.bias", 1, D, 0, std, 0);
#undef ADD
    }
    add(t, &n, "ln_f.weight", 1, D, 0, std, 1);
    add(t, &n, "ln_f.bias", 1, D, 0, std, 0);

    /* The safetensors header: JSON, padded with spaces to a multiple of 8. */
    size_t cap = (size_t)n * 128 + 256, len = 0;
    char *hdr = malloc(cap);
    if (!hdr) {
        fprintf(stderr, "make_gpt2: out of memory\n");
        return 1;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        int64_t bytes = numel(&t[i]) * 4;
        if (t[i].n_dim == 1)
            len += (size_t)snprintf(hdr + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],"
                                    "\"data_offsets\":[%lld,%lld]}",
                                    t[i].name, (long long)t[i].shape[0], (long long)off,
                                    (long long)(off + bytes));
        else
            len += (size_t)snprintf(hdr + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],"
                                    "\"data_offsets\":[%lld,%lld]}",
                                    t[i].name, (long long)t[i].shape[0], (long long)t[i].shape[1],
                                    (long long)off, (long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8)
        hdr[len++] = ' ';

    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_gpt2: %s: cannot create: %s\n", dir, strerror(errno));
        return 1;
    }
    size_t plen = strlen(dir) + 64;
    char *st_tmp = malloc(plen), *st = malloc(plen), *cf_tmp = malloc(plen), *cf = malloc(plen);
    if (!st_tmp || !st || !cf_tmp || !cf) return 1;
    snprintf(st_tmp, plen, "%s/model.safetensors.tmp", dir);
    snprintf(st, plen, "%s/model.safetensors", dir);
    snprintf(cf_tmp, plen, "%s/config.json.tmp", dir);
    snprintf(cf, plen, "%s/config.json", dir);

    double t0 = bu_now();
    FILE *f = fopen(st_tmp, "wb");
    if (!f) {
        fprintf(stderr, "make_gpt2: %s: cannot open: %s\n", st_tmp, strerror(errno));
        return 1;
    }
    uint64_t hlen = len;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hlen >> (8 * i));
    bu_rng rng;
    bu_rng_seed(&rng, (uint64_t)seed);
    int bad = fwrite(le, 1, 8, f) != 8 || fwrite(hdr, 1, len, f) != len;
    for (int i = 0; i < n && !bad; i++)
        bad = write_tensor(f, &rng, &t[i]) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        fprintf(stderr, "make_gpt2: %s: write failed: %s\n", st_tmp, strerror(errno));
        remove(st_tmp);
        return 1;
    }
    if (write_config(cf_tmp, &g) != 0 || rename(cf_tmp, cf) != 0 || rename(st_tmp, st) != 0) {
        fprintf(stderr, "make_gpt2: %s: cannot finish writing: %s\n", dir, strerror(errno));
        return 1;
    }
    printf("make_gpt2: wrote %s (%d tensors, %lld params, %.1f MB) in %.2f s\n", dir, n,
           (long long)(off / 4), (double)off / 1e6, bu_now() - t0);
    free(hdr);
    free(t);
    free(st_tmp);
    free(st);
    free(cf_tmp);
    free(cf);
    return 0;
}
