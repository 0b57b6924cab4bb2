/*
 * arch.c - the one place that knows tensor names and hyperparameter keys.
 *
 * Each architecture has a table mapping roles (token embedding, layer N's
 * query projection, ...) to the tensor name in each format. GGUF names are
 * also used for llama2.c checkpoints, whose loader names its views the GGUF
 * way. Adding a family that is "Llama plus small differences" (Mistral,
 * Qwen2) means a new table row set and a few hyperparameter keys here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

typedef enum role {
    ROLE_TOK_EMBD,
    ROLE_POS_EMBD,
    ROLE_OUT_NORM_W,
    ROLE_OUT_NORM_B,
    ROLE_OUTPUT,
    /* per layer */
    ROLE_ATTN_NORM_W,
    ROLE_ATTN_NORM_B,
    ROLE_QKV_W,
    ROLE_QKV_B,
    ROLE_Q_W,
    ROLE_K_W,
    ROLE_V_W,
    ROLE_O_W,
    ROLE_O_B,
    ROLE_FFN_NORM_W,
    ROLE_FFN_NORM_B,
    ROLE_UP_W,
    ROLE_UP_B,
    ROLE_GATE_W,
    ROLE_DOWN_W,
    ROLE_DOWN_B,
} role;

enum { OPTIONAL = 0, REQUIRED = 1 };

/* A role's name in each format ("%d" = layer), whether the HF tensor is a
 * GPT-2 Conv1D ([in][out] storage), and its logical shape in terms of the
 * hyperparameters (filled by expected_shape()). */
typedef struct role_name {
    role role;
    const char *gguf;
    const char *hf;
    bool hf_conv1d;
    bool required;
    const char *label; /* the role string shown to users */
} role_name;

static const role_name GPT2_NAMES[] = {
    {ROLE_TOK_EMBD, "token_embd.weight", "wte.weight", false, REQUIRED, "tok_embd"},
    {ROLE_POS_EMBD, "position_embd.weight", "wpe.weight", false, REQUIRED, "pos_embd"},
    {ROLE_OUT_NORM_W, "output_norm.weight", "ln_f.weight", false, REQUIRED, "out_norm.weight"},
    {ROLE_OUT_NORM_B, "output_norm.bias", "ln_f.bias", false, REQUIRED, "out_norm.bias"},
    {ROLE_OUTPUT, "output.weight", "lm_head.weight", false, OPTIONAL, "output"},
    {ROLE_ATTN_NORM_W, "blk.%d.attn_norm.weight", "h.%d.ln_1.weight", false, REQUIRED, "attn_norm.weight"},
    {ROLE_ATTN_NORM_B, "blk.%d.attn_norm.bias", "h.%d.ln_1.bias", false, REQUIRED, "attn_norm.bias"},
    {ROLE_QKV_W, "blk.%d.attn_qkv.weight", "h.%d.attn.c_attn.weight", true, REQUIRED, "attn_qkv.weight"},
    {ROLE_QKV_B, "blk.%d.attn_qkv.bias", "h.%d.attn.c_attn.bias", false, REQUIRED, "attn_qkv.bias"},
    {ROLE_O_W, "blk.%d.attn_output.weight", "h.%d.attn.c_proj.weight", true, REQUIRED, "attn_output.weight"},
    {ROLE_O_B, "blk.%d.attn_output.bias", "h.%d.attn.c_proj.bias", false, REQUIRED, "attn_output.bias"},
    {ROLE_FFN_NORM_W, "blk.%d.ffn_norm.weight", "h.%d.ln_2.weight", false, REQUIRED, "ffn_norm.weight"},
    {ROLE_FFN_NORM_B, "blk.%d.ffn_norm.bias", "h.%d.ln_2.bias", false, REQUIRED, "ffn_norm.bias"},
    {ROLE_UP_W, "blk.%d.ffn_up.weight", "h.%d.mlp.c_fc.weight", true, REQUIRED, "ffn_up.weight"},
    {ROLE_UP_B, "blk.%d.ffn_up.bias", "h.%d.mlp.c_fc.bias", false, REQUIRED, "ffn_up.bias"},
    {ROLE_DOWN_W, "blk.%d.ffn_down.weight", "h.%d.mlp.c_proj.weight", true, REQUIRED, "ffn_down.weight"},
    {ROLE_DOWN_B, "blk.%d.ffn_down.bias", "h.%d.mlp.c_proj.bias", false, REQUIRED, "ffn_down.bias"},
};

