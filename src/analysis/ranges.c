/*
 * ranges.c - a model's direction ranges (METHOD.md §10): for every FFN
 * direction (column k of W_down) and every W_O row, max_t and min_t of
 * P1 = W_U·(γ_f ⊙ centre(row)), the direction's vocabulary projection at
 * lens scale 1, built once and kept on disk.
 *
 * An explainer of scale s reads them as bounds of its own float projection
 * max_t P_t / s, min_t P_t / s, widened by rs_ranges_allowance; the lower
 * bounds of rank.c then need no projection of the direction. The exact
 * scores never see these values, so scores and rankings are the same bits
 * with or without the ranges.
 *
 * The file (little-endian, RANGES_HEADER bytes of header):
 *
 *   0  char[8]  magic "RESIDRNG"
 *   8  u32      version (RANGES_VERSION)
 *  12  u32      arch (resid_arch)
 *  16  i32 × 6  n_layer, d_model, d_ffn, n_head, d_head, n_vocab
 *  40  u64      fingerprint of the model's weights (fingerprint())
 *  48  u64      checksum of the floats (hash_bytes of their bytes)
 *  56  float32  per layer l: ffn_max[N], ffn_min[N], attn_max[H·d_h],
 *               attn_min[H·d_h]
 *
 * and nothing after the floats.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"

#define RANGES_MAGIC "RESIDRNG"
#define RANGES_VERSION 1u
#define RANGES_HEADER 56

/* ---------------------------------------------------------------------- */
/* Hashing                                                                */
/* ---------------------------------------------------------------------- */

/* Bytes per independently hashed chunk: the chunks of a buffer are hashed
 * in parallel and combined in order, so the hash does not depend on the
 * thread count. */
#define HASH_CHUNK ((size_t)1 << 20)

static const uint64_t P1_ = 0x9E3779B185EBCA87ULL, P2_ = 0xC2B2AE3D27D4EB4FULL,
                      P3_ = 0x165667B19E3779F9ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t mix_round(uint64_t acc, uint64_t w) {
    return rotl64(acc + w * P2_, 31) * P1_;
}

static inline uint64_t avalanche(uint64_t h) {
    h ^= h >> 33, h *= P2_, h ^= h >> 29, h *= P3_, h ^= h >> 32;
    return h;
}

/* One chunk: four lanes of 8-byte words (xxh64-like rounds), the tail
 * zero-padded, the length mixed in. */
static uint64_t hash_chunk(const uint8_t *p, size_t n, uint64_t seed) {
    uint64_t a[4] = {seed + P1_ + P2_, seed + P2_, seed, seed - P1_};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * k, 8);
            a[k] = mix_round(a[k], w);
        }
    uint8_t tail[32] = {0};
    memcpy(tail, p + i, n - i);
    for (int k = 0; k < 4; k++) {
        uint64_t w;
        memcpy(&w, tail + 8 * k, 8);
        a[k] = mix_round(a[k], w);
    }
    uint64_t h = rotl64(a[0], 1) + rotl64(a[1], 7) + rotl64(a[2], 12) + rotl64(a[3], 18);
    return avalanche(h ^ (uint64_t)n);
}

/* A 64-bit hash of n bytes, continuing h. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    const int64_t nc = (int64_t)((n + HASH_CHUNK - 1) / HASH_CHUNK);
    uint64_t *ch = nc > 1 ? malloc((size_t)nc * sizeof *ch) : NULL;
    if (nc <= 1 || !ch) { /* one chunk, or no memory: the same value, serially */
        for (int64_t c = 0; c < nc || c == 0; c++) {
            size_t off = (size_t)c * HASH_CHUNK, len = n - off < HASH_CHUNK ? n - off : HASH_CHUNK;
            h = avalanche((h ^ hash_chunk(p + off, len, (uint64_t)c)) * P1_);
        }
        free(ch);
        return h;
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nc; c++) {
        size_t off = (size_t)c * HASH_CHUNK, len = n - off < HASH_CHUNK ? n - off : HASH_CHUNK;
        ch[c] = hash_chunk(p + off, len, (uint64_t)c);
    }
    for (int64_t c = 0; c < nc; c++) h = avalanche((h ^ ch[c]) * P1_);
    free(ch);
    return h;
}

