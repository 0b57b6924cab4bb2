/*
 * test_gguf.c - the GGUF reader against the fixtures, and against corrupt
 * images built in memory from a real file.
 *
 * References:
 *  - quant/dequant-ref.json: for every tensor of the 7 tiny-llama-256 files,
 *    the ggml type, ne, byte size, data offset, first 16 values, sum, sum of
 *    squares, min, max and the sha256 of all dequantised values (made with
 *    gguf-py and cross-checked bitwise against ggml's to_float).
 *  - gpt2/encoder.json (token -> id) for the 50257 strings of the GPT-2
 *    vocab GGUF; tinyllamas/stories260K.bin for the bytes of the derived
 *    GGUF's token embedding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "format/gguf.h"
#include "testutil.h"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                */
/* ---------------------------------------------------------------------- */

static rs_gguf open_gguf(const char *rel) {
    char *p = tu_model_path(rel);
    rs_gguf g;
    resid_error err = {0};
    if (rs_gguf_open(p, &g, &err) != RESID_OK) {
        print_error("rs_gguf_open(%s): %s\n", p, err.msg);
        fail();
    }
    free(p);
    return g;
}

static bool str_eq(const char *s, uint64_t len, const char *want) {
    return len == strlen(want) && memcmp(s, want, len) == 0;
}

static void assert_kv_str(const rs_gguf *g, const char *key, const char *want) {
    const char *s;
    uint64_t len;
    if (!rs_gguf_get_str(g, key, &s, &len)) {
        print_error("key %s missing or not a string\n", key);
        fail();
    }
    if (!str_eq(s, len, want)) {
        print_error("key %s = '%.*s', want '%s'\n", key, (int)len, s, want);
        fail();
    }
}

static void assert_kv_i64(const rs_gguf *g, const char *key, int64_t want) {
    int64_t v;
    if (!rs_gguf_get_i64(g, key, &v)) {
        print_error("key %s missing or not an integer\n", key);
        fail();
    }
    assert_int_equal(v, want);
}

/* g's architecture, ARCH.embedding_length and ARCH.block_count, BOS id,
 * vocabulary size and tensor count. */
static void check_model_kvs(const rs_gguf *g, const char *arch, int64_t d_model, int64_t n_layer,
                            int64_t bos, uint64_t n_vocab, int64_t n_tensors) {
    char key[64];
    assert_kv_str(g, "general.architecture", arch);
    snprintf(key, sizeof key, "%s.embedding_length", arch);
    assert_kv_i64(g, key, d_model);
    snprintf(key, sizeof key, "%s.block_count", arch);
    assert_kv_i64(g, key, n_layer);
    assert_kv_i64(g, "tokenizer.ggml.bos_token_id", bos);
    assert_int_equal(rs_gguf_find(g, "tokenizer.ggml.tokens")->arr_n, n_vocab);
    assert_int_equal(g->n_tensors, n_tensors);
}

/* The tensor `name` of g, which must exist with n_rows x n_cols. */
static const rs_tensor *shaped_tensor(const rs_gguf *g, const char *name, int64_t n_rows,
                                      int64_t n_cols) {
    const rs_tensor *t = rs_gguf_tensor(g, name);
    assert_non_null(t);
    assert_int_equal(t->n_rows, n_rows);
    assert_int_equal(t->n_cols, n_cols);
    return t;
}

/* ggml type id of a resid dtype (the inverse of the reader's mapping). */
static int ggml_id(resid_dtype t) {
    switch (t) {
    case RESID_DTYPE_F32: return 0;
    case RESID_DTYPE_F16: return 1;
    case RESID_DTYPE_Q4_0: return 2;
    case RESID_DTYPE_Q8_0: return 8;
    case RESID_DTYPE_Q4_K: return 12;
    case RESID_DTYPE_Q6_K: return 14;
    case RESID_DTYPE_BF16: return 30;
    default: return -1;
    }
}

/* memmem without _GNU_SOURCE. */
static const uint8_t *find_bytes(const uint8_t *hay, size_t n, const void *needle,
                                 size_t m) {
    if (m == 0 || m > n) return NULL;
    for (size_t i = 0; i + m <= n; i++)
        if (hay[i] == *(const uint8_t *)needle && memcmp(hay + i, needle, m) == 0)
            return hay + i;
    return NULL;
}

static void sha256_hex(const void *data, size_t n, char out[65]) {
    unsigned char md[32];
    unsigned int len = 0;
    assert_true(EVP_Digest(data, n, md, &len, EVP_sha256(), NULL) == 1);
    assert_int_equal(len, 32);
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", md[i]);
}

/* ---------------------------------------------------------------------- */
/* The 7 quantised files vs dequant-ref.json                              */
/* ---------------------------------------------------------------------- */

static const char *QUANT_FILES[] = {
    "tiny-llama-256.f32.gguf",  "tiny-llama-256.f16.gguf",    "tiny-llama-256.bf16.gguf",
    "tiny-llama-256.q8_0.gguf", "tiny-llama-256.q4_0.gguf",   "tiny-llama-256.q4_k_m.gguf",
    "tiny-llama-256.q6_k.gguf",
};

