/*
 * tensor.c - dtype geometry, ggml-exact dequantisers, row/column access and
 * the matrix multiply used by the forward pass.
 *
 * Dequantisers follow ggml-quants.c `dequantize_row_*` operation for
 * operation (the build uses -ffp-contract=off, so no FMA contraction), which
 * makes them bit-identical to ggml's to_float.
 */
#include "tensor/tensor.h"

#include <cblas.h>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* ---------------------------------------------------------------------- */
/* Block layouts (ggml-common.h)                                          */
/* ---------------------------------------------------------------------- */

#define QK4_0 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct {
    uint16_t d;           /* fp16 scale */
    uint8_t qs[QK4_0 / 2]; /* nibbles: low = element j, high = element j+16 */
} block_q4_0;             /* 18 bytes */

typedef struct {
    uint16_t d;       /* fp16 scale */
    int8_t qs[QK8_0]; /* quants */
} block_q8_0;         /* 34 bytes */

typedef struct {
    uint16_t d;                    /* fp16 super-block scale for scales */
    uint16_t dmin;                 /* fp16 super-block scale for mins */
    uint8_t scales[K_SCALE_SIZE];  /* 8 x (6-bit scale, 6-bit min) */
    uint8_t qs[QK_K / 2];          /* 4-bit quants */
} block_q4_K;                      /* 144 bytes */

typedef struct {
    uint8_t ql[QK_K / 2];      /* quants, lower 4 bits */
    uint8_t qh[QK_K / 4];      /* quants, upper 2 bits */
    int8_t scales[QK_K / 16];  /* 8-bit block scales */
    uint16_t d;                /* fp16 super-block scale */
} block_q6_K;                  /* 210 bytes */

_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");

int64_t rs_dtype_block_elems(resid_dtype t) {
    switch (t) {
    case RESID_DTYPE_F32:
    case RESID_DTYPE_F16:
    case RESID_DTYPE_BF16: return 1;
    case RESID_DTYPE_Q8_0: return QK8_0;
    case RESID_DTYPE_Q4_0: return QK4_0;
    case RESID_DTYPE_Q4_K:
    case RESID_DTYPE_Q6_K: return QK_K;
    default: return 0;
    }
}

size_t rs_dtype_block_bytes(resid_dtype t) {
    switch (t) {
    case RESID_DTYPE_F32: return 4;
    case RESID_DTYPE_F16:
    case RESID_DTYPE_BF16: return 2;
    case RESID_DTYPE_Q8_0: return sizeof(block_q8_0);
    case RESID_DTYPE_Q4_0: return sizeof(block_q4_0);
    case RESID_DTYPE_Q4_K: return sizeof(block_q4_K);
    case RESID_DTYPE_Q6_K: return sizeof(block_q6_K);
    default: return 0;
    }
}

bool rs_dtype_nbytes(resid_dtype t, int64_t n_rows, int64_t n_cols, size_t *out) {
    int64_t be = rs_dtype_block_elems(t);
    if (be <= 0 || n_rows < 0 || n_cols < 0 || n_cols % be != 0) return false;
    size_t blocks;
    if (!rs_mul_size((size_t)n_rows, (size_t)(n_cols / be), &blocks)) return false;
    return rs_mul_size(blocks, rs_dtype_block_bytes(t), out);
}

/* Bytes of one stored row of a row-major tensor. */
static size_t row_bytes(const rs_tensor *t) {
    return (size_t)(t->n_cols / rs_dtype_block_elems(t->dtype)) *
           rs_dtype_block_bytes(t->dtype);
}

/* ---------------------------------------------------------------------- */
/* Scalar conversions                                                     */
/* ---------------------------------------------------------------------- */

static inline float f32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, 4);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, 4);
    return w;
}

/* Branch-free fp16 -> fp32 (the FP16 library's trick that ggml uses without
 * F16C). Exact for every input; vectorises, unlike rs_f16_to_f32 which the
 * tests use as its reference. */
static inline float f16_to_f32_fast(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized = f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized = f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = 1u << 27;
    const uint32_t result =
        sign | (two_w < denormalized_cutoff ? f32_to_bits(denormalized)
                                            : f32_to_bits(normalized));
    return f32_from_bits(result);
}

