/*
 * fuzz_tokenizer_file.c - a tokenizer file as resid_tokenizer_open() sees
 * it: tokenizer.json (HF BPE / SentencePiece-style), or anything else, which
 * is tried as a llama2.c tokenizer.bin. The bytes go to a temporary file
 * (the loaders take a path). A tokenizer that loads then encodes and decodes
 * a fixed text.
 */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0; /* rs_map_file refuses empty files */
    const char *path = fz_write_temp("tokenizer.json", data, size);
    resid_tokenizer *t = NULL;
    resid_error err;
    if (resid_tokenizer_open(path, &t, &err) == RESID_OK) {
        fz_exercise_tokenizer(t);
        resid_tokenizer_free(t);
    }
    return 0;
}