static void test_quant_files_vs_reference(void **state) {
    (void)state;
    cJSON *ref = tu_load_json("quant/dequant-ref.json");
    cJSON *files = cJSON_GetObjectItemCaseSensitive(ref, "files");
    assert_non_null(files);
    int n_files = 0, n_checked = 0, n_sha_ok = 0;
    for (size_t f = 0; f < sizeof QUANT_FILES / sizeof QUANT_FILES[0]; f++) {
        char rel[256];
        snprintf(rel, sizeof rel, "quant/%s", QUANT_FILES[f]);
        rs_gguf g = open_gguf(rel);
        cJSON *jf = cJSON_GetObjectItemCaseSensitive(files, QUANT_FILES[f]);
        assert_non_null(jf);
        assert_int_equal(g.version, 3);
        assert_int_equal(g.alignment, 32);
        assert_int_equal(g.map.size,
                         (size_t)cJSON_GetObjectItemCaseSensitive(jf, "bytes")->valuedouble);
        assert_kv_i64(&g, "general.file_type",
                      (int64_t)cJSON_GetObjectItemCaseSensitive(jf, "general.file_type")
                          ->valuedouble);
        assert_kv_str(&g, "general.architecture", "llama");
        assert_kv_i64(&g, "llama.embedding_length", 256);
        assert_kv_i64(&g, "llama.block_count", 2);

        cJSON *jt = cJSON_GetObjectItemCaseSensitive(jf, "tensors");
        assert_int_equal(g.n_tensors, cJSON_GetArraySize(jt));
        cJSON *e;
        cJSON_ArrayForEach(e, jt) {
            const rs_tensor *t = rs_gguf_tensor(&g, e->string);
            if (!t) {
                print_error("%s: tensor %s missing\n", rel, e->string);
                fail();
            }
            assert_int_equal(ggml_id(t->dtype),
                             cJSON_GetObjectItemCaseSensitive(e, "ggml_type_id")->valueint);
            cJSON *ne = cJSON_GetObjectItemCaseSensitive(e, "ne");
            int64_t rows = 1;
            for (int d = 1; d < cJSON_GetArraySize(ne); d++)
                rows *= (int64_t)cJSON_GetArrayItem(ne, d)->valuedouble;
            assert_int_equal(t->n_cols, (int64_t)cJSON_GetArrayItem(ne, 0)->valuedouble);
            assert_int_equal(t->n_rows, rows);
            assert_false(t->transposed);
            assert_int_equal(t->n_bytes,
                             (size_t)cJSON_GetObjectItemCaseSensitive(e, "n_bytes")->valuedouble);
            assert_int_equal((const uint8_t *)t->data - g.map.data,
                             (int64_t)cJSON_GetObjectItemCaseSensitive(e, "data_offset")
                                 ->valuedouble);

            const int64_t n = t->n_rows * t->n_cols;
            float *v = malloc((size_t)n * sizeof(float));
            assert_non_null(v);
            rs_tensor_rows(t, 0, t->n_rows, v);

            cJSON *first = cJSON_GetObjectItemCaseSensitive(e, "first16");
            for (int i = 0; i < cJSON_GetArraySize(first) && i < n; i++) {
                float want = (float)cJSON_GetArrayItem(first, i)->valuedouble;
                if (memcmp(&want, &v[i], 4) != 0) {
                    print_error("%s %s: value %d is %.9g, want %.9g\n", rel, e->string, i,
                                v[i], want);
                    fail();
                }
            }
            double sum = 0, sum_sq = 0;
            float mn = v[0], mx = v[0];
            for (int64_t i = 0; i < n; i++) {
                sum += v[i];
                sum_sq += (double)v[i] * v[i];
                if (v[i] < mn) mn = v[i];
                if (v[i] > mx) mx = v[i];
            }
            double want_sum = cJSON_GetObjectItemCaseSensitive(e, "sum")->valuedouble;
            double want_sq = cJSON_GetObjectItemCaseSensitive(e, "sum_sq")->valuedouble;
            /* sum can be near 0: relative to the sum of |values| (<= sqrt(n*sum_sq)) */
            double scale = sqrt((double)n * want_sq);
            if (fabs(sum - want_sum) > 1e-9 * scale || fabs(sum_sq - want_sq) > 1e-9 * want_sq) {
                print_error("%s %s: sum %.17g (want %.17g), sum_sq %.17g (want %.17g)\n", rel,
                            e->string, sum, want_sum, sum_sq, want_sq);
                fail();
            }
            assert_true(mn == (float)cJSON_GetObjectItemCaseSensitive(e, "min")->valuedouble);
            assert_true(mx == (float)cJSON_GetObjectItemCaseSensitive(e, "max")->valuedouble);

            char hex[65];
            sha256_hex(v, (size_t)n * sizeof(float), hex);
            const char *want_hex =
                cJSON_GetObjectItemCaseSensitive(e, "f32_le_sha256")->valuestring;
            if (strcmp(hex, want_hex) != 0) {
                print_error("%s %s (ggml type %d): sha256 %s, want %s\n", rel, e->string,
                            ggml_id(t->dtype), hex, want_hex);
                fail();
            }
            n_sha_ok++;
            n_checked++;
            free(v);
        }
        rs_gguf_close(&g);
        n_files++;
    }
    print_message("%d files, %d tensors: type/ne/bytes/offset/first16/sum/min/max ok, "
                  "%d sha256-identical\n",
                  n_files, n_checked, n_sha_ok);
    assert_int_equal(n_checked, 7 * 21);
    cJSON_Delete(ref);
}

/* ---------------------------------------------------------------------- */
/* Other fixtures: metadata                                               */
/* ---------------------------------------------------------------------- */