static const role_name LLAMA_NAMES[] = {
    {ROLE_TOK_EMBD, "token_embd.weight", "model.embed_tokens.weight", false, REQUIRED, "tok_embd"},
    {ROLE_OUT_NORM_W, "output_norm.weight", "model.norm.weight", false, REQUIRED, "out_norm.weight"},
    {ROLE_OUTPUT, "output.weight", "lm_head.weight", false, OPTIONAL, "output"},
    {ROLE_ATTN_NORM_W, "blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight", false, REQUIRED, "attn_norm.weight"},
    {ROLE_Q_W, "blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight", false, REQUIRED, "attn_q.weight"},
    {ROLE_K_W, "blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight", false, REQUIRED, "attn_k.weight"},
    {ROLE_V_W, "blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight", false, REQUIRED, "attn_v.weight"},
    {ROLE_O_W, "blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight", false, REQUIRED, "attn_output.weight"},
    {ROLE_FFN_NORM_W, "blk.%d.ffn_norm.weight", "model.layers.%d.post_attention_layernorm.weight", false, REQUIRED, "ffn_norm.weight"},
    {ROLE_UP_W, "blk.%d.ffn_up.weight", "model.layers.%d.mlp.up_proj.weight", false, REQUIRED, "ffn_up.weight"},
    {ROLE_GATE_W, "blk.%d.ffn_gate.weight", "model.layers.%d.mlp.gate_proj.weight", false, REQUIRED, "ffn_gate.weight"},
    {ROLE_DOWN_W, "blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight", false, REQUIRED, "ffn_down.weight"},
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static bool role_is_layer(role r) {
    return r >= ROLE_ATTN_NORM_W;
}

/* Expected logical shape [rows][cols] of a role. */
static void expected_shape(const rs_hparams *hp, role r, int64_t *rows, int64_t *cols) {
    int64_t D = hp->d_model, N = hp->d_ffn, V = hp->n_vocab;
    int64_t q = (int64_t)hp->n_head * hp->d_head, kv = (int64_t)hp->n_kv_head * hp->d_head;
    *rows = 1;
    *cols = 1;
    switch (r) {
    case ROLE_TOK_EMBD: case ROLE_OUTPUT: *rows = V; *cols = D; break;
    case ROLE_POS_EMBD: *rows = hp->n_ctx; *cols = D; break;
    case ROLE_OUT_NORM_W: case ROLE_OUT_NORM_B: case ROLE_ATTN_NORM_W: case ROLE_ATTN_NORM_B:
    case ROLE_FFN_NORM_W: case ROLE_FFN_NORM_B: case ROLE_O_B: case ROLE_DOWN_B: *cols = D; break;
    case ROLE_QKV_W: *rows = q + 2 * kv; *cols = D; break;
    case ROLE_QKV_B: *cols = q + 2 * kv; break;
    case ROLE_Q_W: *rows = q; *cols = D; break;
    case ROLE_K_W: case ROLE_V_W: *rows = kv; *cols = D; break;
    case ROLE_O_W: *rows = D; *cols = q; break;
    case ROLE_UP_W: case ROLE_GATE_W: *rows = N; *cols = D; break;
    case ROLE_UP_B: *cols = N; break;
    case ROLE_DOWN_W: *rows = D; *cols = N; break;
    }
}

/* ------------------------------------------------------------------------- */
/* Generic builder                                                           */
/* ------------------------------------------------------------------------- */

typedef const rs_tensor *(*find_fn)(const void *src, const char *name);

typedef struct builder {
    resid_model *m;
    const char *file; /* for messages */
    find_fn find;
    const void *src;
    bool use_hf_names;
    /* the model's own tensor copies */
    rs_tensor *store;
    int32_t n_store, cap_store;
} builder;

static resid_status add_vec(builder *b, const rs_tensor *t, const float **out, resid_error *err) {
    resid_model *m = b->m;
    float *v = malloc((size_t)t->n_cols * sizeof(float));
    float **nv = realloc(m->owned_vecs, (size_t)(m->n_owned_vecs + 1) * sizeof(float *));
    if (!v || !nv) {
        free(v);
        if (nv) m->owned_vecs = nv;
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory", b->file);
    }
    m->owned_vecs = nv;
    m->owned_vecs[m->n_owned_vecs++] = v;
    rs_tensor_rows(t, 0, 1, v);
    *out = v;
    return RESID_OK;
}

/* Looks up role `rn` for layer `layer` (-1 for global), checks its shape
 * and records it. *out receives the model's copy (NULL if optional and
 * absent). */
static resid_status take(builder *b, const role_name *rn, int layer, const rs_tensor **out,
                         resid_error *err) {
    char name[256];
    const char *pat = b->use_hf_names ? rn->hf : rn->gguf;
    *out = NULL;
    if (layer >= 0)
        snprintf(name, sizeof name, pat, layer);
    else
        snprintf(name, sizeof name, "%s", pat);
    const rs_tensor *t = b->find(b->src, name);
    if (!t && b->use_hf_names && b->m->hp.arch == RESID_ARCH_GPT2) {
        char pref[300]; /* some exports keep the "transformer." prefix */
        snprintf(pref, sizeof pref, "transformer.%s", name);
        t = b->find(b->src, pref);
    }
    if (!t) {
        if (rn->required)
            return rs_err(err, RESID_E_FORMAT, "%s: missing tensor '%s' (%s%s)", b->file, name,
                          layer >= 0 ? "layer role " : "", rn->label);
        return RESID_OK;
    }
    rs_tensor c = *t;
    if (b->use_hf_names && rn->hf_conv1d) { /* Conv1D stores [in][out] */
        if (c.dtype != RESID_DTYPE_F32 && c.dtype != RESID_DTYPE_F16 &&
            c.dtype != RESID_DTYPE_BF16)
            return rs_err(err, RESID_E_UNSUPPORTED, "%s: tensor '%s' has an unsupported dtype",
                          b->file, name);
        int64_t r = c.n_rows;
        c.n_rows = c.n_cols;
        c.n_cols = r;
        c.transposed = true;
    }
    int64_t er, ec;
    expected_shape(&b->m->hp, rn->role, &er, &ec);
    if (c.n_rows != er || c.n_cols != ec)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tensor '%s' has logical shape [%lld][%lld], expected [%lld][%lld] "
                      "from the model's hyperparameters",
                      b->file, name, (long long)c.n_rows, (long long)c.n_cols, (long long)er,
                      (long long)ec);
    if (b->n_store == b->cap_store)
        return rs_err(err, RESID_E_FORMAT, "%s: too many tensors", b->file);
    b->store[b->n_store] = c;
    rs_tensor *mine = &b->store[b->n_store];
    char role_str[64];
    if (layer >= 0)
        snprintf(role_str, sizeof role_str, "blk.%d.%s", layer, rn->label);
    else
        snprintf(role_str, sizeof role_str, "%s", rn->label);
    b->m->tensors[b->n_store] = mine;
    b->m->roles[b->n_store] = rs_strdup(role_str);
    b->n_store++;
    b->m->n_tensors = b->n_store; /* so a failure later frees the roles */
    *out = mine;
    return RESID_OK;
}

