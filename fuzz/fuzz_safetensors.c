/*
 * fuzz_safetensors.c - a safetensors file: the 8-byte header length, the
 * JSON header, the tensor table; then the first row of every kept tensor.
 */
#include "fuzz_common.h"

#include "format/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rs_safetensors st;
    resid_error err;
    if (rs_st_parse(data, size, "fuzz.safetensors", &st, &err) != RESID_OK) return 0;
    for (int64_t i = 0; i < st.n_tensors; i++) {
        const rs_tensor *t = &st.tensors[i];
        if ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->n_bytes > data + size)
            abort();
        size_t nb;
        if (!rs_dtype_nbytes(t->dtype, t->n_rows, t->n_cols, &nb) || nb != t->n_bytes) abort();
        fz_touch_first_row(t);
    }
    rs_st_close(&st);
    return 0;
}