static void test_vocab_gpt2(void **state) {
    (void)state;
    rs_gguf g = open_gguf("llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
    assert_int_equal(g.n_tensors, 0);
    assert_int_equal(g.n_kv, 16);
    assert_kv_str(&g, "general.architecture", "gpt2");
    assert_kv_str(&g, "tokenizer.ggml.model", "gpt2");
    assert_kv_str(&g, "tokenizer.ggml.pre", "gpt-2");
    assert_kv_i64(&g, "tokenizer.ggml.bos_token_id", 50256);
    assert_kv_i64(&g, "tokenizer.ggml.eos_token_id", 50256);
    assert_kv_i64(&g, "gpt2.embedding_length", 768);
    float eps;
    assert_true(rs_gguf_get_f32(&g, "gpt2.attention.layer_norm_epsilon", &eps));
    assert_true(eps == 1e-5f);

    const rs_gguf_kv *tok = rs_gguf_find(&g, "tokenizer.ggml.tokens");
    assert_non_null(tok);
    assert_int_equal(tok->type, RS_GGUF_ARRAY);
    assert_int_equal(tok->arr_type, RS_GGUF_STRING);
    assert_int_equal(tok->arr_n, 50257);
    const rs_gguf_kv *merges = rs_gguf_find(&g, "tokenizer.ggml.merges");
    assert_non_null(merges);
    assert_int_equal(merges->arr_n, 50000);
    const char *s;
    uint64_t len;
    assert_true(rs_gguf_arr_str(merges, 0, &s, &len));
    assert_true(str_eq(s, len, "Ġ t"));
    assert_false(rs_gguf_arr_str(tok, 50257, &s, &len));

    /* every token string equals encoder.json's, by id (random access) */
    cJSON *enc = tu_load_json("gpt2/encoder.json");
    int n = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, enc) {
        int id = e->valueint;
        assert_true(rs_gguf_arr_str(tok, (uint64_t)id, &s, &len));
        if (!str_eq(s, len, e->string)) {
            print_error("token %d: '%.*s', encoder.json has '%s'\n", id, (int)len, s,
                        e->string);
            fail();
        }
        n++;
    }
    assert_int_equal(n, 50257);
    print_message("gpt-2 vocab: 50257/50257 token strings equal encoder.json\n");

    const rs_gguf_kv *tt = rs_gguf_find(&g, "tokenizer.ggml.token_type");
    int64_t ty;
    assert_true(rs_gguf_arr_i64(tt, 50256, &ty));
    assert_int_equal(ty, 3); /* control */
    assert_true(rs_gguf_arr_i64(tt, 0, &ty));
    assert_int_equal(ty, 1); /* normal */
    cJSON_Delete(enc);
    rs_gguf_close(&g);
}