static resid_status check_hparams(const rs_hparams *hp, const char *file, resid_error *err) {
    if (hp->n_layer <= 0 || hp->d_model <= 0 || hp->n_head <= 0 || hp->n_kv_head <= 0 ||
        hp->d_ffn <= 0 || hp->n_vocab <= 0 || hp->n_ctx <= 0)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: invalid hyperparameters (layers %d, d_model %d, heads %d, kv heads %d, "
                      "d_ffn %d, vocab %d, context %d)",
                      file, hp->n_layer, hp->d_model, hp->n_head, hp->n_kv_head, hp->d_ffn,
                      hp->n_vocab, hp->n_ctx);
    if (hp->n_layer > 4096 || hp->d_model > (1 << 20) || hp->n_head > 4096 ||
        hp->d_ffn > (1 << 22) || hp->n_vocab > (1 << 24) || hp->n_ctx > (1 << 24))
        return rs_err(err, RESID_E_FORMAT, "%s: implausibly large hyperparameters", file);
    if (hp->d_model % hp->n_head != 0)
        return rs_err(err, RESID_E_FORMAT, "%s: d_model %d is not a multiple of n_head %d", file,
                      hp->d_model, hp->n_head);
    if (hp->n_head % hp->n_kv_head != 0)
        return rs_err(err, RESID_E_FORMAT, "%s: n_head %d is not a multiple of n_kv_head %d",
                      file, hp->n_head, hp->n_kv_head);
    if (hp->rope != RESID_ROPE_NONE && (hp->d_head % 2 != 0))
        return rs_err(err, RESID_E_FORMAT, "%s: RoPE needs an even head size, got %d", file,
                      hp->d_head);
    if (!(hp->norm_eps > 0) || !isfinite(hp->norm_eps))
        return rs_err(err, RESID_E_FORMAT, "%s: invalid norm epsilon %g", file,
                      (double)hp->norm_eps);
    return RESID_OK;
}