/* Little-endian u16 (the file byte order); a plain load on LE hosts, which
 * lets the conversion loops vectorise. */
static inline uint16_t rd_u16(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
#else
    return (uint16_t)(p[0] | p[1] << 8);
#endif
}

/* ---------------------------------------------------------------------- */
/* Dequantisers (ggml-quants.c dequantize_row_*)                          */
/* ---------------------------------------------------------------------- */

static void dequant_f16(const uint8_t *src, float *y, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    /* vcvtph2ps: exact for every non-NaN input, 8 at a time */
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
#endif
    for (; i < n; i++) y[i] = f16_to_f32_fast(rd_u16(src + 2 * i));
}

static void dequant_bf16(const uint8_t *src, float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        const uint32_t w = (uint32_t)rd_u16(src + 2 * i) << 16;
        memcpy(y + i, &w, 4);
    }
}

static void dequant_q8_0(const uint8_t *src, float *y, int64_t n) {
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        block_q8_0 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        const float d = f16_to_f32_fast(b.d);
#pragma omp simd
        for (int j = 0; j < QK8_0; j++) y[i * QK8_0 + j] = b.qs[j] * d;
    }
}

static void dequant_q4_0(const uint8_t *src, float *y, int64_t n) {
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        block_q4_0 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        const float d = f16_to_f32_fast(b.d);
#pragma omp simd
        for (int j = 0; j < QK4_0 / 2; j++) {
            const int x0 = (b.qs[j] & 0x0F) - 8;
            const int x1 = (b.qs[j] >> 4) - 8;
            y[i * QK4_0 + j] = x0 * d;
            y[i * QK4_0 + j + QK4_0 / 2] = x1 * d;
        }
    }
}

/* The j-th 6-bit (scale, min) pair of a Q4_K block (ggml get_scale_min_k4). */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

static void dequant_q4_K(const uint8_t *src, float *y, int64_t n) {
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = src + i * sizeof(block_q4_K);
        const uint8_t *scales = blk + offsetof(block_q4_K, scales);
        const uint8_t *q = blk + offsetof(block_q4_K, qs);
        const float d = f16_to_f32_fast(rd_u16(blk + offsetof(block_q4_K, d)));
        const float min = f16_to_f32_fast(rd_u16(blk + offsetof(block_q4_K, dmin)));
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, scales, &sc, &m);
            const float d1 = d * sc;
            const float m1 = min * m;
            get_scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * sc;
            const float m2 = min * m;
#pragma omp simd
            for (int l = 0; l < 32; ++l) y[l] = d1 * (q[l] & 0xF) - m1;
#pragma omp simd
            for (int l = 0; l < 32; ++l) y[32 + l] = d2 * (q[l] >> 4) - m2;
            y += 64;
            q += 32;
            is += 2;
        }
    }
}

