/*
 * tok_load.c - building a resid_tokenizer from each source: GGUF metadata,
 * a llama2.c tokenizer.bin, a Hugging Face tokenizer.json, a GPT-2
 * vocab.json + merges.txt; and resid_tokenizer_open(), which tells them
 * apart.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define RS_TOK_MAX_FILE ((size_t)1 << 30) /* 1 GiB of tokenizer text */

/* Splits a merge line "a b" at the first space after position 0, as
 * llama.cpp does (a piece never starts with a raw space). */
static bool split_merge(const char *s, size_t n, size_t *a_len, const char **b,
                        size_t *b_len) {
    for (size_t i = 1; i < n; i++)
        if (s[i] == ' ') {
            *a_len = i;
            *b = s + i + 1;
            *b_len = n - i - 1;
            return true;
        }
    return false;
}

/* ------------------------------------------------------------------------- */
/* GGUF                                                                      */
/* ------------------------------------------------------------------------- */

static bool streq(const char *s, uint64_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

resid_status rs_tokenizer_from_gguf(const rs_gguf *g, resid_tokenizer **out,
                                    resid_error *err) {
    *out = NULL;
    const char *label = g->map.path ? g->map.path : "gguf";
    const char *model;
    uint64_t model_len;
    if (!rs_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len))
        return rs_err(err, RESID_E_FORMAT, "%s: no tokenizer.ggml.model (the file has no tokenizer)",
                      label);
    resid_tokenizer_kind kind;
    if (streq(model, model_len, "gpt2"))
        kind = RESID_TOKENIZER_BPE;
    else if (streq(model, model_len, "llama"))
        kind = RESID_TOKENIZER_SPM;
    else
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: tokenizer.ggml.model \"%.*s\" is not supported (gpt2, llama)", label,
                      (int)(model_len > 64 ? 64 : model_len), model);
    const rs_gguf_kv *tokens = rs_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tokens || tokens->type != RS_GGUF_ARRAY || tokens->arr_type != RS_GGUF_STRING)
        return rs_err(err, RESID_E_FORMAT, "%s: tokenizer.ggml.tokens missing or not strings", label);
    uint64_t n = tokens->arr_n;
    const rs_gguf_kv *scores = rs_gguf_find(g, "tokenizer.ggml.scores");
    const rs_gguf_kv *types = rs_gguf_find(g, "tokenizer.ggml.token_type");
    if (scores && (scores->type != RS_GGUF_ARRAY || scores->arr_n != n))
        return rs_err(err, RESID_E_FORMAT, "%s: tokenizer.ggml.scores has %llu entries, tokens %llu",
                      label, (unsigned long long)scores->arr_n, (unsigned long long)n);
    if (types && (types->type != RS_GGUF_ARRAY || types->arr_n != n))
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tokenizer.ggml.token_type has %llu entries, tokens %llu", label,
                      (unsigned long long)types->arr_n, (unsigned long long)n);
    const char *regex = NULL;
    bool ignore_merges = false;
    if (kind == RESID_TOKENIZER_BPE) {
        const char *pre;
        uint64_t pre_len;
        if (!rs_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len) ||
            streq(pre, pre_len, "gpt-2") || streq(pre, pre_len, "default")) {
            regex = RS_REGEX_GPT2;
        } else if (streq(pre, pre_len, "llama-bpe") || streq(pre, pre_len, "llama3")) {
            regex = RS_REGEX_LLAMA3;
            ignore_merges = true;
        } else {
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: pre-tokenizer tokenizer.ggml.pre \"%.*s\" is not supported "
                          "(gpt-2, llama-bpe)",
                          label, (int)(pre_len > 64 ? 64 : pre_len), pre);
        }
    }
    resid_tokenizer *t;
    resid_status st = rs_tok_new(kind, (int64_t)(n > INT64_MAX ? INT64_MAX : n), label, &t, err);
    if (st != RESID_OK) return st;
    for (uint64_t i = 0; i < n && st == RESID_OK; i++) {
        const char *s;
        uint64_t len;
        if (!rs_gguf_arr_str(tokens, i, &s, &len)) {
            st = rs_err(err, RESID_E_FORMAT, "%s: token %llu unreadable", label,
                        (unsigned long long)i);
            break;
        }
        st = rs_tok_set_piece(t, (int32_t)i, s, (size_t)len, err);
        float f;
        if (scores && rs_gguf_arr_f32(scores, i, &f)) t->score[i] = f;
        int64_t ty;
        if (types && rs_gguf_arr_i64(types, i, &ty) && ty >= RS_TOK_NORMAL && ty <= RS_TOK_BYTE)
            t->type[i] = (uint8_t)ty;
    }
    if (st == RESID_OK) st = rs_tok_build_vocab(t, err);
    const rs_gguf_kv *merges = rs_gguf_find(g, "tokenizer.ggml.merges");
    if (st == RESID_OK && kind == RESID_TOKENIZER_BPE) {
        if (!merges || merges->type != RS_GGUF_ARRAY || merges->arr_type != RS_GGUF_STRING)
            st = rs_err(err, RESID_E_FORMAT, "%s: tokenizer.ggml.merges missing or not strings",
                        label);
        for (uint64_t i = 0; st == RESID_OK && i < merges->arr_n; i++) {
            const char *s, *b;
            uint64_t len;
            size_t al, bl;
            if (!rs_gguf_arr_str(merges, i, &s, &len) || i > INT32_MAX) {
                st = rs_err(err, RESID_E_FORMAT, "%s: merge %llu unreadable", label,
                            (unsigned long long)i);
                break;
            }
            if (!split_merge(s, (size_t)len, &al, &b, &bl)) {
                st = rs_err(err, RESID_E_FORMAT, "%s: merge %llu \"%.*s\" has no space", label,
                            (unsigned long long)i, (int)(len > 64 ? 64 : len), s);
                break;
            }
            st = rs_tok_add_merge(t, s, al, b, bl, (int32_t)i, err);
        }
    }
    int64_t v;
    bool b;
    if (rs_gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &v) && v >= 0 && v < t->n_vocab)
        t->bos = (int32_t)v;
    if (rs_gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &v) && v >= 0 && v < t->n_vocab)
        t->eos = (int32_t)v;
    if (rs_gguf_get_i64(g, "tokenizer.ggml.unknown_token_id", &v) && v >= 0 && v < t->n_vocab)
        t->unk = (int32_t)v;
    t->add_bos = kind == RESID_TOKENIZER_SPM;
    if (rs_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b)) t->add_bos = b;
    if (rs_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b)) t->add_space_prefix = b;
    t->ignore_merges = ignore_merges;
    if (st == RESID_OK) st = rs_tok_finish(t, regex, label, err);
    if (st != RESID_OK) {
        resid_tokenizer_free(t);
        return st;
    }
    *out = t;
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* llama2.c tokenizer.bin                                                    */
/* ------------------------------------------------------------------------- */

