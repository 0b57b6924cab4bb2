/*
 * llama2c.c - karpathy/llama2.c checkpoints.
 *
 * v0 ("legacy", what run.c reads): 7 int32 (dim, hidden_dim, n_layers,
 * n_heads, n_kv_heads, vocab_size, seq_len; vocab_size < 0 means the
 * classifier is not shared), then float32 weights:
 *   token_embedding_table [V][D]
 *   rms_att_weight [L][D], wq [L][D][D], wk [L][kv_dim][D],
 *   wv [L][kv_dim][D], wo [L][D][D], rms_ffn_weight [L][D],
 *   w1 [L][hidden][D], w2 [L][D][hidden], w3 [L][hidden][D]
 *   rms_final_weight [D], freq_cis_real [seq_len][head_size/2],
 *   freq_cis_imag [seq_len][head_size/2], wcls [V][D] (only if unshared).
 * v1 (export.py version1_export): u32 magic "ak42", i32 version = 1, the same
 * 7 ints, u8 shared_classifier, zero padding to 256 bytes, then float32
 *   rms_att [L][D], rms_ffn [L][D], rms_final [D], token_embedding [V][D],
 *   wq, wk, wv, wo, w1, w2, w3 (each [L][...] as above), wcls if unshared.
 * No freq_cis in v1. Version 2 (Q8_0) is not supported.
 *
 * Every weight becomes a float32 view into the map, named the GGUF way.
 */
#include "format/llama2c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L2C_MAGIC     0x616b3432u /* "ak42" as a little-endian uint32 */
#define L2C_V0_HEADER 28          /* 7 x int32 */
#define L2C_V1_HEADER 256

/* Sanity caps: far above any llama2.c model (Llama 2 70B has dim 8192,
 * hidden 28672, 80 layers, vocab 32000), low enough to reject garbage. */
#define L2C_MAX_DIM    (1 << 16)
#define L2C_MAX_HIDDEN (1 << 20)
#define L2C_MAX_LAYERS 4096
#define L2C_MAX_VOCAB  (1 << 24)
#define L2C_MAX_SEQ    (1 << 24)

static int32_t rd_i32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

/* Checks the 7 header ints; fills cfg (vocab_size made positive). */
static resid_status l2c_check_header(const char *label, const int32_t h[7], rs_llama2c_config *cfg,
                                     resid_error *err) {
    static const char *const what[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                        "n_kv_heads", "vocab_size", "seq_len"};
    static const int32_t cap[7] = {L2C_MAX_DIM, L2C_MAX_HIDDEN, L2C_MAX_LAYERS, L2C_MAX_DIM,
                                   L2C_MAX_DIM, L2C_MAX_VOCAB,  L2C_MAX_SEQ};
    for (int i = 0; i < 7; i++) {
        int64_t v = h[i];
        if (i == 5 && v < 0) v = -v; /* int64: INT32_MIN is fine here */
        if (v <= 0 || v > cap[i])
            return rs_err(err, RESID_E_FORMAT,
                          "%s: not a llama2.c checkpoint: header %s = %d is out of range "
                          "(1..%d)",
                          label, what[i], (int)h[i], (int)cap[i]);
    }
    cfg->dim = h[0];
    cfg->hidden_dim = h[1];
    cfg->n_layers = h[2];
    cfg->n_heads = h[3];
    cfg->n_kv_heads = h[4];
    cfg->shared_classifier = h[5] > 0;
    cfg->vocab_size = h[5] > 0 ? h[5] : -h[5];
    cfg->seq_len = h[6];
    if (cfg->dim % cfg->n_heads != 0)
        return rs_err(err, RESID_E_FORMAT, "%s: llama2.c header: n_heads %d does not divide dim %d",
                      label, cfg->n_heads, cfg->dim);
    if (cfg->n_kv_heads > cfg->n_heads || cfg->n_heads % cfg->n_kv_heads != 0)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: llama2.c header: n_kv_heads %d does not divide n_heads %d", label,
                      cfg->n_kv_heads, cfg->n_heads);
    if ((cfg->dim / cfg->n_heads) % 2 != 0)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: llama2.c header: head size %d (dim %d / %d heads) is odd; RoPE "
                      "needs it even",
                      label, cfg->dim / cfg->n_heads, cfg->dim, cfg->n_heads);
    return RESID_OK;
}

