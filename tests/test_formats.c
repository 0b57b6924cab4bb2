/*
 * test_formats.c - safetensors files, Hugging Face folders and llama2.c
 * checkpoints: shapes and values against independent reads of the fixture
 * bytes, and bad input (truncated, inconsistent, hostile) that must give an
 * error message and never crash.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "format/llama2c.h"
#include "format/safetensors.h"

/* ------------------------------------------------------------------------- */
/* helpers                                                                   */
/* ------------------------------------------------------------------------- */

static uint64_t rd_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static float rd_f32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* BF16 decoded by hand: the top 16 bits of a float32. */
static float rd_bf16(const uint8_t *p) {
    uint32_t u = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static const rs_tensor *st_get(const rs_safetensors *st, const char *name) {
    for (int64_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

/* Fails the test with err's message unless rc is RESID_OK. */
static void check_ok(resid_status rc, const resid_error *err) {
    if (rc != RESID_OK) {
        print_error("%s\n", err->msg);
        fail();
    }
}

/* The message of an expected failure: not empty and, unless needle is
 * NULL, shown and containing needle. */
static void check_message(const char *what, const resid_error *err, const char *needle) {
    if (needle) printf("  %-22s -> %s\n", what, err->msg);
    assert_true(err->msg[0] != 0);
    if (needle && !strstr(err->msg, needle)) {
        print_error("%s: message lacks \"%s\"\n", what, needle);
        fail();
    }
}

static void check_shape(const rs_tensor *t, const char *name, resid_dtype dt, int64_t rows,
                        int64_t cols) {
    if (!t) {
        print_error("tensor %s missing\n", name);
        fail();
    }
    assert_string_equal(t->name, name);
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->n_rows, rows);
    assert_int_equal(t->n_cols, cols);
    assert_false(t->transposed);
}

/* A safetensors image: u64 length, JSON padded with spaces to a multiple of
 * 8, then `data`. malloc'd; *size receives its length. */
static uint8_t *st_build(const char *json, const void *data, size_t data_size, size_t *size) {
    size_t n = strlen(json);
    size_t padded = (n + 7) / 8 * 8;
    *size = 8 + padded + data_size;
    uint8_t *b = malloc(*size ? *size : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(b + 8, json, n);
    memset(b + 8 + n, ' ', padded - n);
    if (data_size) memcpy(b + 8 + padded, data, data_size);
    return b;
}

/* Parses a copy of exactly `size` bytes (so ASan sees any overread) and
 * expects failure with a message. Returns the status. */
static resid_status st_expect_fail(const uint8_t *img, size_t size, const char *what) {
    uint8_t *copy = malloc(size ? size : 1);
    assert_non_null(copy);
    if (size) memcpy(copy, img, size);
    rs_safetensors st;
    resid_error err = {0};
    resid_status rc = rs_st_parse(copy, size, what, &st, &err);
    if (rc == RESID_OK) {
        print_error("%s: parse unexpectedly succeeded (%zu bytes)\n", what, size);
        rs_st_close(&st);
        free(copy);
        fail();
    }
    if (err.msg[0] == 0) {
        print_error("%s: failure without a message\n", what);
        free(copy);
        fail();
    }
    assert_int_equal(err.code, rc);
    free(copy);
    return rc;
}

static void st_expect_fail_json(const char *json, size_t data_size, const char *what,
                                const char *needle) {
    uint8_t *zeros = calloc(data_size ? data_size : 1, 1);
    size_t size;
    uint8_t *img = st_build(json, zeros, data_size, &size);
    uint8_t *copy = malloc(size);
    memcpy(copy, img, size);
    rs_safetensors st;
    resid_error err = {0};
    resid_status rc = rs_st_parse(copy, size, what, &st, &err);
    if (rc == RESID_OK) {
        print_error("%s: parse unexpectedly succeeded\n", what);
        rs_st_close(&st);
        fail();
    }
    check_message(what, &err, needle);
    free(copy);
    free(img);
    free(zeros);
}

/* ------------------------------------------------------------------------- */
/* safetensors fixtures                                                      */
/* ------------------------------------------------------------------------- */

static void test_st_tiny_gpt2(void **state) {
    (void)state;
    char *path = tu_model_path("tiny-gpt2/model.safetensors");
    rs_safetensors st;
    resid_error err = {0};
    check_ok(rs_st_open(path, &st, &err), &err);
    /* 4 layers x 13 (incl. the attn.bias mask) + wte, wpe, ln_f.{weight,bias} */
    assert_int_equal(st.n_tensors, 56);
    check_shape(st_get(&st, "wte.weight"), "wte.weight", RESID_DTYPE_F32, 50257, 64);
    check_shape(st_get(&st, "wpe.weight"), "wpe.weight", RESID_DTYPE_F32, 256, 64);
    check_shape(st_get(&st, "ln_f.bias"), "ln_f.bias", RESID_DTYPE_F32, 1, 64);
    check_shape(st_get(&st, "h.0.attn.c_attn.weight"), "h.0.attn.c_attn.weight", RESID_DTYPE_F32,
                64, 192);
    check_shape(st_get(&st, "h.0.mlp.c_fc.weight"), "h.0.mlp.c_fc.weight", RESID_DTYPE_F32, 64,
                256);
    check_shape(st_get(&st, "h.3.mlp.c_proj.weight"), "h.3.mlp.c_proj.weight", RESID_DTYPE_F32, 256,
                64);
    check_shape(st_get(&st, "h.2.attn.bias"), "h.2.attn.bias", RESID_DTYPE_F32, 256, 256);
    assert_null(st_get(&st, "__metadata__"));

    /* Independent read: the raw file, with its own header parse. */
    size_t size;
    uint8_t *raw = tu_read_file(path, &size);
    assert_int_equal(size, 14784856);
    uint64_t n = rd_u64(raw);
    assert_int_equal(n, 4688);
    cJSON *hdr = cJSON_ParseWithLength((const char *)raw + 8, (size_t)n);
    assert_non_null(hdr);
    const uint8_t *base = raw + 8 + n;
    int checked = 0;
    for (const cJSON *e = hdr->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        const rs_tensor *t = st_get(&st, e->string);
        assert_non_null(t);
        cJSON *off = cJSON_GetObjectItem(e, "data_offsets");
        size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        size_t end = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        assert_int_equal(t->n_bytes, end - b);
        /* The view points at the right bytes of the map. */
        assert_ptr_equal(t->data, st.map.data + (8 + n + b));
        assert_memory_equal(t->data, base + b, t->n_bytes);
        checked++;
    }
    assert_int_equal(checked, 56);
    /* Values as printed by Python's struct over the file. */
    const float *wte = st_get(&st, "wte.weight")->data;
    assert_true(wte[0] == -0.20574982464313507f && wte[3] == 0.7656612396240234f);
    const float *lnf = st_get(&st, "ln_f.weight")->data;
    assert_true(lnf[1] == 1.0985007286071777f);
    /* The mask buffer is the causal lower triangle of ones. */
    const float *mask = st_get(&st, "h.1.attn.bias")->data;
    int bad = 0;
    for (int r = 0; r < 256; r++)
        for (int c = 0; c < 256; c++)
            bad += mask[r * 256 + c] != (c <= r ? 1.0f : 0.0f);
    assert_int_equal(bad, 0);
    printf("  tiny-gpt2: 56 tensors, all views byte-identical to the file\n");
    cJSON_Delete(hdr);
    free(raw);
    rs_st_close(&st);
    free(path);
}

static void test_st_tiny_llama_bf16(void **state) {
    (void)state;
    cJSON *cfg = tu_load_json("tiny-random-llama-2/config.json");
    int D = cJSON_GetObjectItem(cfg, "hidden_size")->valueint;
    int F = cJSON_GetObjectItem(cfg, "intermediate_size")->valueint;
    int L = cJSON_GetObjectItem(cfg, "num_hidden_layers")->valueint;
    int V = cJSON_GetObjectItem(cfg, "vocab_size")->valueint;
    int H = cJSON_GetObjectItem(cfg, "num_attention_heads")->valueint;
    int KV = cJSON_GetObjectItem(cfg, "num_key_value_heads")->valueint;
    int kv_dim = D / H * KV;
    cJSON_Delete(cfg);

    char *path = tu_model_path("tiny-random-llama-2/model.safetensors");
    rs_safetensors st;
    resid_error err = {0};
    check_ok(rs_st_open(path, &st, &err), &err);
    assert_int_equal(st.n_tensors, 1 + 9 * L + 1 + 1);
    const resid_dtype B = RESID_DTYPE_BF16;
    check_shape(st_get(&st, "model.embed_tokens.weight"), "model.embed_tokens.weight", B, V, D);
    check_shape(st_get(&st, "lm_head.weight"), "lm_head.weight", B, V, D);
    check_shape(st_get(&st, "model.norm.weight"), "model.norm.weight", B, 1, D);
    for (int l = 0; l < L; l++) {
        char nm[128];
        struct {
            const char *suffix;
            int64_t r, c;
        } want[] = {
            {"input_layernorm.weight", 1, D},       {"post_attention_layernorm.weight", 1, D},
            {"self_attn.q_proj.weight", D, D},      {"self_attn.k_proj.weight", kv_dim, D},
            {"self_attn.v_proj.weight", kv_dim, D}, {"self_attn.o_proj.weight", D, D},
            {"mlp.gate_proj.weight", F, D},         {"mlp.up_proj.weight", F, D},
            {"mlp.down_proj.weight", D, F},
        };
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s", l, want[i].suffix);
            check_shape(st_get(&st, nm), nm, B, want[i].r, want[i].c);
        }
    }
    /* Independent values: BF16 decoded by hand from the raw file. */
    size_t size;
    uint8_t *raw = tu_read_file(path, &size);
    uint64_t n = rd_u64(raw);
    cJSON *hdr = cJSON_ParseWithLength((const char *)raw + 8, (size_t)n);
    assert_non_null(hdr);
    size_t n_vals = 0;
    double worst = 0;
    for (const cJSON *e = hdr->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        const rs_tensor *t = st_get(&st, e->string);
        assert_non_null(t);
        size_t b =
            (size_t)cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), 0)->valuedouble;
        const uint8_t *src = raw + 8 + n + b;
        const uint16_t *mine = t->data;
        for (int64_t i = 0; i < t->n_rows * t->n_cols; i++, n_vals++) {
            float want = rd_bf16(src + 2 * i), got = rs_bf16_to_f32(mine[i]);
            if (!(want == got)) worst = INFINITY;
        }
    }
    printf("  tiny-random-llama-2: %zu BF16 values compared, maxdiff %g\n", n_vals, worst);
    assert_true(worst == 0);
    /* Spot values printed by Python's struct over the file. */
    const uint16_t *emb = st_get(&st, "model.embed_tokens.weight")->data;
    assert_int_equal(emb[0], 0xbc93);
    assert_true(rs_bf16_to_f32(emb[1]) == 0.0264892578125f);
    const uint16_t *down = st_get(&st, "model.layers.1.mlp.down_proj.weight")->data;
    assert_true(rs_bf16_to_f32(down[1]) == -0.03759765625f);
    cJSON_Delete(hdr);
    free(raw);
    rs_st_close(&st);
    free(path);
}

