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

/* float16 / bfloat16 conversions (exact, as ggml does them). */
float rs_f16_to_f32(uint16_t h);
float rs_bf16_to_f32(uint16_t h);

#endif