/* Maps every role of the architecture's table into m. */
static resid_status build(builder *b, resid_error *err) {
    resid_model *m = b->m;
    rs_hparams *hp = &m->hp;
    resid_status st = check_hparams(hp, b->file, err);
    if (st) return st;
    const role_name *names;
    size_t n_names;
    if (hp->arch == RESID_ARCH_GPT2) {
        names = GPT2_NAMES;
        n_names = N_ELEMS(GPT2_NAMES);
    } else {
        names = LLAMA_NAMES;
        n_names = N_ELEMS(LLAMA_NAMES);
    }
    b->cap_store = (int32_t)(n_names * (size_t)(hp->n_layer + 1));
    b->store = calloc((size_t)b->cap_store, sizeof(rs_tensor));
    m->tensors = calloc((size_t)b->cap_store, sizeof(rs_tensor *));
    m->roles = calloc((size_t)b->cap_store, sizeof(char *));
    m->layers = calloc((size_t)hp->n_layer, sizeof(rs_layer));
    m->tensor_store = b->store; /* owned by m from here, also on failure */
    if (!b->store || !m->tensors || !m->roles || !m->layers)
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory", b->file);

    for (size_t i = 0; i < n_names; i++) {
        const role_name *rn = &names[i];
        int l0 = role_is_layer(rn->role) ? 0 : -1;
        int l1 = role_is_layer(rn->role) ? hp->n_layer : 0;
        for (int l = l0; l < l1 || (l0 < 0 && l == -1); l++) {
            const rs_tensor *t;
            if ((st = take(b, rn, l, &t, err))) return st;
            if (!t) {
                if (l0 < 0) break;
                continue;
            }
            rs_layer *L = l >= 0 ? &m->layers[l] : NULL;
            switch (rn->role) {
            case ROLE_TOK_EMBD: m->tok_embd = t; break;
            case ROLE_POS_EMBD: m->pos_embd = t; break;
            case ROLE_OUT_NORM_W: st = add_vec(b, t, &m->out_norm_w, err); break;
            case ROLE_OUT_NORM_B: st = add_vec(b, t, &m->out_norm_b, err); break;
            case ROLE_OUTPUT: m->w_out = t; break;
            case ROLE_ATTN_NORM_W: st = add_vec(b, t, &L->attn_norm_w, err); break;
            case ROLE_ATTN_NORM_B: st = add_vec(b, t, &L->attn_norm_b, err); break;
            case ROLE_QKV_W: L->wqkv = t; break;
            case ROLE_QKV_B: st = add_vec(b, t, &L->bqkv, err); break;
            case ROLE_Q_W: L->wq = t; break;
            case ROLE_K_W: L->wk = t; break;
            case ROLE_V_W: L->wv = t; break;
            case ROLE_O_W: L->wo = t; break;
            case ROLE_O_B: st = add_vec(b, t, &L->bo, err); break;
            case ROLE_FFN_NORM_W: st = add_vec(b, t, &L->ffn_norm_w, err); break;
            case ROLE_FFN_NORM_B: st = add_vec(b, t, &L->ffn_norm_b, err); break;
            case ROLE_UP_W: L->w_up = t; break;
            case ROLE_UP_B: st = add_vec(b, t, &L->b_up, err); break;
            case ROLE_GATE_W: L->w_gate = t; break;
            case ROLE_DOWN_W: L->w_down = t; break;
            case ROLE_DOWN_B: st = add_vec(b, t, &L->b_down, err); break;
            }
            if (st) return st;
            if (l0 < 0) break;
        }
    }
    m->n_tensors = b->n_store;
    if (!m->w_out) m->w_out = m->tok_embd;

    resid_model_info *in = &m->info;
    in->arch = hp->arch;
    in->n_layer = hp->n_layer;
    in->d_model = hp->d_model;
    in->n_head = hp->n_head;
    in->n_kv_head = hp->n_kv_head;
    in->d_head = hp->d_head;
    in->d_ffn = hp->d_ffn;
    in->n_vocab = hp->n_vocab;
    in->n_ctx = hp->n_ctx;
    in->norm_eps = hp->norm_eps;
    in->rope_theta = hp->rope_theta;
    in->rope = hp->rope;
    in->tied_output = m->w_out == m->tok_embd;
    in->has_bias = hp->arch == RESID_ARCH_GPT2;
    in->n_tensors = m->n_tensors;
    for (int32_t i = 0; i < m->n_tensors; i++) {
        const rs_tensor *t = m->tensors[i];
        in->n_params += t->n_rows * t->n_cols;
        in->n_bytes += (int64_t)t->n_bytes;
        in->dtype_count[t->dtype]++;
    }
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* GGUF                                                                      */
/* ------------------------------------------------------------------------- */

static const rs_tensor *find_gguf(const void *src, const char *name) {
    return rs_gguf_tensor((const rs_gguf *)src, name);
}

static bool gguf_i32(const rs_gguf *g, const char *arch, const char *key, int32_t *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t v;
    if (!rs_gguf_get_i64(g, k, &v) || v < 0 || v > INT32_MAX) return false;
    *out = (int32_t)v;
    return true;
}

static bool gguf_f32(const rs_gguf *g, const char *arch, const char *key, float *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return rs_gguf_get_f32(g, k, out);
}

resid_status rs_model_from_gguf(resid_model *m, rs_gguf *g, resid_error *err) {
    const char *file = g->map.path ? g->map.path : "gguf";
    const char *s;
    uint64_t len;
    if (!rs_gguf_get_str(g, "general.architecture", &s, &len))
        return rs_err(err, RESID_E_FORMAT, "%s: no general.architecture key", file);
    char arch[64];
    snprintf(arch, sizeof arch, "%.*s", (int)(len < 63 ? len : 63), s);
    rs_hparams *hp = &m->hp;
    if (strcmp(arch, "gpt2") == 0) {
        hp->arch = RESID_ARCH_GPT2;
        hp->rope = RESID_ROPE_NONE;
    } else if (strcmp(arch, "llama") == 0) {
        hp->arch = RESID_ARCH_LLAMA;
        hp->rope = RESID_ROPE_INTERLEAVED;
    } else {
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: unknown architecture '%s' (resid supports gpt2 and llama)", file, arch);
    }
    if (g->n_tensors == 0)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: the file has no tensors (a vocabulary-only GGUF?); it can be used "
                      "as a tokenizer, not as a model",
                      file);
    bool ok = gguf_i32(g, arch, "block_count", &hp->n_layer) &&
              gguf_i32(g, arch, "embedding_length", &hp->d_model) &&
              gguf_i32(g, arch, "feed_forward_length", &hp->d_ffn) &&
              gguf_i32(g, arch, "attention.head_count", &hp->n_head) &&
              gguf_i32(g, arch, "context_length", &hp->n_ctx);
    if (!ok)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: missing one of %s.block_count, embedding_length, feed_forward_length, "
                      "attention.head_count, context_length",
                      file, arch);
    if (!gguf_i32(g, arch, "attention.head_count_kv", &hp->n_kv_head)) hp->n_kv_head = hp->n_head;
    if (hp->arch == RESID_ARCH_GPT2) {
        if (!gguf_f32(g, arch, "attention.layer_norm_epsilon", &hp->norm_eps)) hp->norm_eps = 1e-5f;
    } else {
        if (!gguf_f32(g, arch, "attention.layer_norm_rms_epsilon", &hp->norm_eps))
            hp->norm_eps = 1e-5f;
        if (!gguf_f32(g, arch, "rope.freq_base", &hp->rope_theta)) hp->rope_theta = 10000.0f;
    }
    const rs_tensor *emb = rs_gguf_tensor(g, "token_embd.weight");
    if (!emb) return rs_err(err, RESID_E_FORMAT, "%s: missing tensor 'token_embd.weight'", file);
    if (emb->n_rows > INT32_MAX) return rs_err(err, RESID_E_FORMAT, "%s: vocabulary too large", file);
    hp->n_vocab = (int32_t)emb->n_rows;
    if (hp->n_head > 0) hp->d_head = hp->d_model / hp->n_head;
    hp->rope_dim = hp->d_head;
    int32_t rope_dim;
    if (hp->arch == RESID_ARCH_LLAMA && gguf_i32(g, arch, "rope.dimension_count", &rope_dim) &&
        rope_dim != hp->d_head)
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: partial RoPE (%d of %d dimensions) is not supported", file, rope_dim,
                      hp->d_head);

    builder b = {.m = m, .file = file, .find = find_gguf, .src = g, .use_hf_names = false};
    resid_status st = build(&b, err);
    if (st) return st;
    m->info.format = RESID_FORMAT_GGUF;
    if (rs_gguf_get_str(g, "general.name", &s, &len)) {
        m->name = malloc(len + 1);
        if (m->name) {
            memcpy(m->name, s, len);
            m->name[len] = 0;
        }
    }
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* llama2.c                                                                  */
/* ------------------------------------------------------------------------- */