/* ------------------------------------------------------------------------- */
/* Hugging Face folders                                                      */
/* ------------------------------------------------------------------------- */

static void test_hf_fixtures(void **state) {
    (void)state;
    static const struct {
        const char *dir, *key, *tensor;
        int key_value;
        int64_t rows, cols;
    } cases[] = {
        {"tiny-gpt2", "n_embd", "wte.weight", 64, 50257, 64},
        {"tiny-gpt2-stories", "n_embd", "h.3.mlp.c_fc.weight", 64, 64, 512},
        {"tiny-random-llama-2", "hidden_size", "lm_head.weight", 16, 3000, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *dir = tu_model_path(cases[i].dir);
        rs_hf hf;
        resid_error err = {0};
        check_ok(rs_hf_open(dir, &hf, &err), &err);
        assert_int_equal(hf.n_shards, 1);
        assert_non_null(hf.config);
        const cJSON *v = cJSON_GetObjectItem(hf.config, cases[i].key);
        assert_true(cJSON_IsNumber(v));
        assert_int_equal(v->valueint, cases[i].key_value);
        const rs_tensor *t = rs_hf_tensor(&hf, cases[i].tensor);
        assert_non_null(t);
        assert_int_equal(t->n_rows, cases[i].rows);
        assert_int_equal(t->n_cols, cases[i].cols);
        assert_null(rs_hf_tensor(&hf, "no.such.tensor"));
        printf("  %-20s %d shard, %lld tensors\n", cases[i].dir, hf.n_shards,
               (long long)hf.shards[0].n_tensors);
        rs_hf_close(&hf);
        free(dir);
    }
}

/* A scratch folder under $TMPDIR, removed by rm_tree. */
static char *make_tmpdir(void) {
    const char *tmp = getenv("TMPDIR");
    if (!tmp) tmp = "/tmp";
    char *p = malloc(strlen(tmp) + 32);
    sprintf(p, "%s/resid-fmt-XXXXXX", tmp);
    assert_non_null(mkdtemp(p));
    return p;
}

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void remove_file(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static const char *CONFIG = "{\"model_type\": \"llama\", \"hidden_size\": 2}";

/* Two shards: A holds a.weight F32 [2][3] = 0..5 and b.bias F16 [3];
 * B holds c.weight BF16 [4][2] and pos I64 [4] (a skipped dtype). */
static void write_sharded(const char *dir, const char *index) {
    float a[6] = {0, 1, 2, 3, 4, 5};
    uint16_t bb[3] = {0x3c00, 0x4000, 0xc000}; /* 1, 2, -2 in F16 */
    uint8_t da[24 + 6];
    memcpy(da, a, 24);
    memcpy(da + 24, bb, 6);
    size_t na;
    uint8_t *sa =
        st_build("{\"__metadata__\":{\"format\":\"pt\"},"
                 "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                 "\"b.bias\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[24,30]}}",
                 da, sizeof da, &na);
    uint8_t db[16 + 32];
    for (int i = 0; i < 8; i++) {
        uint16_t h = (uint16_t)(0x3f80 + i); /* 1.0 plus a few ulps */
        memcpy(db + 2 * i, &h, 2);
    }
    for (int i = 0; i < 4; i++) {
        int64_t v = i;
        memcpy(db + 16 + 8 * i, &v, 8);
    }
    size_t nb;
    uint8_t *sb =
        st_build("{\"c.weight\":{\"dtype\":\"BF16\",\"shape\":[4,2],\"data_offsets\":[0,16]},"
                 "\"pos\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[16,48]}}",
                 db, sizeof db, &nb);
    write_file(dir, "config.json", CONFIG, strlen(CONFIG));
    write_file(dir, "model-00001-of-00002.safetensors", sa, na);
    write_file(dir, "model-00002-of-00002.safetensors", sb, nb);
    write_file(dir, "model.safetensors.index.json", index, strlen(index));
    free(sa);
    free(sb);
}

static const char *GOOD_INDEX = "{\"metadata\": {\"total_size\": 78}, \"weight_map\": {"
                                "\"c.weight\": \"model-00002-of-00002.safetensors\","
                                "\"a.weight\": \"model-00001-of-00002.safetensors\","
                                "\"pos\": \"model-00002-of-00002.safetensors\","
                                "\"b.bias\": \"model-00001-of-00002.safetensors\"}}";

static void hf_expect_fail(const char *dir, const char *what, const char *needle) {
    rs_hf hf;
    resid_error err = {0};
    resid_status rc = rs_hf_open(dir, &hf, &err);
    if (rc == RESID_OK) {
        print_error("%s: rs_hf_open unexpectedly succeeded\n", what);
        rs_hf_close(&hf);
        fail();
    }
    check_message(what, &err, needle);
}

static void test_hf_sharded(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    write_sharded(dir, GOOD_INDEX);
    rs_hf hf;
    resid_error err = {0};
    check_ok(rs_hf_open(dir, &hf, &err), &err);
    assert_int_equal(hf.n_shards, 2);
    /* Stable order: shard files sorted by name, whatever the index order. */
    assert_non_null(strstr(hf.shards[0].map.path, "model-00001-of-00002"));
    assert_non_null(strstr(hf.shards[1].map.path, "model-00002-of-00002"));
    assert_int_equal(hf.shards[0].n_tensors, 2);
    assert_int_equal(hf.shards[1].n_tensors, 1); /* pos (I64) skipped */
    const rs_tensor *a = rs_hf_tensor(&hf, "a.weight");
    const rs_tensor *b = rs_hf_tensor(&hf, "b.bias");
    const rs_tensor *c = rs_hf_tensor(&hf, "c.weight");
    check_shape(a, "a.weight", RESID_DTYPE_F32, 2, 3);
    check_shape(b, "b.bias", RESID_DTYPE_F16, 1, 3);
    check_shape(c, "c.weight", RESID_DTYPE_BF16, 4, 2);
    assert_null(rs_hf_tensor(&hf, "pos"));
    const float *av = a->data;
    for (int i = 0; i < 6; i++)
        assert_true(av[i] == (float)i);
    const uint16_t *bv = b->data;
    assert_true(rs_f16_to_f32(bv[0]) == 1.0f && rs_f16_to_f32(bv[2]) == -2.0f);
    const uint16_t *cv = c->data;
    for (int i = 0; i < 8; i++)
        assert_int_equal(cv[i], 0x3f80 + i);
    assert_ptr_equal(a->data, hf.shards[0].map.data + 8 + (hf.shards[0].map.size - 8 - 30));
    assert_string_equal(cJSON_GetObjectItem(hf.config, "model_type")->valuestring, "llama");
    rs_hf_close(&hf);

    /* A name in the index that its shard lacks. */
    write_sharded(dir, "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
                       "\"ghost.weight\": \"model-00002-of-00002.safetensors\"}}");
    hf_expect_fail(dir, "index name not in shard", "ghost.weight");
    /* The index names a shard that is not there. */
    write_sharded(dir, "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
                       "\"z.weight\": \"model-00003-of-00003.safetensors\"}}");
    hf_expect_fail(dir, "index names missing shard", "model-00003-of-00003");
    /* A shard name escaping the folder. */
    write_sharded(dir, "{\"weight_map\": {\"a.weight\": \"../x.safetensors\"}}");
    hf_expect_fail(dir, "shard outside folder", "a.weight");
    /* weight_map absent / not an object. */
    write_sharded(dir, "{\"metadata\": {}}");
    hf_expect_fail(dir, "index without weight_map", "weight_map");
    write_sharded(dir, "{\"weight_map\": [1, 2]");
    hf_expect_fail(dir, "index invalid JSON", "JSON");
    /* A corrupt shard is reported with its path. */
    write_sharded(dir, GOOD_INDEX);
    write_file(dir, "model-00002-of-00002.safetensors", "\x10\0\0\0\0\0\0\0{}", 10);
    hf_expect_fail(dir, "corrupt shard", "model-00002-of-00002");
    /* Missing weights altogether. */
    remove_file(dir, "model.safetensors.index.json");
    hf_expect_fail(dir, "no weights", "model.safetensors");
    /* config.json invalid, then missing. */
    write_file(dir, "config.json", "{\"a\": ", 6);
    hf_expect_fail(dir, "config.json invalid", "config.json");
    remove_file(dir, "config.json");
    hf_expect_fail(dir, "no config.json", "config.json");
    /* Not a directory at all. */
    char missing[1100];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    hf_expect_fail(missing, "not a directory", "nope");

    remove_file(dir, "model-00001-of-00002.safetensors");
    remove_file(dir, "model-00002-of-00002.safetensors");
    rmdir(dir);
    free(dir);
}

/* ------------------------------------------------------------------------- */
/* safetensors: bad input                                                    */
/* ------------------------------------------------------------------------- */

static const char *GOOD_JSON =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[16,24]},"
    "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[24,27]},"
    "\"v\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[28,30]}}";

static void test_st_good_synthetic(void **state) {
    (void)state;
    uint8_t data[30] = {0};
    float w[4] = {1, -2, 3.5f, 0};
    memcpy(data, w, 16);
    data[28] = 0x80; /* BF16 0x3f80 = 1.0 */
    data[29] = 0x3f;
    size_t size;
    uint8_t *img = st_build(GOOD_JSON, data, sizeof data, &size);
    rs_safetensors st;
    resid_error err = {0};
    assert_int_equal(rs_st_parse(img, size, "good", &st, &err), RESID_OK);
    assert_int_equal(st.n_tensors, 3); /* BOOL skipped */
    check_shape(st_get(&st, "w"), "w", RESID_DTYPE_F32, 2, 2);
    check_shape(st_get(&st, "h"), "h", RESID_DTYPE_F16, 1, 4);
    check_shape(st_get(&st, "v"), "v", RESID_DTYPE_BF16, 1, 1); /* 0-D */
    assert_null(st_get(&st, "mask"));
    assert_true(((const float *)st_get(&st, "w")->data)[2] == 3.5f);
    assert_true(rs_bf16_to_f32(*(const uint16_t *)st_get(&st, "v")->data) == 1.0f);
    assert_null(st.map.data); /* parse does not own the buffer */
    rs_st_close(&st);

    /* Unknown dtype: skipped, not an error. */
    size_t n2;
    uint8_t *img2 = st_build("{\"x\":{\"dtype\":\"F4X\",\"shape\":[3],\"data_offsets\":[0,3]},"
                             "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                             data, 8, &n2);
    assert_int_equal(rs_st_parse(img2, n2, "unknown dtype", &st, &err), RESID_OK);
    assert_int_equal(st.n_tensors, 1);
    assert_string_equal(st.tensors[0].name, "w");
    rs_st_close(&st);
    free(img2);

    /* Every truncation of the good image fails cleanly: in the length, the
     * header, and the data. */
    int n_fail = 0;
    for (size_t cut = 0; cut < size; cut++) {
        st_expect_fail(img, cut, "truncated");
        n_fail++;
    }
    printf("  %d truncations of a %zu-byte file: all rejected\n", n_fail, size);
    free(img);
}

static void test_st_truncated_fixture(void **state) {
    (void)state;
    char *path = tu_model_path("tiny-random-llama-2/model.safetensors");
    size_t size;
    uint8_t *raw = tu_read_file(path, &size);
    int n = 0;
    /* Every 7th byte through the header, then coarse steps through the data. */
    for (size_t cut = 0; cut < 8 + 2160 + 16; cut += 7, n++)
        st_expect_fail(raw, cut, "trunc");
    for (size_t cut = 8 + 2160; cut < size; cut += 997, n++)
        st_expect_fail(raw, cut, "trunc");
    st_expect_fail(raw, size - 1, "trunc");
    printf("  %d truncations of tiny-random-llama-2 rejected\n", n + 1);
    free(raw);
    free(path);
}

static void test_st_bad(void **state) {
    (void)state;
    /* Tiny files. */
    st_expect_fail((const uint8_t *)"\x02\0\0\0", 4, "4-byte file");
    st_expect_fail((const uint8_t *)"", 0, "empty");
    /* Header length larger than the file, and absurdly large. */
    {
        uint8_t b[16] = {0xff, 0x00, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
        st_expect_fail(b, sizeof b, "header past end");
        uint8_t c[16] = {0, 0, 0, 0, 0, 0, 0, 0x80, '{', '}'};
        st_expect_fail(c, sizeof c, "header 2^63");
        uint8_t d[16] = {0, 0, 0, 0, 1, 0, 0, 0, '{', '}'};
        st_expect_fail(d, sizeof d, "header 4 GB");
    }
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],", 8, "invalid JSON",
                        "not valid JSON");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} xx", 8,
                        "trailing garbage", "trailing");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                        "offsets past end", "past the end");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                        "begin > end", "begin > end");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16,
                        "size mismatch", "needs 12");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                        "\"data_offsets\":[0,8]}}",
                        8, "shape overflow", "overflow");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2097152,2097152,2097152,8],"
                        "\"data_offsets\":[0,8]}}",
                        8, "shape overflow 4-D", "overflow");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                        16, "duplicate names", "more than once");
    st_expect_fail_json("[1, 2, 3]", 0, "array header", "not an object");
    st_expect_fail_json("\"just a string\"", 0, "string header", "not an object");
    st_expect_fail_json("42", 0, "number header", "not an object");
    st_expect_fail_json("{\"w\": 7}", 0, "entry not object", "not an object");
    st_expect_fail_json("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "no dtype", "dtype");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "no shape",
                        "shape");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
                        "one offset", "data_offsets");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
                        "negative offset", "non-negative");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8]}}", 8,
                        "fractional offset", "non-negative");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]}}", 8,
                        "huge offset", "non-negative");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                        "negative dim", "shape[0]");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                        "string dim", "shape[0]");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,2],"
                        "\"data_offsets\":[0,8]}}",
                        8, "rank 10", "rank");
    st_expect_fail_json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}", 12,
                        "unaligned F32", "aligned");
    st_expect_fail_json("{\"m\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                        "skipped dtype bad size", "needs 16");
    st_expect_fail_json("{\"m\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,80]}}", 8,
                        "skipped dtype past end", "past the end");
    /* Deep nesting is refused by the parser's depth limit, not the stack. */
    {
        enum { DEPTH = 20000 };
        char *deep = malloc(2 * DEPTH + 16);
        size_t k = 0;
        deep[k++] = '{';
        memcpy(deep + k, "\"m\":", 4);
        k += 4;
        for (int i = 0; i < DEPTH; i++)
            deep[k++] = '[';
        for (int i = 0; i < DEPTH; i++)
            deep[k++] = ']';
        deep[k++] = '}';
        deep[k] = 0;
        st_expect_fail_json(deep, 0, "deep nesting", "JSON");
        free(deep);
    }
    /* __metadata__ of any shape is ignored. */
    {
        float one = 1;
        size_t n;
        uint8_t *img = st_build("{\"__metadata__\":[1,{\"a\":null}],"
                                "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                                &one, 4, &n);
        rs_safetensors st;
        resid_error err = {0};
        assert_int_equal(rs_st_parse(img, n, "meta", &st, &err), RESID_OK);
        assert_int_equal(st.n_tensors, 1);
        rs_st_close(&st);
        free(img);
    }
    /* rs_st_open on a missing file and on an empty one. */
    {
        rs_safetensors st;
        resid_error err = {0};
        assert_int_not_equal(rs_st_open("/nonexistent/x.safetensors", &st, &err), RESID_OK);
        assert_true(err.msg[0] != 0);
        char *p = tu_write_temp("empty.safetensors", "", 0);
        err.msg[0] = 0;
        assert_int_not_equal(rs_st_open(p, &st, &err), RESID_OK);
        assert_true(err.msg[0] != 0);
        unlink(p);
        free(p);
    }
}

/* ------------------------------------------------------------------------- */
/* llama2.c                                                                  */
/* ------------------------------------------------------------------------- */

static void test_l2c_stories260k(void **state) {
    (void)state;
    char *path = tu_model_path("tinyllamas/stories260K.bin");
    rs_llama2c c;
    resid_error err = {0};
    check_ok(rs_llama2c_open(path, &c, &err), &err);
    const int D = 64, F = 172, L = 5, H = 8, KV = 4, V = 512, S = 512;
    assert_int_equal(c.cfg.dim, D);
    assert_int_equal(c.cfg.hidden_dim, F);
    assert_int_equal(c.cfg.n_layers, L);
    assert_int_equal(c.cfg.n_heads, H);
    assert_int_equal(c.cfg.n_kv_heads, KV);
    assert_int_equal(c.cfg.vocab_size, V);
    assert_int_equal(c.cfg.seq_len, S);
    assert_true(c.cfg.shared_classifier);
    assert_int_equal(c.n_tensors, 1 + 9 * L + 1);

    const int hs = D / H, kv = D * KV / H;
    /* Float offsets of each block, accumulated independently of the loader. */
    size_t o_tok = 0;
    size_t o_an = o_tok + (size_t)V * D;
    size_t o_wq = o_an + (size_t)L * D;
    size_t o_wk = o_wq + (size_t)L * D * D;
    size_t o_wv = o_wk + (size_t)L * kv * D;
    size_t o_wo = o_wv + (size_t)L * kv * D;
    size_t o_fn = o_wo + (size_t)L * D * D;
    size_t o_w1 = o_fn + (size_t)L * D;
    size_t o_w2 = o_w1 + (size_t)L * F * D;
    size_t o_w3 = o_w2 + (size_t)L * D * F;
    size_t o_on = o_w3 + (size_t)L * F * D;
    size_t o_fr = o_on + D;
    size_t o_fi = o_fr + (size_t)S * hs / 2;
    size_t o_end = o_fi + (size_t)S * hs / 2;
    assert_int_equal(28 + 4 * o_end, 1056540);

    size_t size;
    uint8_t *raw = tu_read_file(path, &size);
    assert_int_equal(size, 1056540);
#define RAW(off) rd_f32(raw + 28 + 4 * (off))
    typedef struct expect {
        const char *name;
        size_t off; /* float offset of element [0][0] */
        int64_t rows, cols;
    } expect;
    expect want[1 + 9 * 5 + 1];
    int k = 0;
    want[k++] = (expect){"token_embd.weight", o_tok, V, D};
    for (int l = 0; l < L; l++) {
        static char names[5][9][48];
        const char *suf[9] = {"attn_norm", "attn_q",   "attn_k",   "attn_v", "attn_output",
                              "ffn_norm",  "ffn_gate", "ffn_down", "ffn_up"};
        size_t offs[9] = {
            o_an + (size_t)l * D,      o_wq + (size_t)l * D * D, o_wk + (size_t)l * kv * D,
            o_wv + (size_t)l * kv * D, o_wo + (size_t)l * D * D, o_fn + (size_t)l * D,
            o_w1 + (size_t)l * F * D,  o_w2 + (size_t)l * D * F, o_w3 + (size_t)l * F * D};
        int64_t rows[9] = {1, D, kv, kv, D, 1, F, D, F};
        int64_t cols[9] = {D, D, D, D, D, D, D, F, D};
        for (int j = 0; j < 9; j++) {
            snprintf(names[l][j], sizeof names[l][j], "blk.%d.%s.weight", l, suf[j]);
            want[k++] = (expect){names[l][j], offs[j], rows[j], cols[j]};
        }
    }
    want[k++] = (expect){"output_norm.weight", o_on, 1, D};

    int n_vals = 0;
    for (int i = 0; i < k; i++) {
        const rs_tensor *t = NULL;
        for (int64_t j = 0; j < c.n_tensors; j++)
            if (strcmp(c.tensors[j].name, want[i].name) == 0) t = &c.tensors[j];
        check_shape(t, want[i].name, RESID_DTYPE_F32, want[i].rows, want[i].cols);
        assert_int_equal(t->n_bytes, (size_t)(want[i].rows * want[i].cols * 4));
        assert_ptr_equal(t->data, c.map.data + 28 + 4 * want[i].off);
        /* Spot values: first, last and a middle element against the raw file. */
        const float *v = t->data;
        int64_t n = want[i].rows * want[i].cols;
        int64_t idx[3] = {0, n - 1, (n * 7) / 13};
        for (int q = 0; q < 3; q++, n_vals++)
            assert_true(v[idx[q]] == RAW(want[i].off + (size_t)idx[q]));
    }
    /* Values printed by Python's struct at the same offsets. */
    const float *tok = c.tensors[0].data;
    assert_true(tok[0] == -0.29474878311157227f && tok[1] == 0.5618956089019775f);
    for (int64_t j = 0; j < c.n_tensors; j++) {
        if (strcmp(c.tensors[j].name, "blk.2.attn_k.weight") == 0)
            assert_true(((const float *)c.tensors[j].data)[7 * D + 11] == 0.0331064872443676f);
        if (strcmp(c.tensors[j].name, "output_norm.weight") == 0)
            assert_true(((const float *)c.tensors[j].data)[0] == 2.4583089351654053f);
        assert_string_not_equal(c.tensors[j].name, "output.weight");
    }
    /* The layout is right if the freq_cis tables sit where expected:
     * real[p][i] = cos(p * 10000^(-2i/hs)), imag = sin. */
    float fr[12], want_fr[12];
    int nf = 0;
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < hs / 2; i += 2) {
            double f = p * pow(10000.0, -2.0 * i / hs);
            fr[nf] = RAW(o_fr + (size_t)p * hs / 2 + i);
            want_fr[nf++] = (float)cos(f);
            fr[nf] = RAW(o_fi + (size_t)p * hs / 2 + i);
            want_fr[nf++] = (float)sin(f);
        }
    tu_assert_close("stories260K freq_cis at computed offsets", fr, want_fr, (size_t)nf, 1e-6);
#undef RAW
    printf("  stories260K: %d tensors, %d spot values equal the raw file\n", k, n_vals);
    free(raw);
    rs_llama2c_close(&c);
    free(path);
}

