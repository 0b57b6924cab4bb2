/*
 * test_intervene.c - interventions (src/analysis/intervene.c) against
 * independent references:
 *   - parameter zeroing: the model re-run with a modified copy of its
 *     weights (fc2 column, W_O columns/rows set to 0) — no hooks involved
 *   - residual identities at the last layer: removing a unit changes x_L by
 *     exactly minus its vector, rebuilt from the plain trace
 *   - zeroing all FFN neurons of a layer vs zeroing f[l]: equal up to b_2
 *   - replace with the clean prompt = corrupt, add of a zero vector: bit-exact
 *     no-ops; add at x_L: logits recomputed in double through the final norm
 *   - mean mode: means against a trace average, and the mean-ablation identity
 *   - the scoring comparison on stories260K (top-10 LPI hurts more than 10
 *     random neurons on average over 5 prompts) and the additivity check.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "testutil.h"

/* The first three of tu_fixtures: not the quantised file (the tests swap
 * float32 weights in). */
enum { N_FIXTURES = 3 };

static void check(resid_status st, const resid_error *err, const char *what) {
    if (st != RESID_OK) {
        print_error("%s: %s\n", what, err->msg);
        fail();
    }
}

/* A plain run: x_L and logits at t*. */
typedef struct run_out {
    float *x_L, *logits;
    resid_target_stats st;
    int32_t target;
} run_out;

static run_out run(resid_model *m, resid_intervention *iv, const int32_t *ids, int n,
                   int32_t target) {
    const resid_model_info *in = resid_model_get_info(m);
    run_out r = {.x_L = malloc(sizeof(float) * in->d_model),
                 .logits = malloc(sizeof(float) * in->n_vocab)};
    resid_error err;
    check(resid_intervention_run(m, iv, ids, n, target, &r.st, &r.target, r.x_L, r.logits, &err),
          &err, "run");
    return r;
}

static void run_free(run_out *r) {
    free(r->x_L), free(r->logits);
}

/* A new, empty intervention on m. */
static resid_intervention *new_iv(resid_model *m) {
    resid_intervention *iv;
    resid_error err;
    check(resid_intervention_new(m, &iv, &err), &err, "new");
    return iv;
}

/* A new intervention that zeroes u at every position. */
static resid_intervention *zeroing(resid_model *m, const resid_unit *u) {
    resid_intervention *iv = new_iv(m);
    resid_error err;
    check(resid_intervention_zero(iv, u, NULL, 0, &err), &err, "zero");
    return iv;
}

/* The status of running iv (NULL: none) on f's prompt for target, with no
 * outputs; *err its message. */
static resid_status run_status(resid_model *m, resid_intervention *iv, const tu_fixture *f,
                               int32_t target, resid_error *err) {
    resid_target_stats st;
    return resid_intervention_run(m, iv, f->ids, f->n, target, &st, NULL, NULL, NULL, err);
}

/* Runs check_one on each of the first N_FIXTURES fixtures, its model
 * open. */
static void for_each_fixture(void (*check_one)(const tu_fixture *f, resid_model *m)) {
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        const tu_fixture *f = &tu_fixtures[fi];
        resid_model *m = tu_open_model(f->path);
        check_one(f, m);
        resid_model_free(m);
    }
}

/* A float32 copy of a weight matrix with some logical columns (cols) or
 * rows set to zero; installed in place of *slot, restored by undo_copy. */
typedef struct wcopy {
    const rs_tensor **slot;
    const rs_tensor *orig;
    rs_tensor *t; /* heap: the model keeps pointing at it */
    float *buf;
} wcopy;

static wcopy zero_cols(const rs_tensor **slot, int64_t c0, int64_t nc) {
    wcopy w = {slot, *slot, malloc(sizeof(rs_tensor)), NULL};
    *w.t = **slot;
    /* a row-major float32 copy, whatever the stored dtype/layout */
    size_t n = (size_t)w.orig->n_rows * w.orig->n_cols;
    w.buf = malloc(n * sizeof(float));
    rs_tensor_rows(w.orig, 0, w.orig->n_rows, w.buf);
    for (int64_t r = 0; r < w.orig->n_rows; r++)
        for (int64_t c = c0; c < c0 + nc; c++)
            w.buf[(size_t)r * w.orig->n_cols + c] = 0.0f;
    w.t->dtype = RESID_DTYPE_F32;
    w.t->transposed = false;
    w.t->n_bytes = n * sizeof(float);
    w.t->data = w.buf;
    *slot = w.t;
    return w;
}

static void undo_copy(wcopy *w) {
    *w->slot = w->orig;
    free(w->buf);
    free(w->t);
}

static double max_diff(const float *a, const float *b, size_t n) {
    return tu_max_abs_diff(a, b, n);
}

/* ---------------------------------------------------------------------- */
/* Parameter zeroing = hook zeroing                                       */
/* ---------------------------------------------------------------------- */

/* FFN neuron (all positions) vs fc2 column zeroed; head vs W_O columns;
 * W_O-row attention neuron vs one W_O column; at the first and last layer. */