static const rs_tensor *find_l2c(const void *src, const char *name) {
    const rs_llama2c *c = src;
    for (int64_t i = 0; i < c->n_tensors; i++)
        if (strcmp(c->tensors[i].name, name) == 0) return &c->tensors[i];
    return NULL;
}

resid_status rs_model_from_llama2c(resid_model *m, rs_llama2c *c, resid_error *err) {
    rs_hparams *hp = &m->hp;
    hp->arch = RESID_ARCH_LLAMA;
    hp->n_layer = c->cfg.n_layers;
    hp->d_model = c->cfg.dim;
    hp->d_ffn = c->cfg.hidden_dim;
    hp->n_head = c->cfg.n_heads;
    hp->n_kv_head = c->cfg.n_kv_heads;
    hp->n_vocab = c->cfg.vocab_size;
    hp->n_ctx = c->cfg.seq_len;
    hp->norm_eps = 1e-5f; /* run.c's rmsnorm */
    hp->rope_theta = 10000.0f;
    hp->rope = RESID_ROPE_INTERLEAVED;
    hp->d_head = hp->n_head > 0 ? hp->d_model / hp->n_head : 0;
    hp->rope_dim = hp->d_head;
    const char *file = c->map.path ? c->map.path : "llama2.c";
    builder b = {.m = m, .file = file, .find = find_l2c, .src = c, .use_hf_names = false};
    resid_status st = build(&b, err);
    if (st) return st;
    m->info.format = RESID_FORMAT_LLAMA2C;
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* Hugging Face                                                              */
/* ------------------------------------------------------------------------- */

static const rs_tensor *find_hf(const void *src, const char *name) {
    return rs_hf_tensor((const rs_hf *)src, name);
}

/* Reads an integer config key; returns false if absent or not a number. */
static bool cfg_int(const cJSON *cfg, const char *key, int32_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > INT32_MAX ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (int32_t)v->valuedouble;
    return true;
}

static bool cfg_float(const cJSON *cfg, const char *key, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!cJSON_IsNumber(v)) return false;
    *out = (float)v->valuedouble;
    return true;
}

