/*
 * lens.c - reading vectors in vocabulary space (METHOD.md §2.2) and the
 * explainer's per-context precomputation (§3.1, §10).
 *
 * The paper's lens is the final norm frozen at x_L's scale s and made
 * linear: bs(v) = W_U·(γ ⊙ centre(v))/s. Every context x the units are
 * added to gets log p(·|x), p(w|x) and the Jensen bound vector g here, once,
 * so that scoring a unit costs one projection row plus one pass over V.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "analysis/analysis.h"
#include "core/util.h"

/* ---------------------------------------------------------------------- */
/* Names                                                                  */
/* ---------------------------------------------------------------------- */

const char *resid_lens_name(resid_lens lens) {
    switch (lens) {
    case RESID_LENS_PAPER: return "paper";
    case RESID_LENS_EXACT: return "exact";
    case RESID_LENS_LOGIT: return "logit-lens";
    }
    return "?";
}

resid_status resid_lens_parse(const char *s, resid_lens *out, resid_error *err) {
    static const resid_lens all[] = {RESID_LENS_PAPER, RESID_LENS_EXACT, RESID_LENS_LOGIT};
    for (size_t i = 0; s && i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, resid_lens_name(all[i])) == 0) {
            *out = all[i];
            return RESID_OK;
        }
    if (s && strcmp(s, "logit") == 0) {
        *out = RESID_LENS_LOGIT;
        return RESID_OK;
    }
    return rs_err(err, RESID_E_ARG, "lens '%s': expected paper, exact or logit-lens",
                  s ? s : "(null)");
}

resid_explain_opts resid_explain_defaults(void) {
    resid_explain_opts o = {RESID_LENS_PAPER, -1, -1, NULL};
    return o;
}

/* ---------------------------------------------------------------------- */
/* Kernels                                                                */
/* ---------------------------------------------------------------------- */

double rs_dot(const float *a, const float *b, int64_t n) {
    /* four independent sums in a fixed order: the adds pipeline */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    double s = (s0 + s1) + (s2 + s3);
    for (; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

void rs_lensmap(const resid_explainer *e, const float *v, float *y) {
    const int D = e->D;
    double mean = 0;
    if (e->centre) {
        for (int d = 0; d < D; d++) mean += v[d];
        mean /= D;
    }
    const double inv = 1.0 / e->s;
    for (int d = 0; d < D; d++) y[d] = (float)((double)e->gamma[d] * (v[d] - mean) * inv);
}

void rs_project(resid_explainer *e, const float *y, int n, float *pad, float *c) {
    const int D = e->D, V = e->V;
    memcpy(pad, y, (size_t)n * D * sizeof(float));
    if (n < RS_PROJ_ROWS)
        memset(pad + (size_t)n * D, 0, (size_t)(RS_PROJ_ROWS - n) * D * sizeof(float));
    /* The output is written for all RS_PROJ_ROWS rows only when c has room;
     * callers pass c[RS_PROJ_ROWS][V]. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, RS_PROJ_ROWS, V, D, 1.0f, pad, D,
                e->wu, D, 0.0f, c, V);
    e->n_proj += n;
}

/* ---------------------------------------------------------------------- */
/* Log-sum-exp (the exact scores') and the kernel choice it shares with   */
/* the canonical projection (canon.c)                                     */
/* ---------------------------------------------------------------------- */

static int g_avx2 = -1; /* 1: AVX2+FMA kernels; set once (idempotent race) */

static bool use_avx2(void) {
    int v = __atomic_load_n(&g_avx2, __ATOMIC_RELAXED);
    if (v < 0) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        v = 0;
#endif
        __atomic_store_n(&g_avx2, v, __ATOMIC_RELAXED);
    }
    return v == 1;
}

bool rs_kernels_avx2(void) { return use_avx2(); }

void rs_kernels_set_generic(bool generic) {
    __atomic_store_n(&g_avx2, generic ? 0 : -1, __ATOMIC_RELAXED);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* exp(x) for x <= 0 (Cephes expf: Cody–Waite reduction, degree-5
 * polynomial; <= 2 ulp), deterministic. Below -87.3 it returns 0 or a tiny
 * value. n = round(x·log2 e) comes from adding 1.5·2^23, which leaves n in
 * the low mantissa bits: they are shifted into 2^n's exponent field. */
RS_AVX2 __attribute__((always_inline)) static inline __m256 exp8_avx2(__m256 x) {
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
    const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
    const __m256 fx = _mm256_sub_ps(t, magic);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    __m256 x2 = _mm256_mul_ps(x, x);
    p = _mm256_fmadd_ps(p, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23),
                                       _mm256_set1_epi32(127 << 23));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* max_t z_t, z_t = fma(κ, c_t, lp_t) */
RS_AVX2 static float lse_max_avx2(const float *lp, const float *c, float kappa, int V) {
    const __m256 k8 = _mm256_set1_ps(kappa);
    const int V8 = V / 8 * 8;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int t = 0; t < V8; t += 8)
        mx = _mm256_max_ps(mx, _mm256_fmadd_ps(k8, _mm256_loadu_ps(c + t), _mm256_loadu_ps(lp + t)));
    float l[8];
    _mm256_storeu_ps(l, mx);
    float M = -INFINITY;
    for (int q = 0; q < 8; q++) M = l[q] > M ? l[q] : M;
    for (int t = V8; t < V; t++) {
        float z = __builtin_fmaf(kappa, c[t], lp[t]);
        M = z > M ? z : M;
    }
    return M;
}

/* The 8 lanes of a float vector added into two double vectors. */
#define LSE_ADD_PD(s0, s1, v)                                                \
    do {                                                                     \
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));  \
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))); \
    } while (0)

