/*
 * gguf.c - GGUF v2/v3 reader.
 *
 * Layout (all little-endian):
 *   header   : magic "GGUF", u32 version, u64 n_tensors, u64 n_kv
 *   kv[n_kv] : string key, u32 type, value
 *              (string = u64 length + bytes; array = u32 type, u64 n, items)
 *   ti[n_t]  : string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
 *              u64 offset (relative to the data section)
 *   padding to general.alignment (default 32)
 *   data section
 *
 * The parser walks the image with a bounds-checked cursor: every length and
 * count is checked against the bytes that remain before anything is
 * allocated from it, so a lying file gives an error, never a large
 * allocation or an out-of-bounds read.
 */
#include "format/gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
/* Arrays of arrays are legal GGUF; we walk them, but not without end. */
#define GGUF_MAX_ARRAY_DEPTH 4
/* Smallest possible encodings, used to bound counts by the file size. */
#define GGUF_MIN_KV_BYTES 13     /* u64 key len + u32 type + 1-byte value */
#define GGUF_MIN_TINFO_BYTES 32  /* u64 name len + u32 n_dims + u64 ne + u32 + u64 */

/* ---------------------------------------------------------------------- */
/* ggml type ids                                                          */
/* ---------------------------------------------------------------------- */

/* Names of ggml's type ids (ggml.h, enum ggml_type), for error messages. */
static const char *ggml_type_name(uint32_t id) {
    static const char *names[] = {
        [0] = "F32",      [1] = "F16",      [2] = "Q4_0",     [3] = "Q4_1",
        [4] = "Q4_2 (removed)", [5] = "Q4_3 (removed)",       [6] = "Q5_0",
        [7] = "Q5_1",     [8] = "Q8_0",     [9] = "Q8_1",     [10] = "Q2_K",
        [11] = "Q3_K",    [12] = "Q4_K",    [13] = "Q5_K",    [14] = "Q6_K",
        [15] = "Q8_K",    [16] = "IQ2_XXS", [17] = "IQ2_XS",  [18] = "IQ3_XXS",
        [19] = "IQ1_S",   [20] = "IQ4_NL",  [21] = "IQ3_S",   [22] = "IQ2_S",
        [23] = "IQ4_XS",  [24] = "I8",      [25] = "I16",     [26] = "I32",
        [27] = "I64",     [28] = "F64",     [29] = "IQ1_M",   [30] = "BF16",
        [31] = "Q4_0_4_4", [32] = "Q4_0_4_8", [33] = "Q4_0_8_8", [34] = "TQ1_0",
        [35] = "TQ2_0",   [36] = "IQ4_NL_4_4", [37] = "IQ4_NL_4_8",
        [38] = "IQ4_NL_8_8", [39] = "MXFP4",
    };
    if (id < sizeof names / sizeof names[0] && names[id]) return names[id];
    return "unknown";
}

/* Maps a ggml type id to a resid dtype; false when resid lacks it. */
static bool ggml_to_dtype(uint32_t id, resid_dtype *out) {
    switch (id) {
    case 0: *out = RESID_DTYPE_F32; return true;
    case 1: *out = RESID_DTYPE_F16; return true;
    case 2: *out = RESID_DTYPE_Q4_0; return true;
    case 8: *out = RESID_DTYPE_Q8_0; return true;
    case 12: *out = RESID_DTYPE_Q4_K; return true;
    case 14: *out = RESID_DTYPE_Q6_K; return true;
    case 30: *out = RESID_DTYPE_BF16; return true;
    default: return false;
    }
}

#define GGUF_SUPPORTED_TYPES "F32 (0), F16 (1), Q4_0 (2), Q8_0 (8), Q4_K (12), Q6_K (14), BF16 (30)"

