/*
 * llama2c.h - llama2.c ".bin" checkpoints (legacy v0 float32 format):
 * a 7-int header, then the weights in a fixed order. The loader exposes the
 * weights as tensors named the GGUF way (token_embd, blk.N.attn_q, ...), so
 * the model builder maps them with the GGUF table.
 */
#ifndef RESID_FORMAT_LLAMA2C_H
#define RESID_FORMAT_LLAMA2C_H

#include "core/util.h"
#include "tensor/tensor.h"

typedef struct rs_llama2c_config {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    bool shared_classifier; /* vocab_size > 0 in the header */
} rs_llama2c_config;

typedef struct rs_llama2c {
    rs_mapped map;
    rs_llama2c_config cfg;
    int64_t n_tensors;
    rs_tensor *tensors; /* GGUF-style names, owned here */
} rs_llama2c;

resid_status rs_llama2c_open(const char *path, rs_llama2c *c, resid_error *err);
resid_status rs_llama2c_parse(const uint8_t *data, size_t size,
                              const char *label, rs_llama2c *c,
                              resid_error *err);
void rs_llama2c_close(rs_llama2c *c);

#endif