static void test_vocab_llama_spm(void **state) {
    (void)state;
    rs_gguf g = open_gguf("llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
    assert_int_equal(g.n_tensors, 0);
    assert_kv_str(&g, "general.architecture", "llama");
    assert_kv_i64(&g, "tokenizer.ggml.bos_token_id", 1);
    assert_kv_i64(&g, "tokenizer.ggml.eos_token_id", 2);
    assert_kv_i64(&g, "tokenizer.ggml.unknown_token_id", 0);
    assert_kv_i64(&g, "llama.embedding_length", 4096);
    bool b;
    assert_true(rs_gguf_get_bool(&g, "tokenizer.ggml.add_bos_token", &b));
    assert_true(b);
    assert_true(rs_gguf_get_bool(&g, "tokenizer.ggml.add_eos_token", &b));
    assert_false(b);
    /* wrong-kind getters fail */
    int64_t i;
    assert_false(rs_gguf_get_i64(&g, "tokenizer.ggml.add_bos_token", &i));
    assert_false(rs_gguf_get_i64(&g, "general.architecture", &i));
    assert_false(rs_gguf_get_i64(&g, "no.such.key", &i));

    const rs_gguf_kv *tok = rs_gguf_find(&g, "tokenizer.ggml.tokens");
    assert_int_equal(tok->arr_n, 32000);
    const char *s;
    uint64_t len;
    assert_true(rs_gguf_arr_str(tok, 1, &s, &len));
    assert_true(str_eq(s, len, "<s>"));
    assert_true(rs_gguf_arr_str(tok, 3, &s, &len));
    assert_true(str_eq(s, len, "<0x00>"));
    assert_true(rs_gguf_arr_str(tok, 31999, &s, &len));
    const rs_gguf_kv *sc = rs_gguf_find(&g, "tokenizer.ggml.scores");
    float f;
    assert_true(rs_gguf_arr_f32(sc, 0, &f));
    assert_true(f == 0.0f);
    assert_false(rs_gguf_arr_f32(sc, 32000, &f));
    assert_false(rs_gguf_arr_i64(sc, 0, &i)); /* float array: no integer view */
    rs_gguf_close(&g);
}

static void test_stories260k(void **state) {
    (void)state;
    rs_gguf g = open_gguf("derived/stories260K.gguf");
    check_model_kvs(&g, "llama", 64, 5, 1, 512, 1 + 5 * 9 + 1);
    assert_kv_i64(&g, "llama.attention.head_count_kv", 4);
    assert_null(rs_gguf_tensor(&g, "output.weight"));
    const rs_tensor *emb = shaped_tensor(&g, "token_embd.weight", 512, 64);
    shaped_tensor(&g, "blk.4.ffn_down.weight", 64, 172);

    /* the embedding bytes equal the llama2.c checkpoint's (after its
     * 7-int header), an independent copy of the same weights */
    char *p = tu_model_path("tinyllamas/stories260K.bin");
    size_t n;
    uint8_t *bin = tu_read_file(p, &n);
    assert_true(n >= 28 + emb->n_bytes);
    assert_int_equal(emb->n_bytes, 512 * 64 * 4);
    assert_memory_equal(bin + 28, emb->data, emb->n_bytes);
    free(bin);
    free(p);
    rs_gguf_close(&g);
}

static void test_tiny_gpt2(void **state) {
    (void)state;
    rs_gguf g = open_gguf("tiny-gpt2/model.gguf");
    check_model_kvs(&g, "gpt2", 64, 4, 50256, 50257, 52);
    shaped_tensor(&g, "blk.0.attn_qkv.weight", 192, 64);
    const rs_tensor *emb = rs_gguf_tensor(&g, "token_embd.weight");
    assert_int_equal(emb->n_rows, 50257);
    assert_int_equal(emb->dtype, RESID_DTYPE_F32);
    rs_gguf_close(&g);
}

/* ---------------------------------------------------------------------- */
/* A synthetic file with every value type                                 */
/* ---------------------------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_key(buf *b, const char *k, uint32_t type) {
    put_str(b, k);
    put_u32(b, type);
}

/* Builds a GGUF with one KV of each type, nested arrays, alignment 64 and
 * two tensors (F32 [4][3]... as ne [3,4] and Q8_0 ne [32,2]). */
static buf build_synthetic(uint32_t version, uint64_t alignment) {
    buf b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, version);
    put_u64(&b, 2);  /* tensors */
    put_u64(&b, 17); /* kv */
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int32_t i32 = -2000000000;
    float f32 = 1.5f;
    uint8_t bl = 1;
    uint64_t u64 = 0xFFFFFFFFFFFFFFFFull;
    int64_t i64 = -5000000000ll;
    double f64 = 0.25;
    put_key(&b, "t.u8", RS_GGUF_UINT8); put(&b, &u8, 1);
    put_key(&b, "t.i8", RS_GGUF_INT8); put(&b, &i8, 1);
    put_key(&b, "t.u16", RS_GGUF_UINT16); put(&b, &u16, 2);
    put_key(&b, "t.i16", RS_GGUF_INT16); put(&b, &i16, 2);
    put_key(&b, "t.u32", RS_GGUF_UINT32); put_u32(&b, 4000000000u);
    put_key(&b, "t.i32", RS_GGUF_INT32); put(&b, &i32, 4);
    put_key(&b, "t.f32", RS_GGUF_FLOAT32); put(&b, &f32, 4);
    put_key(&b, "t.bool", RS_GGUF_BOOL); put(&b, &bl, 1);
    put_key(&b, "t.str", RS_GGUF_STRING); put_str(&b, "hello");
    put_key(&b, "t.u64", RS_GGUF_UINT64); put(&b, &u64, 8);
    put_key(&b, "t.i64", RS_GGUF_INT64); put(&b, &i64, 8);
    put_key(&b, "t.f64", RS_GGUF_FLOAT64); put(&b, &f64, 8);
    put_key(&b, "t.arr_i16", RS_GGUF_ARRAY);
    put_u32(&b, RS_GGUF_INT16); put_u64(&b, 3);
    int16_t a16[3] = {-1, 2, -3};
    put(&b, a16, sizeof a16);
    put_key(&b, "t.arr_str", RS_GGUF_ARRAY);
    put_u32(&b, RS_GGUF_STRING); put_u64(&b, 3);
    put_str(&b, "a"); put_str(&b, ""); put_str(&b, "ccc");
    put_key(&b, "t.arr_arr", RS_GGUF_ARRAY); /* [[s, s], [1.0, 2.0, 3.0]] */
    put_u32(&b, RS_GGUF_ARRAY); put_u64(&b, 2);
    put_u32(&b, RS_GGUF_STRING); put_u64(&b, 2); put_str(&b, "x"); put_str(&b, "yy");
    put_u32(&b, RS_GGUF_FLOAT64); put_u64(&b, 3);
    double d3[3] = {1, 2, 3};
    put(&b, d3, sizeof d3);
    put_key(&b, "t.arr_empty", RS_GGUF_ARRAY);
    put_u32(&b, RS_GGUF_STRING); put_u64(&b, 0);
    put_key(&b, "general.alignment", RS_GGUF_UINT32); put_u32(&b, (uint32_t)alignment);
    /* tensor infos */
    put_str(&b, "w.f32");
    put_u32(&b, 2); put_u64(&b, 3); put_u64(&b, 4); put_u32(&b, 0); put_u64(&b, 0);
    put_str(&b, "w.q8");
    put_u32(&b, 3); put_u64(&b, 32); put_u64(&b, 1); put_u64(&b, 2);
    put_u32(&b, 8); put_u64(&b, alignment);
    while (b.n % alignment) put(&b, "\0", 1);
    for (int i = 0; i < 12; i++) {
        float v = (float)i;
        put(&b, &v, 4);
    }
    while (b.n % alignment) put(&b, "\0", 1);
    for (int r = 0; r < 2; r++) {
        uint16_t d = 0x3800; /* fp16 0.5 */
        put(&b, &d, 2);
        for (int i = 0; i < 32; i++) {
            int8_t q = (int8_t)(i - 16 + r);
            put(&b, &q, 1);
        }
    }
    return b;
}