static int32_t rd_i32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

static float rd_f32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Walks the entries (float score, int32 len, bytes) up to the end of the
 * file: counts them, and checks every length against the bytes left and
 * against max_token_length (which llama2.c's exporter sets to the longest
 * piece), so that a file of another kind is rejected early. */
static resid_status l2c_scan(const uint8_t *d, size_t size, const char *path,
                             int64_t *n_out, resid_error *err) {
    if (size < 4) return rs_err(err, RESID_E_FORMAT, "%s: %zu bytes, too short for a tokenizer.bin", path, size);
    int32_t max_len = rd_i32(d);
    if (max_len <= 0 || max_len > 65536)
        return rs_err(err, RESID_E_FORMAT, "%s: max_token_length %d is implausible for a llama2.c tokenizer",
                      path, max_len);
    size_t pos = 4;
    int64_t n = 0;
    while (pos < size) {
        if (size - pos < 8)
            return rs_err(err, RESID_E_FORMAT, "%s: truncated entry %lld at byte %zu", path,
                          (long long)n, pos);
        float score = rd_f32(d + pos);
        int32_t len = rd_i32(d + pos + 4);
        if (!isfinite(score))
            return rs_err(err, RESID_E_FORMAT, "%s: entry %lld at byte %zu: score is not finite",
                          path, (long long)n, pos);
        if (len < 0 || len > max_len || (size_t)len > size - pos - 8)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: entry %lld at byte %zu: length %d (max_token_length %d, %zu bytes left)",
                          path, (long long)n, pos, len, max_len, size - pos - 8);
        pos += 8 + (size_t)len;
        n++;
    }
    if (n == 0) return rs_err(err, RESID_E_FORMAT, "%s: no tokens", path);
    *n_out = n;
    return RESID_OK;
}

