/*
 * gguf.h - GGUF v2/v3 reader: header, key/value metadata and tensor infos,
 * over a memory-mapped file. Every size read from the file is checked
 * against the file's real size before use.
 */
#ifndef RESID_FORMAT_GGUF_H
#define RESID_FORMAT_GGUF_H

#include <stdint.h>

#include "core/util.h"
#include "tensor/tensor.h"

typedef enum rs_gguf_type {
    RS_GGUF_UINT8 = 0,
    RS_GGUF_INT8 = 1,
    RS_GGUF_UINT16 = 2,
    RS_GGUF_INT16 = 3,
    RS_GGUF_UINT32 = 4,
    RS_GGUF_INT32 = 5,
    RS_GGUF_FLOAT32 = 6,
    RS_GGUF_BOOL = 7,
    RS_GGUF_STRING = 8,
    RS_GGUF_ARRAY = 9,
    RS_GGUF_UINT64 = 10,
    RS_GGUF_INT64 = 11,
    RS_GGUF_FLOAT64 = 12,
} rs_gguf_type;

typedef struct rs_gguf_kv {
    char *key;          /* owned, NUL-terminated */
    rs_gguf_type type;  /* RS_GGUF_ARRAY for arrays */
    rs_gguf_type arr_type;
    uint64_t arr_n;     /* element count for arrays */
    const uint8_t *val; /* points into the map: the value (after the type,
                           and for arrays after type + count) */
    /* Arrays of strings: offsets (from val) of each element's u64 length
       prefix, so element i is random-access. NULL for other kinds. */
    uint64_t *str_off;
} rs_gguf_kv;

typedef struct rs_gguf {
    rs_mapped map;
    uint32_t version;
    int64_t n_kv;
    rs_gguf_kv *kv;
    int64_t n_tensors;
    rs_tensor *tensors; /* names owned here; data points into the map */
    uint64_t alignment;
    uint64_t data_offset; /* absolute offset of the tensor data section */
} rs_gguf;

/* Maps and parses `path`. On failure nothing needs freeing. */
resid_status rs_gguf_open(const char *path, rs_gguf *g, resid_error *err);
/* Parses an in-memory image (not owned; must outlive g). `label` names the
 * source in error messages. For fuzzing and tests. */
resid_status rs_gguf_parse(const uint8_t *data, size_t size, const char *label,
                           rs_gguf *g, resid_error *err);
void rs_gguf_close(rs_gguf *g);

const rs_gguf_kv *rs_gguf_find(const rs_gguf *g, const char *key);
const rs_tensor *rs_gguf_tensor(const rs_gguf *g, const char *name);

/* Typed getters: return false when the key is absent or of another kind.
 * Integer getters accept any integer type whose value fits. */
bool rs_gguf_get_i64(const rs_gguf *g, const char *key, int64_t *out);
bool rs_gguf_get_f32(const rs_gguf *g, const char *key, float *out);
bool rs_gguf_get_bool(const rs_gguf *g, const char *key, bool *out);
/* String value: pointer into the map (not NUL-terminated) and its length. */
bool rs_gguf_get_str(const rs_gguf *g, const char *key, const char **s,
                     uint64_t *len);
/* Element i of an array of strings. */
bool rs_gguf_arr_str(const rs_gguf_kv *kv, uint64_t i, const char **s,
                     uint64_t *len);
/* Element i of a numeric array, converted. */
bool rs_gguf_arr_f32(const rs_gguf_kv *kv, uint64_t i, float *out);
bool rs_gguf_arr_i64(const rs_gguf_kv *kv, uint64_t i, int64_t *out);

#endif