static void test_synthetic_all_types(void **state) {
    (void)state;
    for (uint32_t version = 2; version <= 3; version++) {
        buf b = build_synthetic(version, 64);
        rs_gguf g;
        resid_error err = {0};
        resid_status st = rs_gguf_parse(b.p, b.n, "synthetic.gguf", &g, &err);
        if (st) print_error("%s\n", err.msg);
        assert_int_equal(st, RESID_OK);
        assert_int_equal(g.version, version);
        assert_int_equal(g.alignment, 64);
        int64_t i;
        float f;
        assert_true(rs_gguf_get_i64(&g, "t.u8", &i)); assert_int_equal(i, 200);
        assert_true(rs_gguf_get_i64(&g, "t.i8", &i)); assert_int_equal(i, -100);
        assert_true(rs_gguf_get_i64(&g, "t.u16", &i)); assert_int_equal(i, 60000);
        assert_true(rs_gguf_get_i64(&g, "t.i16", &i)); assert_int_equal(i, -30000);
        assert_true(rs_gguf_get_i64(&g, "t.u32", &i)); assert_int_equal(i, 4000000000ll);
        assert_true(rs_gguf_get_i64(&g, "t.i32", &i)); assert_int_equal(i, -2000000000ll);
        assert_true(rs_gguf_get_i64(&g, "t.i64", &i)); assert_int_equal(i, -5000000000ll);
        assert_false(rs_gguf_get_i64(&g, "t.u64", &i)); /* does not fit */
        assert_false(rs_gguf_get_i64(&g, "t.f32", &i));
        assert_true(rs_gguf_get_f32(&g, "t.f32", &f)); assert_true(f == 1.5f);
        assert_true(rs_gguf_get_f32(&g, "t.f64", &f)); assert_true(f == 0.25f);
        assert_false(rs_gguf_get_f32(&g, "t.i32", &f));
        bool bl;
        assert_true(rs_gguf_get_bool(&g, "t.bool", &bl)); assert_true(bl);
        const char *s;
        uint64_t len;
        assert_true(rs_gguf_get_str(&g, "t.str", &s, &len));
        assert_true(str_eq(s, len, "hello"));
        const rs_gguf_kv *a = rs_gguf_find(&g, "t.arr_i16");
        assert_true(rs_gguf_arr_i64(a, 2, &i)); assert_int_equal(i, -3);
        assert_true(rs_gguf_arr_f32(a, 1, &f)); assert_true(f == 2.0f);
        assert_false(rs_gguf_arr_str(a, 0, &s, &len));
        a = rs_gguf_find(&g, "t.arr_str");
        assert_int_equal(a->arr_n, 3);
        assert_true(rs_gguf_arr_str(a, 2, &s, &len)); assert_true(str_eq(s, len, "ccc"));
        assert_true(rs_gguf_arr_str(a, 1, &s, &len)); assert_int_equal(len, 0);
        assert_true(rs_gguf_arr_str(a, 0, &s, &len)); assert_true(str_eq(s, len, "a"));
        a = rs_gguf_find(&g, "t.arr_arr");
        assert_int_equal(a->arr_type, RS_GGUF_ARRAY);
        assert_int_equal(a->arr_n, 2);
        assert_false(rs_gguf_arr_str(a, 0, &s, &len));
        a = rs_gguf_find(&g, "t.arr_empty");
        assert_int_equal(a->arr_n, 0);
        assert_false(rs_gguf_arr_str(a, 0, &s, &len));

        assert_int_equal(g.n_tensors, 2);
        assert_int_equal(g.data_offset % 64, 0);
        const rs_tensor *t = shaped_tensor(&g, "w.f32", 4, 3);
        assert_true(rs_tensor_get(t, 2, 1) == 7.0f);
        t = shaped_tensor(&g, "w.q8", 2, 32);
        assert_int_equal(t->dtype, RESID_DTYPE_Q8_0);
        assert_int_equal(t->n_bytes, 68);
        assert_ptr_equal(t->data, b.p + g.data_offset + 64);
        assert_true(rs_tensor_get(t, 1, 0) == -7.5f); /* (0-16+1)*0.5 */
        rs_gguf_close(&g);

        /* bad alignments */
        uint64_t bad_align[] = {0, 3, 48};
        for (int k = 0; k < 3; k++) {
            free(b.p);
            b = build_synthetic(version, bad_align[k] ? bad_align[k] : 32);
            if (!bad_align[k]) { /* patch the alignment value to 0 */
                uint8_t *kpos = (uint8_t *)find_bytes(b.p, b.n, "general.alignment", 17);
                assert_non_null(kpos);
                memset(kpos + 17 + 4, 0, 4);
            }
            st = rs_gguf_parse(b.p, b.n, "synthetic.gguf", &g, &err);
            assert_int_equal(st, RESID_E_FORMAT);
            assert_non_null(strstr(err.msg, "alignment"));
        }
        free(b.p);
    }
}

/* ---------------------------------------------------------------------- */
/* Corrupt images                                                         */
/* ---------------------------------------------------------------------- */

/* Parses an exact-size heap copy (so ASan sees any overread) and returns
 * the status; on failure checks the message is non-empty and names the
 * label. */