static resid_status l2c_build(const uint8_t *d, size_t size, const char *path,
                              resid_tokenizer **out, resid_error *err) {
    int64_t n = 0;
    resid_status st = l2c_scan(d, size, path, &n, err);
    if (st != RESID_OK) return st;
    resid_tokenizer *t;
    st = rs_tok_new(RESID_TOKENIZER_SPM, n, path, &t, err);
    if (st != RESID_OK) return st;
    char *buf = malloc(65536 * 3 + 1);
    if (!buf) {
        resid_tokenizer_free(t);
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory", path);
    }
    size_t pos = 4;
    for (int32_t i = 0; i < n && st == RESID_OK; i++) {
        float score = rd_f32(d + pos);
        size_t len = (size_t)rd_i32(d + pos + 4);
        const char *p = (const char *)d + pos + 8;
        pos += 8 + len;
        t->score[i] = score;
        /* back to SentencePiece's own spelling: "▁" for space, "<s>" */
        size_t k = 0;
        if (len == 5 && memcmp(p, "\n<s>\n", 5) == 0) {
            memcpy(buf, "<s>", 3), k = 3;
        } else if (len == 6 && memcmp(p, "\n</s>\n", 6) == 0) {
            memcpy(buf, "</s>", 4), k = 4;
        } else {
            for (size_t j = 0; j < len; j++) {
                if (p[j] == ' ') {
                    memcpy(buf + k, "\xE2\x96\x81", 3);
                    k += 3;
                } else {
                    buf[k++] = p[j];
                }
            }
        }
        st = rs_tok_set_piece(t, i, buf, k, err);
        if (i == 0 && k == 5 && memcmp(buf, "<unk>", 5) == 0) t->type[i] = RS_TOK_UNKNOWN;
        if ((i == 1 && k == 3 && memcmp(buf, "<s>", 3) == 0) ||
            (i == 2 && k == 4 && memcmp(buf, "</s>", 4) == 0))
            t->type[i] = RS_TOK_CONTROL;
        if (i >= 3 && i <= 258 && k == 6 && memcmp(buf, "<0x", 3) == 0 && buf[5] == '>')
            t->type[i] = RS_TOK_BYTE;
    }
    free(buf);
    if (st == RESID_OK) st = rs_tok_build_vocab(t, err);
    if (t->type[0] == RS_TOK_UNKNOWN) t->unk = 0;
    if (n > 1 && t->type[1] == RS_TOK_CONTROL) t->bos = 1;
    if (n > 2 && t->type[2] == RS_TOK_CONTROL) t->eos = 2;
    t->add_bos = true;
    if (st == RESID_OK) st = rs_tok_finish(t, NULL, path, err);
    if (st != RESID_OK) {
        resid_tokenizer_free(t);
        return st;
    }
    *out = t;
    return RESID_OK;
}

resid_status rs_tokenizer_from_llama2c(const char *path, resid_tokenizer **out,
                                       resid_error *err) {
    *out = NULL;
    rs_mapped m;
    resid_status st = rs_map_file(path, &m, err);
    if (st != RESID_OK) return st;
    st = l2c_build(m.data, m.size, path, out, err);
    rs_unmap(&m);
    return st;
}