static void dequant_q6_K(const uint8_t *src, float *y, int64_t n) {
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = src + i * sizeof(block_q6_K);
        const float d = f16_to_f32_fast(rd_u16(blk + offsetof(block_q6_K, d)));
        const uint8_t *ql = blk + offsetof(block_q6_K, ql);
        const uint8_t *qh = blk + offsetof(block_q6_K, qh);
        const int8_t *sc = (const int8_t *)(blk + offsetof(block_q6_K, scales));
        for (int nn = 0; nn < QK_K; nn += 128) {
#pragma omp simd
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void rs_dequantize(resid_dtype t, const void *src, float *dst, int64_t n_elems) {
    const uint8_t *s = src;
    switch (t) {
    case RESID_DTYPE_F32: memcpy(dst, src, (size_t)n_elems * sizeof(float)); break;
    case RESID_DTYPE_F16: dequant_f16(s, dst, n_elems); break;
    case RESID_DTYPE_BF16: dequant_bf16(s, dst, n_elems); break;
    case RESID_DTYPE_Q8_0: dequant_q8_0(s, dst, n_elems); break;
    case RESID_DTYPE_Q4_0: dequant_q4_0(s, dst, n_elems); break;
    case RESID_DTYPE_Q4_K: dequant_q4_K(s, dst, n_elems); break;
    case RESID_DTYPE_Q6_K: dequant_q6_K(s, dst, n_elems); break;
    default: break;
    }
}

/* ---------------------------------------------------------------------- */
/* Element access                                                         */
/* ---------------------------------------------------------------------- */

/* Element k (flat storage index) of a float dtype. */
static inline float float_at(const rs_tensor *t, int64_t k) {
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case RESID_DTYPE_F32: {
        float f;
        memcpy(&f, p + k * 4, 4);
        return f;
    }
    case RESID_DTYPE_F16: return f16_to_f32_fast(rd_u16(p + k * 2));
    case RESID_DTYPE_BF16: return f32_from_bits((uint32_t)rd_u16(p + k * 2) << 16);
    default: return 0.0f;
    }
}

void rs_tensor_rows(const rs_tensor *t, int64_t r0, int64_t n, float *out) {
    if (!t->transposed) {
        const size_t rb = row_bytes(t);
        rs_dequantize(t->dtype, (const uint8_t *)t->data + (size_t)r0 * rb, out,
                      n * t->n_cols);
        return;
    }
    /* stored [n_cols][n_rows]: a logical row is a strided column */
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < t->n_cols; c++)
            out[r * t->n_cols + c] = float_at(t, c * t->n_rows + r0 + r);
}

void rs_tensor_cols(const rs_tensor *t, float *out) {
    const int64_t R = t->n_rows, C = t->n_cols;
    if (t->transposed) { /* stored [n_cols][n_rows] already */
        rs_dequantize(t->dtype, t->data, out, R * C);
        return;
    }
    /* Tiles of 32 logical rows x 256 columns, dequantised then scattered
     * (cache lines, not strides). A row is whole blocks and 256 is a
     * multiple of every block size, so each chunk starts on a block. */
    enum { TILE = 32 };
    float tile[TILE * 256];
    const int64_t cw = C < 256 ? C : 256;
    const size_t rb = row_bytes(t);
    const int64_t be = rs_dtype_block_elems(t->dtype);
    for (int64_t r0 = 0; r0 < R; r0 += TILE) {
        const int64_t nr = R - r0 < TILE ? R - r0 : TILE;
        for (int64_t c0 = 0; c0 < C; c0 += cw) {
            const int64_t nc = C - c0 < cw ? C - c0 : cw;
            for (int64_t r = 0; r < nr; r++) {
                const uint8_t *row = (const uint8_t *)t->data + (size_t)(r0 + r) * rb;
                rs_dequantize(t->dtype, row + (size_t)(c0 / be) * rs_dtype_block_bytes(t->dtype),
                              tile + r * cw, nc);
            }
            for (int64_t c = 0; c < nc; c++)
                for (int64_t r = 0; r < nr; r++) out[(c0 + c) * R + r0 + r] = tile[r * cw + c];
        }
    }
}

void rs_tensor_col(const rs_tensor *t, int64_t c, float *out) {
    if (t->transposed) {
        if (t->dtype == RESID_DTYPE_F32) {
            memcpy(out, (const float *)t->data + c * t->n_rows,
                   (size_t)t->n_rows * sizeof(float));
            return;
        }
        rs_dequantize(t->dtype, (const uint8_t *)t->data +
                                    (size_t)(c * t->n_rows) * rs_dtype_block_bytes(t->dtype),
                      out, t->n_rows);
        return;
    }
    const int64_t be = rs_dtype_block_elems(t->dtype);
    if (be == 1) {
        for (int64_t r = 0; r < t->n_rows; r++) out[r] = float_at(t, r * t->n_cols + c);
        return;
    }
    /* quantised: dequantise the one block holding column c of each row */
    const size_t rb = row_bytes(t), bb = rs_dtype_block_bytes(t->dtype);
    const int64_t blk = c / be, within = c % be;
    float tmp[QK_K];
    for (int64_t r = 0; r < t->n_rows; r++) {
        rs_dequantize(t->dtype, (const uint8_t *)t->data + (size_t)r * rb + (size_t)blk * bb,
                      tmp, be);
        out[r] = tmp[within];
    }
}