/* One weight in file order: its name pattern and shape. */
typedef struct l2c_item {
    const char *name; /* printf pattern with one %d (layer), or a plain name */
    bool per_layer;
    int64_t rows, cols;
    bool keep; /* exposed as a tensor (freq_cis tables are not) */
} l2c_item;

/* Adds `count` floats' worth of bytes to *off with overflow checks. */
static bool l2c_advance(size_t *off, int64_t rows, int64_t cols, int64_t times,
                        size_t *bytes_each) {
    int64_t n;
    size_t b, all;
    if (!rs_mul_i64(rows, cols, &n) || !rs_mul_size((size_t)n, sizeof(float), &b) ||
        !rs_mul_size(b, (size_t)times, &all) || !rs_add_size(*off, all, off))
        return false;
    *bytes_each = b;
    return true;
}

resid_status rs_llama2c_parse(const uint8_t *data, size_t size, const char *label, rs_llama2c *c,
                              resid_error *err) {
    memset(c, 0, sizeof *c);
    if (size < L2C_V0_HEADER)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: file is %zu bytes, too small for a llama2.c checkpoint header "
                      "(28 bytes)",
                      label, size);
    int version = 0;
    int32_t h[7];
    size_t off;
    bool v1_shared = false;
    if ((uint32_t)rd_i32(data) == L2C_MAGIC) {
        version = rd_i32(data + 4);
        if (version != 1)
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: llama2.c export version %d (magic \"ak42\") is not "
                          "supported; only the legacy v0 and the float32 v1 formats are%s",
                          label, version,
                          version == 2 ? " (v2 is int8 Q8_0: re-export with --version 0 "
                                         "or 1)"
                                       : "");
        if (size < L2C_V1_HEADER)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: file is %zu bytes, too small for a llama2.c v1 header (256 "
                          "bytes)",
                          label, size);
        for (int i = 0; i < 7; i++)
            h[i] = rd_i32(data + 8 + 4 * i);
        if (h[5] < 0)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: llama2.c v1 header has a negative vocab_size %d", label, (int)h[5]);
        uint8_t flag = data[36];
        if (flag > 1)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: llama2.c v1 header: shared_classifier byte is %u, not 0/1", label,
                          flag);
        v1_shared = flag == 1;
        off = L2C_V1_HEADER;
    } else {
        for (int i = 0; i < 7; i++)
            h[i] = rd_i32(data + 4 * i);
        off = L2C_V0_HEADER;
    }
    rs_llama2c_config cfg;
    resid_status rc = l2c_check_header(label, h, &cfg, err);
    if (rc != RESID_OK) return rc;
    if (version == 1) cfg.shared_classifier = v1_shared;
    if (((uintptr_t)(data + off)) % sizeof(float) != 0)
        return rs_err(err, RESID_E_ARG, "%s: weights are not 4-byte aligned in memory", label);

    const int64_t D = cfg.dim, F = cfg.hidden_dim, V = cfg.vocab_size;
    const int64_t head = D / cfg.n_heads;
    const int64_t kv_dim = D * cfg.n_kv_heads / cfg.n_heads;
    const l2c_item tok = {"token_embd.weight", false, V, D, true};
    const l2c_item att_norm = {"blk.%d.attn_norm.weight", true, 1, D, true};
    const l2c_item wq = {"blk.%d.attn_q.weight", true, D, D, true};
    const l2c_item wk = {"blk.%d.attn_k.weight", true, kv_dim, D, true};
    const l2c_item wv = {"blk.%d.attn_v.weight", true, kv_dim, D, true};
    const l2c_item wo = {"blk.%d.attn_output.weight", true, D, D, true};
    const l2c_item ffn_norm = {"blk.%d.ffn_norm.weight", true, 1, D, true};
    const l2c_item w1 = {"blk.%d.ffn_gate.weight", true, F, D, true};
    const l2c_item w2 = {"blk.%d.ffn_down.weight", true, D, F, true};
    const l2c_item w3 = {"blk.%d.ffn_up.weight", true, F, D, true};
    const l2c_item out_norm = {"output_norm.weight", false, 1, D, true};
    const l2c_item freq = {"freq_cis", false, cfg.seq_len, head / 2, false};
    const l2c_item wcls = {"output.weight", false, V, D, true};

    l2c_item order[16];
    int n_items = 0;
    if (version == 0) {
        const l2c_item v0[] = {tok, att_norm, wq, wk,       wv,   wo,  ffn_norm,
                               w1,  w2,       w3, out_norm, freq, freq};
        for (size_t i = 0; i < sizeof v0 / sizeof v0[0]; i++)
            order[n_items++] = v0[i];
    } else {
        const l2c_item v1[] = {att_norm, ffn_norm, out_norm, tok, wq, wk, wv, wo, w1, w2, w3};
        for (size_t i = 0; i < sizeof v1 / sizeof v1[0]; i++)
            order[n_items++] = v1[i];
    }
    if (!cfg.shared_classifier) order[n_items++] = wcls;

    /* Expected size, and the offset of each item. */
    size_t item_off[16], item_bytes[16];
    for (int i = 0; i < n_items; i++) {
        item_off[i] = off;
        if (!l2c_advance(&off, order[i].rows, order[i].cols, order[i].per_layer ? cfg.n_layers : 1,
                         &item_bytes[i]))
            return rs_err(err, RESID_E_FORMAT,
                          "%s: llama2.c header sizes overflow (dim %d, hidden %d, %d layers, "
                          "vocab %d)",
                          label, cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.vocab_size);
    }
    if (off != size)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: llama2.c v%d header says %d layers, dim %d, hidden %d, %d heads, "
                      "%d kv heads, vocab %d (%s classifier), seq_len %d = %zu bytes, but "
                      "the file has %zu bytes (%s)",
                      label, version, cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.n_heads,
                      cfg.n_kv_heads, cfg.vocab_size, cfg.shared_classifier ? "shared" : "separate",
                      cfg.seq_len, off, size,
                      size < off ? "truncated?" : "extra bytes: not a llama2.c checkpoint?");

    int64_t n_tensors = 0;
    for (int i = 0; i < n_items; i++)
        if (order[i].keep) n_tensors += order[i].per_layer ? cfg.n_layers : 1;
    c->tensors = calloc((size_t)n_tensors, sizeof *c->tensors);
    if (!c->tensors)
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory for %lld tensors", label,
                      (long long)n_tensors);
    c->cfg = cfg;
    for (int i = 0; i < n_items; i++) {
        if (!order[i].keep) continue;
        int reps = order[i].per_layer ? cfg.n_layers : 1;
        for (int l = 0; l < reps; l++) {
            char name[64];
            if (order[i].per_layer)
                snprintf(name, sizeof name, order[i].name, l);
            else
                snprintf(name, sizeof name, "%s", order[i].name);
            rs_tensor *t = &c->tensors[c->n_tensors];
            t->name = rs_strdup(name);
            if (!t->name) {
                rs_llama2c_close(c);
                return rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
            }
            c->n_tensors++;
            t->dtype = RESID_DTYPE_F32;
            t->n_rows = order[i].rows;
            t->n_cols = order[i].cols;
            t->transposed = false;
            t->n_bytes = item_bytes[i];
            t->data = data + item_off[i] + (size_t)l * item_bytes[i];
        }
    }
    return RESID_OK;
}

resid_status rs_llama2c_open(const char *path, rs_llama2c *c, resid_error *err) {
    memset(c, 0, sizeof *c);
    rs_mapped m;
    resid_status rc = rs_map_file(path, &m, err);
    if (rc != RESID_OK) return rc;
    rc = rs_llama2c_parse(m.data, m.size, path, c, err);
    if (rc != RESID_OK) {
        rs_unmap(&m);
        return rc;
    }
    c->map = m;
    return RESID_OK;
}

void rs_llama2c_close(rs_llama2c *c) {
    if (!c) return;
    if (c->tensors)
        for (int64_t i = 0; i < c->n_tensors; i++)
            free((void *)c->tensors[i].name);
    free(c->tensors);
    rs_unmap(&c->map);
    memset(c, 0, sizeof *c);
}