/* ------------------------------------------------------------------------- */
/* JSON sources                                                              */
/* ------------------------------------------------------------------------- */

static resid_status load_json(const char *path, cJSON **out, resid_error *err) {
    return rs_json_read(path, RS_TOK_MAX_FILE, out, err);
}

/* A JSON number that is an id in [0, 2^24). */
static bool json_id(const cJSON *j, int32_t *id) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0 && d < (1 << 24)) || d != floor(d)) return false;
    *id = (int32_t)d;
    return true;
}

/* Sets the pieces of a vocab object {"piece": id, ...} (and `added`, an
 * HF added_tokens array, may be NULL): sizes the vocabulary to the largest
 * id + 1. */
static resid_status vocab_from_json(const cJSON *vocab, const cJSON *added,
                                    resid_tokenizer_kind kind, const char *path,
                                    resid_tokenizer **out, resid_error *err) {
    *out = NULL;
    if (!cJSON_IsObject(vocab)) return rs_err(err, RESID_E_FORMAT, "%s: vocab is not an object", path);
    int64_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id;
        if (!json_id(e, &id))
            return rs_err(err, RESID_E_FORMAT, "%s: vocab entry \"%.64s\" has no valid id", path,
                          e->string ? e->string : "");
        if (id + 1 > n) n = id + 1;
    }
    cJSON_ArrayForEach(e, added) {
        int32_t id;
        if (!json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "content")))
            return rs_err(err, RESID_E_FORMAT, "%s: an added_tokens entry lacks id or content", path);
        if (id + 1 > n) n = id + 1;
    }
    resid_tokenizer *t;
    resid_status st = rs_tok_new(kind, n, path, &t, err);
    if (st != RESID_OK) return st;
    for (int64_t i = 0; i < n; i++) t->type[i] = RS_TOK_UNUSED; /* gaps */
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = 0;
        json_id(e, &id); /* checked above */
        if (st == RESID_OK) st = rs_tok_set_piece(t, id, e->string, strlen(e->string), err);
        t->type[id] = RS_TOK_NORMAL;
    }
    cJSON_ArrayForEach(e, added) {
        int32_t id = 0;
        json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id); /* checked above */
        const char *c = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        if (st == RESID_OK) st = rs_tok_set_piece(t, id, c, strlen(c), err);
        t->type[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")) ? RS_TOK_CONTROL
                                                                                   : RS_TOK_USER;
    }
    if (st == RESID_OK) st = rs_tok_build_vocab(t, err);
    if (st != RESID_OK) {
        resid_tokenizer_free(t);
        return st;
    }
    *out = t;
    return RESID_OK;
}

/* bos/eos by name, when nothing better says which they are. */
static void guess_bos_eos(resid_tokenizer *t) {
    static const char *const bos[] = {"<s>", "<|begin_of_text|>", "<|endoftext|>"};
    static const char *const eos[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
    for (size_t i = 0; i < 3 && t->bos < 0; i++) t->bos = rs_tok_lookup(t, bos[i], strlen(bos[i]));
    for (size_t i = 0; i < 3 && t->eos < 0; i++) t->eos = rs_tok_lookup(t, eos[i], strlen(eos[i]));
}

/* tokenizer_config.json beside the tokenizer: bos_token, eos_token (a
 * string or {"content": ...}) and add_bos_token. Missing file: no change. */
static void read_tokenizer_config(resid_tokenizer *t, const char *path) {
    char *dir = rs_path_dirname(path);
    char *cfg = dir ? rs_path_join(dir, "tokenizer_config.json") : NULL;
    free(dir);
    cJSON *j = NULL;
    if (cfg && rs_path_exists(cfg)) load_json(cfg, &j, NULL);
    free(cfg);
    if (!j) return;
    const char *keys[2] = {"bos_token", "eos_token"};
    int32_t *dst[2] = {&t->bos, &t->eos};
    for (int k = 0; k < 2; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
        if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(v)) {
            int32_t id = rs_tok_lookup(t, v->valuestring, strlen(v->valuestring));
            if (id >= 0) *dst[k] = id;
        }
    }
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(j, "add_bos_token");
    if (cJSON_IsBool(ab)) t->add_bos = cJSON_IsTrue(ab);
    cJSON_Delete(j);
}