float rs_tensor_get(const rs_tensor *t, int64_t r, int64_t c) {
    if (t->transposed) return float_at(t, c * t->n_rows + r);
    const int64_t be = rs_dtype_block_elems(t->dtype);
    if (be == 1) return float_at(t, r * t->n_cols + c);
    float tmp[QK_K];
    rs_dequantize(t->dtype,
                  (const uint8_t *)t->data + (size_t)r * row_bytes(t) +
                      (size_t)(c / be) * rs_dtype_block_bytes(t->dtype),
                  tmp, be);
    return tmp[c % be];
}

/* ---------------------------------------------------------------------- */
/* Matrix multiply                                                        */
/* ---------------------------------------------------------------------- */

/* Below this many multiply-adds a single thread beats waking the team. */
#define MATMUL_PAR_MIN_WORK (1 << 16)
/* Rows of a quantised matrix dequantised at once for the sgemm path; the
 * panel is also capped in bytes so wide matrices stay cache-sized. */
#define PANEL_MAX_ROWS 256
#define PANEL_MAX_FLOATS (1 << 18) /* 1 MiB */
/* Up to this many tokens, dot products beat sgemm on dequantised rows. */
#define MATMUL_DOT_MAX_T 4

/* sum_i a[i]*b[i]. Four independent 8-float accumulators (GCC/Clang
 * vector extensions: AVX registers with -march=native, SSE pairs without)
 * hide the add latency; no -ffast-math needed. */
