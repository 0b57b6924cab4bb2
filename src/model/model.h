/*
 * model.h - the in-memory model: hyperparameters, one weight table per
 * layer with each tensor in its role, and the file handles that own the
 * mapped memory. Built by src/model/arch.c (the only place that knows the
 * tensor names of each format and architecture).
 */
#ifndef RESID_MODEL_H
#define RESID_MODEL_H

#include "format/gguf.h"
#include "format/llama2c.h"
#include "format/safetensors.h"
#include "tensor/tensor.h"

/* Matrices are rs_tensor views ([out][in] logically); vectors (norm gains,
 * biases) are float32 arrays, owned by the model (copied or dequantised at
 * load time, they are small). A NULL pointer means "absent" (zero bias,
 * no gate, ...). */
typedef struct rs_layer {
    const float *attn_norm_w, *attn_norm_b; /* [D] */
    const rs_tensor *wqkv;                  /* [3D][D] fused (GPT-2) or NULL */
    const float *bqkv;                      /* [3D] */
    const rs_tensor *wq, *wk, *wv;          /* [H*d_h][D], [Hkv*d_h][D] x2 */
    const float *bq, *bk, *bv;
    const rs_tensor *wo; /* [D][H*d_h]; W_O^h = columns h*d_h.. */
    const float *bo;     /* [D] */
    const float *ffn_norm_w, *ffn_norm_b; /* [D] */
    const rs_tensor *w_up;   /* [N][D]  fc1 (GPT-2) / up_proj (Llama) */
    const float *b_up;       /* [N] */
    const rs_tensor *w_gate; /* [N][D]  gate_proj, SwiGLU only */
    const rs_tensor *w_down; /* [D][N]  fc2 / down_proj: subvalue k = column k */
    const float *b_down;     /* [D] */
} rs_layer;

typedef struct rs_hparams {
    resid_arch arch;
    int32_t n_layer, d_model, n_head, n_kv_head, d_head, d_ffn, n_vocab, n_ctx;
    float norm_eps;
    float rope_theta;
    resid_rope rope;
    int32_t rope_dim; /* dimensions rotated per head (== d_head usually) */
} rs_hparams;

struct resid_model {
    resid_model_info info;
    rs_hparams hp;

    const rs_tensor *tok_embd;   /* [V][D] */
    const rs_tensor *pos_embd;   /* [n_ctx][D] (GPT-2) or NULL */
    const float *out_norm_w;     /* [D] */
    const float *out_norm_b;     /* [D] (GPT-2) or NULL */
    const rs_tensor *w_out;      /* [V][D]; == tok_embd when tied */
    rs_layer *layers;            /* [L] */

    /* Every tensor the model uses, for info and iteration. */
    int32_t n_tensors;
    const rs_tensor **tensors;
    const char **roles; /* [n_tensors], owned strings */

    /* Owned storage. */
    rs_tensor *tensor_store; /* the model's copies of the tensor views */
    float **owned_vecs;
    int32_t n_owned_vecs;
    rs_gguf *gguf;
    rs_hf *hf;
    rs_llama2c *l2c;
    resid_tokenizer *tokenizer;
    char *name;
    char *path;
};

/* Builders, one per format (src/model/arch.c). The format handle is moved
 * into the model on success. */
/* The model's logits out[V] for one final residual x[D] (final norm, then
 * the output matrix): bit for bit the row resid_forward computes for the
 * last position when only that position is captured. RESID_E_NOMEM. */
resid_status rs_final_logits(const resid_model *m, const float *x, float *out,
                             resid_error *err);

resid_status rs_model_from_gguf(resid_model *m, rs_gguf *g, resid_error *err);
resid_status rs_model_from_hf(resid_model *m, rs_hf *hf, resid_error *err);
resid_status rs_model_from_llama2c(resid_model *m, rs_llama2c *c,
                                   resid_error *err);

#endif