/* Σ_t exp(z_t − M), z_t = fma(κ, c_t, lp_t) (M finite). Over a block of
 * 128 tokens, each lane of two float accumulators sums 8 terms and the two
 * are added (a term passes through at most 8 roundings: ~5e-7 of the sum);
 * the blocks are summed in double. */
RS_AVX2 static double lse_sum_avx2(const float *lp, const float *c, float kappa, int V, float M) {
    const __m256 k8 = _mm256_set1_ps(kappa);
    const int V8 = V / 8 * 8;
    const __m256 m8 = _mm256_set1_ps(M);
#define LSE_TERM(t) \
    exp8_avx2(_mm256_sub_ps(_mm256_fmadd_ps(k8, _mm256_loadu_ps(c + (t)), _mm256_loadu_ps(lp + (t))), m8))
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    int t = 0;
    for (; t + 128 <= V8; t += 128) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int u = t; u < t + 128; u += 16) {
            a0 = _mm256_add_ps(a0, LSE_TERM(u));
            a1 = _mm256_add_ps(a1, LSE_TERM(u + 8));
        }
        LSE_ADD_PD(s0, s1, _mm256_add_ps(a0, a1));
    }
    for (; t < V8; t += 8) LSE_ADD_PD(s0, s1, LSE_TERM(t));
#undef LSE_TERM
    if (V8 < V) {
        float zt[8];
        for (int q = 0; q < 8; q++)
            zt[q] = V8 + q < V ? __builtin_fmaf(kappa, c[V8 + q], lp[V8 + q]) - M : -INFINITY;
        __m256 ex = exp8_avx2(_mm256_loadu_ps(zt));
        /* lanes past the end: exactly 0 */
        ex = _mm256_and_ps(ex, _mm256_cmp_ps(_mm256_loadu_ps(zt), _mm256_set1_ps(-INFINITY),
                                             _CMP_NEQ_OQ));
        LSE_ADD_PD(s0, s1, ex);
    }
    double d[8];
    _mm256_storeu_pd(d, s0);
    _mm256_storeu_pd(d + 4, s1);
    return ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
}
#undef LSE_ADD_PD

/* y = exp(x) for x <= 0, 8 at a time (the tail padded with -inf -> 0) */
RS_AVX2 static void exp_array_avx2(const float *x, float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8_avx2(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float t[8];
        for (int q = 0; q < 8; q++) t[q] = i + q < n ? x[i + q] : 0.0f;
        _mm256_storeu_ps(t, exp8_avx2(_mm256_loadu_ps(t)));
        for (int q = 0; i + q < n; q++) y[i + q] = t[q];
    }
}
#else
#define lse_max_avx2(lp, c, k, V) 0.0f
#define lse_sum_avx2(lp, c, k, V, M) 0.0
#endif

RS_HOT static float lse_max_generic(const float *lp, const float *c, float kappa, int V) {
    float M = -INFINITY;
    for (int t = 0; t < V; t++) {
        float z = lp[t] + kappa * c[t];
        if (z > M) M = z;
    }
    return M;
}

RS_HOT static double lse_sum_generic(const float *lp, const float *c, float kappa, int V,
                                     float M) {
    double sum = 0;
    for (int t = 0; t < V; t++) sum += expf(lp[t] + kappa * c[t] - M);
    return sum;
}

/* log Σ_t exp(z_t), z_t = lp_t + κ c_t, shifted by M = max_t z_t: two
 * passes, the largest term exactly e^0. */