static uint64_t hash_u64(uint64_t h, uint64_t v) { return hash_bytes(h, &v, sizeof v); }

static uint64_t hash_tensor(uint64_t h, const rs_tensor *t) {
    size_t nb = 0;
    h = hash_u64(h, (uint64_t)t->dtype);
    h = hash_u64(h, (uint64_t)t->n_rows);
    h = hash_u64(h, (uint64_t)t->n_cols);
    h = hash_u64(h, (uint64_t)t->transposed);
    if (rs_dtype_nbytes(t->dtype, t->n_rows, t->n_cols, &nb)) h = hash_bytes(h, t->data, nb);
    return h;
}

/* The fingerprint of the weights the ranges depend on, as stored: the
 * shape, W_U, the final-norm gain and bias, and every layer's W_down and
 * W_O (all their bytes: ~0.3 GB on GPT-2 small). */
static uint64_t fingerprint(const resid_model *m) {
    const rs_hparams *hp = &m->hp;
    const int32_t shape[7] = {(int32_t)hp->arch, hp->n_layer, hp->d_model, hp->d_ffn,
                              hp->n_head,        hp->d_head,  hp->n_vocab};
    uint64_t h = hash_bytes(0x5245534944524E47ULL, shape, sizeof shape);
    h = hash_tensor(h, m->w_out);
    if (m->out_norm_w) h = hash_bytes(h, m->out_norm_w, (size_t)hp->d_model * sizeof(float));
    h = hash_u64(h, m->out_norm_b != NULL);
    if (m->out_norm_b) h = hash_bytes(h, m->out_norm_b, (size_t)hp->d_model * sizeof(float));
    for (int32_t l = 0; l < hp->n_layer; l++) {
        h = hash_tensor(h, m->layers[l].w_down);
        h = hash_tensor(h, m->layers[l].wo);
    }
    return h;
}

/* ---------------------------------------------------------------------- */
/* The bound                                                              */
/* ---------------------------------------------------------------------- */

/* Let z = γ ⊙ centre(d) (double), y1 = fl(z) the cache's lens vector and
 * y_s = fl(z / s) the explainer's, so |y_s − y1/s| <= 2u|z|/s elementwise
 * (u = 2⁻²⁴; the double steps add far less than another u). A canonical
 * score of y against W_U[t] is within γ_m·Σ|y_d w_d| <= γ_m‖W_U[t]‖‖y‖
 * of the exact dot product (canon.c; m = K + B − 1 <= D, whichever
 * kernel built the cache). Hence
 *
 *   |P_s[t] − P1[t]/s| <= (2γ_m(1 + u) + 3u)·mnorm·‖z‖/s
 *                      <= 2γ_{D+2}·mnorm·nd,
 *
 * with mnorm >= max_t ‖W_U[t]‖ and nd >= ‖z‖/s (the explainer's), and the
 * same holds for the max and min over t. The caller adds 1e-6 relative and
 * rounds outwards to float. */
double rs_ranges_allowance(const resid_explainer *e, double nd) {
    const double u = 0x1p-24, m = e->D + 2.0, gm = m * u / (1 - m * u);
    return 2 * gm * e->mnorm * nd;
}

/* ---------------------------------------------------------------------- */
/* Building                                                               */
/* ---------------------------------------------------------------------- */

void resid_ranges_free(resid_ranges *r) {
    if (!r) return;
    free(r->ffn_max), free(r->ffn_min), free(r->attn_max), free(r->attn_min);
    free(r);
}