resid_status rs_model_from_hf(resid_model *m, rs_hf *hf, resid_error *err) {
    const cJSON *cfg = hf->config;
    char file[512];
    snprintf(file, sizeof file, "%s/config.json", hf->dir);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    if (!cJSON_IsString(mt))
        return rs_err(err, RESID_E_FORMAT, "%s: no \"model_type\" string", file);
    rs_hparams *hp = &m->hp;
    bool ok;
    if (strcmp(mt->valuestring, "gpt2") == 0) {
        hp->arch = RESID_ARCH_GPT2;
        hp->rope = RESID_ROPE_NONE;
        ok = cfg_int(cfg, "n_layer", &hp->n_layer) && cfg_int(cfg, "n_embd", &hp->d_model) &&
             cfg_int(cfg, "n_head", &hp->n_head) && cfg_int(cfg, "vocab_size", &hp->n_vocab) &&
             cfg_int(cfg, "n_positions", &hp->n_ctx);
        if (!ok)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: missing one of n_layer, n_embd, n_head, vocab_size, n_positions",
                          file);
        if (!cfg_int(cfg, "n_inner", &hp->d_ffn)) hp->d_ffn = 4 * hp->d_model;
        hp->n_kv_head = hp->n_head;
        if (!cfg_float(cfg, "layer_norm_epsilon", &hp->norm_eps)) hp->norm_eps = 1e-5f;
        const cJSON *act = cJSON_GetObjectItemCaseSensitive(cfg, "activation_function");
        if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu_new") != 0 &&
            strcmp(act->valuestring, "gelu_pytorch_tanh") != 0)
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: activation_function '%s' is not supported (gelu_new only)", file,
                          act->valuestring);
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(cfg, "scale_attn_by_inverse_layer_idx");
        const cJSON *ru = cJSON_GetObjectItemCaseSensitive(cfg, "reorder_and_upcast_attn");
        if (cJSON_IsTrue(sc) || cJSON_IsTrue(ru))
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not "
                          "supported",
                          file);
    } else if (strcmp(mt->valuestring, "llama") == 0) {
        hp->arch = RESID_ARCH_LLAMA;
        hp->rope = RESID_ROPE_HALVES;
        ok = cfg_int(cfg, "num_hidden_layers", &hp->n_layer) &&
             cfg_int(cfg, "hidden_size", &hp->d_model) &&
             cfg_int(cfg, "intermediate_size", &hp->d_ffn) &&
             cfg_int(cfg, "num_attention_heads", &hp->n_head) &&
             cfg_int(cfg, "vocab_size", &hp->n_vocab);
        if (!ok)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: missing one of num_hidden_layers, hidden_size, intermediate_size, "
                          "num_attention_heads, vocab_size",
                          file);
        if (!cfg_int(cfg, "num_key_value_heads", &hp->n_kv_head)) hp->n_kv_head = hp->n_head;
        if (!cfg_int(cfg, "max_position_embeddings", &hp->n_ctx)) hp->n_ctx = 2048;
        if (!cfg_float(cfg, "rms_norm_eps", &hp->norm_eps)) hp->norm_eps = 1e-6f;
        if (!cfg_float(cfg, "rope_theta", &hp->rope_theta)) hp->rope_theta = 10000.0f;
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(cfg, "rope_scaling");
        if (rs && !cJSON_IsNull(rs))
            return rs_err(err, RESID_E_UNSUPPORTED, "%s: rope_scaling is not supported", file);
        const cJSON *act = cJSON_GetObjectItemCaseSensitive(cfg, "hidden_act");
        if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0)
            return rs_err(err, RESID_E_UNSUPPORTED, "%s: hidden_act '%s' is not supported (silu)",
                          file, act->valuestring);
        const cJSON *hd = cJSON_GetObjectItemCaseSensitive(cfg, "head_dim");
        if (cJSON_IsNumber(hd) && hp->n_head > 0 && hd->valueint != hp->d_model / hp->n_head)
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: head_dim %d != hidden_size / num_attention_heads is not supported",
                          file, hd->valueint);
    } else {
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: unknown architecture '%s' (resid supports gpt2 and llama)", file,
                      mt->valuestring);
    }
    hp->d_head = hp->n_head > 0 ? hp->d_model / hp->n_head : 0;
    hp->rope_dim = hp->d_head;
    builder b = {.m = m, .file = file, .find = find_hf, .src = hf, .use_hf_names = true};
    resid_status st = build(&b, err);
    if (st) return st;
    /* tie_word_embeddings false with no lm_head is an error for Llama */
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(cfg, "tie_word_embeddings");
    if (hp->arch == RESID_ARCH_LLAMA && cJSON_IsFalse(tie) && m->w_out == m->tok_embd)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tie_word_embeddings is false but there is no lm_head.weight", file);
    m->info.format = RESID_FORMAT_HF;
    return RESID_OK;
}