static double lse_exact_shift(const float *lp, const float *c, float kappa, int V) {
    const bool v = use_avx2();
    const float M = v ? lse_max_avx2(lp, c, kappa, V) : lse_max_generic(lp, c, kappa, V);
    if (!isfinite(M)) return M; /* NaN or ±inf input: propagate */
    return (double)M + log(v ? lse_sum_avx2(lp, c, kappa, V, M) : lse_sum_generic(lp, c, kappa, V, M));
}

/* Sums below this (the largest term under e^-41.6·V⁻¹) would leave the
 * leading terms near float's underflow: take the exact shift instead. */
#define LSE_MIN_SUM 0x1p-60

double rs_lse_shift(const resid_explainer *e, const rs_context *cx, const float *c,
                    float kappa, float cmax, float cmin) {
    /* One pass, shifted by a bound of max_t z_t when c's range is known:
     * M' = max_t lp_t + max(κ·cmax, κ·cmin) >= max_t z_t (up to the
     * rounding of z, harmless for exp). The leading terms, e^(M − M') >=
     * sum/V, are then normal floats with full precision; terms flushed
     * below e^-87 weigh under V·e^-87/(sum/V) of the sum. */
    const float Mb = cx->lpmax + (kappa >= 0 ? kappa * cmax : kappa * cmin);
    if (isfinite(Mb)) {
        const double sum = use_avx2() ? lse_sum_avx2(cx->logp, c, kappa, e->V, Mb)
                                      : lse_sum_generic(cx->logp, c, kappa, e->V, Mb);
        if (sum >= LSE_MIN_SUM && isfinite(sum)) return (double)Mb + log(sum);
    }
    return lse_exact_shift(cx->logp, c, kappa, e->V);
}

double rs_logsumexp(const float *z, int n) {
    /* κ = 0: fma(0, z, z) = z, the same kernel as the exact scores' */
    return lse_exact_shift(z, z, 0.0f, n);
}

void rs_exp_array(const float *x, float *y, int n) {
#if defined(__x86_64__) || defined(__i386__)
    if (use_avx2()) {
        exp_array_avx2(x, y, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] = expf(x[i]);
}

double rs_lpi_from(const resid_explainer *e, const rs_context *cx, const float *c,
                   float kappa, float cmax, float cmin) {
    return (double)(kappa * c[e->target]) - (rs_lse_shift(e, cx, c, kappa, cmax, cmin) - cx->lse0);
}

/* ---- the series path: small κ·c ---------------------------------------- */

#if defined(__x86_64__) || defined(__i386__)
/* S[k] += Σ_t p_t·q_t^k, q_t = c_t·im, k = 1 .. RS_SERIES_K, for t in
 * [0, n8) (n8 a multiple of 128): each lane sums the 16 terms of a block of
 * 128 tokens in float, the blocks in double (as lse_sum_avx2). */
RS_AVX2 static void series_moments_avx2(const float *p, const float *c, float im, int n8,
                                        double *S) {
    /* terms under FLT_MIN (a tiny p_t times a high power) flush to 0,
     * which is below the sum's rounding, instead of taking the slow
     * subnormal path; the caller's MXCSR is restored */
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040); /* FTZ | DAZ */
    const __m256 s8 = _mm256_set1_ps(im);
    __m256d d[RS_SERIES_K][2];
    for (int k = 0; k < RS_SERIES_K; k++) d[k][0] = d[k][1] = _mm256_setzero_pd();
    for (int t = 0; t < n8; t += 128) {
        __m256 a[RS_SERIES_K];
        for (int k = 0; k < RS_SERIES_K; k++) a[k] = _mm256_setzero_ps();
        for (int u = t; u < t + 128; u += 8) {
            const __m256 q = _mm256_mul_ps(_mm256_loadu_ps(c + u), s8);
            __m256 r = _mm256_loadu_ps(p + u);
#pragma GCC unroll 8
            for (int k = 0; k < RS_SERIES_K; k++) {
                r = _mm256_mul_ps(r, q);
                a[k] = _mm256_add_ps(a[k], r);
            }
        }
        for (int k = 0; k < RS_SERIES_K; k++) {
            d[k][0] = _mm256_add_pd(d[k][0], _mm256_cvtps_pd(_mm256_castps256_ps128(a[k])));
            d[k][1] = _mm256_add_pd(d[k][1], _mm256_cvtps_pd(_mm256_extractf128_ps(a[k], 1)));
        }
    }
    for (int k = 0; k < RS_SERIES_K; k++) {
        double l[8];
        _mm256_storeu_pd(l, d[k][0]);
        _mm256_storeu_pd(l + 4, d[k][1]);
        S[k + 1] += ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    }
    _mm_setcsr(csr);
}
#endif