/* Size in bytes of a scalar GGUF value type; 0 for string/array/unknown. */
static size_t gguf_scalar_size(uint32_t type) {
    switch (type) {
    case RS_GGUF_UINT8:
    case RS_GGUF_INT8:
    case RS_GGUF_BOOL: return 1;
    case RS_GGUF_UINT16:
    case RS_GGUF_INT16: return 2;
    case RS_GGUF_UINT32:
    case RS_GGUF_INT32:
    case RS_GGUF_FLOAT32: return 4;
    case RS_GGUF_UINT64:
    case RS_GGUF_INT64:
    case RS_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static const char *gguf_type_name(uint32_t type) {
    static const char *names[] = {"uint8", "int8",   "uint16", "int16", "uint32",
                                  "int32", "float32", "bool",  "string", "array",
                                  "uint64", "int64", "float64"};
    return type < sizeof names / sizeof names[0] ? names[type] : "unknown";
}

/* ---------------------------------------------------------------------- */
/* Bounds-checked cursor                                                  */
/* ---------------------------------------------------------------------- */

typedef struct cursor {
    const uint8_t *data;
    size_t size;
    size_t pos;
    const char *label; /* file name for messages */
    char where[192];   /* what is being read, for messages */
    resid_error *err;
} cursor;

static size_t cur_left(const cursor *c) { return c->size - c->pos; }

/* Fails with a "truncated" message unless n more bytes are available. */
static resid_status cur_need(cursor *c, uint64_t n) {
    if (n <= cur_left(c)) return RESID_OK;
    return rs_err(c->err, RESID_E_FORMAT,
                  "%s: truncated in %s: need %" PRIu64 " more bytes at offset %zu, "
                  "file is %zu bytes",
                  c->label, c->where, n, c->pos, c->size);
}

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const uint8_t *p) {
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static resid_status cur_u32(cursor *c, uint32_t *out) {
    resid_status st = cur_need(c, 4);
    if (st) return st;
    *out = rd_u32(c->data + c->pos);
    c->pos += 4;
    return RESID_OK;
}

static resid_status cur_u64(cursor *c, uint64_t *out) {
    resid_status st = cur_need(c, 8);
    if (st) return st;
    *out = rd_u64(c->data + c->pos);
    c->pos += 8;
    return RESID_OK;
}

static resid_status cur_skip(cursor *c, uint64_t n) {
    resid_status st = cur_need(c, n);
    if (st) return st;
    c->pos += (size_t)n;
    return RESID_OK;
}

/* A GGUF string: u64 length then bytes. The length is checked against the
 * remaining bytes with its own message, since a lying length is the most
 * common corruption. */
static resid_status cur_str(cursor *c, const char **s, uint64_t *len) {
    size_t at = c->pos;
    uint64_t n;
    resid_status st = cur_u64(c, &n);
    if (st) return st;
    if (n > cur_left(c))
        return rs_err(c->err, RESID_E_FORMAT,
                      "%s: truncated in %s: string at offset %zu claims %" PRIu64
                      " bytes, only %zu remain (file is %zu bytes)",
                      c->label, c->where, at, n, cur_left(c), c->size);
    *s = (const char *)(c->data + c->pos);
    *len = n;
    c->pos += (size_t)n;
    return RESID_OK;
}

/* Copies a string to a NUL-terminated heap string; rejects embedded NULs. */
static resid_status dup_name(cursor *c, const char *s, uint64_t len, char **out) {
    if (memchr(s, 0, (size_t)len))
        return rs_err(c->err, RESID_E_FORMAT, "%s: %s contains a NUL byte", c->label,
                      c->where);
    char *d = malloc((size_t)len + 1);
    if (!d)
        return rs_err(c->err, RESID_E_NOMEM, "%s: cannot allocate %" PRIu64 " bytes",
                      c->label, len + 1);
    memcpy(d, s, (size_t)len);
    d[len] = 0;
    *out = d;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Key/value pairs                                                        */
/* ---------------------------------------------------------------------- */

/* Skips (validates) one value of `type`; arrays recurse up to a depth. */
static resid_status skip_value(cursor *c, uint32_t type, int depth);

/* Validates the items of an array (type and count already read). When
 * str_off is not NULL and the items are strings, records each item's offset
 * relative to base. */
static resid_status skip_array_items(cursor *c, uint32_t type, uint64_t n, int depth,
                                     const uint8_t *base, uint64_t *str_off) {
    size_t esize = gguf_scalar_size(type);
    if (esize) {
        size_t total;
        if (n > SIZE_MAX || !rs_mul_size((size_t)n, esize, &total) || total > cur_left(c))
            return rs_err(c->err, RESID_E_FORMAT,
                          "%s: truncated in %s: array of %" PRIu64 " %s values at "
                          "offset %zu does not fit in the %zu remaining bytes",
                          c->label, c->where, n, gguf_type_name(type), c->pos,
                          cur_left(c));
        c->pos += total;
        return RESID_OK;
    }
    if (type == RS_GGUF_STRING) {
        /* each string needs at least its 8-byte length */
        if (n > cur_left(c) / 8)
            return rs_err(c->err, RESID_E_FORMAT,
                          "%s: truncated in %s: array claims %" PRIu64 " strings at "
                          "offset %zu, but only %zu bytes remain",
                          c->label, c->where, n, c->pos, cur_left(c));
        for (uint64_t i = 0; i < n; i++) {
            if (str_off) str_off[i] = (uint64_t)(c->data + c->pos - base);
            const char *s;
            uint64_t len;
            resid_status st = cur_str(c, &s, &len);
            if (st) return st;
        }
        return RESID_OK;
    }
    if (type == RS_GGUF_ARRAY) {
        if (depth >= GGUF_MAX_ARRAY_DEPTH)
            return rs_err(c->err, RESID_E_FORMAT,
                          "%s: %s: arrays nested deeper than %d levels", c->label,
                          c->where, GGUF_MAX_ARRAY_DEPTH);
        /* each nested array needs at least its type and count (12 bytes) */
        if (n > cur_left(c) / 12)
            return rs_err(c->err, RESID_E_FORMAT,
                          "%s: truncated in %s: array claims %" PRIu64 " nested arrays "
                          "at offset %zu, but only %zu bytes remain",
                          c->label, c->where, n, c->pos, cur_left(c));
        for (uint64_t i = 0; i < n; i++) {
            resid_status st = skip_value(c, RS_GGUF_ARRAY, depth + 1);
            if (st) return st;
        }
        return RESID_OK;
    }
    return rs_err(c->err, RESID_E_FORMAT, "%s: %s: unknown array item type %u",
                  c->label, c->where, type);
}

static resid_status skip_value(cursor *c, uint32_t type, int depth) {
    size_t esize = gguf_scalar_size(type);
    if (esize) return cur_skip(c, esize);
    if (type == RS_GGUF_STRING) {
        const char *s;
        uint64_t len;
        return cur_str(c, &s, &len);
    }
    if (type == RS_GGUF_ARRAY) {
        uint32_t at;
        uint64_t n;
        resid_status st = cur_u32(c, &at);
        if (!st) st = cur_u64(c, &n);
        if (st) return st;
        return skip_array_items(c, at, n, depth, NULL, NULL);
    }
    return rs_err(c->err, RESID_E_FORMAT, "%s: %s: unknown value type %u", c->label,
                  c->where, type);
}

static resid_status parse_kv(cursor *c, int64_t i, rs_gguf_kv *kv) {
    snprintf(c->where, sizeof c->where, "key/value %" PRId64 " (key)", i);
    const char *key;
    uint64_t key_len;
    resid_status st = cur_str(c, &key, &key_len);
    if (st) return st;
    st = dup_name(c, key, key_len, &kv->key);
    if (st) return st;
    snprintf(c->where, sizeof c->where, "key/value %" PRId64 " ('%.100s')", i, kv->key);

    uint32_t type;
    st = cur_u32(c, &type);
    if (st) return st;
    if (type > RS_GGUF_FLOAT64)
        return rs_err(c->err, RESID_E_FORMAT, "%s: %s has unknown value type %u",
                      c->label, c->where, type);
    kv->type = (rs_gguf_type)type;
    if (type != RS_GGUF_ARRAY) {
        kv->val = c->data + c->pos;
        return skip_value(c, type, 0);
    }
    uint32_t at;
    uint64_t n;
    st = cur_u32(c, &at);
    if (!st) st = cur_u64(c, &n);
    if (st) return st;
    if (at > RS_GGUF_FLOAT64)
        return rs_err(c->err, RESID_E_FORMAT, "%s: %s is an array of unknown type %u",
                      c->label, c->where, at);
    kv->arr_type = (rs_gguf_type)at;
    kv->arr_n = n;
    kv->val = c->data + c->pos;
    if (at == RS_GGUF_STRING) {
        /* bounded by the file: each string needs >= 8 bytes */
        if (n > cur_left(c) / 8)
            return rs_err(c->err, RESID_E_FORMAT,
                          "%s: truncated in %s: array claims %" PRIu64 " strings at "
                          "offset %zu, but only %zu bytes remain",
                          c->label, c->where, n, c->pos, cur_left(c));
        kv->str_off = malloc((n ? (size_t)n : 1) * sizeof *kv->str_off);
        if (!kv->str_off)
            return rs_err(c->err, RESID_E_NOMEM, "%s: %s: cannot allocate %" PRIu64
                          " string offsets", c->label, c->where, n);
    }
    return skip_array_items(c, at, n, 0, kv->val, kv->str_off);
}

/* ---------------------------------------------------------------------- */
/* Tensor infos                                                           */
/* ---------------------------------------------------------------------- */

typedef struct tinfo {
    uint32_t ggml_type;
    uint64_t offset; /* relative to the data section */
} tinfo;

static resid_status parse_tinfo(cursor *c, int64_t i, rs_tensor *t, tinfo *ti) {
    snprintf(c->where, sizeof c->where, "tensor info %" PRId64 " (name)", i);
    const char *name;
    uint64_t name_len;
    resid_status st = cur_str(c, &name, &name_len);
    if (st) return st;
    char *nm;
    st = dup_name(c, name, name_len, &nm);
    if (st) return st;
    t->name = nm;
    snprintf(c->where, sizeof c->where, "tensor info %" PRId64 " ('%.100s')", i, nm);

    uint32_t n_dims;
    st = cur_u32(c, &n_dims);
    if (st) return st;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return rs_err(c->err, RESID_E_FORMAT,
                      "%s: %s has %u dimensions; expected 1 to %d", c->label, c->where,
                      n_dims, GGUF_MAX_DIMS);
    int64_t ne[GGUF_MAX_DIMS] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t v;
        st = cur_u64(c, &v);
        if (st) return st;
        if (v > (uint64_t)INT64_MAX)
            return rs_err(c->err, RESID_E_FORMAT, "%s: %s has ne[%u] = %" PRIu64
                          ", too large", c->label, c->where, d, v);
        ne[d] = (int64_t)v;
    }
    st = cur_u32(c, &ti->ggml_type);
    if (!st) st = cur_u64(c, &ti->offset);
    if (st) return st;

    int64_t rows;
    if (!rs_mul_i64(ne[1], ne[2], &rows) || !rs_mul_i64(rows, ne[3], &rows))
        return rs_err(c->err, RESID_E_FORMAT,
                      "%s: %s: the product of its dimensions [%" PRId64 ", %" PRId64
                      ", %" PRId64 ", %" PRId64 "] overflows",
                      c->label, c->where, ne[0], ne[1], ne[2], ne[3]);
    int64_t n_elems;
    if (!rs_mul_i64(rows, ne[0], &n_elems))
        return rs_err(c->err, RESID_E_FORMAT,
                      "%s: %s: the product of its dimensions [%" PRId64 ", %" PRId64
                      ", %" PRId64 ", %" PRId64 "] overflows",
                      c->label, c->where, ne[0], ne[1], ne[2], ne[3]);
    t->n_cols = ne[0];
    t->n_rows = rows;
    t->transposed = false;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Whole file                                                             */
/* ---------------------------------------------------------------------- */

static void free_tables(rs_gguf *g) {
    if (g->kv) {
        for (int64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].str_off);
        }
        free(g->kv);
    }
    if (g->tensors) {
        for (int64_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
        free(g->tensors);
    }
    g->kv = NULL;
    g->tensors = NULL;
}

/* Duplicate-name check: sort (name, index) pairs, compare neighbours. */
typedef struct name_idx {
    const char *name;
    int64_t idx;
} name_idx;

static int cmp_name_idx(const void *a, const void *b) {
    const name_idx *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    return r ? r : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Finds two tensors with the same name (di < dj, file order); false if none
 * (or when the scratch cannot be allocated; names are then unchecked). */
static bool find_duplicate(const rs_tensor *t, int64_t n, int64_t *di, int64_t *dj) {
    if (n < 2) return false;
    name_idx *v = malloc((size_t)n * sizeof *v);
    if (!v) return false;
    for (int64_t i = 0; i < n; i++) v[i] = (name_idx){t[i].name, i};
    qsort(v, (size_t)n, sizeof *v, cmp_name_idx);
    bool dup = false;
    for (int64_t k = 1; k < n && !dup; k++) {
        if (strcmp(v[k - 1].name, v[k].name) == 0) {
            *di = v[k - 1].idx;
            *dj = v[k].idx;
            dup = true;
        }
    }
    free(v);
    return dup;
}

/* Checks each tensor's type, geometry and placement, and points its data
 * into the image. */
static resid_status place_tensors(rs_gguf *g, const tinfo *ti, const uint8_t *data,
                                  size_t size, const char *label, resid_error *err) {
    const uint64_t a = g->alignment, ds = g->data_offset;
    const uint64_t n_tensors = (uint64_t)g->n_tensors;
    for (uint64_t i = 0; i < n_tensors; i++) {
        rs_tensor *t = &g->tensors[i];
        resid_dtype dt;
        if (!ggml_to_dtype(ti[i].ggml_type, &dt)) {
            return rs_err(err, RESID_E_UNSUPPORTED,
                        "%s: tensor '%.100s' has ggml type %u (%s), which resid does "
                        "not support; supported: " GGUF_SUPPORTED_TYPES,
                        label, t->name, ti[i].ggml_type,
                        ggml_type_name(ti[i].ggml_type));
        }
        t->dtype = dt;
        int64_t be = rs_dtype_block_elems(dt);
        if (t->n_cols % be != 0) {
            return rs_err(err, RESID_E_FORMAT,
                          "%s: tensor '%.100s' has ne[0] = %" PRId64
                          ", not a multiple of the %s block size %" PRId64,
                          label, t->name, t->n_cols, ggml_type_name(ti[i].ggml_type),
                          be);
        }
        size_t nb;
        if (!rs_dtype_nbytes(dt, t->n_rows, t->n_cols, &nb)) {
            return rs_err(err, RESID_E_FORMAT,
                          "%s: tensor '%.100s': byte size of %" PRId64 " x %" PRId64
                          " %s overflows",
                          label, t->name, t->n_rows, t->n_cols,
                          ggml_type_name(ti[i].ggml_type));
        }
        uint64_t off = ti[i].offset;
        if (off % a != 0) {
            return rs_err(err, RESID_E_FORMAT,
                          "%s: tensor '%.100s' has data offset %" PRIu64
                          ", not a multiple of the alignment %" PRIu64,
                          label, t->name, off, a);
        }
        uint64_t room = size - ds; /* ds <= size here */
        if (off > room || nb > room - off) {
            return rs_err(err, RESID_E_FORMAT,
                          "%s: tensor '%.100s' (%zu bytes at data offset %" PRIu64
                          ", absolute %" PRIu64 ") runs past the end of the file "
                          "(%zu bytes)",
                          label, t->name, nb, off,
                          off > UINT64_MAX - ds ? UINT64_MAX : ds + off, size);
        }
        t->data = data + ds + off;
        t->n_bytes = nb;
    }
    return RESID_OK;
}

static resid_status parse_image(const uint8_t *data, size_t size, const char *label,
                                rs_gguf *g, resid_error *err) {
    cursor cc = {.data = data, .size = size, .label = label, .err = err};
    cursor *c = &cc;
    resid_status st;

    /* header */
    snprintf(c->where, sizeof c->where, "the header");
    if (size < 4 || memcmp(data, GGUF_MAGIC, 4) != 0)
        return rs_err(err, RESID_E_FORMAT, "%s: not a GGUF file (bad magic)", label);
    c->pos = 4;
    if ((st = cur_u32(c, &g->version))) return st;
    if (g->version == 1)
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: GGUF version 1 is not supported (only v2 and v3); "
                      "re-convert the model with a current llama.cpp",
                      label);
    if (g->version != 2 && g->version != 3) {
        if ((g->version & 0xFFFF) == 0 && g->version != 0)
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "%s: GGUF version field 0x%08x looks big-endian; only "
                          "little-endian GGUF v2/v3 is supported",
                          label, g->version);
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: GGUF version %u is not supported (only v2 and v3)", label,
                      g->version);
    }
    uint64_t n_tensors, n_kv;
    if ((st = cur_u64(c, &n_tensors)) || (st = cur_u64(c, &n_kv))) return st;
    if (n_kv > cur_left(c) / GGUF_MIN_KV_BYTES)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: header claims %" PRIu64 " key/value pairs, but the file "
                      "(%zu bytes) can hold at most %zu",
                      label, n_kv, size, cur_left(c) / GGUF_MIN_KV_BYTES);
    if (n_tensors > cur_left(c) / GGUF_MIN_TINFO_BYTES)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: header claims %" PRIu64 " tensors, but the file "
                      "(%zu bytes) can hold at most %zu",
                      label, n_tensors, size, cur_left(c) / GGUF_MIN_TINFO_BYTES);

    /* key/value pairs; n_kv is counted up as they are filled so that
     * free_tables frees exactly what was allocated */
    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    if (!g->kv) return rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = (int64_t)i + 1;
        if ((st = parse_kv(c, (int64_t)i, &g->kv[i]))) return st;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->kv[j].key, g->kv[i].key) == 0)
                return rs_err(err, RESID_E_FORMAT,
                              "%s: duplicate key '%.100s' (key/value %" PRIu64
                              " and %" PRIu64 ")",
                              label, g->kv[i].key, j, i);
    }

    /* alignment */
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const rs_gguf_kv *akv = rs_gguf_find(g, "general.alignment");
    if (akv) {
        int64_t a;
        if (!rs_gguf_get_i64(g, "general.alignment", &a))
            return rs_err(err, RESID_E_FORMAT,
                          "%s: general.alignment has type %s; expected an integer",
                          label, gguf_type_name(akv->type));
        if (a < 8 || a > (1 << 30) || (a & (a - 1)) != 0)
            return rs_err(err, RESID_E_FORMAT,
                          "%s: general.alignment = %" PRId64
                          " is not a power of two between 8 and 2^30",
                          label, a);
        g->alignment = (uint64_t)a;
    }

    /* tensor infos */
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    tinfo *ti = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *ti);
    if (!g->tensors || !ti) {
        free(ti);
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = (int64_t)i + 1;
        if ((st = parse_tinfo(c, (int64_t)i, &g->tensors[i], &ti[i]))) {
            free(ti);
            return st;
        }
    }

    /* data section: starts at the next multiple of the alignment */
    uint64_t a = g->alignment;
    uint64_t ds = ((uint64_t)c->pos + a - 1) / a * a;
    g->data_offset = ds;
    if (n_tensors > 0 && ds > size) {
        free(ti);
        return rs_err(err, RESID_E_FORMAT,
                      "%s: truncated: the tensor data section would start at offset "
                      "%" PRIu64 " (tensor infos end at %zu, alignment %" PRIu64
                      "), file is %zu bytes",
                      label, ds, c->pos, a, size);
    }

    st = place_tensors(g, ti, data, size, label, err);
    free(ti);
    if (st) return st;

    int64_t di, dj;
    if (find_duplicate(g->tensors, g->n_tensors, &di, &dj))
        return rs_err(err, RESID_E_FORMAT,
                      "%s: duplicate tensor name '%.100s' (tensor infos %" PRId64
                      " and %" PRId64 ")",
                      label, g->tensors[di].name, di, dj);
    return RESID_OK;
}

