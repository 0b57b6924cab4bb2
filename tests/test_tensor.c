/*
 * test_tensor.c - dtype geometry, fp16/bf16 conversion, dequantisation of
 * hand-built blocks, element access in both layouts, and the fast matmul
 * against the naive double-accumulation reference.
 *
 * References: closed-form values (fp16 from its bit fields in double
 * arithmetic; block values from the block's encoding, written here as the
 * inverse of ggml's layout), and rs_matmul_ref. The bit-exact check of the
 * dequantisers against ggml itself is in test_gguf (sha256 of every tensor).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tensor/tensor.h"
#include "testutil.h"

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* A small deterministic generator (xorshift64*). */
static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static float rnd_unit(void) {
    return (float)(rnd() / 4294967296.0) * 2.0f - 1.0f;
}

/* ---------------------------------------------------------------------- */
/* Geometry                                                               */
/* ---------------------------------------------------------------------- */

static void test_dtype_geometry(void **state) {
    (void)state;
    struct {
        resid_dtype t;
        int64_t be;
        size_t bb;
    } g[] = {{RESID_DTYPE_F32, 1, 4},     {RESID_DTYPE_F16, 1, 2},    {RESID_DTYPE_BF16, 1, 2},
             {RESID_DTYPE_Q8_0, 32, 34},  {RESID_DTYPE_Q4_0, 32, 18}, {RESID_DTYPE_Q4_K, 256, 144},
             {RESID_DTYPE_Q6_K, 256, 210}};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
        assert_int_equal(rs_dtype_block_elems(g[i].t), g[i].be);
        assert_int_equal(rs_dtype_block_bytes(g[i].t), g[i].bb);
        size_t nb;
        assert_true(rs_dtype_nbytes(g[i].t, 3, g[i].be * 5, &nb));
        assert_int_equal(nb, 3 * 5 * g[i].bb);
        if (g[i].be > 1) assert_false(rs_dtype_nbytes(g[i].t, 3, g[i].be * 5 + 1, &nb));
        assert_false(rs_dtype_nbytes(g[i].t, -1, g[i].be, &nb));
        assert_false(rs_dtype_nbytes(g[i].t, INT64_MAX / 2, g[i].be * 1024, &nb));
    }
    size_t nb;
    assert_true(rs_dtype_nbytes(RESID_DTYPE_Q4_K, 0, 0, &nb));
    assert_int_equal(nb, 0);
}

/* ---------------------------------------------------------------------- */
/* fp16 / bf16                                                            */
/* ---------------------------------------------------------------------- */

/* fp16 value from its fields, in double arithmetic (exact). */
static double f16_closed_form(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_f16_all_values(void **state) {
    (void)state;
    uint16_t *h = malloc(65536 * 2);
    float *y = malloc(65536 * sizeof(float));
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    rs_dequantize(RESID_DTYPE_F16, h, y, 65536);
    int n_nan = 0, n_inf = 0, n_sub = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        int e = (i >> 10) & 31, m = i & 1023;
        float util = rs_f16_to_f32((uint16_t)i);
        if (e == 31 && m != 0) { /* NaN: stays NaN with its sign */
            assert_true(isnan(y[i]) && isnan(util));
            assert_int_equal(!!signbit(y[i]), i >> 15);
            n_nan++;
            continue;
        }
        if (e == 31) {
            assert_true(isinf(y[i]));
            assert_int_equal(!!signbit(y[i]), i >> 15);
            n_inf++;
        } else {
            if (e == 0 && m != 0) n_sub++;
            float want = (float)f16_closed_form((uint16_t)i);
            if (f32_bits(y[i]) != f32_bits(want)) {
                print_error("f16 0x%04x: %.9g, want %.9g\n", i, y[i], want);
                fail();
            }
        }
        assert_int_equal(f32_bits(y[i]), f32_bits(util)); /* the util helper agrees */
    }
    assert_int_equal(n_nan, 2 * 1023);
    assert_int_equal(n_inf, 2);
    assert_int_equal(n_sub, 2 * 1023);
    /* spot values written out */
    assert_true(y[0x0001] == 5.9604644775390625e-08f); /* smallest subnormal 2^-24 */
    assert_true(y[0x03FF] == 6.0975551605224609e-05f); /* largest subnormal */
    assert_true(y[0x0400] == 6.103515625e-05f);        /* smallest normal 2^-14 */
    assert_true(y[0x7BFF] == 65504.0f);
    assert_true(y[0x3C00] == 1.0f);
    assert_true(y[0xC000] == -2.0f);
    assert_true(y[0x8000] == 0.0f && signbit(y[0x8000]));
    assert_true(y[0x7C00] == INFINITY && y[0xFC00] == -INFINITY);
    free(h);
    free(y);
}