static resid_status vocab_merges_build(const cJSON *vocab, const char *vocab_path,
                                       const char *merges_path, resid_tokenizer **out,
                                       resid_error *err) {
    resid_tokenizer *t;
    resid_status st = vocab_from_json(vocab, NULL, RESID_TOKENIZER_BPE, vocab_path, &t, err);
    if (st != RESID_OK) return st;
    char *txt;
    size_t size;
    st = rs_read_file(merges_path, RS_TOK_MAX_FILE, &txt, &size, err);
    int32_t rank = 0;
    for (size_t pos = 0, line = 1; st == RESID_OK && pos < size; line++) {
        const char *s = txt + pos;
        const char *nl = memchr(s, '\n', size - pos);
        size_t n = nl ? (size_t)(nl - s) : size - pos;
        pos += n + 1;
        if (n > 0 && s[n - 1] == '\r') n--;
        if (n == 0 || (line == 1 && n >= 8 && memcmp(s, "#version", 8) == 0)) continue;
        size_t al, bl;
        const char *b;
        if (!split_merge(s, n, &al, &b, &bl)) {
            st = rs_err(err, RESID_E_FORMAT, "%s:%zu: merge \"%.*s\" has no space", merges_path,
                        line, (int)(n > 64 ? 64 : n), s);
            break;
        }
        st = rs_tok_add_merge(t, s, al, b, bl, rank++, err);
    }
    free(txt);
    int32_t eot = rs_tok_lookup(t, "<|endoftext|>", 13);
    if (eot >= 0) {
        t->type[eot] = RS_TOK_CONTROL;
        t->bos = t->eos = eot;
    }
    t->add_bos = false;
    read_tokenizer_config(t, vocab_path);
    if (st == RESID_OK) st = rs_tok_finish(t, RS_REGEX_GPT2, vocab_path, err);
    if (st != RESID_OK) {
        resid_tokenizer_free(t);
        return st;
    }
    *out = t;
    return RESID_OK;
}

resid_status rs_tokenizer_from_vocab_merges(const char *vocab_path,
                                            const char *merges_path,
                                            resid_tokenizer **out,
                                            resid_error *err) {
    *out = NULL;
    cJSON *j;
    resid_status st = load_json(vocab_path, &j, err);
    if (st != RESID_OK) return st;
    st = vocab_merges_build(j, vocab_path, merges_path, out, err);
    cJSON_Delete(j);
    return st;
}

/* Looks through a pre_tokenizer / normalizer tree for a node of `type`. */
static const cJSON *find_node(const cJSON *j, const char *type, int depth) {
    if (!j || depth > 8) return NULL;
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(j, "type");
    if (cJSON_IsString(ty) && strcmp(ty->valuestring, type) == 0) return j;
    const char *lists[] = {"pretokenizers", "normalizers", "decoders"};
    for (int k = 0; k < 3; k++) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j, lists[k])) {
            const cJSON *r = find_node(e, type, depth + 1);
            if (r) return r;
        }
    }
    return NULL;
}

static bool is_spm_space(const cJSON *s) {
    return cJSON_IsString(s) && strcmp(s->valuestring, "\xE2\x96\x81") == 0;
}