/* A ranges object for m's shape, arrays allocated (not filled). */
static resid_status ranges_alloc(const resid_model *m, resid_ranges **out, resid_error *err) {
    const rs_hparams *hp = &m->hp;
    *out = NULL;
    if (hp->n_layer < 1 || hp->d_model < 1 || hp->d_ffn < 1 || hp->n_head < 1 ||
        hp->d_head < 1 || hp->n_vocab < 1 || !m->layers[0].wo ||
        (int64_t)hp->n_head * hp->d_head != m->layers[0].wo->n_cols)
        return rs_err(err, RESID_E_UNSUPPORTED, "%s: ranges: head geometry H=%d d_h=%d",
                      m->info.path ? m->info.path : "model", hp->n_head, hp->d_head);
    resid_ranges *r = calloc(1, sizeof *r);
    if (!r) return rs_err(err, RESID_E_NOMEM, "ranges: out of memory");
    r->arch = hp->arch;
    r->L = hp->n_layer, r->D = hp->d_model, r->N = hp->d_ffn;
    r->H = hp->n_head, r->dh = hp->d_head, r->V = hp->n_vocab;
    const size_t nf = (size_t)r->L * r->N, na = (size_t)r->L * r->H * r->dh;
    r->ffn_max = malloc(nf * sizeof(float));
    r->ffn_min = malloc(nf * sizeof(float));
    r->attn_max = malloc(na * sizeof(float));
    r->attn_min = malloc(na * sizeof(float));
    if (!r->ffn_max || !r->ffn_min || !r->attn_max || !r->attn_min) {
        resid_ranges_free(r);
        return rs_err(err, RESID_E_NOMEM, "ranges: out of memory");
    }
    *out = r;
    return RESID_OK;
}

/* max/min of P1 of rows[n][D] into mx[n], mn[n], RS_CANON_ROWS at a time;
 * y[RS_CANON_ROWS][D] and c[RS_CANON_ROWS][V] are scratch. */
static void project_rows(resid_explainer *e, const float *rows, int64_t n, float *y, float *c,
                         float *mx, float *mn) {
    const int D = e->D, V = e->V, B = RS_CANON_ROWS;
    for (int64_t i0 = 0; i0 < n; i0 += B) {
        const int nb = (int)(n - i0 < B ? n - i0 : B);
        for (int r = 0; r < nb; r++) rs_lensmap(e, rows + (size_t)(i0 + r) * D, y + (size_t)r * D);
        rs_project_canon(e, y, nb, c);
#pragma omp parallel for schedule(static) if ((int64_t)nb * V >= RS_PAR_MIN_WORK)
        for (int r = 0; r < nb; r++) rs_minmax(c + (size_t)r * V, V, &mx[i0 + r], &mn[i0 + r]);
    }
}