static resid_status parse_copy(const uint8_t *data, size_t n, resid_error *err) {
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    if (n) memcpy(copy, data, n);
    rs_gguf g;
    memset(err, 0, sizeof *err);
    resid_status st = rs_gguf_parse(copy, n, "bad.gguf", &g, err);
    if (st == RESID_OK) {
        /* touch every tensor's last byte: it must lie inside the copy */
        volatile uint8_t sink = 0;
        for (int64_t i = 0; i < g.n_tensors; i++)
            if (g.tensors[i].n_bytes)
                sink ^= ((const uint8_t *)g.tensors[i].data)[g.tensors[i].n_bytes - 1];
        (void)sink;
        rs_gguf_close(&g);
    } else {
        assert_int_equal(err->code, st);
        assert_true(strlen(err->msg) > 0);
        if (!strstr(err->msg, "bad.gguf")) {
            print_error("message does not name the file: %s\n", err->msg);
            fail();
        }
        /* g is zeroed on failure */
        assert_null(g.kv);
        assert_null(g.tensors);
    }
    free(copy);
    return st;
}

/* Expects parse failure with `code` and (if not NULL) `needle` in the message. */
static void expect_fail(const uint8_t *data, size_t n, resid_status code,
                        const char *needle, const char *what) {
    resid_error err;
    resid_status st = parse_copy(data, n, &err);
    if (st != code || (needle && !strstr(err.msg, needle))) {
        print_error("%s: got status %d (%s), want %d with '%s'\n", what, st, err.msg, code,
                    needle ? needle : "");
        fail();
    }
    print_message("  %-32s -> %s\n", what, err.msg);
}

static uint8_t *load_fixture(const char *rel, size_t *n) {
    char *p = tu_model_path(rel);
    uint8_t *d = tu_read_file(p, n);
    free(p);
    return d;
}

/* The fixture rel (*d, *n bytes, malloc'd) parsed as a valid image into
 * *g, which views *d. */
static void load_valid(const char *rel, uint8_t **d, size_t *n, rs_gguf *g) {
    *d = load_fixture(rel, n);
    resid_error err;
    assert_int_equal(rs_gguf_parse(*d, *n, "good", g, &err), RESID_OK);
}

/* Offset of tensor info `name` (its u64 name length) in the image. */
static size_t find_tinfo(const uint8_t *d, size_t n, const char *name) {
    size_t len = strlen(name);
    uint8_t pat[256];
    uint64_t l64 = len;
    memcpy(pat, &l64, 8);
    memcpy(pat + 8, name, len);
    const uint8_t *hit = find_bytes(d, n, pat, 8 + len);
    assert_non_null(hit);
    return (size_t)(hit - d);
}

static void put_u64_at(uint8_t *d, size_t off, uint64_t v) { memcpy(d + off, &v, 8); }
static void put_u32_at(uint8_t *d, size_t off, uint32_t v) { memcpy(d + off, &v, 4); }

static void test_truncation(void **state) {
    (void)state;
    size_t n;
    uint8_t *d;
    rs_gguf g;
    load_valid("derived/stories260K.gguf", &d, &n, &g);
    resid_error err;
    size_t meta_end = (size_t)g.data_offset;
    size_t data_end = 0;
    for (int64_t i = 0; i < g.n_tensors; i++) {
        size_t e = (size_t)((const uint8_t *)g.tensors[i].data - d) + g.tensors[i].n_bytes;
        if (e > data_end) data_end = e;
    }
    /* every prefix through the header, KVs and tensor infos fails */
    int n_fail = 0;
    for (size_t k = 0; k <= meta_end; k++) {
        resid_status st = parse_copy(d, k, &err);
        if (st == RESID_OK) {
            print_error("truncated at %zu of %zu: parse succeeded\n", k, n);
            fail();
        }
        n_fail++;
    }
    /* each tensor's first and last byte, and random offsets in the data */
    for (int64_t i = 0; i < g.n_tensors; i++) {
        size_t s = (size_t)((const uint8_t *)g.tensors[i].data - d);
        size_t ks[2] = {s + 1, s + g.tensors[i].n_bytes - 1};
        for (int j = 0; j < 2; j++) {
            assert_int_not_equal(parse_copy(d, ks[j], &err), RESID_OK);
            assert_non_null(strstr(err.msg, "past the end"));
            n_fail++;
        }
    }
    srand(1234);
    for (int r = 0; r < 200; r++) {
        size_t k = (size_t)rand() % data_end;
        assert_int_not_equal(parse_copy(d, k, &err), RESID_OK);
        n_fail++;
    }
    assert_int_equal(parse_copy(d, data_end, &err), RESID_OK);
    print_message("stories260K.gguf: %d truncations (0..%zu every byte, tensor edges, "
                  "200 random) all rejected\n",
                  n_fail, meta_end);
    rs_gguf_close(&g);
    free(d);

    /* the big string arrays of the GPT-2 vocab: 300 random prefixes */
    d = load_fixture("llama.cpp-vocab/ggml-vocab-gpt-2.gguf", &n);
    for (int r = 0; r < 300; r++) {
        size_t k = (size_t)rand() % n;
        assert_int_not_equal(parse_copy(d, k, &err), RESID_OK);
    }
    expect_fail(d, n - 1, RESID_E_FORMAT, "truncated", "vocab, last byte missing");
    free(d);
}

