/*
 * fuzz_gguf.c - GGUF header, metadata (every value type, arrays of strings
 * element by element), tensor infos; then what a loader does next: the
 * first row of every tensor, the tokenizer from tokenizer.ggml.*, and the
 * model builder with a 2-token forward pass.
 */
#include "fuzz_common.h"

#include "format/gguf.h"
#include "tokenizer/tokenizer.h"

static void touch_kvs(const rs_gguf *g) {
    for (int64_t i = 0; i < g->n_kv; i++) {
        const rs_gguf_kv *kv = &g->kv[i];
        if (rs_gguf_find(g, kv->key) == NULL) abort();
        int64_t iv;
        float fv;
        bool bv;
        const char *s;
        uint64_t len;
        (void)rs_gguf_get_i64(g, kv->key, &iv);
        (void)rs_gguf_get_f32(g, kv->key, &fv);
        (void)rs_gguf_get_bool(g, kv->key, &bv);
        if (rs_gguf_get_str(g, kv->key, &s, &len) && len) fz_sink = (float)(uint8_t)s[len - 1];
        if (kv->type != RS_GGUF_ARRAY) continue;
        for (uint64_t j = 0; j < kv->arr_n; j++) {
            if (rs_gguf_arr_str(kv, j, &s, &len)) {
                if (len) fz_sink = (float)(uint8_t)s[0] + (float)(uint8_t)s[len - 1];
            } else if (rs_gguf_arr_f32(kv, j, &fv)) {
                fz_sink = fv;
                (void)rs_gguf_arr_i64(kv, j, &iv);
            } else if (kv->arr_type != RS_GGUF_ARRAY && kv->arr_type != RS_GGUF_BOOL &&
                       kv->arr_type <= RS_GGUF_FLOAT64) {
                abort(); /* a scalar or string element the getters refuse */
            }
        }
        /* out of range must be refused */
        if (rs_gguf_arr_str(kv, kv->arr_n, &s, &len) || rs_gguf_arr_f32(kv, kv->arr_n, &fv))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rs_gguf g;
    resid_error err;
    if (rs_gguf_parse(data, size, "fuzz.gguf", &g, &err) != RESID_OK) return 0;
    touch_kvs(&g);
    for (int64_t i = 0; i < g.n_tensors; i++) {
        const rs_tensor *t = &g.tensors[i];
        if (rs_gguf_tensor(&g, t->name) != t) abort(); /* names are unique */
        if ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->n_bytes > data + size)
            abort();
        fz_touch_first_row(t);
    }
    if (rs_gguf_find(&g, "tokenizer.ggml.model")) {
        resid_tokenizer *t = NULL;
        if (rs_tokenizer_from_gguf(&g, &t, &err) == RESID_OK) {
            fz_exercise_tokenizer(t);
            resid_tokenizer_free(t);
        }
    }
    resid_model *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->path = strdup("fuzz.gguf");
    if (rs_model_from_gguf(m, &g, &err) == RESID_OK) fz_exercise_model(m);
    resid_model_free(m); /* m->gguf is NULL: g stays ours */
    rs_gguf_close(&g);
    return 0;
}
