/*
 * util.h - small shared helpers: error reporting, checked arithmetic,
 * memory-mapped files, whole-file reads and path joins.
 */
#ifndef RESID_CORE_UTIL_H
#define RESID_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resid.h"

/* Fills err (if not NULL) with code and a printf-style message; returns code
 * so callers can write `return rs_err(err, RESID_E_FORMAT, "...")`. */
resid_status rs_err(resid_error *err, resid_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked arithmetic: return false on overflow or negative input. */
bool rs_mul_size(size_t a, size_t b, size_t *out);
bool rs_add_size(size_t a, size_t b, size_t *out);
bool rs_mul_i64(int64_t a, int64_t b, int64_t *out);

/* A read-only memory-mapped file. Shared across processes by the kernel. */
typedef struct rs_mapped {
    const uint8_t *data;
    size_t size;
    char *path;
} rs_mapped;

resid_status rs_map_file(const char *path, rs_mapped *out, resid_error *err);
void rs_unmap(rs_mapped *m);

/* Reads a whole file into a malloc'd, NUL-terminated buffer (max_size caps
 * what is accepted). */
resid_status rs_read_file(const char *path, size_t max_size, char **out,
                          size_t *size, resid_error *err);

/* Joins dir and name with '/'; malloc'd. */
char *rs_path_join(const char *dir, const char *name);
char *rs_path_dirname(const char *path);
bool rs_path_is_dir(const char *path);
bool rs_path_exists(const char *path);
char *rs_strdup(const char *s);

/* UTF-8: length of the valid sequence at s[0..n) or 0 if invalid. */
int rs_utf8_seq_len(const uint8_t *s, size_t n);
/* Returns -1 when valid, else the byte offset of the first invalid byte. */
int64_t rs_utf8_validate(const char *s, size_t n);

/* A value and its enumeration index; rs_keyed_sort orders by value
 * descending, ties by index ascending (qsort is not stable, the index
 * makes it so): the order of every ranked list resid prints. */
typedef struct rs_keyed {
    double key;
    int64_t i;
} rs_keyed;
void rs_keyed_sort(rs_keyed *a, size_t n);
/* Its comparator: < 0 when *a goes first. */
int rs_keyed_cmp(const void *a, const void *b);

/* The allocation cap (resid_set_alloc_cap; default: physical memory).
 * rs_check_alloc returns RESID_OK when `bytes` is within it, else
 * RESID_E_NOMEM with "<label>: <what> needs N bytes, over the cap". Use it
 * before allocating anything whose size comes from a file. */
size_t rs_alloc_cap(void);
resid_status rs_check_alloc(size_t bytes, const char *label, const char *what,
                            resid_error *err);

/* JSON from files: size caps and the deepest nesting accepted. */
#define RS_JSON_MAX_DEPTH 64
#define RS_JSON_MAX_CONFIG ((size_t)16 << 20)    /* config.json */
#define RS_JSON_MAX_INDEX ((size_t)64 << 20)     /* *.index.json */
#define RS_JSON_MAX_TOKENIZER ((size_t)1 << 30)  /* tokenizer.json, vocab.json */

/* Checks buf[0..n) against max_size and RS_JSON_MAX_DEPTH (brackets outside
 * strings), without parsing; errors name `label` and the byte offset. */
resid_status rs_json_check(const char *buf, size_t n, size_t max_size,
                           const char *label, resid_error *err);
/* rs_json_check, then cJSON; *out must be freed with cJSON_Delete. */
struct cJSON;
resid_status rs_json_parse(const char *buf, size_t n, const char *label,
                           size_t max_size, struct cJSON **out,
                           resid_error *err);
/* Reads a file (at most max_size bytes) and rs_json_parse()s it. */
resid_status rs_json_read(const char *path, size_t max_size, struct cJSON **out,
                          resid_error *err);

/* float16 / bfloat16 conversions (exact, as ggml does them). */
float rs_f16_to_f32(uint16_t h);
float rs_bf16_to_f32(uint16_t h);

#endif