resid_status resid_ranges_build(const resid_model *m, resid_progress_fn progress, void *user,
                                resid_ranges **out, resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "ranges: out is NULL");
    *out = NULL;
    if (!m) return rs_err(err, RESID_E_ARG, "ranges: model is NULL");
    resid_ranges *r;
    resid_status st = ranges_alloc(m, &r, err);
    if (st) return st;
    const int32_t L = r->L, D = r->D, V = r->V;
    const int64_t N = r->N, NA = (int64_t)r->H * r->dh, nmax = N > NA ? N : NA;
    size_t vd;
    if (!rs_mul_size((size_t)V, (size_t)D, &vd)) {
        resid_ranges_free(r);
        return rs_err(err, RESID_E_NOMEM, "ranges: unembedding %d x %d too large", V, D);
    }
    /* The explainer's fields rs_lensmap and rs_project_canon read, at s = 1,
     * set as resid_explainer_new sets them. */
    resid_explainer e;
    memset(&e, 0, sizeof e);
    e.m = m;
    e.D = D, e.V = V, e.L = L;
    e.centre = m->hp.arch == RESID_ARCH_GPT2;
    e.s = 1.0;
    const bool unembed = rs_explainer_unembed(&e, m, vd);
    float *rows = malloc((size_t)nmax * D * sizeof(float));
    float *y = malloc((size_t)RS_CANON_ROWS * D * sizeof(float));
    float *c = malloc((size_t)RS_CANON_ROWS * V * sizeof(float));
    if (!unembed || !rows || !y || !c) {
        st = rs_err(err, RESID_E_NOMEM, "ranges: out of memory (V=%d, D=%d)", V, D);
        goto done;
    }
    for (int32_t l = 0; l < L; l++) {
        if (progress) progress(user, "FFN and W_O rows", l + 1, L);
        rs_tensor_cols(m->layers[l].w_down, rows); /* [D][N] -> [N][D] */
        project_rows(&e, rows, N, y, c, r->ffn_max + (size_t)l * N, r->ffn_min + (size_t)l * N);
        rs_tensor_cols(m->layers[l].wo, rows); /* [D][H·d_h] -> [H·d_h][D] */
        project_rows(&e, rows, NA, y, c, r->attn_max + (size_t)l * NA,
                     r->attn_min + (size_t)l * NA);
    }
    r->fingerprint = fingerprint(m);
done:
    free(e.wu_own), free(e.gamma), free(rows), free(y), free(c);
    if (st) {
        resid_ranges_free(r);
        return st;
    }
    *out = r;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* The file                                                               */
/* ---------------------------------------------------------------------- */

/* The floats of r in file order, one layer's four arrays at a time. */
static size_t layer_floats(const resid_ranges *r) {
    return 2 * (size_t)r->N + 2 * (size_t)r->H * r->dh;
}

static uint64_t payload_hash(const resid_ranges *r) {
    const size_t N = (size_t)r->N, NA = (size_t)r->H * r->dh;
    uint64_t h = 0x52414E4745534653ULL;
    for (int32_t l = 0; l < r->L; l++) {
        h = hash_bytes(h, r->ffn_max + l * N, N * sizeof(float));
        h = hash_bytes(h, r->ffn_min + l * N, N * sizeof(float));
        h = hash_bytes(h, r->attn_max + l * NA, NA * sizeof(float));
        h = hash_bytes(h, r->attn_min + l * NA, NA * sizeof(float));
    }
    return h;
}

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

resid_status resid_ranges_save(const resid_ranges *r, const char *path, resid_error *err) {
    if (!r || !path) return rs_err(err, RESID_E_ARG, "ranges: nothing to save");
    uint8_t hd[RANGES_HEADER];
    memcpy(hd, RANGES_MAGIC, 8);
    put_u32(hd + 8, RANGES_VERSION);
    put_u32(hd + 12, (uint32_t)r->arch);
    const int32_t shape[6] = {r->L, r->D, r->N, r->H, r->dh, r->V};
    for (int i = 0; i < 6; i++) put_u32(hd + 16 + 4 * i, (uint32_t)shape[i]);
    put_u64(hd + 40, r->fingerprint);
    put_u64(hd + 48, payload_hash(r));
    FILE *f = fopen(path, "wb");
    if (!f) return rs_err(err, RESID_E_IO, "%s: cannot create: %s", path, strerror(errno));
    bool ok = fwrite(hd, 1, sizeof hd, f) == sizeof hd;
    const size_t N = (size_t)r->N, NA = (size_t)r->H * r->dh;
    for (int32_t l = 0; ok && l < r->L; l++)
        ok = fwrite(r->ffn_max + l * N, sizeof(float), N, f) == N &&
             fwrite(r->ffn_min + l * N, sizeof(float), N, f) == N &&
             fwrite(r->attn_max + l * NA, sizeof(float), NA, f) == NA &&
             fwrite(r->attn_min + l * NA, sizeof(float), NA, f) == NA;
    if (fclose(f) != 0) ok = false;
    if (!ok) {
        remove(path);
        return rs_err(err, RESID_E_IO, "%s: write failed", path);
    }
    return RESID_OK;
}

