/*
 * model.c - opening a model: detect the format, hand the file to its
 * reader, build the weight table (arch.c), attach a tokenizer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

const char *resid_arch_name(resid_arch a) {
    switch (a) {
    case RESID_ARCH_GPT2: return "gpt2";
    case RESID_ARCH_LLAMA: return "llama";
    default: return "unknown";
    }
}

const char *resid_format_name(resid_format f) {
    switch (f) {
    case RESID_FORMAT_HF: return "huggingface";
    case RESID_FORMAT_GGUF: return "gguf";
    case RESID_FORMAT_LLAMA2C: return "llama2.c";
    }
    return "unknown";
}

const char *resid_dtype_name(resid_dtype t) {
    static const char *names[RESID_DTYPE_COUNT] = {"F32",  "F16",  "BF16", "Q8_0",
                                                   "Q4_0", "Q4_K", "Q6_K"};
    return (t >= 0 && t < RESID_DTYPE_COUNT) ? names[t] : "?";
}

void resid_model_free(resid_model *m) {
    if (!m) return;
    for (int32_t i = 0; i < m->n_owned_vecs; i++) free(m->owned_vecs[i]);
    free(m->owned_vecs);
    if (m->roles)
        for (int32_t i = 0; i < m->n_tensors; i++) free((char *)m->roles[i]);
    free(m->roles);
    free(m->tensors);
    free(m->tensor_store);
    free(m->layers);
    if (m->gguf) {
        rs_gguf_close(m->gguf);
        free(m->gguf);
    }
    if (m->hf) {
        rs_hf_close(m->hf);
        free(m->hf);
    }
    if (m->l2c) {
        rs_llama2c_close(m->l2c);
        free(m->l2c);
    }
    resid_tokenizer_free(m->tokenizer);
    free(m->name);
    free(m->path);
    free(m);
}

const resid_model_info *resid_model_get_info(const resid_model *m) {
    return &m->info;
}

const resid_tokenizer *resid_model_tokenizer(const resid_model *m) {
    return m->tokenizer;
}

resid_status resid_model_tensor(const resid_model *m, int32_t i, resid_tensor_info *out,
                                resid_error *err) {
    if (i < 0 || i >= m->n_tensors)
        return rs_err(err, RESID_E_ARG, "tensor index %d out of range [0, %d)", i, m->n_tensors);
    const rs_tensor *t = m->tensors[i];
    out->name = t->name;
    out->role = m->roles[i];
    out->dtype = t->dtype;
    out->n_rows = t->n_rows;
    out->n_cols = t->n_cols;
    out->transposed = t->transposed;
    return RESID_OK;
}

static bool file_starts_with(const char *path, const char *magic, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char buf[16] = {0};
    size_t r = fread(buf, 1, n, f);
    fclose(f);
    return r == n && memcmp(buf, magic, n) == 0;
}

/* llama2.c: the tokenizer given, else tokenizer.bin or tok<V>.bin beside
 * the checkpoint. None found is not an error. */
static resid_status attach_llama2c_tokenizer(resid_model *m, resid_error *err) {
    char *dir = rs_path_dirname(m->path);
    if (!dir) return rs_err(err, RESID_E_NOMEM, "out of memory");
    char name[64];
    snprintf(name, sizeof name, "tok%d.bin", m->hp.n_vocab);
    const char *cands[] = {"tokenizer.bin", name};
    resid_status st = RESID_OK;
    for (size_t i = 0; i < 2 && !m->tokenizer; i++) {
        char *p = rs_path_join(dir, cands[i]);
        if (p && rs_path_exists(p)) {
            resid_tokenizer *t = NULL;
            /* tokenizer.bin of another model (vocab size mismatch) is skipped */
            if (rs_tokenizer_from_llama2c(p, &t, err) == RESID_OK) {
                if (resid_tokenizer_n_vocab(t) == m->hp.n_vocab)
                    m->tokenizer = t;
                else
                    resid_tokenizer_free(t);
            }
        }
        free(p);
    }
    free(dir);
    return st;
}