/* S[k] = Σ_t p_t·(c_t/m)^k, k = 1 .. RS_SERIES_K (m > 0). Rows whose
 * largest |c_t| is below 2^-100 go through the double loop alone: in
 * float, 1/m could overflow, and the AVX2 kernel's flush of subnormal
 * c_t to 0 would no longer be negligible. */
static void series_moments(const float *p, const float *c, float m, int V, double *S) {
    const double im = 1.0 / m;
    for (int k = 0; k <= RS_SERIES_K; k++) S[k] = 0;
    int t = 0;
#if defined(__x86_64__) || defined(__i386__)
    if (use_avx2() && m >= 0x1p-100f) {
        t = V / 128 * 128;
        series_moments_avx2(p, c, (float)im, t, S);
    }
#endif
    for (; t < V; t++) {
        const double q = (double)c[t] * im;
        double r = p[t];
        for (int k = 1; k <= RS_SERIES_K; k++) S[k] += (r *= q);
    }
}

double rs_lpi_row(const resid_explainer *e, const rs_context *cx, const float *c, float kappa,
                  float cmax, float cmin, rs_series *sr) {
    const float m = fmaxf(fabsf(cmax), fabsf(cmin));
    const double rho = fabs((double)kappa) * m; /* NaN (no range): not below */
    if (!sr || !cx->p || !(rho <= RS_SERIES_RHO))
        return rs_lpi_from(e, cx, c, kappa, cmax, cmin);
    if (rho == 0) return 0.0; /* κ = 0 or c = 0 */
    if (sr->cx != cx) {
        series_moments(cx->p, c, m, e->V, sr->s);
        sr->cx = cx;
    }
    /* Σ_t p_t e^(κ c_t) / Σ_t p_t − 1 = Σ_k x^k S_k / (k! S_0), x = κ·m */
    const double x = (double)kappa * m;
    double h = 0;
    for (int k = RS_SERIES_K; k >= 1; k--) h = x * (sr->s[k] / cx->psum + h) / k;
    return (double)(kappa * c[e->target]) - log1p(h);
}

void rs_context_series(const resid_explainer *e, rs_context *cx, float *p) {
    const int V = e->V;
    rs_exp_array(cx->logp, p, V);
    double s = 0;
    for (int t = 0; t < V; t++) s += p[t];
    cx->p = p;
    cx->psum = s;
    /* the base of the direct path: its log-sum-exp at κ = 0 */
    cx->lse0 = rs_lse_shift(e, cx, cx->logp, 0.0f, 0.0f, 0.0f);
}

void rs_minmax(const float *c, int n, float *mx, float *mn) {
    float a = -INFINITY, b = INFINITY;
#pragma omp simd reduction(max : a) reduction(min : b)
    for (int t = 0; t < n; t++) {
        a = c[t] > a ? c[t] : a;
        b = c[t] < b ? c[t] : b;
    }
    *mx = a, *mn = b;
}

/* ---------------------------------------------------------------------- */
/* The explainer                                                          */
/* ---------------------------------------------------------------------- */

static const float *trace_row(const resid_explainer *e, const float *base, int32_t l) {
    return base + ((size_t)l * e->tr->n_cap + (size_t)e->tstar) * e->D;
}

/* x of context ci: x_in[l], x_mid[l] or x_L. */
static const float *ctx_vector(const resid_explainer *e, int ci) {
    if (ci == 2 * e->L) return trace_row(e, e->tr->x_in, e->L);
    return ci % 2 == 0 ? trace_row(e, e->tr->x_in, ci / 2)
                       : trace_row(e, e->tr->x_mid, ci / 2);
}

static resid_status check_trace(const resid_model *m, const resid_trace *tr,
                                resid_error *err) {
    const rs_hparams *hp = &m->hp;
    if (tr->n_layer != hp->n_layer || tr->d_model != hp->d_model ||
        tr->n_head != hp->n_head || tr->n_kv_head != hp->n_kv_head ||
        tr->d_head != hp->d_head || tr->d_ffn != hp->d_ffn || tr->n_vocab != hp->n_vocab)
        return rs_err(err, RESID_E_ARG, "%s: the trace was made by another model",
                      m->info.path ? m->info.path : "model");
    if (!tr->x_in || !tr->attn_out || !tr->x_mid || !tr->ffn_out || !tr->attn ||
        !tr->values || !tr->ffn_coef)
        return rs_err(err, RESID_E_ARG,
                      "trace lacks captures the explainer needs "
                      "(RESID_CAP_RESID|ATTN|VALUES|COEF)");
    if (tr->n_cap < 1 || tr->n_tokens < 1 || tr->pos_first + tr->n_cap != tr->n_tokens)
        return rs_err(err, RESID_E_ARG, "trace does not cover the last position");
    if (hp->n_kv_head < 1 || hp->n_head % hp->n_kv_head != 0 ||
        hp->n_head * hp->d_head != (int32_t)m->layers[0].wo->n_cols)
        return rs_err(err, RESID_E_UNSUPPORTED, "%s: head geometry H=%d H_kv=%d d_h=%d",
                      m->info.path ? m->info.path : "model", hp->n_head, hp->n_kv_head,
                      hp->d_head);
    return RESID_OK;
}