static resid_status hf_build(const cJSON *j, const char *path, resid_tokenizer **out,
                             resid_error *err) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsObject(model))
        return rs_err(err, RESID_E_FORMAT, "%s: no \"model\" object", path);
    if (!cJSON_IsString(mtype) || strcmp(mtype->valuestring, "BPE") != 0)
        return rs_err(err, RESID_E_UNSUPPORTED, "%s: model type \"%s\" is not supported (BPE)",
                      path, cJSON_IsString(mtype) ? mtype->valuestring : "?");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(j, "normalizer");
    const cJSON *metaspace = find_node(pre, "Metaspace", 0);
    const cJSON *prepend = find_node(norm, "Prepend", 0);
    bool spm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")) ||
               metaspace != NULL || prepend != NULL;
    resid_tokenizer_kind kind = spm ? RESID_TOKENIZER_SPM : RESID_TOKENIZER_BPE;
    const char *regex = NULL;
    if (!spm) {
        const cJSON *split = find_node(pre, "Split", 0);
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex");
        if (cJSON_IsString(re))
            regex = re->valuestring;
        else if (find_node(pre, "ByteLevel", 0))
            regex = RS_REGEX_GPT2;
        else
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: BPE without a ByteLevel or Split pre-tokenizer is not supported",
                          path);
    }
    resid_tokenizer *t;
    resid_status st = vocab_from_json(cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                                      cJSON_GetObjectItemCaseSensitive(j, "added_tokens"), kind,
                                      path, &t, err);
    if (st != RESID_OK) return st;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(unk)) {
        t->unk = rs_tok_lookup(t, unk->valuestring, strlen(unk->valuestring));
        if (t->unk >= 0) t->type[t->unk] = RS_TOK_UNKNOWN;
    }
    if (spm) {
        t->scores_from_merges = true;
        for (int32_t i = 0; i < t->n_vocab; i++) {
            t->score[i] = -INFINITY;
            size_t pl = t->piece_len[i];
            const char *p = t->arena + t->piece_off[i];
            if (t->type[i] == RS_TOK_NORMAL && pl == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>')
                t->type[i] = RS_TOK_BYTE;
        }
        /* Prepend "▁" in the normalizer, or a Metaspace that prepends. */
        bool add = prepend && is_spm_space(cJSON_GetObjectItemCaseSensitive(prepend, "prepend"));
        if (metaspace) {
            const cJSON *sch = cJSON_GetObjectItemCaseSensitive(metaspace, "prepend_scheme");
            const cJSON *aps = cJSON_GetObjectItemCaseSensitive(metaspace, "add_prefix_space");
            add = cJSON_IsString(sch) ? strcmp(sch->valuestring, "never") != 0 : !cJSON_IsFalse(aps);
        }
        t->add_space_prefix = add;
    }
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    int32_t rank = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, merges) {
        if (st != RESID_OK) break;
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(e)) {
            a = e->valuestring;
            if (!split_merge(a, strlen(a), &al, &b, &bl)) {
                st = rs_err(err, RESID_E_FORMAT, "%s: merge %d \"%.64s\" has no space", path, rank, a);
                break;
            }
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            al = strlen(a);
            bl = strlen(b);
        } else {
            st = rs_err(err, RESID_E_FORMAT, "%s: merge %d is neither \"a b\" nor [a, b]", path, rank);
            break;
        }
        st = rs_tok_add_merge(t, a, al, b, bl, rank, err);
        if (spm && st == RESID_OK) {
            /* SentencePiece scores from merge ranks: earlier merge first */
            char tmp[4096];
            if (al + bl <= sizeof tmp) {
                memcpy(tmp, a, al);
                memcpy(tmp + al, b, bl);
                int32_t id = rs_tok_lookup(t, tmp, al + bl);
                if (id >= 0 && (isinf(t->score[id]) || t->score[id] < -(float)rank))
                    t->score[id] = -(float)rank;
            }
        }
        rank++;
    }
    /* BOS: the first special token of the post-processor's single template. */
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(j, "post_processor");
    const cJSON *tp = find_node(post, "TemplateProcessing", 0);
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(tp, "single"), 0);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
    const cJSON *sp_id = cJSON_GetObjectItemCaseSensitive(sp, "id");
    t->add_bos = false;
    if (cJSON_IsString(sp_id)) {
        int32_t id = rs_tok_lookup(t, sp_id->valuestring, strlen(sp_id->valuestring));
        if (id >= 0) {
            t->bos = id;
            t->add_bos = true;
        }
    }
    read_tokenizer_config(t, path);
    guess_bos_eos(t);
    if (st == RESID_OK) st = rs_tok_finish(t, regex, path, err);
    if (st != RESID_OK) {
        resid_tokenizer_free(t);
        return st;
    }
    *out = t;
    return RESID_OK;
}