resid_status resid_ranges_load(const resid_model *m, const char *path, resid_ranges **out,
                               resid_error *err) {
    if (!out) return rs_err(err, RESID_E_ARG, "ranges: out is NULL");
    *out = NULL;
    if (!m || !path) return rs_err(err, RESID_E_ARG, "ranges: model and path are required");
    FILE *f = fopen(path, "rb");
    if (!f) return rs_err(err, RESID_E_IO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t hd[RANGES_HEADER];
    resid_ranges *r = NULL;
    resid_status st = RESID_OK;
    if (fread(hd, 1, sizeof hd, f) != sizeof hd || memcmp(hd, RANGES_MAGIC, 8) != 0) {
        st = rs_err(err, RESID_E_FORMAT, "%s: not a resid ranges file (bad magic or too short)",
                    path);
        goto done;
    }
    if (get_u32(hd + 8) != RANGES_VERSION) {
        st = rs_err(err, RESID_E_FORMAT, "%s: ranges file version %u, expected %u", path,
                    get_u32(hd + 8), RANGES_VERSION);
        goto done;
    }
    const rs_hparams *hp = &m->hp;
    int32_t sh[6];
    for (int i = 0; i < 6; i++) sh[i] = (int32_t)get_u32(hd + 16 + 4 * i);
    const uint32_t arch = get_u32(hd + 12);
    if (arch != (uint32_t)hp->arch || sh[0] != hp->n_layer || sh[1] != hp->d_model ||
        sh[2] != hp->d_ffn || sh[3] != hp->n_head || sh[4] != hp->d_head ||
        sh[5] != hp->n_vocab) {
        st = rs_err(err, RESID_E_ARG,
                    "%s: the ranges of another model (arch %u, L=%d D=%d N=%d H=%d d_h=%d V=%d; "
                    "this model: arch %d, L=%d D=%d N=%d H=%d d_h=%d V=%d)",
                    path, arch, sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], (int)hp->arch,
                    hp->n_layer, hp->d_model, hp->d_ffn, hp->n_head, hp->d_head, hp->n_vocab);
        goto done;
    }
    if ((st = ranges_alloc(m, &r, err))) goto done;
    const size_t N = (size_t)r->N, NA = (size_t)r->H * r->dh;
    bool ok = true;
    for (int32_t l = 0; ok && l < r->L; l++)
        ok = fread(r->ffn_max + l * N, sizeof(float), N, f) == N &&
             fread(r->ffn_min + l * N, sizeof(float), N, f) == N &&
             fread(r->attn_max + l * NA, sizeof(float), NA, f) == NA &&
             fread(r->attn_min + l * NA, sizeof(float), NA, f) == NA;
    uint8_t extra;
    if (!ok || fread(&extra, 1, 1, f) != 0) {
        st = rs_err(err, RESID_E_FORMAT, "%s: ranges file %s (expected %zu bytes)", path,
                    ok ? "has trailing bytes" : "is truncated",
                    (size_t)RANGES_HEADER + layer_floats(r) * r->L * sizeof(float));
        goto done;
    }
    if (payload_hash(r) != get_u64(hd + 48)) {
        st = rs_err(err, RESID_E_FORMAT, "%s: ranges file is corrupt (checksum mismatch)", path);
        goto done;
    }
    r->fingerprint = get_u64(hd + 40);
    if (r->fingerprint != fingerprint(m)) {
        st = rs_err(err, RESID_E_ARG,
                    "%s: the ranges of another model (same shape, different weights than %s)",
                    path, m->info.path ? m->info.path : "this model");
        goto done;
    }
done:
    fclose(f);
    if (st) {
        resid_ranges_free(r);
        return st;
    }
    *out = r;
    return RESID_OK;
}