typedef float v8f __attribute__((vector_size(32)));
/* The same vector read through a float pointer: unaligned, may alias. */
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    v8f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 += *(const v8f_u *)(a + i) * *(const v8f_u *)(b + i);
        s1 += *(const v8f_u *)(a + i + 8) * *(const v8f_u *)(b + i + 8);
        s2 += *(const v8f_u *)(a + i + 16) * *(const v8f_u *)(b + i + 16);
        s3 += *(const v8f_u *)(a + i + 24) * *(const v8f_u *)(b + i + 24);
    }
    for (; i + 8 <= n; i += 8) s0 += *(const v8f_u *)(a + i) * *(const v8f_u *)(b + i);
    s0 = (s0 + s1) + (s2 + s3);
    float s = ((s0[0] + s0[4]) + (s0[1] + s0[5])) + ((s0[2] + s0[6]) + (s0[3] + s0[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y[n_rows] = W[n_rows][n_cols] x (+ bias), W float32 row-major. Small
 * matrices stay on this thread: starting a team costs more than they do. */
static void matvec_f32(const float *w, const float *x, int64_t n_rows, int64_t n_cols,
                       float *y, const float *bias) {
    if (n_rows * n_cols < MATMUL_PAR_MIN_WORK) {
        for (int64_t r = 0; r < n_rows; r++) {
            const float v = dot_f32(w + r * n_cols, x, n_cols);
            y[r] = bias ? v + bias[r] : v;
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n_rows; r++) {
        const float v = dot_f32(w + r * n_cols, x, n_cols);
        y[r] = bias ? v + bias[r] : v;
    }
}

/* y[n_rows] = x[n_cols] · W where W is stored [n_cols][n_rows] (transposed). */
static void matvec_f32_t(const float *w, const float *x, int64_t n_rows, int64_t n_cols,
                         float *y, const float *bias) {
    for (int64_t r = 0; r < n_rows; r++) y[r] = bias ? bias[r] : 0.0f;
    for (int64_t c = 0; c < n_cols; c++) {
        const float xc = x[c];
        const float *wc = w + c * n_rows;
#pragma omp simd
        for (int64_t r = 0; r < n_rows; r++) y[r] += xc * wc[r];
    }
}

/* Fills y[T][n_rows] with bias rows (or zeros); returns the sgemm beta. */
static float init_bias(float *y, int64_t T, int64_t n_rows, const float *bias) {
    if (!bias) return 0.0f;
    for (int64_t t = 0; t < T; t++) memcpy(y + t * n_rows, bias, (size_t)n_rows * sizeof(float));
    return 1.0f;
}

/* Elements dequantised at a time by the dot path: one Q4_K/Q6_K block, or
 * eight Q8_0/Q4_0 blocks; kept on the stack. */
#define DOT_CHUNK QK_K

/* Row-major non-F32 weights, few tokens (T <= MATMUL_DOT_MAX_T): for each
 * row, dequantise DOT_CHUNK elements at a time into a stack buffer and
 * accumulate T dot products. No allocation; threads split the rows. */
static void matmul_rows_dot(const rs_tensor *w, const float *x, int64_t T, float *y,
                            const float *bias) {
    const int64_t n_rows = w->n_rows, n_cols = w->n_cols;
    const size_t rb = row_bytes(w), bb = rs_dtype_block_bytes(w->dtype);
    const int64_t be = rs_dtype_block_elems(w->dtype);
    const uint8_t *base = w->data;
    const int64_t work = n_rows * n_cols * T;
#pragma omp parallel for schedule(static) if (work >= MATMUL_PAR_MIN_WORK)
    for (int64_t r = 0; r < n_rows; r++) {
        float tmp[DOT_CHUNK];
        float acc[MATMUL_DOT_MAX_T] = {0};
        const uint8_t *row = base + (size_t)r * rb;
        for (int64_t c0 = 0; c0 < n_cols; c0 += DOT_CHUNK) {
            const int64_t nc = c0 + DOT_CHUNK <= n_cols ? DOT_CHUNK : n_cols - c0;
            rs_dequantize(w->dtype, row + (size_t)(c0 / be) * bb, tmp, nc);
            for (int64_t t = 0; t < T; t++) acc[t] += dot_f32(tmp, x + t * n_cols + c0, nc);
        }
        for (int64_t t = 0; t < T; t++) y[t * n_rows + r] = bias ? acc[t] + bias[r] : acc[t];
    }
}

/* Row-major non-F32 weights, many tokens: dequantise a panel of rows, then
 * one sgemm per panel writes the panel's columns of y. */
static void matmul_rows_panel(const rs_tensor *w, const float *x, int64_t T, float *y,
                              const float *bias) {
    const int64_t n_rows = w->n_rows, n_cols = w->n_cols;
    int64_t pr = PANEL_MAX_FLOATS / (n_cols > 0 ? n_cols : 1);
    if (pr > PANEL_MAX_ROWS) pr = PANEL_MAX_ROWS;
    if (pr < 1) pr = 1;
    if (pr > n_rows) pr = n_rows;
    float *panel = malloc((size_t)(pr * n_cols) * sizeof(float));
    if (!panel) { /* out of memory: the allocation-free route, T at a time */
        for (int64_t t0 = 0; t0 < T; t0 += MATMUL_DOT_MAX_T)
            matmul_rows_dot(w, x + t0 * n_cols,
                            T - t0 < MATMUL_DOT_MAX_T ? T - t0 : MATMUL_DOT_MAX_T,
                            y + t0 * n_rows, bias);
        return;
    }
    const float beta = init_bias(y, T, n_rows, bias);
    const size_t rb = row_bytes(w);
    const uint8_t *base = w->data;
    for (int64_t r0 = 0; r0 < n_rows; r0 += pr) {
        const int64_t nr = r0 + pr <= n_rows ? pr : n_rows - r0;
#pragma omp parallel for schedule(static) if (nr * n_cols >= MATMUL_PAR_MIN_WORK)
        for (int64_t r = 0; r < nr; r++)
            rs_dequantize(w->dtype, base + (size_t)(r0 + r) * rb, panel + r * n_cols, n_cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)nr, (int)n_cols,
                    1.0f, x, (int)n_cols, panel, (int)n_cols, beta, y + r0, (int)n_rows);
    }
    free(panel);
}

/* Transposed F16/BF16 weights (stored [n_cols][n_rows]): convert a panel of
 * stored rows (input features c0..) and accumulate x[:, c0..] · panel. */
static void matmul_t_panel(const rs_tensor *w, const float *x, int64_t T, float *y,
                           const float *bias) {
    const int64_t n_rows = w->n_rows, n_cols = w->n_cols;
    int64_t pc = PANEL_MAX_FLOATS / (n_rows > 0 ? n_rows : 1);
    if (pc > PANEL_MAX_ROWS) pc = PANEL_MAX_ROWS;
    if (pc < 1) pc = 1;
    if (pc > n_cols) pc = n_cols;
    float *panel = malloc((size_t)(pc * n_rows) * sizeof(float));
    float beta = init_bias(y, T, n_rows, bias);
    if (!panel) { /* out of memory: accumulate one stored row at a time */
        if (beta == 0.0f) memset(y, 0, (size_t)(T * n_rows) * sizeof(float));
        for (int64_t c = 0; c < n_cols; c++)
            for (int64_t r = 0; r < n_rows; r++) {
                const float v = float_at(w, c * n_rows + r);
                for (int64_t t = 0; t < T; t++) y[t * n_rows + r] += x[t * n_cols + c] * v;
            }
        return;
    }
    const size_t eb = rs_dtype_block_bytes(w->dtype);
    for (int64_t c0 = 0; c0 < n_cols; c0 += pc) {
        const int64_t nc = c0 + pc <= n_cols ? pc : n_cols - c0;
        rs_dequantize(w->dtype, (const uint8_t *)w->data + (size_t)(c0 * n_rows) * eb, panel,
                      nc * n_rows);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)n_rows, (int)nc,
                    1.0f, x + c0, (int)n_cols, panel, (int)n_rows, beta, y, (int)n_rows);
        beta = 1.0f;
    }
    free(panel);
}

void rs_matmul(const rs_tensor *w, const float *x, int64_t T, float *y,
               const float *bias) {
    const int64_t n_rows = w->n_rows, n_cols = w->n_cols;
    if (T <= 0 || n_rows <= 0) return;
    if (n_cols == 0) {
        init_bias(y, T, n_rows, bias);
        if (!bias) memset(y, 0, (size_t)(T * n_rows) * sizeof(float));
        return;
    }
    if (w->dtype == RESID_DTYPE_F32) {
        const float *wf = w->data;
        if (!w->transposed) {
            if (T == 1) {
                matvec_f32(wf, x, n_rows, n_cols, y, bias);
                return;
            }
            const float beta = init_bias(y, T, n_rows, bias);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)n_rows,
                        (int)n_cols, 1.0f, x, (int)n_cols, wf, (int)n_cols, beta, y,
                        (int)n_rows);
        } else {
            if (T == 1 && n_rows * n_cols < MATMUL_PAR_MIN_WORK) {
                matvec_f32_t(wf, x, n_rows, n_cols, y, bias);
                return;
            }
            if (T == 1) { /* y = Wt^T x, Wt stored [n_cols][n_rows] */
                const float beta = init_bias(y, 1, n_rows, bias);
                cblas_sgemv(CblasRowMajor, CblasTrans, (int)n_cols, (int)n_rows, 1.0f, wf,
                            (int)n_rows, x, 1, beta, y, 1);
                return;
            }
            const float beta = init_bias(y, T, n_rows, bias);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)n_rows,
                        (int)n_cols, 1.0f, x, (int)n_cols, wf, (int)n_rows, beta, y,
                        (int)n_rows);
        }
        return;
    }
    if (w->transposed) {
        matmul_t_panel(w, x, T, y, bias);
        return;
    }
    if (T <= MATMUL_DOT_MAX_T)
        matmul_rows_dot(w, x, T, y, bias);
    else
        matmul_rows_panel(w, x, T, y, bias);
}

void rs_matmul_ref(const rs_tensor *w, const float *x, int64_t T, float *y,
                   const float *bias) {
    const int64_t n_rows = w->n_rows, n_cols = w->n_cols;
    float *row = malloc((size_t)(n_cols > 0 ? n_cols : 1) * sizeof(float));
    if (!row) return;
    for (int64_t r = 0; r < n_rows; r++) {
        rs_tensor_rows(w, r, 1, row);
        for (int64_t t = 0; t < T; t++) {
            double s = bias ? (double)bias[r] : 0.0;
            for (int64_t c = 0; c < n_cols; c++) s += (double)x[t * n_cols + c] * (double)row[c];
            y[t * n_rows + r] = (float)s;
        }
    }
    free(row);
}