resid_status rs_tokenizer_from_hf_json(const char *path, resid_tokenizer **out,
                                       resid_error *err) {
    *out = NULL;
    cJSON *j;
    resid_status st = load_json(path, &j, err);
    if (st != RESID_OK) return st;
    st = hf_build(j, path, out, err);
    cJSON_Delete(j);
    return st;
}

/* ------------------------------------------------------------------------- */
/* Opening by path                                                           */
/* ------------------------------------------------------------------------- */

/* merges.txt (or vocab.bpe) beside a vocab.json / encoder.json. */
static char *find_merges(const char *vocab_path) {
    char *dir = rs_path_dirname(vocab_path);
    if (!dir) return NULL;
    const char *names[] = {"merges.txt", "vocab.bpe"};
    for (int k = 0; k < 2; k++) {
        char *p = rs_path_join(dir, names[k]);
        if (p && rs_path_exists(p)) {
            free(dir);
            return p;
        }
        free(p);
    }
    free(dir);
    return NULL;
}

static resid_status open_json(const char *path, resid_tokenizer **out, resid_error *err) {
    cJSON *j;
    resid_status st = load_json(path, &j, err);
    if (st != RESID_OK) return st;
    if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "model"))) {
        st = hf_build(j, path, out, err);
    } else {
        char *merges = find_merges(path);
        if (!merges)
            st = rs_err(err, RESID_E_IO, "%s: a vocab.json needs merges.txt (or vocab.bpe) beside it",
                        path);
        else
            st = vocab_merges_build(j, path, merges, out, err);
        free(merges);
    }
    cJSON_Delete(j);
    return st;
}

resid_status resid_tokenizer_open(const char *path, resid_tokenizer **out,
                                  resid_error *err) {
    if (out) *out = NULL;
    if (!path || !out) return rs_err(err, RESID_E_ARG, "tokenizer_open: NULL argument");
    if (rs_path_is_dir(path)) {
        const char *names[] = {"tokenizer.json", "vocab.json", "encoder.json", "tokenizer.bin"};
        for (int k = 0; k < 4; k++) {
            char *p = rs_path_join(path, names[k]);
            if (!p) return rs_err(err, RESID_E_NOMEM, "%s: out of memory", path);
            char *merges = (k == 1 || k == 2) ? find_merges(p) : NULL;
            bool ok = rs_path_exists(p) && (k == 0 || k == 3 || merges != NULL);
            free(merges);
            if (ok) {
                resid_status st = resid_tokenizer_open(p, out, err);
                free(p);
                return st;
            }
            free(p);
        }
        return rs_err(err, RESID_E_IO,
                      "%s: no tokenizer.json, vocab.json + merges.txt or tokenizer.bin in this folder",
                      path);
    }
    rs_mapped m;
    resid_status st = rs_map_file(path, &m, err);
    if (st != RESID_OK) return st;
    size_t i = 0;
    while (i < m.size && (m.data[i] == ' ' || m.data[i] == '\n' || m.data[i] == '\r' ||
                          m.data[i] == '\t'))
        i++;
    if (m.size >= 4 && memcmp(m.data, "GGUF", 4) == 0) {
        rs_unmap(&m);
        rs_gguf g;
        st = rs_gguf_open(path, &g, err);
        if (st != RESID_OK) return st;
        st = rs_tokenizer_from_gguf(&g, out, err);
        rs_gguf_close(&g);
        return st;
    }
    if (i < m.size && m.data[i] == '{') {
        rs_unmap(&m);
        return open_json(path, out, err);
    }
    st = l2c_build(m.data, m.size, path, out, err);
    rs_unmap(&m);
    return st;
}
