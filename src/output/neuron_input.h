/*
 * neuron_input.h - what an FFN neuron reads: its input keys and the
 * coefficient it would take on each token's embedding alone (for
 * `resid neuron`). Internal (src/), used by the CLI.
 */
#ifndef RESID_OUTPUT_NEURON_INPUT_H
#define RESID_OUTPUT_NEURON_INPUT_H

#include "resid.h"

/* The norms of FFN neuron (layer, k)'s input rows: the raw up/fc1 row w_up,
 * the key K = γ_2 ⊙ w_up the residual is dotted with (METHOD.md §5.1), and
 * for SwiGLU the same for the gate row (else NAN); and the fc1 bias (GPT-2,
 * else 0). */
typedef struct rs_neuron_keys {
    double up_norm, up_key_norm;
    double gate_norm, gate_key_norm;
    double up_bias;
} rs_neuron_keys;

resid_status rs_neuron_keys_get(const resid_model *m, int32_t layer, int32_t k, rs_neuron_keys *out,
                                resid_error *err);

/* The direct-path activation of FFN neuron (layer, k) for every token t:
 * the coefficient m_k it would take if its input x_mid were the token's
 * embedding alone, e_t (no position embedding, no earlier layer):
 *   GPT-2  m = gelu(LN_2(e_t)·fc1_k + b_1[k])
 *   Llama  m = SiLU(RMS_post(e_t)·gate_k) · (RMS_post(e_t)·up_k)
 * coef[V] receives m; up_pre[V] / gate_pre[V] (either may be NULL) the
 * pre-activations (gate_pre is NAN for GPT-2). RESID_E_ARG for an id out of
 * range (the message names the limit), RESID_E_NOMEM. */
resid_status rs_neuron_embed_coef(const resid_model *m, int32_t layer, int32_t k, float *coef,
                                  float *up_pre, float *gate_pre, resid_error *err);

#endif