/* A small v0 checkpoint in memory: dim 8, hidden 12, 2 layers, 2 heads,
 * 1 kv head, vocab +-10, seq_len 4. Floats are 0, 1, 2, ... in file order. */
static uint8_t *l2c_build(const int32_t hdr[7], size_t n_floats, size_t *size) {
    *size = 28 + 4 * n_floats;
    uint8_t *b = malloc(*size);
    memcpy(b, hdr, 28);
    for (size_t i = 0; i < n_floats; i++) {
        float f = (float)i;
        memcpy(b + 28 + 4 * i, &f, 4);
    }
    return b;
}

static size_t l2c_floats(int D, int F, int L, int H, int KV, int V, int S, bool shared) {
    int kv = D * KV / H, hs = D / H;
    size_t n = (size_t)V * D + (size_t)L * (2 * D + 2 * D * D + 2 * kv * D + 3 * F * D) + D +
               (size_t)S * hs;
    return shared ? n : n + (size_t)V * D;
}

static void l2c_expect_fail(const uint8_t *img, size_t size, const char *what, const char *needle) {
    uint8_t *copy = malloc(size ? size : 1);
    if (size) memcpy(copy, img, size);
    rs_llama2c c;
    resid_error err = {0};
    resid_status rc = rs_llama2c_parse(copy, size, what, &c, &err);
    if (rc == RESID_OK) {
        print_error("%s: parse unexpectedly succeeded\n", what);
        rs_llama2c_close(&c);
        fail();
    }
    check_message(what, &err, needle);
    free(copy);
}