static void test_bf16_all_values(void **state) {
    (void)state;
    uint16_t *h = malloc(65536 * 2);
    float *y = malloc(65536 * sizeof(float));
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    rs_dequantize(RESID_DTYPE_BF16, h, y, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
        assert_int_equal(f32_bits(y[i]), i << 16); /* bf16 is the top half */
        assert_int_equal(f32_bits(rs_bf16_to_f32((uint16_t)i)), i << 16);
    }
    assert_true(y[0x3F80] == 1.0f);
    assert_true(y[0x0001] == ldexpf(1.0f, -133)); /* smallest subnormal */
    assert_true(y[0x7F80] == INFINITY && y[0xFF80] == -INFINITY);
    assert_true(isnan(y[0x7FC0]) && isnan(y[0xFFC1]));
    free(h);
    free(y);
}

/* ---------------------------------------------------------------------- */
/* Hand-built blocks                                                      */
/* ---------------------------------------------------------------------- */

static void test_q8_0_block(void **state) {
    (void)state;
    uint8_t b[34];
    uint16_t d = 0x3800; /* 0.5 */
    memcpy(b, &d, 2);
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)(j - 16);
    float y[32];
    rs_dequantize(RESID_DTYPE_Q8_0, b, y, 32);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == (j - 16) * 0.5f);
}

static void test_q4_0_block(void **state) {
    (void)state;
    uint8_t b[18];
    uint16_t d = 0x4000; /* 2.0 */
    memcpy(b, &d, 2);
    for (int j = 0; j < 16; j++)
        b[2 + j] = (uint8_t)((j & 15) | (((15 - j) & 15) << 4));
    float y[32];
    rs_dequantize(RESID_DTYPE_Q4_0, b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)(((j & 15) - 8) * 2));
        assert_true(y[j + 16] == (float)(((15 - j) - 8) * 2));
    }
}

/* Q4_K: 8 sub-blocks of 32, each with a 6-bit scale and min, packed into
 * 12 bytes; element values = d*sc*q - dmin*m. Encoded here from the
 * description of the format (ggml-common.h). */