static void param_zeroing(const tu_fixture *f, resid_model *m) {
    const resid_model_info *in = resid_model_get_info(m);
    const int V = in->n_vocab, dh = in->d_head;
    int layers[2] = {0, in->n_layer - 1};
    double worst = 0;
    for (int li = 0; li < 2; li++) {
        int l = layers[li];
        for (int kind = 0; kind < 3; kind++) {
            resid_unit u;
            wcopy w;
            if (kind == 0) {
                u = (resid_unit){RESID_UNIT_FFN_NEURON, l, -1, in->d_ffn / 3, -1};
                w = zero_cols(&m->layers[l].w_down, u.index, 1);
            } else if (kind == 1) {
                u = (resid_unit){RESID_UNIT_HEAD, l, in->n_head - 1, -1, -1};
                w = zero_cols(&m->layers[l].wo, (int64_t)u.head * dh, dh);
            } else {
                u = (resid_unit){RESID_UNIT_ATTN_NEURON, l, 1, dh / 2, -1};
                w = zero_cols(&m->layers[l].wo, (int64_t)u.head * dh + u.index, 1);
            }
            run_out ref = run(m, NULL, f->ids, f->n, 0);
            undo_copy(&w);
            resid_intervention *iv = zeroing(m, &u);
            run_out got = run(m, iv, f->ids, f->n, 0);
            double d = max_diff(ref.logits, got.logits, V);
            if (d > worst) worst = d;
            if (d > 1e-5) {
                char id[64];
                resid_unit_format(&u, id, sizeof id);
                print_error("%s %s (%s): logits maxdiff %g\n", f->path, id,
                            resid_unit_kind_name(u.kind), d);
                fail();
            }
            resid_intervention_free(iv);
            run_free(&ref), run_free(&got);
        }
    }
    printf("%-28s parameter zeroing vs hooks: logits maxdiff %.3g (tol 1e-5)\n", f->path, worst);
}

static void test_param_zeroing(void **state) {
    (void)state;
    for_each_fixture(param_zeroing);
}

/* ---------------------------------------------------------------------- */
/* Residual identities at the last layer                                  */
/* ---------------------------------------------------------------------- */

/* Removing unit u of the last layer changes x_L by exactly −v(u). For
 * attention units the last FFN follows, so it is frozen at its plain
 * output (replace f[L-1] from the same prompt). */