static void test_l2c_synthetic(void **state) {
    (void)state;
    const int D = 8, F = 12, L = 2, H = 2, KV = 1, V = 10, S = 4;
    const int kv = D * KV / H;
    /* Unshared classifier: negative vocab, output.weight at the very end. */
    int32_t hdr[7] = {D, F, L, H, KV, -V, S};
    size_t nf = l2c_floats(D, F, L, H, KV, V, S, false), size;
    uint8_t *img = l2c_build(hdr, nf, &size);
    rs_llama2c c;
    resid_error err = {0};
    assert_int_equal(rs_llama2c_parse(img, size, "unshared", &c, &err), RESID_OK);
    assert_false(c.cfg.shared_classifier);
    assert_int_equal(c.cfg.vocab_size, V);
    assert_int_equal(c.n_tensors, 1 + 9 * L + 2);
    const rs_tensor *out = &c.tensors[c.n_tensors - 1];
    check_shape(out, "output.weight", RESID_DTYPE_F32, V, D);
    assert_true(((const float *)out->data)[0] == (float)(nf - (size_t)V * D));
    assert_true(((const float *)out->data)[V * D - 1] == (float)(nf - 1));
    /* blk.1.attn_v starts after tok, L attn_norm, L wq, L wk, 1 wv. */
    for (int64_t j = 0; j < c.n_tensors; j++)
        if (strcmp(c.tensors[j].name, "blk.1.attn_v.weight") == 0) {
            check_shape(&c.tensors[j], "blk.1.attn_v.weight", RESID_DTYPE_F32, kv, D);
            size_t first = (size_t)V * D + L * D + L * D * D + L * kv * D + kv * D;
            assert_true(((const float *)c.tensors[j].data)[0] == (float)first);
        }
    rs_llama2c_close(&c);

    /* Truncated anywhere, or with extra bytes. */
    for (size_t cut = 0; cut < size; cut += (cut < 64 ? 1 : 37))
        l2c_expect_fail(img, cut, "truncated", NULL);
    l2c_expect_fail(img, size - 4, "truncated by 4", "truncated?");
    {
        uint8_t *big = malloc(size + 4);
        memcpy(big, img, size);
        memset(big + size, 0, 4);
        l2c_expect_fail(big, size + 4, "4 extra bytes", "extra bytes");
        free(big);
    }
    /* Shared classifier flag with the unshared file's size: 320 extra bytes. */
    {
        int32_t h2[7] = {D, F, L, H, KV, V, S};
        memcpy(img, h2, 28);
        l2c_expect_fail(img, size, "shared, wrong size", "extra bytes");
    }
    free(img);

    /* Header fields. */
    struct {
        int32_t h[7];
        const char *what, *needle;
    } bad[] = {
        {{0, F, L, H, KV, V, S}, "dim 0", "dim = 0"},
        {{D, -12, L, H, KV, V, S}, "negative hidden", "hidden_dim = -12"},
        {{D, F, 0, H, KV, V, S}, "0 layers", "n_layers = 0"},
        {{D, F, L, 0, KV, V, S}, "0 heads", "n_heads = 0"},
        {{D, F, L, H, 0, V, S}, "0 kv heads", "n_kv_heads = 0"},
        {{D, F, L, H, KV, 0, S}, "vocab 0", "vocab_size = 0"},
        {{D, F, L, H, KV, INT32_MIN, S}, "vocab INT32_MIN", "vocab_size"},
        {{D, F, L, H, KV, V, -1}, "seq_len -1", "seq_len = -1"},
        {{D, F, L, 3, 1, V, S}, "heads not dividing dim", "does not divide dim"},
        {{D, F, L, 4, 3, V, S}, "kv not dividing heads", "does not divide n_heads"},
        {{D, F, L, 2, 4, V, S}, "kv > heads", "n_kv_heads"},
        {{D, F, L, 8, 8, V, S}, "odd head size", "odd"},
        {{65536, 1048576, 4096, 64, 64, 16777216, 16777216}, "huge dims", "bytes"},
        {{INT32_MAX, INT32_MAX, INT32_MAX, 1, 1, INT32_MAX, INT32_MAX},
         "INT32_MAX dims",
         "out of range"},
        {{0x7f454c46, 0x00010102, 0, 0, 0, 0, 0}, "an ELF file", "not a llama2.c"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n;
        uint8_t *b = l2c_build(bad[i].h, 64, &n);
        l2c_expect_fail(b, n, bad[i].what, bad[i].needle);
        free(b);
    }
    l2c_expect_fail((const uint8_t *)"abc", 3, "3-byte file", "too small");
}

/* The v1 export: magic, version, params, shared flag, pad to 256, then
 * norms first. */
static void test_l2c_v1(void **state) {
    (void)state;
    const int D = 8, F = 12, L = 2, H = 2, KV = 2, V = 10, S = 4;
    size_t nf = (size_t)2 * L * D + D + (size_t)V * D +
                (size_t)L * (4 * D * D + 3 * F * D); /* shared, no freq_cis */
    size_t size = 256 + 4 * nf;
    uint8_t *b = calloc(1, size + 4 * (size_t)V * D);
    uint32_t magic = 0x616b3432;
    int32_t ver = 1, p[7] = {D, F, L, H, KV, V, S};
    memcpy(b, &magic, 4);
    memcpy(b + 4, &ver, 4);
    memcpy(b + 8, p, 28);
    b[36] = 1;
    for (size_t i = 0; i < nf + (size_t)V * D; i++) {
        float f = (float)i;
        memcpy(b + 256 + 4 * i, &f, 4);
    }
    rs_llama2c c;
    resid_error err = {0};
    assert_int_equal(rs_llama2c_parse(b, size, "v1", &c, &err), RESID_OK);
    assert_true(c.cfg.shared_classifier);
    assert_int_equal(c.n_tensors, 1 + 9 * L + 1);
    for (int64_t j = 0; j < c.n_tensors; j++) {
        const rs_tensor *t = &c.tensors[j];
        const float *v = t->data;
        if (strcmp(t->name, "blk.1.attn_norm.weight") == 0) assert_true(v[0] == (float)D);
        if (strcmp(t->name, "blk.0.ffn_norm.weight") == 0) assert_true(v[0] == (float)(L * D));
        if (strcmp(t->name, "output_norm.weight") == 0) assert_true(v[0] == (float)(2 * L * D));
        if (strcmp(t->name, "token_embd.weight") == 0) assert_true(v[0] == (float)(2 * L * D + D));
        if (strcmp(t->name, "blk.0.attn_q.weight") == 0)
            assert_true(v[0] == (float)(2 * L * D + D + V * D));
    }
    rs_llama2c_close(&c);
    /* Unshared: output.weight appended. */
    b[36] = 0;
    size_t size2 = size + 4 * (size_t)V * D;
    assert_int_equal(rs_llama2c_parse(b, size2, "v1 unshared", &c, &err), RESID_OK);
    check_shape(&c.tensors[c.n_tensors - 1], "output.weight", RESID_DTYPE_F32, V, D);
    assert_true(((const float *)c.tensors[c.n_tensors - 1].data)[0] == (float)nf);
    rs_llama2c_close(&c);
    l2c_expect_fail(b, size, "v1 unshared truncated", "truncated?");
    b[36] = 7;
    l2c_expect_fail(b, size2, "v1 bad flag", "shared_classifier");
    b[36] = 1;
    l2c_expect_fail(b, 200, "v1 short header", "256");
    ver = 2;
    memcpy(b + 4, &ver, 4);
    l2c_expect_fail(b, size, "v2 (Q8_0)", "version 2");
    ver = 77;
    memcpy(b + 4, &ver, 4);
    l2c_expect_fail(b, size, "unknown version", "version 77");
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_st_tiny_gpt2),
        cmocka_unit_test(test_st_tiny_llama_bf16),
        cmocka_unit_test(test_hf_fixtures),
        cmocka_unit_test(test_hf_sharded),
        cmocka_unit_test(test_st_good_synthetic),
        cmocka_unit_test(test_st_truncated_fixture),
        cmocka_unit_test(test_st_bad),
        cmocka_unit_test(test_l2c_stories260k),
        cmocka_unit_test(test_l2c_synthetic),
        cmocka_unit_test(test_l2c_v1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