static void make_q4_K(uint8_t blk[144], const int sc[8], const int mn[8], uint16_t d, uint16_t dmin,
                      int (*qfn)(int)) {
    memset(blk, 0, 144);
    memcpy(blk, &d, 2);
    memcpy(blk + 2, &dmin, 2);
    uint8_t *s = blk + 4;
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] & 63);
        s[j + 4] = (uint8_t)(mn[j] & 63);
    }
    for (int j = 4; j < 8; j++) {
        s[j + 4] = (uint8_t)((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
        s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        s[j] |= (uint8_t)((mn[j] >> 4) << 6);
    }
    uint8_t *qs = blk + 16;
    /* element e: 64-chunk k = e/64; in it, the first 32 are low nibbles of
     * qs[32k .. 32k+31], the next 32 the high nibbles */
    for (int e = 0; e < 256; e++) {
        int k = e / 64, w = e % 64, l = w % 32;
        uint8_t q = (uint8_t)qfn(e);
        if (w < 32)
            qs[32 * k + l] |= q;
        else
            qs[32 * k + l] |= (uint8_t)(q << 4);
    }
}

static int q4_pattern(int e) {
    return (e * 7 + e / 64) % 16;
}

static void test_q4_K_block(void **state) {
    (void)state;
    const int sc[8] = {1, 2, 3, 4, 17, 33, 50, 63};
    const int mn[8] = {0, 5, 10, 63, 20, 47, 31, 16};
    uint8_t blk[144];
    make_q4_K(blk, sc, mn, 0x3C00 /* 1.0 */, 0x3800 /* 0.5 */, q4_pattern);
    float y[256];
    rs_dequantize(RESID_DTYPE_Q4_K, blk, y, 256);
    for (int e = 0; e < 256; e++) {
        int j = e / 32; /* sub-block */
        double want = 1.0 * sc[j] * q4_pattern(e) - 0.5 * mn[j];
        if (y[e] != (float)want) {
            print_error("q4_K element %d: %g, want %g\n", e, y[e], want);
            fail();
        }
    }
}

/* Q6_K: element e of a 256-block: half n = e/128, w = e%128, group g =
 * w/32, l = w%32. Low 4 bits in ql[64n + l + 32(g&1)] (low nibble for g<2,
 * high for g>=2), high 2 bits in qh[32n + l] at bit 2g; scale
 * scales[8n + l/16 + 2g]; value d*scale*(q-32). */
static void make_q6_K(uint8_t blk[210], const int8_t scales[16], uint16_t d, int (*qfn)(int)) {
    memset(blk, 0, 210);
    uint8_t *ql = blk, *qh = blk + 128;
    memcpy(blk + 192, scales, 16);
    memcpy(blk + 208, &d, 2);
    for (int e = 0; e < 256; e++) {
        int n = e / 128, w = e % 128, g = w / 32, l = w % 32;
        int q = qfn(e);
        uint8_t lo = (uint8_t)(q & 15), hi = (uint8_t)(q >> 4);
        ql[64 * n + l + 32 * (g & 1)] |= g < 2 ? lo : (uint8_t)(lo << 4);
        qh[32 * n + l] |= (uint8_t)(hi << (2 * g));
    }
}

static int q6_scale_index(int e) {
    int n = e / 128, w = e % 128, g = w / 32, l = w % 32;
    return 8 * n + l / 16 + 2 * g;
}

static int q6_pattern(int e) {
    return (e * 7 + 3) % 64;
}

static void test_q6_K_block(void **state) {
    (void)state;
    int8_t scales[16];
    for (int i = 0; i < 16; i++)
        scales[i] = (int8_t)(i * 9 - 70);
    uint8_t blk[210];
    make_q6_K(blk, scales, 0x3400 /* 0.25 */, q6_pattern);
    float y[256];
    rs_dequantize(RESID_DTYPE_Q6_K, blk, y, 256);
    for (int e = 0; e < 256; e++) {
        double want = 0.25 * scales[q6_scale_index(e)] * (q6_pattern(e) - 32);
        if (y[e] != (float)want) {
            print_error("q6_K element %d: %g, want %g\n", e, y[e], want);
            fail();
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Random tensors of every dtype                                          */
/* ---------------------------------------------------------------------- */

/* A random fp16 scale in [2^-7, 2^-3] (always normal, positive). */
static uint16_t rnd_scale16(void) {
    return (uint16_t)(0x2000 + rnd() % 0x1000);
}

/* Random storage for a [n_rows][n_cols] tensor (transposed: [n_cols][n_rows])
 * with plausible magnitudes. Caller frees t->data. */
static rs_tensor make_tensor(resid_dtype dt, int64_t n_rows, int64_t n_cols, bool transposed) {
    rs_tensor t = {
        .name = "w", .dtype = dt, .n_rows = n_rows, .n_cols = n_cols, .transposed = transposed};
    size_t nb;
    assert_true(rs_dtype_nbytes(dt, n_rows, n_cols, &nb));
    uint8_t *p = malloc(nb ? nb : 1);
    const int64_t n = n_rows * n_cols;
    const int64_t nblk = n / rs_dtype_block_elems(dt);
    switch (dt) {
    case RESID_DTYPE_F32:
        for (int64_t i = 0; i < n; i++)
            ((float *)p)[i] = rnd_unit();
        break;
    case RESID_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)((rnd() & 0x8000) | (0x2000 + rnd() % 0x1C00));
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case RESID_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)((rnd() & 0x8000) | (0x3C00 + rnd() % 0x380));
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case RESID_DTYPE_Q8_0:
    case RESID_DTYPE_Q4_0: {
        size_t bb = rs_dtype_block_bytes(dt);
        for (int64_t b = 0; b < nblk; b++) {
            uint8_t *q = p + b * bb;
            uint16_t d = rnd_scale16();
            memcpy(q, &d, 2);
            for (size_t k = 2; k < bb; k++)
                q[k] = (uint8_t)rnd();
        }
        break;
    }
    case RESID_DTYPE_Q4_K:
        for (int64_t b = 0; b < nblk; b++) {
            uint8_t *q = p + b * 144;
            for (int k = 0; k < 144; k++)
                q[k] = (uint8_t)rnd();
            uint16_t d = rnd_scale16(), dm = rnd_scale16();
            memcpy(q, &d, 2);
            memcpy(q + 2, &dm, 2);
        }
        break;
    case RESID_DTYPE_Q6_K:
        for (int64_t b = 0; b < nblk; b++) {
            uint8_t *q = p + b * 210;
            for (int k = 0; k < 208; k++)
                q[k] = (uint8_t)rnd();
            uint16_t d = rnd_scale16();
            memcpy(q + 208, &d, 2);
        }
        break;
    default: fail();
    }
    t.data = p;
    t.n_bytes = nb;
    return t;
}

static const resid_dtype ALL_DTYPES[] = {RESID_DTYPE_F32,  RESID_DTYPE_F16,  RESID_DTYPE_BF16,
                                         RESID_DTYPE_Q8_0, RESID_DTYPE_Q4_0, RESID_DTYPE_Q4_K,
                                         RESID_DTYPE_Q6_K};
static const char *DT_NAME[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"};

static bool is_float_dtype(resid_dtype t) {
    return t == RESID_DTYPE_F32 || t == RESID_DTYPE_F16 || t == RESID_DTYPE_BF16;
}

/* rows / col / cols / get agree with each other for every dtype and
 * layout, at shapes below, across and not a multiple of rs_tensor_cols'
 * 32-row tiles and 256-column chunks. */
static void test_access_consistency(void **state) {
    (void)state;
    static const int64_t shapes[][2] = {{9, 512}, {45, 768}, {32, 256}};
    for (size_t k = 0; k < sizeof ALL_DTYPES / sizeof ALL_DTYPES[0]; k++) {
        for (int tr = 0; tr < 2; tr++)
            for (int sh = 0; sh < 3; sh++) {
                resid_dtype dt = ALL_DTYPES[k];
                if (tr && !is_float_dtype(dt)) continue;
                const int64_t R = shapes[sh][0], C = shapes[sh][1];
                rs_tensor t = make_tensor(dt, R, C, tr);
                float *all = malloc((size_t)(R * C) * sizeof(float));
                rs_tensor_rows(&t, 0, R, all);
                float *cols = malloc((size_t)(R * C) * sizeof(float));
                rs_tensor_cols(&t, cols);
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < C; c++)
                        if (f32_bits(cols[c * R + r]) != f32_bits(all[r * C + c]))
                            fail_msg("%s%s %lldx%lld: cols[%lld][%lld] differs", DT_NAME[k],
                                     tr ? " transposed" : "", (long long)R, (long long)C,
                                     (long long)c, (long long)r);
                free(cols);
                float *two = malloc((size_t)(2 * C) * sizeof(float));
                rs_tensor_rows(&t, 3, 2, two);
                assert_memory_equal(two, all + 3 * C, (size_t)(2 * C) * sizeof(float));
                float col[45];
                for (int64_t c = 0; c < C; c += 37) {
                    rs_tensor_col(&t, c, col);
                    for (int64_t r = 0; r < R; r++) {
                        assert_true(f32_bits(col[r]) == f32_bits(all[r * C + c]));
                        assert_true(f32_bits(rs_tensor_get(&t, r, c)) == f32_bits(all[r * C + c]));
                    }
                }
                for (int64_t i = 0; i < R * C; i++)
                    assert_true(isfinite(all[i]));
                free(two);
                free(all);
                free((void *)t.data);
            }
    }
}

/* The transposed layout holds the same logical matrix: transpose the raw
 * storage of a row-major float tensor and compare element access. */
static void test_transposed_layout(void **state) {
    (void)state;
    const resid_dtype fl[] = {RESID_DTYPE_F32, RESID_DTYPE_F16, RESID_DTYPE_BF16};
    for (int k = 0; k < 3; k++) {
        const int64_t R = 13, C = 40;
        rs_tensor a = make_tensor(fl[k], R, C, false);
        size_t es = rs_dtype_block_bytes(fl[k]);
        uint8_t *tp = malloc(a.n_bytes);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++)
                memcpy(tp + (c * R + r) * es, (const uint8_t *)a.data + (r * C + c) * es, es);
        rs_tensor b = a;
        b.data = tp;
        b.transposed = true;
        float *ra = malloc((size_t)(R * C) * sizeof(float));
        float *rb = malloc((size_t)(R * C) * sizeof(float));
        rs_tensor_rows(&a, 0, R, ra);
        rs_tensor_rows(&b, 0, R, rb);
        assert_memory_equal(ra, rb, (size_t)(R * C) * sizeof(float));
        float ca[13], cb[13];
        rs_tensor_col(&a, 7, ca);
        rs_tensor_col(&b, 7, cb);
        assert_memory_equal(ca, cb, sizeof ca);
        free(ra);
        free(rb);
        free(tp);
        free((void *)a.data);
    }
}

/* ---------------------------------------------------------------------- */
/* Matmul                                                                 */
/* ---------------------------------------------------------------------- */

/* Runs rs_matmul and rs_matmul_ref and checks
 *   |fast - ref| <= 2e-6 * (sum_c |x_c w_rc| + |bias_r|)
 * for every output; returns the worst ratio. */
static double check_matmul(const rs_tensor *w, int64_t T, bool with_bias, const char *what) {
    const int64_t R = w->n_rows, C = w->n_cols;
    float *x = malloc((size_t)(T * C) * sizeof(float));
    float *bias = malloc((size_t)R * sizeof(float));
    float *y = malloc((size_t)(T * R) * sizeof(float));
    float *yr = malloc((size_t)(T * R) * sizeof(float));
    float *wrow = malloc((size_t)C * sizeof(float));
    for (int64_t i = 0; i < T * C; i++)
        x[i] = rnd_unit();
    for (int64_t i = 0; i < R; i++)
        bias[i] = rnd_unit();
    for (int64_t i = 0; i < T * R; i++)
        y[i] = NAN; /* must all be written */
    rs_matmul(w, x, T, y, with_bias ? bias : NULL);
    rs_matmul_ref(w, x, T, yr, with_bias ? bias : NULL);
    double worst = 0, maxdiff = 0;
    for (int64_t r = 0; r < R; r++) {
        rs_tensor_rows(w, r, 1, wrow);
        for (int64_t t = 0; t < T; t++) {
            double mag = with_bias ? fabs(bias[r]) : 0;
            for (int64_t c = 0; c < C; c++)
                mag += fabs((double)x[t * C + c] * wrow[c]);
            double diff = fabs((double)y[t * R + r] - yr[t * R + r]);
            if (!(diff <= 2e-6 * mag + 1e-30)) {
                print_error("%s: y[%lld][%lld] = %.9g, ref %.9g (scale %.3g)\n", what, (long long)t,
                            (long long)r, y[t * R + r], yr[t * R + r], mag);
                fail();
            }
            if (diff > maxdiff) maxdiff = diff;
            if (mag > 0 && diff / mag > worst) worst = diff / mag;
        }
    }
    print_message("  %-34s maxdiff %.3g (rel %.2g)\n", what, maxdiff, worst);
    free(x);
    free(bias);
    free(y);
    free(yr);
    free(wrow);
    return worst;
}

static void test_matmul_all_dtypes(void **state) {
    (void)state;
    /* (rows, cols): small (one thread, one panel) and large (threads, several
     * panels, BLAS); cols multiple of 256 so every dtype applies */
    const int64_t shapes[][2] = {{70, 256}, {600, 512}};
    const int64_t Ts[] = {1, 3, 7, 17};
    int n = 0;
    for (size_t k = 0; k < sizeof ALL_DTYPES / sizeof ALL_DTYPES[0]; k++) {
        for (int tr = 0; tr < 2; tr++) {
            resid_dtype dt = ALL_DTYPES[k];
            if (tr && !is_float_dtype(dt)) continue;
            for (int s = 0; s < 2; s++) {
                rs_tensor w = make_tensor(dt, shapes[s][0], shapes[s][1], tr);
                for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                    for (int b = 0; b < 2; b++) {
                        char what[96];
                        snprintf(what, sizeof what, "%s%s %lldx%lld T=%lld%s", DT_NAME[k],
                                 tr ? " (T)" : "", (long long)w.n_rows, (long long)w.n_cols,
                                 (long long)Ts[ti], b ? " +bias" : "");
                        check_matmul(&w, Ts[ti], b, what);
                        n++;
                    }
                }
                free((void *)w.data);
            }
        }
    }
    print_message("%d matmul configurations within 2e-6 (relative to sum |x w|) of the reference\n",
                  n);
}