bool rs_explainer_unembed(resid_explainer *e, const resid_model *m, size_t vd) {
    const rs_tensor *wo = m->w_out;
    if (wo->dtype == RESID_DTYPE_F32 && !wo->transposed) {
        e->wu = wo->data;
    } else {
        if (!(e->wu_own = malloc(vd * sizeof(float)))) return false;
        rs_tensor_rows(wo, 0, m->hp.n_vocab, e->wu_own);
        e->wu = e->wu_own;
    }
    if (!(e->gamma = malloc((size_t)m->hp.d_model * sizeof(float)))) return false;
    for (int d = 0; d < m->hp.d_model; d++) e->gamma[d] = m->out_norm_w ? m->out_norm_w[d] : 1.0f;
    return true;
}

/* n bytes for a large buffer written whole: aligned to and marked for
 * transparent huge pages, so that its first touch costs a fault per 2 MB
 * instead of one per 4 KB. Freed with free(). */
static void *alloc_large(size_t n) {
    const size_t huge = (size_t)2 << 20;
    if (n < 2 * huge) return malloc(n);
    void *p;
    if (posix_memalign(&p, huge, n) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, n, MADV_HUGEPAGE); /* a hint: without it, 4 KB pages */
#endif
    return p;
}

float *rs_proj_buf(resid_explainer *e, size_t n) {
    if (n > e->proj_buf_n) {
        free(e->proj_buf);
        e->proj_buf = alloc_large(n * sizeof(float));
        e->proj_buf_n = e->proj_buf ? n : 0;
    }
    return e->proj_buf;
}

void resid_explainer_free(resid_explainer *e) {
    if (!e) return;
    free(e->proj_buf);
    free(e->ctx_p);
    rs_tokcache_free(e->tok);
    rs_lpimemo_free(e->memo);
    free(e->wu_own);
    free(e->gamma);
    free(e->wu_beta);
    if (e->ctx)
        for (int i = 0; i <= 2 * e->L; i++) {
            free(e->ctx[i].logp);
            free(e->ctx[i].g);
        }
    free(e->ctx);
    free(e->gw);
    free(e->gc);
    for (int pass = 0; pass < 2; pass++) {
        rs_dirstats *ds = pass ? e->attn_dirs : e->ffn_dirs;
        if (!ds) continue;
        for (int l = 0; l < e->L; l++) {
            free(ds[l].dg), free(ds[l].dw), free(ds[l].dc), free(ds[l].nd);
            free(ds[l].pmax), free(ds[l].pmin), free(ds[l].bmax), free(ds[l].bmin);
        }
        free(ds);
    }
    if (e->wo_t)
        for (int l = 0; l < e->L; l++)
            if (e->wo_t[l] != e->m->layers[l].wo->data) free((float *)e->wo_t[l]);
    free(e->wo_t);
    free(e);
}

/* centre(γ ⊙ u)/s into g (u in double). */
static void gvec(const resid_explainer *e, const double *u, float *g) {
    const int D = e->D;
    double mean = 0;
    if (e->centre) {
        for (int d = 0; d < D; d++) mean += e->gamma[d] * u[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) g[d] = (float)((e->gamma[d] * u[d] - mean) / e->s);
}

/* pq[n][D] = P[n][V]·W_U: W_U's rows weighted by n distributions. BLAS
 * splits this short, wide product poorly across threads, so the vocabulary
 * is cut into WUT_CHUNKS fixed ranges, one single-threaded GEMM each, summed
 * in order: the same bits whatever the thread count. -1: out of memory. */
#define WUT_CHUNKS 8
static int wut_p(const resid_explainer *e, const float *P, int n, float *pq) {
    const int D = e->D, V = e->V;
    const size_t part = (size_t)n * D;
    float *acc = malloc(WUT_CHUNKS * part * sizeof(float));
    if (!acc) return -1;
#pragma omp parallel for schedule(dynamic) if ((int64_t)n * V * D >= RS_PAR_MIN_WORK)
    for (int k = 0; k < WUT_CHUNKS; k++) {
        const int t0 = (int)((int64_t)V * k / WUT_CHUNKS), t1 = (int)((int64_t)V * (k + 1) / WUT_CHUNKS);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, D, t1 - t0, 1.0f, P + t0, V,
                    e->wu + (size_t)t0 * D, D, 0.0f, acc + k * part, D);
    }
    for (size_t i = 0; i < part; i++) {
        float s = acc[i];
        for (int k = 1; k < WUT_CHUNKS; k++) s += acc[k * part + i];
        pq[i] = s;
    }
    free(acc);
    return 0;
}