resid_status rs_gguf_parse(const uint8_t *data, size_t size, const char *label,
                           rs_gguf *g, resid_error *err) {
    memset(g, 0, sizeof *g);
    if (!label) label = "<memory>";
    if (!data && size)
        return rs_err(err, RESID_E_ARG, "%s: no data", label);
    resid_status st = parse_image(data, size, label, g, err);
    if (st) {
        free_tables(g);
        memset(g, 0, sizeof *g);
    }
    return st;
}

resid_status rs_gguf_open(const char *path, rs_gguf *g, resid_error *err) {
    memset(g, 0, sizeof *g);
    rs_mapped m;
    resid_status st = rs_map_file(path, &m, err);
    if (st) return st;
    st = rs_gguf_parse(m.data, m.size, path, g, err);
    if (st) {
        rs_unmap(&m);
        return st;
    }
    g->map = m;
    return RESID_OK;
}

void rs_gguf_close(rs_gguf *g) {
    if (!g) return;
    free_tables(g);
    rs_unmap(&g->map);
    memset(g, 0, sizeof *g);
}

/* ---------------------------------------------------------------------- */
/* Lookups                                                                */
/* ---------------------------------------------------------------------- */

const rs_gguf_kv *rs_gguf_find(const rs_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

const rs_tensor *rs_gguf_tensor(const rs_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

/* Reads a scalar of `type` at p as int64; false for non-integers and for
 * uint64 values past INT64_MAX. */
static bool scalar_i64(uint32_t type, const uint8_t *p, int64_t *out) {
    switch (type) {
    case RS_GGUF_UINT8: *out = p[0]; return true;
    case RS_GGUF_INT8: *out = (int8_t)p[0]; return true;
    case RS_GGUF_UINT16: *out = (uint16_t)(p[0] | p[1] << 8); return true;
    case RS_GGUF_INT16: *out = (int16_t)(uint16_t)(p[0] | p[1] << 8); return true;
    case RS_GGUF_UINT32: *out = rd_u32(p); return true;
    case RS_GGUF_INT32: *out = (int32_t)rd_u32(p); return true;
    case RS_GGUF_UINT64: {
        uint64_t v = rd_u64(p);
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
        return true;
    }
    case RS_GGUF_INT64: *out = (int64_t)rd_u64(p); return true;
    default: return false;
    }
}

static bool scalar_f64(uint32_t type, const uint8_t *p, double *out) {
    if (type == RS_GGUF_FLOAT32) {
        uint32_t b = rd_u32(p);
        float f;
        memcpy(&f, &b, 4);
        *out = f;
        return true;
    }
    if (type == RS_GGUF_FLOAT64) {
        uint64_t b = rd_u64(p);
        memcpy(out, &b, 8);
        return true;
    }
    return false;
}

bool rs_gguf_get_i64(const rs_gguf *g, const char *key, int64_t *out) {
    const rs_gguf_kv *kv = rs_gguf_find(g, key);
    return kv && scalar_i64(kv->type, kv->val, out);
}

bool rs_gguf_get_f32(const rs_gguf *g, const char *key, float *out) {
    const rs_gguf_kv *kv = rs_gguf_find(g, key);
    double d;
    if (!kv || !scalar_f64(kv->type, kv->val, &d)) return false;
    *out = (float)d;
    return true;
}

bool rs_gguf_get_bool(const rs_gguf *g, const char *key, bool *out) {
    const rs_gguf_kv *kv = rs_gguf_find(g, key);
    if (!kv || kv->type != RS_GGUF_BOOL) return false;
    *out = kv->val[0] != 0;
    return true;
}

bool rs_gguf_get_str(const rs_gguf *g, const char *key, const char **s,
                     uint64_t *len) {
    const rs_gguf_kv *kv = rs_gguf_find(g, key);
    if (!kv || kv->type != RS_GGUF_STRING) return false;
    *len = rd_u64(kv->val);
    *s = (const char *)kv->val + 8;
    return true;
}

bool rs_gguf_arr_str(const rs_gguf_kv *kv, uint64_t i, const char **s,
                     uint64_t *len) {
    if (!kv || kv->type != RS_GGUF_ARRAY || kv->arr_type != RS_GGUF_STRING ||
        !kv->str_off || i >= kv->arr_n)
        return false;
    const uint8_t *p = kv->val + kv->str_off[i];
    *len = rd_u64(p);
    *s = (const char *)p + 8;
    return true;
}

bool rs_gguf_arr_f32(const rs_gguf_kv *kv, uint64_t i, float *out) {
    if (!kv || kv->type != RS_GGUF_ARRAY || i >= kv->arr_n) return false;
    size_t es = gguf_scalar_size(kv->arr_type);
    if (!es || kv->arr_type == RS_GGUF_BOOL) return false;
    const uint8_t *p = kv->val + i * es;
    double d;
    int64_t v;
    if (scalar_f64(kv->arr_type, p, &d)) {
        *out = (float)d;
        return true;
    }
    if (kv->arr_type == RS_GGUF_UINT64) {
        *out = (float)rd_u64(p);
        return true;
    }
    if (scalar_i64(kv->arr_type, p, &v)) {
        *out = (float)v;
        return true;
    }
    return false;
}

bool rs_gguf_arr_i64(const rs_gguf_kv *kv, uint64_t i, int64_t *out) {
    if (!kv || kv->type != RS_GGUF_ARRAY || i >= kv->arr_n) return false;
    size_t es = gguf_scalar_size(kv->arr_type);
    if (!es) return false;
    return scalar_i64(kv->arr_type, kv->val + i * es, out);
}