static resid_status attach_hf_tokenizer(resid_model *m, resid_error *err) {
    char *tj = rs_path_join(m->path, "tokenizer.json");
    char *vj = rs_path_join(m->path, "vocab.json");
    char *mg = rs_path_join(m->path, "merges.txt");
    resid_status st = RESID_OK;
    if (tj && rs_path_exists(tj))
        st = rs_tokenizer_from_hf_json(tj, &m->tokenizer, err);
    else if (vj && mg && rs_path_exists(vj) && rs_path_exists(mg))
        st = rs_tokenizer_from_vocab_merges(vj, mg, &m->tokenizer, err);
    free(tj);
    free(vj);
    free(mg);
    return st;
}

resid_status resid_model_open(const char *path, const resid_open_opts *opts, resid_model **out,
                              resid_error *err) {
    *out = NULL;
    if (!path || !*path) return rs_err(err, RESID_E_ARG, "no model path given");
    if (!rs_path_exists(path))
        return rs_err(err, RESID_E_IO, "%s: no such file or directory", path);
    resid_model *m = calloc(1, sizeof *m);
    if (!m) return rs_err(err, RESID_E_NOMEM, "out of memory");
    m->path = rs_strdup(path);
    resid_status st;
    if (rs_path_is_dir(path)) {
        m->hf = calloc(1, sizeof *m->hf);
        if (!m->hf) {
            st = rs_err(err, RESID_E_NOMEM, "out of memory");
            goto fail;
        }
        if ((st = rs_hf_open(path, m->hf, err))) {
            free(m->hf);
            m->hf = NULL;
            goto fail;
        }
        if ((st = rs_model_from_hf(m, m->hf, err))) goto fail;
        if (!(opts && opts->tokenizer_path) && (st = attach_hf_tokenizer(m, err))) goto fail;
    } else if (file_starts_with(path, "GGUF", 4)) {
        m->gguf = calloc(1, sizeof *m->gguf);
        if (!m->gguf) {
            st = rs_err(err, RESID_E_NOMEM, "out of memory");
            goto fail;
        }
        if ((st = rs_gguf_open(path, m->gguf, err))) {
            free(m->gguf);
            m->gguf = NULL;
            goto fail;
        }
        if ((st = rs_model_from_gguf(m, m->gguf, err))) goto fail;
        if (!(opts && opts->tokenizer_path) && rs_gguf_find(m->gguf, "tokenizer.ggml.model") &&
            (st = rs_tokenizer_from_gguf(m->gguf, &m->tokenizer, err)))
            goto fail;
    } else {
        m->l2c = calloc(1, sizeof *m->l2c);
        if (!m->l2c) {
            st = rs_err(err, RESID_E_NOMEM, "out of memory");
            goto fail;
        }
        if ((st = rs_llama2c_open(path, m->l2c, err))) {
            free(m->l2c);
            m->l2c = NULL;
            goto fail;
        }
        if ((st = rs_model_from_llama2c(m, m->l2c, err))) goto fail;
        if (!(opts && opts->tokenizer_path) && (st = attach_llama2c_tokenizer(m, err))) goto fail;
    }
    if (opts && opts->tokenizer_path) {
        if ((st = resid_tokenizer_open(opts->tokenizer_path, &m->tokenizer, err))) goto fail;
    }
    if (m->tokenizer && resid_tokenizer_n_vocab(m->tokenizer) > m->hp.n_vocab) {
        st = rs_err(err, RESID_E_FORMAT,
                    "%s: the tokenizer has %d tokens but the model's vocabulary is %d", path,
                    resid_tokenizer_n_vocab(m->tokenizer), m->hp.n_vocab);
        goto fail;
    }
    if (!m->name) {
        const char *base = strrchr(path, '/');
        m->name = rs_strdup(base && base[1] ? base + 1 : path);
    }
    m->info.name = m->name;
    m->info.path = m->path;
    *out = m;
    return RESID_OK;
fail:
    resid_model_free(m);
    return st;
}