resid_status resid_explainer_new(const resid_model *m, const resid_trace *tr,
                                 const resid_explain_opts *opts, resid_explainer **out,
                                 resid_error *err) {
    *out = NULL;
    resid_explain_opts o = opts ? *opts : resid_explain_defaults();
    if (!m || !tr) return rs_err(err, RESID_E_ARG, "explainer: model and trace are required");
    resid_status st = check_trace(m, tr, err);
    if (st) return st;
    if (o.lens != RESID_LENS_PAPER && o.lens != RESID_LENS_EXACT && o.lens != RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG, "explainer: unknown lens %d", (int)o.lens);
    const rs_hparams *hp = &m->hp;
    const int32_t V = hp->n_vocab, D = hp->d_model, L = hp->n_layer;
    if (o.target < -1 || o.target >= V)
        return rs_err(err, RESID_E_ARG, "target token %d out of range [0, %d)", o.target, V);
    if (o.contrast < -1 || o.contrast >= V)
        return rs_err(err, RESID_E_ARG, "contrast token %d out of range [0, %d)", o.contrast,
                      V);
    size_t vd;
    if (!rs_mul_size((size_t)V, (size_t)D, &vd) || vd > (size_t)INT32_MAX * 4)
        return rs_err(err, RESID_E_NOMEM, "unembedding %d x %d too large", V, D);

    resid_explainer *e = calloc(1, sizeof *e);
    if (!e) return rs_err(err, RESID_E_NOMEM, "explainer: out of memory");
    e->m = m, e->tr = tr, e->lens = o.lens, e->contrast = o.contrast;
    e->L = L, e->D = D, e->H = hp->n_head, e->Hkv = hp->n_kv_head, e->dh = hp->d_head;
    e->N = hp->d_ffn, e->V = V, e->T = tr->n_tokens, e->tstar = tr->n_cap - 1;
    e->centre = hp->arch == RESID_ARCH_GPT2;
    const int nctx = 2 * L + 1;
    if (o.ranges) {
        const resid_ranges *r = o.ranges;
        if (r->arch != hp->arch || r->L != L || r->D != D || r->N != hp->d_ffn ||
            r->H != hp->n_head || r->dh != hp->d_head || r->V != V) {
            free(e);
            return rs_err(err, RESID_E_ARG, "explainer: the direction ranges are of another model");
        }
        e->ranges = r;
    }

    if (!rs_explainer_unembed(e, m, vd)) goto nomem;
    e->gw = calloc((size_t)D, sizeof(float));
    e->ctx = calloc((size_t)nctx, sizeof(rs_context));
    e->ffn_dirs = calloc((size_t)L, sizeof(rs_dirstats));
    e->attn_dirs = calloc((size_t)L, sizeof(rs_dirstats));
    e->wo_t = calloc((size_t)L, sizeof(float *));
    if (!e->gw || !e->ctx || !e->ffn_dirs || !e->attn_dirs || !e->wo_t) goto nomem;

    /* The lens scale, from x_L. */
    {
        const float *xl = ctx_vector(e, 2 * L);
        double mean = 0, ss = 0;
        if (e->centre) {
            for (int d = 0; d < D; d++) mean += xl[d];
            mean /= D;
        }
        for (int d = 0; d < D; d++) ss += (xl[d] - mean) * (xl[d] - mean);
        e->s = sqrt(ss / D + (double)hp->norm_eps);
    }
    if (m->out_norm_b) {
        e->wu_beta = malloc((size_t)V * sizeof(double));
        if (!e->wu_beta) goto nomem;
    }
    {
        /* The largest row norm of W_U, for the lower bounds: float sums of
         * squares (8 lanes), each at most γ_D = D·u/(1 − D·u) below the
         * true value, so 1 + 2γ_D keeps the result an upper bound. */
        float mx = 0;
#pragma omp parallel for schedule(static) reduction(max : mx) if ((int64_t)V * D >= RS_PAR_MIN_WORK)
        for (int t = 0; t < V; t++) {
            const float *row = e->wu + (size_t)t * D;
            float ss = 0;
#pragma omp simd reduction(+ : ss)
            for (int d = 0; d < D; d++) ss += row[d] * row[d];
            if (ss > mx) mx = ss;
        }
        const double gd = D * 0x1p-24 / (1 - D * 0x1p-24);
        e->mnorm = sqrt((double)mx * (1 + 2 * gd)) * (1 + 1e-6);
    }

    /* Lens values of every context: b = W_U·lensmap(x) (+ W_U·β_f in the
     * exact lens). */
    const int nrow = nctx + (e->wu_beta ? 1 : 0); /* W_U·β_f: one more row */
    float *y = malloc((size_t)nrow * D * sizeof(float));
    float *b = malloc((size_t)nrow * V * sizeof(float));
    double *q = malloc((size_t)D * sizeof(double));
    float *pq = malloc((size_t)nctx * D * sizeof(float));
    if (!y || !b || !q || !pq) {
        free(y), free(b), free(q), free(pq);
        goto nomem;
    }
    for (int ci = 0; ci < nctx; ci++) rs_lensmap(e, ctx_vector(e, ci), y + (size_t)ci * D);
    if (e->wu_beta) memcpy(y + (size_t)nctx * D, m->out_norm_b, (size_t)D * sizeof(float));
    /* the contexts' lens values, as every exact score's projection */
    rs_project_canon(e, y, nrow, b);
    if (e->wu_beta)
        for (int t = 0; t < V; t++) e->wu_beta[t] = b[(size_t)nctx * V + t];
    bool add_beta = e->wu_beta && o.lens == RESID_LENS_EXACT;
    /* Target: the model's argmax at t* (its own logits when captured; else
     * the exact lens of x_L, which equals them). */
    if (o.target < 0) {
        const float *bl = b + (size_t)(2 * L) * V;
        const float *lg = tr->logits ? tr->logits + (size_t)e->tstar * V : NULL;
        int best = 0;
        double bv = -INFINITY;
        for (int t = 0; t < V; t++) {
            double z = lg ? lg[t] : bl[t] + (e->wu_beta ? e->wu_beta[t] : 0);
            if (z > bv) bv = z, best = t;
        }
        o.target = best;
    }
    e->target = o.target;
    for (int ci = 0; ci < nctx; ci++) {
        rs_context *cx = &e->ctx[ci];
        cx->logp = malloc((size_t)V * sizeof(float));
        cx->g = malloc((size_t)D * sizeof(float));
        if (!cx->logp || !cx->g) {
            free(y), free(b), free(q), free(pq);
            goto nomem;
        }
    }
#pragma omp parallel for schedule(dynamic) if ((int64_t)nctx * V >= RS_PAR_MIN_WORK)
    for (int ci = 0; ci < nctx; ci++) {
        rs_context *cx = &e->ctx[ci];
        float *bc = b + (size_t)ci * V;
        if (add_beta)
            for (int t = 0; t < V; t++) bc[t] = (float)((double)bc[t] + e->wu_beta[t]);
        /* the log-sum-exp of the exact scores (rs_logsumexp) */
        const double lse = rs_logsumexp(bc, V);
        for (int t = 0; t < V; t++) cx->logp[t] = (float)((double)bc[t] - lse);
        float lpmax = -INFINITY, lpmin;
        rs_minmax(cx->logp, V, &lpmax, &lpmin);
        cx->lpmax = lpmax;
        rs_context_series(e, cx, bc); /* b now holds p: cx->p, and W_Uᵀp below */
        cx->logpw = (double)cx->logp[e->target];
        cx->pw = exp(cx->logpw);
    }
    /* Jensen vectors g = centre(γ ⊙ (W_U[w] − W_Uᵀp))/s. */
    if (wut_p(e, b, nctx, pq) != 0) {
        free(y), free(b), free(q), free(pq);
        goto nomem;
    }
    const float *wrow = e->wu + (size_t)e->target * D;
    for (int ci = 0; ci < nctx; ci++) {
        for (int d = 0; d < D; d++) q[d] = (double)wrow[d] - pq[(size_t)ci * D + d];
        gvec(e, q, e->ctx[ci].g);
    }
    for (int d = 0; d < D; d++) q[d] = wrow[d];
    gvec(e, q, e->gw);
    if (e->contrast >= 0) {
        e->gc = malloc((size_t)D * sizeof(float));
        if (!e->gc) {
            free(y), free(b), free(q), free(pq);
            goto nomem;
        }
        const float *crow = e->wu + (size_t)e->contrast * D;
        for (int d = 0; d < D; d++) q[d] = crow[d];
        gvec(e, q, e->gc);
    }
    free(y), free(q), free(pq);
    e->ctx_p = b; /* the contexts' p */
    *out = e;
    return RESID_OK;
nomem:
    resid_explainer_free(e);
    return rs_err(err, RESID_E_NOMEM, "explainer: out of memory (V=%d, D=%d)", V, D);
}

