/*
 * neuron_input.c - an FFN neuron's input side: key norms and its activation
 * on each token embedding alone (see neuron_input.h).
 */
#include "output/neuron_input.h"

#include <math.h>
#include <stdlib.h>

#include "core/util.h"
#include "model/model.h"

static resid_status check_ids(const resid_model *m, int32_t layer, int32_t k, resid_error *err) {
    const rs_hparams *hp = &m->hp;
    if (layer < 0 || layer >= hp->n_layer)
        return rs_err(err, RESID_E_ARG, "FFN neuron %d_%d: layer %d out of range [0, %d)", layer, k,
                      layer, hp->n_layer);
    if (k < 0 || k >= hp->d_ffn)
        return rs_err(err, RESID_E_ARG, "FFN neuron %d_%d: neuron %d out of range [0, %d)", layer,
                      k, k, hp->d_ffn);
    return RESID_OK;
}

/* ‖w‖ and ‖γ ⊙ w‖ of a row w[D] (γ NULL: 1). */
static void norms(const float *w, const float *gamma, int32_t D, double *raw, double *key) {
    double a = 0, b = 0;
    for (int32_t d = 0; d < D; d++) {
        double g = gamma ? gamma[d] : 1.0;
        a += (double)w[d] * w[d];
        b += (g * w[d]) * (g * w[d]);
    }
    *raw = sqrt(a);
    *key = sqrt(b);
}

resid_status rs_neuron_keys_get(const resid_model *m, int32_t layer, int32_t k, rs_neuron_keys *out,
                                resid_error *err) {
    resid_status st = check_ids(m, layer, k, err);
    if (st) return st;
    const int32_t D = m->hp.d_model;
    const rs_layer *ly = &m->layers[layer];
    float *w = malloc((size_t)D * sizeof *w);
    if (!w) return rs_err(err, RESID_E_NOMEM, "neuron keys: out of memory");
    *out = (rs_neuron_keys){NAN, NAN, NAN, NAN, 0};
    st = resid_param_vector(m, RESID_PARAM_FC1, layer, k, w, err);
    if (!st) norms(w, ly->ffn_norm_w, D, &out->up_norm, &out->up_key_norm);
    if (!st && ly->w_gate) {
        st = resid_param_vector(m, RESID_PARAM_GATE, layer, k, w, err);
        if (!st) norms(w, ly->ffn_norm_w, D, &out->gate_norm, &out->gate_key_norm);
    }
    if (ly->b_up) out->up_bias = ly->b_up[k];
    free(w);
    return st;
}

static float gelu_tanh(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2/π) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

static float silu(float x) {
    return x / (1.0f + expf(-x));
}

enum { ROWS = 256 }; /* embedding rows read per block */

resid_status rs_neuron_embed_coef(const resid_model *m, int32_t layer, int32_t k, float *coef,
                                  float *up_pre, float *gate_pre, resid_error *err) {
    resid_status st = check_ids(m, layer, k, err);
    if (st) return st;
    const rs_hparams *hp = &m->hp;
    const int32_t D = hp->d_model, V = hp->n_vocab;
    const rs_layer *ly = &m->layers[layer];
    const bool gpt2 = hp->arch == RESID_ARCH_GPT2, gated = ly->w_gate != NULL;
    float *wu = malloc((size_t)D * sizeof *wu);
    float *wg = malloc((size_t)D * sizeof *wg);
    float *e = malloc((size_t)ROWS * D * sizeof *e);
    if (!wu || !wg || !e) {
        st = rs_err(err, RESID_E_NOMEM, "neuron input: out of memory (D=%d)", D);
        goto done;
    }
    if ((st = resid_param_vector(m, RESID_PARAM_FC1, layer, k, wu, err))) goto done;
    if (gated && (st = resid_param_vector(m, RESID_PARAM_GATE, layer, k, wg, err))) goto done;
    const double bias = ly->b_up ? ly->b_up[k] : 0.0;
    for (int32_t t0 = 0; t0 < V; t0 += ROWS) {
        const int32_t n = V - t0 < ROWS ? V - t0 : ROWS;
        rs_tensor_rows(m->tok_embd, t0, n, e);
        for (int32_t i = 0; i < n; i++) {
            const float *x = e + (size_t)i * D;
            double mean = 0, ss = 0;
            if (gpt2) {
                for (int32_t d = 0; d < D; d++)
                    mean += x[d];
                mean /= D;
            }
            for (int32_t d = 0; d < D; d++)
                ss += (x[d] - mean) * (x[d] - mean);
            const double inv = 1.0 / sqrt(ss / D + (double)hp->norm_eps);
            double su = bias, sg = 0;
            for (int32_t d = 0; d < D; d++) {
                double h = (x[d] - mean) * inv * (ly->ffn_norm_w ? ly->ffn_norm_w[d] : 1.0f) +
                           (ly->ffn_norm_b ? ly->ffn_norm_b[d] : 0.0f);
                su += h * wu[d];
                if (gated) sg += h * wg[d];
            }
            const int32_t t = t0 + i;
            if (up_pre) up_pre[t] = (float)su;
            if (gate_pre) gate_pre[t] = gated ? (float)sg : NAN;
            coef[t] = gated ? silu((float)sg) * (float)su
                            : (gpt2 ? gelu_tanh((float)su) : (float)fmax(su, 0.0));
        }
    }
done:
    free(wu), free(wg), free(e);
    return st;
}