/* Small F32 shapes that hit the hand-written T == 1 loops, and a column
 * count that is not a multiple of anything. */
static void test_matmul_odd_shapes(void **state) {
    (void)state;
    const int64_t shapes[][2] = {{1, 1}, {5, 3}, {64, 64}, {33, 288}, {288, 768}, {1, 2000}};
    for (int s = 0; s < 6; s++)
        for (int tr = 0; tr < 2; tr++)
            for (int64_t T = 1; T <= 2; T++) {
                rs_tensor w = make_tensor(RESID_DTYPE_F32, shapes[s][0], shapes[s][1], tr);
                char what[64];
                snprintf(what, sizeof what, "f32%s %lldx%lld T=%lld", tr ? " (T)" : "",
                         (long long)shapes[s][0], (long long)shapes[s][1], (long long)T);
                check_matmul(&w, T, s % 2, what);
                free((void *)w.data);
            }
}

/* The reference itself on a hand-known case: one Q8_0 row of (j-16)/2;
 * x = 1 gives -8, x = j gives sum_j j(j-16)/2 = 1240; plus bias 0.25. */
static void test_matmul_ref_known(void **state) {
    (void)state;
    uint8_t b[34];
    uint16_t d = 0x3800;
    memcpy(b, &d, 2);
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)(j - 16);
    rs_tensor w = {.name = "q",
                   .dtype = RESID_DTYPE_Q8_0,
                   .n_rows = 1,
                   .n_cols = 32,
                   .data = b,
                   .n_bytes = 34};
    float x[64], y[2], yr[2];
    double want1 = 0, want2 = 0;
    for (int j = 0; j < 32; j++) {
        x[j] = 1.0f;
        x[32 + j] = (float)j;
        want1 += (j - 16) * 0.5;
        want2 += j * (j - 16) * 0.5;
    }
    float bias = 0.25f;
    rs_matmul_ref(&w, x, 2, yr, &bias);
    rs_matmul(&w, x, 2, y, &bias);
    assert_true(want1 == -8.0 && want2 == 1240.0);
    assert_true(yr[0] == -7.75f && yr[1] == 1240.25f);
    assert_true(y[0] == yr[0] && y[1] == yr[1]); /* small integers: exact */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_geometry),    cmocka_unit_test(test_f16_all_values),
        cmocka_unit_test(test_bf16_all_values),   cmocka_unit_test(test_q8_0_block),
        cmocka_unit_test(test_q4_0_block),        cmocka_unit_test(test_q4_K_block),
        cmocka_unit_test(test_q6_K_block),        cmocka_unit_test(test_access_consistency),
        cmocka_unit_test(test_transposed_layout), cmocka_unit_test(test_matmul_ref_known),
        cmocka_unit_test(test_matmul_all_dtypes), cmocka_unit_test(test_matmul_odd_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