static void test_corruptions(void **state) {
    (void)state;
    size_t n;
    uint8_t *orig = load_fixture("derived/stories260K.gguf", &n);
    uint8_t *d = malloc(n);
#define RESET() memcpy(d, orig, n)

    RESET(); d[0] = 'X';
    expect_fail(d, n, RESID_E_FORMAT, "magic", "bad magic");
    expect_fail(d, 3, RESID_E_FORMAT, "magic", "3-byte file");
    expect_fail(d, 0, RESID_E_FORMAT, "magic", "empty image");
    RESET(); put_u32_at(d, 4, 1);
    expect_fail(d, n, RESID_E_UNSUPPORTED, "version 1", "version 1");
    RESET(); put_u32_at(d, 4, 4);
    expect_fail(d, n, RESID_E_UNSUPPORTED, "version 4", "version 4");
    RESET(); put_u32_at(d, 4, 0x03000000);
    expect_fail(d, n, RESID_E_UNSUPPORTED, "big-endian", "big-endian version");
    RESET(); put_u32_at(d, 4, 2);
    resid_error err;
    assert_int_equal(parse_copy(d, n, &err), RESID_OK); /* v2 has the same layout */

    RESET(); put_u64_at(d, 8, 1ull << 40);
    expect_fail(d, n, RESID_E_FORMAT, "tensors", "n_tensors huge");
    RESET(); put_u64_at(d, 8, UINT64_MAX);
    expect_fail(d, n, RESID_E_FORMAT, "tensors", "n_tensors = 2^64-1");
    RESET(); put_u64_at(d, 16, 1ull << 50);
    expect_fail(d, n, RESID_E_FORMAT, "key/value", "n_kv huge");
    RESET(); put_u64_at(d, 8, 48); /* one tensor more than there are */
    expect_fail(d, n, RESID_E_FORMAT, NULL, "n_tensors + 1");
    RESET(); put_u64_at(d, 16, 19); /* one KV more */
    expect_fail(d, n, RESID_E_FORMAT, NULL, "n_kv + 1");

    /* string lengths that lie: the first key, and general.name's value */
    RESET(); put_u64_at(d, 24, UINT64_MAX);
    expect_fail(d, n, RESID_E_FORMAT, "claims", "key length 2^64-1");
    RESET(); put_u64_at(d, 24, n);
    expect_fail(d, n, RESID_E_FORMAT, "claims", "key length = file size");
    const uint8_t *name_key = find_bytes(orig, n, "general.name", 12);
    assert_non_null(name_key);
    size_t name_val = (size_t)(name_key - orig) + 12 + 4;
    RESET(); put_u64_at(d, name_val, 1ull << 62);
    expect_fail(d, n, RESID_E_FORMAT, "general.name", "string value length huge");
    RESET(); put_u32_at(d, name_val - 4, 99);
    expect_fail(d, n, RESID_E_FORMAT, "unknown value type", "unknown value type");
    /* a NUL inside a key */
    RESET(); d[(size_t)(name_key - orig) + 3] = 0;
    expect_fail(d, n, RESID_E_FORMAT, "NUL", "NUL in a key");
    /* duplicate key: eos_token_id renamed to bos_token_id (same length) */
    const uint8_t *bos = find_bytes(orig, n, "tokenizer.ggml.bos_token_id", 27);
    const uint8_t *eos = find_bytes(orig, n, "tokenizer.ggml.eos_token_id", 27);
    assert_non_null(bos);
    assert_non_null(eos);
    RESET(); memcpy(d + (eos - orig), "tokenizer.ggml.bos_token_id", 27);
    expect_fail(d, n, RESID_E_FORMAT, "duplicate key", "duplicate key");

    /* array counts that lie */
    const uint8_t *tok_key = find_bytes(orig, n, "tokenizer.ggml.tokens", 21);
    assert_non_null(tok_key);
    size_t tok_n = (size_t)(tok_key - orig) + 21 + 4 + 4; /* key, type, arr type */
    RESET(); put_u64_at(d, tok_n, 1ull << 60);
    expect_fail(d, n, RESID_E_FORMAT, "strings", "string array count huge");
    RESET(); put_u64_at(d, tok_n, 513);
    expect_fail(d, n, RESID_E_FORMAT, NULL, "string array count + 1");
    RESET(); put_u32_at(d, tok_n - 4, 77);
    expect_fail(d, n, RESID_E_FORMAT, "unknown type", "array of unknown type");
    const uint8_t *sc_key = find_bytes(orig, n, "tokenizer.ggml.scores", 21);
    assert_non_null(sc_key);
    size_t sc_n = (size_t)(sc_key - orig) + 21 + 4 + 4;
    RESET(); put_u64_at(d, sc_n, 1ull << 62);
    expect_fail(d, n, RESID_E_FORMAT, "does not fit", "float array count huge");
    RESET(); put_u64_at(d, sc_n, UINT64_MAX / 2 + 1); /* count * 4 wraps */
    expect_fail(d, n, RESID_E_FORMAT, "does not fit", "float array count wraps");
    RESET(); put_u32_at(d, sc_n - 4, RS_GGUF_ARRAY); /* nested arrays, garbage */
    expect_fail(d, n, RESID_E_FORMAT, NULL, "float array retyped as arrays");

    /* tensor infos */
    size_t ti = find_tinfo(orig, n, "blk.0.attn_q.weight");
    size_t nd_at = ti + 8 + 19, ne_at = nd_at + 4, ty_at = ne_at + 16, off_at = ty_at + 4;
    {
        uint64_t ne0, ne1;
        memcpy(&ne0, orig + ne_at, 8);
        memcpy(&ne1, orig + ne_at + 8, 8);
        assert_int_equal(ne0, 64);
        assert_int_equal(ne1, 64);
    }
    RESET(); put_u32_at(d, nd_at, 5);
    expect_fail(d, n, RESID_E_FORMAT, "dimensions", "n_dims 5");
    RESET(); put_u32_at(d, nd_at, 0);
    expect_fail(d, n, RESID_E_FORMAT, "dimensions", "n_dims 0");
    RESET(); put_u64_at(d, ne_at, 1ull << 40); put_u64_at(d, ne_at + 8, 1ull << 40);
    expect_fail(d, n, RESID_E_FORMAT, "overflows", "ne product overflow");
    RESET(); put_u64_at(d, ne_at, UINT64_MAX);
    expect_fail(d, n, RESID_E_FORMAT, "too large", "ne[0] = 2^64-1");
    RESET(); put_u64_at(d, ne_at + 8, 1ull << 30);
    expect_fail(d, n, RESID_E_FORMAT, "past the end", "ne[1] too big for the file");
    RESET(); put_u32_at(d, ty_at, 13);
    expect_fail(d, n, RESID_E_UNSUPPORTED, "'blk.0.attn_q.weight' has ggml type 13 (Q5_K)",
                "unknown ggml type (Q5_K)");
    RESET(); put_u32_at(d, ty_at, 1000);
    expect_fail(d, n, RESID_E_UNSUPPORTED, "1000", "ggml type 1000");
    RESET(); put_u64_at(d, off_at, n);
    expect_fail(d, n, RESID_E_FORMAT, "past the end", "offset = file size");
    RESET(); put_u64_at(d, off_at, UINT64_MAX - 31);
    expect_fail(d, n, RESID_E_FORMAT, "past the end", "offset near 2^64");
    RESET();
    {
        uint64_t o;
        memcpy(&o, orig + off_at, 8);
        put_u64_at(d, off_at, o + 4);
    }
    expect_fail(d, n, RESID_E_FORMAT, "alignment", "misaligned offset");
    /* duplicate tensor name (same length, so the layout is unchanged) */
    size_t tk = find_tinfo(orig, n, "blk.0.attn_k.weight");
    RESET(); memcpy(d + tk + 8, "blk.0.attn_q.weight", 19);
    expect_fail(d, n, RESID_E_FORMAT, "duplicate tensor name 'blk.0.attn_q.weight'",
                "duplicate tensor name");
    RESET(); put_u64_at(d, ti, 1ull << 50);
    expect_fail(d, n, RESID_E_FORMAT, "tensor info", "tensor name length huge");
    free(orig);

    /* ne[0] not a multiple of the Q8_0 block */
    orig = load_fixture("quant/tiny-llama-256.q8_0.gguf", &n);
    d = realloc(d, n);
    ti = find_tinfo(orig, n, "blk.0.attn_q.weight");
    RESET(); put_u64_at(d, ti + 8 + 19 + 4, 250);
    expect_fail(d, n, RESID_E_FORMAT, "block size", "Q8_0 ne[0] = 250");
    free(orig);
    free(d);
#undef RESET
}

