/*
 * tensor.h - one tensor-view type over mapped weights, and the few
 * operations the engine needs on it: read rows as float32, and multiply.
 *
 * A weight matrix is always described logically as [n_rows][n_cols] =
 * [out][in], like torch.nn.Linear and GGUF (ne0 = n_cols). Storage is either
 * row-major in that shape, or `transposed` ([n_cols][n_rows], GPT-2 Conv1D
 * in safetensors). Quantised tensors are always row-major, blocks along a row.
 * Vectors (norm gains, biases) have n_rows == 1.
 */
#ifndef RESID_TENSOR_H
#define RESID_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resid.h"

typedef struct rs_tensor {
    const char *name; /* owned by the loader's table */
    resid_dtype dtype;
    int64_t n_rows;
    int64_t n_cols;
    bool transposed;  /* float dtypes only */
    const void *data; /* mapped, read-only; or owned (see rs_tensor_table) */
    size_t n_bytes;
} rs_tensor;

/* Block geometry of a dtype: elements per block and bytes per block. */
int64_t rs_dtype_block_elems(resid_dtype t);
size_t rs_dtype_block_bytes(resid_dtype t);
/* Bytes of a row-major tensor with these dims; false on overflow or when
 * n_cols is not a multiple of the block size. */
bool rs_dtype_nbytes(resid_dtype t, int64_t n_rows, int64_t n_cols,
                     size_t *out);

/* Dequantises n_elems (a multiple of the block size) from src into dst,
 * block by block, bit-exact with ggml's to_float. */
void rs_dequantize(resid_dtype t, const void *src, float *dst, int64_t n_elems);

/* Logical rows r0 .. r0+n-1 as float32 into out[n][n_cols]. */
void rs_tensor_rows(const rs_tensor *t, int64_t r0, int64_t n, float *out);
/* Logical column c as float32 into out[n_rows] (e.g. a Llama down_proj
 * column, the FFN subvalue). */
void rs_tensor_col(const rs_tensor *t, int64_t c, float *out);
/* The whole matrix transposed, as float32: out[n_cols][n_rows], so row c
 * of out is logical column c (e.g. W_O^h[n,:], an FFN output row). A
 * contiguous read when the storage is already transposed (GPT-2 Conv1D),
 * else a transpose a tile of rows at a time. */
void rs_tensor_cols(const rs_tensor *t, float *out);
/* One element. Slow; for tests and small vectors. */
float rs_tensor_get(const rs_tensor *t, int64_t r, int64_t c);

/* y[T][n_rows] = x[T][n_cols] · W^T  (+ bias[n_rows] when bias != NULL).
 * Float32 weights go straight to BLAS; others are dequantised in panels of
 * rows into a scratch buffer (never the whole matrix at once). */
void rs_matmul(const rs_tensor *w, const float *x, int64_t T, float *y,
               const float *bias);

/* A naive triple-loop reference of rs_matmul in double accumulation; tests
 * compare the fast path against it. */
void rs_matmul_ref(const rs_tensor *w, const float *x, int64_t T, float *y,
                   const float *bias);

#endif