int32_t resid_explainer_target(const resid_explainer *e) { return e->target; }
int32_t resid_explainer_contrast(const resid_explainer *e) { return e->contrast; }
resid_lens resid_explainer_lens(const resid_explainer *e) { return e->lens; }
double resid_explainer_scale(const resid_explainer *e) { return e->s; }
double resid_explainer_target_prob(const resid_explainer *e) {
    return e->ctx[2 * e->L].pw;
}

/* ---------------------------------------------------------------------- */
/* Layer table                                                            */
/* ---------------------------------------------------------------------- */

/* log p(w | W_U·LN_f(x)) with x normalised by its own statistics (the usual
 * logit lens, final-norm bias included). */
static double logit_lens_logp(const resid_explainer *e, const float *x, float *y,
                              float *c) {
    const int D = e->D, V = e->V;
    double mean = 0, ss = 0;
    if (e->centre) {
        for (int d = 0; d < D; d++) mean += x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++) ss += (x[d] - mean) * (x[d] - mean);
    double inv = 1.0 / sqrt(ss / D + (double)e->m->hp.norm_eps);
    for (int d = 0; d < D; d++)
        y[d] = (float)(e->gamma[d] * (x[d] - mean) * inv +
                       (e->m->out_norm_b ? e->m->out_norm_b[d] : 0));
    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, D, 1.0f, e->wu, D, y, 1, 0.0f, c, 1);
    double mx = -INFINITY;
    for (int t = 0; t < V; t++)
        if (c[t] > mx) mx = c[t];
    double sum = 0;
    for (int t = 0; t < V; t++) sum += exp(c[t] - mx);
    return c[e->target] - mx - log(sum);
}