/* Random byte mutations of the metadata: never a crash, always a verdict. */
static void test_fuzz_mutations(void **state) {
    (void)state;
    size_t n;
    uint8_t *orig;
    rs_gguf g;
    load_valid("derived/stories260K.gguf", &orig, &n, &g);
    resid_error err;
    size_t meta_end = (size_t)g.data_offset;
    rs_gguf_close(&g);
    /* mutate only the metadata and parse the first meta_end + some bytes
     * of data, so each parse is cheap */
    uint8_t *d = malloc(n);
    srand(42);
    int n_ok = 0, n_err = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(d, orig, n);
        int k = 1 + rand() % 4;
        for (int j = 0; j < k; j++) {
            size_t at = (size_t)rand() % meta_end;
            switch (rand() % 3) {
            case 0: d[at] = (uint8_t)rand(); break;
            case 1: d[at] ^= (uint8_t)(1u << (rand() % 8)); break;
            default: d[at] = 0xFF; break;
            }
        }
        if (parse_copy(d, n, &err) == RESID_OK)
            n_ok++;
        else
            n_err++;
    }
    print_message("3000 mutated images: %d rejected with a message, %d still valid\n", n_err,
                  n_ok);
    free(d);
    free(orig);
}

static void test_open_errors(void **state) {
    (void)state;
    rs_gguf g;
    resid_error err = {0};
    assert_int_equal(rs_gguf_open("/nonexistent/x.gguf", &g, &err), RESID_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/x.gguf"));
    char *p = tu_write_temp("trunc.gguf", "GGUF\3\0\0\0", 8);
    assert_int_equal(rs_gguf_open(p, &g, &err), RESID_E_FORMAT);
    assert_non_null(strstr(err.msg, p));
    assert_non_null(strstr(err.msg, "truncated"));
    remove(p);
    free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_files_vs_reference),
        cmocka_unit_test(test_vocab_gpt2),
        cmocka_unit_test(test_vocab_llama_spm),
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_tiny_gpt2),
        cmocka_unit_test(test_synthetic_all_types),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_corruptions),
        cmocka_unit_test(test_fuzz_mutations),
        cmocka_unit_test(test_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