static void last_layer_identities(const tu_fixture *f, resid_model *m) {
    const resid_model_info *in = resid_model_get_info(m);
    const int D = in->d_model, L = in->n_layer, H = in->n_head, dh = in->d_head;
    const int N = in->d_ffn, T = f->n, ts = T - 1, l = L - 1;
    const int group = H / in->n_kv_head, kvd = in->n_kv_head * dh;
    resid_trace *tr = tu_trace(m, f->ids, T, RESID_CAP_ALL, RESID_POS_ALL);
    run_out base = run(m, NULL, f->ids, T, 0);
    tu_assert_close("plain x_L vs trace", base.x_L, tr->x_in + ((size_t)L * T + ts) * D, D, 0);
    float *wo = malloc(sizeof(float) * D);
    double *v = malloc(sizeof(double) * D);
    float *want = malloc(sizeof(float) * D);
    double worst = 0;
    resid_error err;
    for (int kind = 0; kind < 5; kind++) {
        resid_unit u;
        int h = H / 2, n = dh - 1, j = T / 2, k = N / 2;
        const float *alpha = tr->attn + (((size_t)l * H + h) * T + ts) * T;
        const float *vals = tr->values + (size_t)l * T * kvd;
        memset(v, 0, sizeof(double) * D);
        switch (kind) {
        case 0: /* FFN neuron: m_k[t*] fc2_k */
            u = (resid_unit){RESID_UNIT_FFN_NEURON, l, -1, k, -1};
            check(resid_param_vector(m, RESID_PARAM_FC2, l, k, wo, &err), &err, "fc2");
            for (int d = 0; d < D; d++)
                v[d] = (double)tr->ffn_coef[((size_t)l * T + ts) * N + k] * wo[d];
            break;
        case 1: /* head: head_out[l][t*][h] */
            u = (resid_unit){RESID_UNIT_HEAD, l, h, -1, -1};
            for (int d = 0; d < D; d++)
                v[d] = tr->head_out[(((size_t)l * T + ts) * H + h) * D + d];
            break;
        case 2: /* head × source: α_{t*,j} v_j W_O^h */
        case 3: /* attention neuron: α_{t*,j} v_j[n] W_O^h[n,:] */
            u = kind == 2 ? (resid_unit){RESID_UNIT_HEAD_POS, l, h, -1, j}
                          : (resid_unit){RESID_UNIT_ATTN_NEURON, l, h, n, j};
            for (int nn = 0; nn < dh; nn++) {
                if (kind == 3 && nn != n) continue;
                check(resid_param_vector(m, RESID_PARAM_WO, l, (int64_t)h * dh + nn, wo, &err),
                      &err, "wo");
                double c = (double)alpha[j] * vals[(size_t)j * kvd + (h / group) * dh + nn];
                for (int d = 0; d < D; d++)
                    v[d] += c * wo[d];
            }
            break;
        default: /* attention layer a[l][t*] */
            u = (resid_unit){RESID_UNIT_ATTN_LAYER, l, -1, -1, -1};
            for (int d = 0; d < D; d++)
                v[d] = tr->attn_out[((size_t)l * T + ts) * D + d];
            break;
        }
        double vmax = 0;
        for (int d = 0; d < D; d++) {
            want[d] = (float)(base.x_L[d] - v[d]);
            vmax = fmax(vmax, fabs(v[d]));
        }
        resid_intervention *iv = zeroing(m, &u);
        if (kind > 0) {
            resid_unit fl = {RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
            check(resid_intervention_replace(iv, &fl, NULL, 0, &err), &err, "replace");
            check(resid_intervention_set_clean(iv, f->ids, T, &err), &err, "clean");
        }
        run_out got = run(m, iv, f->ids, T, 0);
        double dd = max_diff(got.x_L, want, D);
        double tol = 2e-5 * fmax(1.0, vmax);
        worst = fmax(worst, dd);
        char id[64];
        resid_unit_format(&u, id, sizeof id);
        if (dd > tol) {
            print_error("%s %s %s: x_L change off by %g (tol %g)\n", f->path,
                        resid_unit_kind_name(u.kind), id, dd, tol);
            fail();
        }
        resid_intervention_free(iv);
        run_free(&got);
    }
    printf("%-28s last-layer x_L identities: maxdiff %.3g\n", f->path, worst);
    free(wo), free(v), free(want);
    run_free(&base);
    resid_trace_free(tr);
}

static void test_last_layer_identities(void **state) {
    (void)state;
    for_each_fixture(last_layer_identities);
}

/* All N FFN neurons of layer l zeroed vs f[l] zeroed: f differs by b_2
 * only; Llama (no bias): bit-identical logits at every layer; GPT-2 last
 * layer: x_L(neurons) − x_L(layer) = b_2. */
static void neurons_vs_layer(const tu_fixture *f, resid_model *m) {
    const resid_model_info *in = resid_model_get_info(m);
    const int D = in->d_model, V = in->n_vocab;
    resid_error err;
    double worst = 0;
    for (int l = 0; l < in->n_layer; l++) {
        resid_intervention *a = new_iv(m);
        for (int k = 0; k < in->d_ffn; k++) {
            resid_unit u = {RESID_UNIT_FFN_NEURON, l, -1, k, -1};
            check(resid_intervention_zero(a, &u, NULL, 0, &err), &err, "zero");
        }
        resid_unit fl = {RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
        resid_intervention *b = zeroing(m, &fl);
        run_out ra = run(m, a, f->ids, f->n, 0), rb = run(m, b, f->ids, f->n, 0);
        if (!in->has_bias) {
            assert_memory_equal(ra.logits, rb.logits, sizeof(float) * V);
        } else if (l == in->n_layer - 1) {
            const float *b2 = m->layers[l].b_down;
            assert_non_null(b2);
            float *d = malloc(sizeof(float) * D);
            for (int i = 0; i < D; i++)
                d[i] = ra.x_L[i] - rb.x_L[i];
            worst = fmax(worst, max_diff(d, b2, D));
            tu_assert_close("x_L(all neurons) - x_L(fL) vs b_2", d, b2, D, 1e-5);
            free(d);
        }
        resid_intervention_free(a), resid_intervention_free(b);
        run_free(&ra), run_free(&rb);
    }
    printf("%-28s all neurons vs fL: %s (maxdiff %.3g)\n", f->path,
           in->has_bias ? "differ by b_2" : "bit-identical", worst);
}

static void test_neurons_vs_layer(void **state) {
    (void)state;
    for_each_fixture(neurons_vs_layer);
}

/* ---------------------------------------------------------------------- */
/* No-ops and steering                                                    */
/* ---------------------------------------------------------------------- */

static void replace_and_add_noops(const tu_fixture *f, resid_model *m) {
    const resid_model_info *in = resid_model_get_info(m);
    const int V = in->n_vocab, D = in->d_model, T = f->n;
    resid_error err;
    run_out base = run(m, NULL, f->ids, T, -1);
    resid_intervention *iv = new_iv(m);
    check(resid_intervention_set_clean(iv, f->ids, T, &err), &err, "clean");
    for (int l = 0; l < in->n_layer; l++) {
        resid_unit us[] = {
            {RESID_UNIT_FFN_NEURON, l, -1, 3, -1}, {RESID_UNIT_HEAD, l, 1, -1, -1},
            {RESID_UNIT_HEAD_POS, l, 0, -1, 0},    {RESID_UNIT_ATTN_NEURON, l, 0, 1, T - 2},
            {RESID_UNIT_ATTN_NEURON, l, 1, 0, -1}, {RESID_UNIT_ATTN_LAYER, l, -1, -1, -1},
            {RESID_UNIT_FFN_LAYER, l, -1, -1, -1}, {RESID_UNIT_POS, l, -1, -1, 1},
        };
        for (size_t i = 0; i < sizeof us / sizeof us[0]; i++)
            check(resid_intervention_replace(iv, &us[i], NULL, 0, &err), &err, "replace");
    }
    run_out rep = run(m, iv, f->ids, T, base.target);
    assert_memory_equal(rep.logits, base.logits, sizeof(float) * V);
    resid_intervention_free(iv);

    float *zero = calloc((size_t)D, sizeof(float));
    iv = new_iv(m);
    int32_t all[64];
    for (int t = 0; t < T; t++)
        all[t] = t;
    for (int l = 0; l <= in->n_layer; l++)
        check(resid_intervention_add(iv, l, zero, 3.0, all, T, &err), &err, "add");
    run_out add = run(m, iv, f->ids, T, base.target);
    assert_memory_equal(add.logits, base.logits, sizeof(float) * V);
    resid_intervention_free(iv);
    printf("%-28s replace(clean = corrupt) and add(0): logits bit-identical\n", f->path);
    free(zero);
    run_free(&base), run_free(&rep), run_free(&add);
}

static void test_replace_and_add_noops(void **state) {
    (void)state;
    for_each_fixture(replace_and_add_noops);
}

/* add(v) at x_L: x_L' = x_L + v exactly, logits = W_U·norm_f(x_L + v)
 * recomputed in double from the weights. */
static void add_final(const tu_fixture *f, resid_model *m) {
    const resid_model_info *in = resid_model_get_info(m);
    const int V = in->n_vocab, D = in->d_model, T = f->n;
    resid_error err;
    run_out base = run(m, NULL, f->ids, T, -1);
    float *v = malloc(sizeof(float) * D);
    uint64_t s = 42;
    for (int d = 0; d < D; d++)
        v[d] = (float)((double)(resid_splitmix64(&s) >> 11) / 9007199254740992.0 - 0.5);
    resid_intervention *iv = new_iv(m);
    check(resid_intervention_add(iv, in->n_layer, v, 2.0, NULL, 0, &err), &err, "add");
    run_out got = run(m, iv, f->ids, T, base.target);
    float *want_x = malloc(sizeof(float) * D);
    for (int d = 0; d < D; d++)
        want_x[d] = base.x_L[d] + (float)(2.0 * v[d]);
    tu_assert_close("x_L + 2v", got.x_L, want_x, D, 0);
    /* final norm in double */
    double mean = 0, var = 0;
    const bool ln = in->arch == RESID_ARCH_GPT2;
    if (ln) {
        for (int d = 0; d < D; d++)
            mean += want_x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++)
        var += (want_x[d] - mean) * (want_x[d] - mean);
    double sc = 1.0 / sqrt(var / D + in->norm_eps);
    double *y = malloc(sizeof(double) * D);
    for (int d = 0; d < D; d++)
        y[d] =
            (want_x[d] - mean) * sc * m->out_norm_w[d] + (m->out_norm_b ? m->out_norm_b[d] : 0.0);
    float *want = malloc(sizeof(float) * V);
    for (int t = 0; t < V; t++) {
        double acc = 0;
        for (int d = 0; d < D; d++)
            acc += (double)rs_tensor_get(m->w_out, t, d) * y[d];
        want[t] = (float)acc;
    }
    double dmax = max_diff(got.logits, want, V);
    printf("%-28s add(2v) at x_L: logits vs double recomputation maxdiff %.3g (tol 1e-4)\n",
           f->path, dmax);
    tu_assert_close("logits after steering", got.logits, want, V, 1e-4);
    /* and it really moved them */
    assert_true(max_diff(got.logits, base.logits, V) > 1e-3);
    resid_intervention_free(iv);
    free(v), free(want_x), free(y), free(want);
    run_free(&base), run_free(&got);
}

static void test_add_final(void **state) {
    (void)state;
    for_each_fixture(add_final);
}

/* ---------------------------------------------------------------------- */
/* Mean mode                                                              */
/* ---------------------------------------------------------------------- */

static void test_means(void **state) {
    (void)state;
    const tu_fixture *f = &tu_fixtures[0];
    resid_model *m = tu_open_model(f->path);
    const resid_model_info *in = resid_model_get_info(m);
    const int L = in->n_layer, N = in->d_ffn, D = in->d_model, H = in->n_head, dh = in->d_head;
    const int32_t p2[] = {1, 403, 407, 261, 378};
    const int32_t *prompts[] = {f->ids, p2};
    const int32_t lens[] = {f->n, 5};
    resid_unit units[] = {{RESID_UNIT_FFN_NEURON, L - 1, -1, 7, -1},
                          {RESID_UNIT_HEAD, 1, 2, -1, -1},
                          {RESID_UNIT_FFN_LAYER, 0, -1, -1, -1}};
    float *means;
    int64_t nm;
    resid_error err;
    check(resid_unit_means(m, prompts, lens, 2, units, 3, &means, &nm, &err), &err, "means");
    assert_int_equal(nm, 1 + dh + D);
    /* reference: averages of trace values over all positions */
    double r_m = 0, r_h[64] = {0}, r_f[512] = {0};
    int cnt = 0;
    for (int p = 0; p < 2; p++) {
        resid_trace *tr = tu_trace(m, prompts[p], lens[p], RESID_CAP_ALL, RESID_POS_ALL);
        int T = lens[p];
        for (int t = 0; t < T; t++) {
            r_m += tr->ffn_coef[((size_t)(L - 1) * T + t) * N + 7];
            for (int d = 0; d < D; d++)
                r_f[d] += tr->ffn_out[((size_t)0 * T + t) * D + d];
            /* head mix = Σ_j α v_j */
            for (int n = 0; n < dh; n++) {
                double acc = 0;
                for (int j = 0; j <= t; j++)
                    acc += (double)tr->attn[(((size_t)1 * H + 2) * T + t) * T + j] *
                           tr->values[((size_t)1 * T + j) * in->n_kv_head * dh +
                                      (2 / (H / in->n_kv_head)) * dh + n];
                r_h[n] += acc;
            }
            cnt++;
        }
        resid_trace_free(tr);
    }
    float ref[1 + 64 + 512];
    ref[0] = (float)(r_m / cnt);
    for (int n = 0; n < dh; n++)
        ref[1 + n] = (float)(r_h[n] / cnt);
    for (int d = 0; d < D; d++)
        ref[1 + dh + d] = (float)(r_f[d] / cnt);
    tu_assert_close("means vs trace averages", means, ref, (size_t)nm, 1e-5);

    /* mean-ablating a last-layer neuron moves x_L by (mean − m_k[t*])·fc2_k */
    resid_trace *tr = tu_trace(m, f->ids, f->n, RESID_CAP_ALL, RESID_POS_ALL);
    run_out base = run(m, NULL, f->ids, f->n, -1);
    resid_intervention *iv = new_iv(m);
    check(resid_intervention_mean(iv, &units[0], means, 1, NULL, 0, &err), &err, "mean");
    run_out got = run(m, iv, f->ids, f->n, base.target);
    float *fc2 = malloc(sizeof(float) * D), *want = malloc(sizeof(float) * D);
    check(resid_param_vector(m, RESID_PARAM_FC2, L - 1, 7, fc2, &err), &err, "fc2");
    double dm = means[0] - tr->ffn_coef[((size_t)(L - 1) * f->n + f->n - 1) * N + 7];
    for (int d = 0; d < D; d++)
        want[d] = (float)(base.x_L[d] + dm * fc2[d]);
    tu_assert_close("x_L after mean ablation", got.x_L, want, D, 1e-5);
    /* a source-position kind has no mean */
    resid_unit hp = {RESID_UNIT_HEAD_POS, 0, 0, -1, 0};
    assert_int_equal(resid_intervention_mean(iv, &hp, means, 1, NULL, 0, &err),
                     RESID_E_UNSUPPORTED);
    resid_intervention_free(iv);
    free(fc2), free(want), free(means);
    run_free(&base), run_free(&got);
    resid_trace_free(tr);
    resid_model_free(m);
}

/* ---------------------------------------------------------------------- */
/* Target statistics, random units, errors                                */
/* ---------------------------------------------------------------------- */

static void stats_random_errors(const tu_fixture *f, resid_model *m) {
    const resid_model_info *in = resid_model_get_info(m);
    resid_error err;
    run_out base = run(m, NULL, f->ids, f->n, -1);
    /* the paper-lens probability equals the explainer's, and for Llama
     * the model's */
    resid_trace *tr = tu_trace(m, f->ids, f->n, RESID_CAP_ALL, RESID_POS_ALL);
    resid_explainer *ex;
    resid_explain_opts eo = resid_explain_defaults();
    check(resid_explainer_new(m, tr, &eo, &ex, &err), &err, "explainer");
    assert_int_equal(resid_explainer_target(ex), base.target);
    double pe = resid_explainer_target_prob(ex);
    assert_true(fabs(base.st.prob - pe) <= 1e-5);
    assert_int_equal(base.st.model_rank, 0); /* argmax */
    assert_true(fabs(base.st.model_rr - 1.0) == 0);
    if (in->arch == RESID_ARCH_LLAMA) assert_true(fabs(base.st.prob - base.st.model_prob) <= 1e-5);
    resid_explainer_free(ex);
    resid_trace_free(tr);

    /* random units: deterministic, distinct, none chosen, same kinds */
    resid_unit chosen[3] = {{RESID_UNIT_FFN_NEURON, 0, -1, 1, -1},
                            {RESID_UNIT_HEAD, 0, 0, -1, -1},
                            {RESID_UNIT_ATTN_NEURON, 0, 0, 0, 0}};
    resid_unit r1[12], r2[12], r3[12];
    check(resid_random_units(m, f->n, chosen, 3, 12, 7, r1, &err), &err, "random");
    check(resid_random_units(m, f->n, chosen, 3, 12, 7, r2, &err), &err, "random");
    check(resid_random_units(m, f->n, chosen, 3, 12, 8, r3, &err), &err, "random");
    assert_memory_equal(r1, r2, sizeof r1);
    assert_memory_not_equal(r1, r3, sizeof r1);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(r1[i].kind, chosen[i % 3].kind);
        for (int c = 0; c < 3; c++)
            assert_memory_not_equal(&r1[i], &chosen[c], sizeof r1[i]);
        for (int c = 0; c < i; c++)
            assert_memory_not_equal(&r1[i], &r1[c], sizeof r1[i]);
    }
    /* too many of a kind */
    resid_unit al = {RESID_UNIT_ATTN_LAYER, 0, -1, -1, -1};
    resid_unit many[64];
    assert_int_equal(resid_random_units(m, f->n, &al, 1, in->n_layer, 1, many, &err), RESID_E_ARG);

    /* errors */
    resid_intervention *iv = new_iv(m);
    resid_unit bad = {RESID_UNIT_FFN_NEURON, in->n_layer, -1, 0, -1};
    assert_int_equal(resid_intervention_zero(iv, &bad, NULL, 0, &err), RESID_E_ARG);
    bad = (resid_unit){RESID_UNIT_FFN_NEURON, 0, -1, in->d_ffn, -1};
    assert_int_equal(resid_intervention_zero(iv, &bad, NULL, 0, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "FFN neuron"));
    bad = (resid_unit){RESID_UNIT_HEAD, 0, in->n_head, -1, -1};
    assert_int_equal(resid_intervention_zero(iv, &bad, NULL, 0, &err), RESID_E_ARG);
    float v[1] = {0};
    assert_int_equal(resid_intervention_add(iv, in->n_layer + 1, v, 1, NULL, 0, &err), RESID_E_ARG);
    /* source position beyond the prompt, checked at run time */
    resid_unit hp = {RESID_UNIT_HEAD_POS, 0, 0, -1, f->n};
    check(resid_intervention_zero(iv, &hp, NULL, 0, &err), &err, "zero");
    assert_int_equal(run_status(m, iv, f, -1, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "source position"));
    resid_intervention_free(iv);
    /* query position beyond the prompt; replace of another length */
    iv = new_iv(m);
    resid_unit ok = {RESID_UNIT_FFN_NEURON, 0, -1, 0, -1};
    int32_t far = f->n;
    check(resid_intervention_zero(iv, &ok, &far, 1, &err), &err, "zero");
    assert_int_equal(run_status(m, iv, f, -1, &err), RESID_E_ARG);
    resid_intervention_free(iv);
    iv = new_iv(m);
    check(resid_intervention_replace(iv, &ok, NULL, 0, &err), &err, "replace");
    assert_int_equal(run_status(m, iv, f, -1, &err), RESID_E_ARG); /* no clean prompt */
    check(resid_intervention_set_clean(iv, f->ids, f->n - 1, &err), &err, "clean");
    assert_int_equal(run_status(m, iv, f, -1, &err), RESID_E_ARG);
    assert_non_null(strstr(err.msg, "same length"));
    resid_intervention_free(iv);
    assert_int_equal(run_status(m, NULL, f, in->n_vocab, &err), RESID_E_ARG);
    run_free(&base);
}

static void test_stats_random_errors(void **state) {
    (void)state;
    for_each_fixture(stats_random_errors);
}

/* ---------------------------------------------------------------------- */
/* Scoring comparison and additivity                                      */
/* ---------------------------------------------------------------------- */

static const char *const story_prompts[] = {
    "Once upon a time, there was a little girl named",
    "One day, Tom went to the park with his",
    "Lily saw a big dog. The dog was very",
    "The sun was shining and the birds were",
    "Ben and his mom went to the store to buy",
};

static void compare_model(const char *path, int np, bool assert_lpi_beats_random) {
    resid_model *m = tu_open_model(path);
    double orig = 0, meth[RESID_FSCORE_COUNT] = {0}, rnd = 0;
    double orig_rr = 0, meth_rr[RESID_FSCORE_COUNT] = {0}, rnd_rr = 0;
    for (int p = 0; p < np; p++) {
        int32_t *ids, n = tu_tokenize(m, story_prompts[p], &ids);
        resid_score_compare *c;
        resid_error err;
        check(resid_compare_scores(m, ids, n, -1, 10, 1234 + p, &c, &err), &err, "compare");
        assert_int_equal(c->k, 10);
        /* the LPI top-10 are distinct FFN neurons; random ones avoid them */
        const resid_unit *lpi = c->units, *ru = c->units + RESID_FSCORE_COUNT * 10;
        for (int i = 0; i < 10; i++) {
            assert_int_equal(lpi[i].kind, RESID_UNIT_FFN_NEURON);
            for (int j = 0; j < 10; j++)
                assert_memory_not_equal(&ru[i], &lpi[j], sizeof ru[i]);
        }
        orig += c->original.model_prob, orig_rr += c->original.model_rr;
        for (int f = 0; f < RESID_FSCORE_COUNT; f++)
            meth[f] += c->method[f].model_prob, meth_rr[f] += c->method[f].model_rr;
        rnd += c->random.model_prob, rnd_rr += c->random.model_rr;
        resid_score_compare_free(c);
        free(ids);
    }
    printf("%s: Table-2 style, top-10 FFN neurons zeroed, mean over %d prompts\n", path, np);
    printf("  %-12s %8s %8s\n", "method", "MRR", "prob");
    printf("  %-12s %8.4f %8.4f\n", "original", orig_rr / np, orig / np);
    for (int f = 0; f < RESID_FSCORE_COUNT; f++)
        printf("  %-12s %8.4f %8.4f\n", resid_fscore_name((resid_fscore)f), meth_rr[f] / np,
               meth[f] / np);
    printf("  %-12s %8.4f %8.4f\n", "random", rnd_rr / np, rnd / np);
    if (assert_lpi_beats_random) {
        assert_true(meth[RESID_FSCORE_LPI] < rnd);
        assert_true(meth[RESID_FSCORE_LPI] < orig);
    }
    resid_model_free(m);
}

static void test_compare_scores(void **state) {
    (void)state;
    /* the claim is asserted on the average over 5 prompts of stories260K;
     * tiny-gpt2-stories (V = 50257, slow in Debug) is run on 2 prompts for
     * the structure and its figures are printed, not asserted (the 5-prompt
     * numbers are in the report of `resid ablate --compare-scores`) */
    compare_model("tinyllamas/stories260K.bin", 5, true);
    compare_model("tiny-gpt2-stories", 2, false);
}

/* The neuron scores against their definitions on a few neurons. */
static void test_neuron_scores(void **state) {
    (void)state;
    for (int fi = 0; fi < 2; fi++) {
        const tu_fixture *f = &tu_fixtures[fi == 0 ? 0 : 2]; /* stories260K, tiny-random-llama-2 */
        resid_model *m = tu_open_model(f->path);
        const resid_model_info *in = resid_model_get_info(m);
        const int D = in->d_model, V = in->n_vocab, N = in->d_ffn;
        const int64_t LN = (int64_t)in->n_layer * N;
        resid_trace *tr = tu_trace(m, f->ids, f->n, RESID_CAP_ALL, RESID_POS_ALL);
        resid_explainer *ex;
        resid_explain_opts eo = resid_explain_defaults();
        resid_error err;
        check(resid_explainer_new(m, tr, &eo, &ex, &err), &err, "explainer");
        const int32_t w = resid_explainer_target(ex);
        double *sc = malloc(sizeof(double) * RESID_FSCORE_COUNT * LN);
        check(resid_ffn_neuron_scores(ex, sc, &err), &err, "scores");
        float *fc2 = malloc(sizeof(float) * D), *bs = malloc(sizeof(float) * V);
        double s = resid_explainer_scale(ex);
        for (int64_t i = 0; i < LN; i += LN / 7) {
            int l = (int)(i / N), k = (int)(i % N);
            resid_unit u = {RESID_UNIT_FFN_NEURON, l, -1, k, -1};
            resid_score rs;
            check(resid_score_units(ex, &u, 1, &rs, &err), &err, "score");
            check(resid_param_vector(m, RESID_PARAM_FC2, l, k, fc2, &err), &err, "fc2");
            check(resid_lens_apply(m, RESID_LENS_PAPER, s, fc2, bs, &err), &err, "lens");
            double mk = rs.coef, nrm = 0, mx = -INFINITY, sum = 0;
            int rank = 0;
            for (int d = 0; d < D; d++)
                nrm += (double)fc2[d] * fc2[d];
            nrm = sqrt(nrm);
            for (int t = 0; t < V; t++) {
                if (bs[t] > bs[w] || (bs[t] == bs[w] && t < w)) rank++;
                mx = fmax(mx, mk * bs[t]);
            }
            for (int t = 0; t < V; t++)
                sum += exp(mk * bs[t] - mx);
            double want[RESID_FSCORE_COUNT] = {
                rs.lpi,   mk * bs[w] - mx - log(sum),     rs.prob_inc, fabs(mk) * nrm, mk, -rank,
                mk * nrm, mk * (1 - 2.0 * rank / (V - 1))};
            for (int fsc = 0; fsc < RESID_FSCORE_COUNT; fsc++) {
                double got = sc[fsc * LN + i];
                double tol = 1e-4 * fmax(1, fabs(want[fsc]));
                if (fsc == RESID_FSCORE_RANK || fsc == RESID_FSCORE_COEF_RANK)
                    tol = 2.0 / V * fabs(mk) + 1e-9;
                if (fsc == RESID_FSCORE_RANK) tol = 2; /* float ties between two projections */
                if (fabs(got - want[fsc]) > tol) {
                    print_error("neuron %d_%d score %s: %g vs %g\n", l, k,
                                resid_fscore_name((resid_fscore)fsc), got, want[fsc]);
                    fail();
                }
            }
        }
        free(fc2), free(bs), free(sc);
        resid_explainer_free(ex);
        resid_trace_free(tr);
        resid_model_free(m);
    }
}

static void test_additivity(void **state) {
    (void)state;
    const char *paths[] = {"tinyllamas/stories260K.bin", "tiny-gpt2-stories"};
    for (int pi = 0; pi < 2; pi++) {
        resid_model *m = tu_open_model(paths[pi]);
        const resid_model_info *in = resid_model_get_info(m);
        const int n_story = (int)(sizeof story_prompts / sizeof story_prompts[0]);
        /* stories260K: every layer, 5 prompts; GPT-2 (V = 50257): the last
         * layer, 2 prompts (time) */
        const bool big = in->n_vocab > 4096;
        const int np = big ? 2 : n_story;
        for (int l = big ? in->n_layer - 1 : 0; l < in->n_layer; l++) {
            resid_additivity *a[8];
            for (int p = 0; p < np; p++) {
                int32_t *ids, n = tu_tokenize(m, story_prompts[p], &ids);
                resid_trace_opts o = resid_trace_defaults();
                o.capture = RESID_EXPLAIN_CAPTURE;
                o.positions = RESID_POS_LAST;
                resid_trace *tr;
                resid_error err;
                check(resid_forward(m, ids, n, &o, &tr, &err), &err, "forward");
                resid_explainer *ex;
                resid_explain_opts eo = resid_explain_defaults();
                check(resid_explainer_new(m, tr, &eo, &ex, &err), &err, "explainer");
                check(resid_additivity_new(ex, l, 0, &a[p], &err), &err, "additivity");
                assert_int_equal(a[p]->n, in->d_ffn);
                assert_true(isnan(a[p]->r_lpi) || fabs(a[p]->r_lpi) <= 1);
                /* x[0] == y[0] (one vector); the last y is LPI(f[l] − b_2),
                 * which for a bias-free model is the fL unit's LPI */
                assert_true(fabs(a[p]->sum_lpi[0] - a[p]->lpi_sum[0]) <=
                            1e-4 * fmax(1, fabs(a[p]->lpi_sum[0])));
                if (!in->has_bias) {
                    resid_unit fl = {RESID_UNIT_FFN_LAYER, l, -1, -1, -1};
                    resid_score s;
                    check(resid_score_units(ex, &fl, 1, &s, &err), &err, "score fL");
                    double y = a[p]->lpi_sum[a[p]->n - 1];
                    if (fabs(y - s.lpi) > 1e-3 * fmax(1, fabs(s.lpi))) {
                        print_error("layer %d: LPI(sum of all neurons) %g vs LPI(f) %g\n", l, y,
                                    s.lpi);
                        fail();
                    }
                }
                resid_explainer_free(ex);
                resid_trace_free(tr);
                free(ids);
            }
            resid_additivity_summary sm;
            resid_additivity_aggregate((const resid_additivity *const *)a, np, &sm);
            printf("%-28s layer %d additivity over %d prompts: LPI r %.3f (pooled %.3f) slope "
                   "%.3f | prob-inc r %.3f slope %.3f\n",
                   paths[pi], l, np, sm.mean_r_lpi, sm.pooled_r_lpi, sm.mean_slope_lpi,
                   sm.mean_r_pinc, sm.mean_slope_pinc);
            assert_true(isnan(sm.pooled_r_lpi) || fabs(sm.pooled_r_lpi) <= 1);
            for (int p = 0; p < np; p++)
                resid_additivity_free(a[p]);
        }
        resid_model_free(m);
    }
    /* the statistics themselves */
    double x[] = {1, 2, 3, 4}, y[] = {3, 5, 7, 9}, r, sl;
    resid_pearson_slope(x, y, 4, &r, &sl);
    assert_true(fabs(r - 1) < 1e-12 && fabs(sl - 2) < 1e-12);
    double yn[] = {4, 3, 2, 1};
    resid_pearson_slope(x, yn, 4, &r, &sl);
    assert_true(fabs(r + 1) < 1e-12 && fabs(sl + 1) < 1e-12);
    double yc[] = {1, 1, 1, 1};
    resid_pearson_slope(x, yc, 4, &r, &sl);
    assert_true(isnan(r) && sl == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_param_zeroing),       cmocka_unit_test(test_last_layer_identities),
        cmocka_unit_test(test_neurons_vs_layer),    cmocka_unit_test(test_replace_and_add_noops),
        cmocka_unit_test(test_add_final),           cmocka_unit_test(test_means),
        cmocka_unit_test(test_stats_random_errors), cmocka_unit_test(test_neuron_scores),
        cmocka_unit_test(test_compare_scores),      cmocka_unit_test(test_additivity),
    };
    /* TEST_FILTER=name runs one test (cmocka pattern) */
    if (getenv("TEST_FILTER")) cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
