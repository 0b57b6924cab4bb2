/*
 * fuzz_common.h - helpers shared by the libFuzzer targets in fuzz/: where
 * the fixture models are, a private temporary directory for targets whose
 * entry point takes a path, and a sink that keeps reads from being
 * optimised away.
 */
#ifndef RESID_FUZZ_COMMON_H
#define RESID_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "resid.h"
#include "model/model.h"
#include "tensor/tensor.h"

#ifndef RESID_MODELS_DEFAULT
#define RESID_MODELS_DEFAULT "../shared/models"
#endif

/* $RESID_MODELS/rel, malloc'd. */
static inline char *fz_model_path(const char *rel) {
    const char *dir = getenv("RESID_MODELS");
    if (!dir || !*dir) dir = RESID_MODELS_DEFAULT;
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", dir, rel);
    return p;
}

/* A per-process temporary directory (removed at exit); `name` inside it. */
static char fz_dir[256];
static void fz_cleanup(void) {
    if (fz_dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir);
        if (system(cmd) != 0) { /* best effort */
        }
    }
}
static inline const char *fz_temp_path(const char *name) {
    static char path[512];
    if (!fz_dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fz_dir, sizeof fz_dir, "%s/resid-fuzz-XXXXXX", base);
        if (!mkdtemp(fz_dir)) abort();
        atexit(fz_cleanup);
    }
    snprintf(path, sizeof path, "%s/%s", fz_dir, name);
    return path;
}

/* Writes data to the temporary file `name`; returns its path. */
static inline const char *fz_write_temp(const char *name, const uint8_t *data, size_t size) {
    const char *path = fz_temp_path(name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* Every value read goes here, so the reads cannot be optimised away. */
static volatile float fz_sink;

/* Reads the first row of a tensor as a loader would (rs_tensor_rows), when
 * it has one and the row is of a sane size. */
static inline void fz_touch_first_row(const rs_tensor *t) {
    if (t->n_rows < 1 || t->n_cols < 1 || t->n_cols > (1 << 24)) return;
    float *row = malloc((size_t)t->n_cols * sizeof(float));
    if (!row) abort();
    rs_tensor_rows(t, 0, 1, row);
    float s = 0;
    for (int64_t i = 0; i < t->n_cols; i++) s += row[i];
    fz_sink = s;
    free(row);
}

/* Encodes a fixed text with a freshly loaded tokenizer and decodes it back,
 * token by token and as a whole: what `resid tokenize` does. */
static inline void fz_exercise_tokenizer(const resid_tokenizer *t) {
    static const char text[] = "Hello world! <s> caf\xC3\xA9 \xF0\x9F\xA6\x99 \n\t 123";
    resid_encode_opts eo = resid_encode_defaults(t);
    for (int special = 0; special < 2; special++) {
        eo.parse_special = special;
        int32_t *ids = NULL, n = 0;
        resid_error err;
        if (resid_tokenize(t, text, -1, &eo, &ids, &n, &err) == RESID_OK) {
            int32_t prev = -1;
            for (int32_t i = 0; i < n; i++) {
                size_t len;
                const char *b = resid_token_bytes(t, prev, ids[i], &len);
                if (!b) abort(); /* an id the tokenizer made must decode */
                (void)resid_token_piece(t, ids[i]);
                prev = ids[i];
            }
            char *back = NULL;
            size_t blen;
            if (resid_detokenize(t, ids, n, &back, &blen, &err) == RESID_OK) free(back);
        }
        free(ids);
    }
    int32_t V = resid_tokenizer_n_vocab(t);
    size_t len;
    for (int32_t id = 0; id < V && id < 4096; id++) (void)resid_token_bytes(t, -1, id, &len);
    (void)resid_token_bytes(t, -1, V, &len);
    (void)resid_token_bytes(t, -1, -1, &len);
}

/* What opening a model goes on to touch: every tensor's first row, the
 * info table, and a 2-token forward pass (when the trace is small). */
static inline void fz_exercise_model(resid_model *m) {
    for (int32_t i = 0; i < m->n_tensors; i++) {
        fz_touch_first_row(m->tensors[i]);
        resid_tensor_info ti;
        resid_error err;
        if (resid_model_tensor(m, i, &ti, &err) != RESID_OK) abort();
    }
    const resid_model_info *in = resid_model_get_info(m);
    if (in->n_vocab < 1) abort();
    int32_t toks[2] = {0, in->n_vocab - 1};
    int32_t T = in->n_ctx >= 2 ? 2 : 1;
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_CAP_ALL;
    if (resid_trace_bytes(m, T, &to) > ((size_t)64 << 20)) return;
    /* the forward pass costs about n_params * T; keep each input fast */
    if (in->n_params > ((int64_t)8 << 20)) return;
    resid_trace *tr = NULL;
    resid_error err;
    if (resid_forward(m, toks, T, &to, &tr, &err) == RESID_OK) {
        fz_sink = tr->logits ? tr->logits[0] : 0;
        resid_trace_free(tr);
    }
}

#endif