resid_status resid_layer_table(resid_explainer *e, resid_layer_row *out, resid_error *err) {
    const int L = e->L, D = e->D, V = e->V;
    if (e->lens == RESID_LENS_LOGIT) {
        float *y = malloc((size_t)D * sizeof(float)), *c = malloc((size_t)V * sizeof(float));
        if (!y || !c) {
            free(y), free(c);
            return rs_err(err, RESID_E_NOMEM, "layer table: out of memory");
        }
        double lp_prev = logit_lens_logp(e, ctx_vector(e, 0), y, c);
        for (int l = 0; l < L; l++) {
            double lp_in = lp_prev;
            double lp_mid = logit_lens_logp(e, ctx_vector(e, 2 * l + 1), y, c);
            double lp_out = logit_lens_logp(e, ctx_vector(e, l + 1 < L ? 2 * l + 2 : 2 * L),
                                            y, c);
            out[l].attn_lpi = lp_mid - lp_in;
            out[l].ffn_lpi = lp_out - lp_mid;
            out[l].p_in = exp(lp_in);
            out[l].p_mid = exp(lp_mid);
            out[l].attn_bs_target = NAN;
            out[l].ffn_bs_target = NAN;
            lp_prev = lp_out;
        }
        free(y), free(c);
        return RESID_OK;
    }
    resid_unit *u = calloc((size_t)2 * L + 1, sizeof *u);
    resid_score *sc = malloc((size_t)2 * L * sizeof *sc);
    if (!u || !sc) {
        free(u), free(sc);
        return rs_err(err, RESID_E_NOMEM, "layer table: out of memory");
    }
    for (int l = 0; l < L; l++) {
        u[2 * l] = (resid_unit){RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
        u[2 * l + 1] = (resid_unit){RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
    }
    resid_status st = resid_score_units(e, u, 2 * L, sc, err);
    if (st == RESID_OK)
        for (int l = 0; l < L; l++) {
            out[l].attn_lpi = sc[2 * l].lpi;
            out[l].ffn_lpi = sc[2 * l + 1].lpi;
            out[l].attn_bs_target = sc[2 * l].bs_target;
            out[l].ffn_bs_target = sc[2 * l + 1].bs_target;
            out[l].p_in = e->ctx[2 * l].pw;
            out[l].p_mid = e->ctx[2 * l + 1].pw;
        }
    free(u), free(sc);
    return st;
}
