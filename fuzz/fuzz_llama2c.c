/*
 * fuzz_llama2c.c - a llama2.c checkpoint (v0 header or v1 "ak42"): header
 * checks, the size check against the file, the tensor table; then the model
 * builder, every tensor's first row and a 2-token forward pass.
 */
#include "fuzz_common.h"

#include "format/llama2c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rs_llama2c c;
    resid_error err;
    if (rs_llama2c_parse(data, size, "fuzz.bin", &c, &err) != RESID_OK) return 0;
    for (int64_t i = 0; i < c.n_tensors; i++) {
        const rs_tensor *t = &c.tensors[i];
        if ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->n_bytes > data + size)
            abort();
        fz_touch_first_row(t);
    }
    resid_model *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->path = strdup("fuzz.bin");
    if (rs_model_from_llama2c(m, &c, &err) == RESID_OK) fz_exercise_model(m);
    resid_model_free(m); /* m->l2c is NULL: c stays ours */
    rs_llama2c_close(&c);
    return 0;
}
