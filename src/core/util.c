#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

const char *resid_status_str(resid_status s) {
    switch (s) {
    case RESID_OK: return "ok";
    case RESID_E_IO: return "I/O error";
    case RESID_E_FORMAT: return "format error";
    case RESID_E_UNSUPPORTED: return "unsupported";
    case RESID_E_ARG: return "invalid argument";
    case RESID_E_NOMEM: return "out of memory";
    case RESID_E_TOKENIZE: return "tokenization error";
    case RESID_E_CONTEXT: return "context too long";
    }
    return "unknown error";
}

resid_status rs_err(resid_error *err, resid_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

bool rs_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

bool rs_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

bool rs_mul_i64(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return false;
    return !__builtin_mul_overflow(a, b, out);
}

/* ------------------------------------------------------------------------- */
/* Allocation cap                                                            */
/* ------------------------------------------------------------------------- */

static size_t alloc_cap; /* 0: not set, use physical memory */

static size_t phys_mem(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    size_t b;
    if (pages <= 0 || page <= 0 || !rs_mul_size((size_t)pages, (size_t)page, &b))
        return SIZE_MAX;
    return b;
}

void resid_set_alloc_cap(size_t bytes) { alloc_cap = bytes; }

size_t resid_alloc_cap(void) { return alloc_cap ? alloc_cap : phys_mem(); }

size_t rs_alloc_cap(void) { return resid_alloc_cap(); }

int rs_keyed_cmp(const void *pa, const void *pb) {
    const rs_keyed *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

void rs_keyed_sort(rs_keyed *a, size_t n) {
    if (n > 1) qsort(a, n, sizeof *a, rs_keyed_cmp);
}

resid_status rs_check_alloc(size_t bytes, const char *label, const char *what,
                            resid_error *err) {
    size_t cap = rs_alloc_cap();
    if (bytes <= cap) return RESID_OK;
    return rs_err(err, RESID_E_NOMEM,
                  "%s: %s needs %zu bytes, over the allocation cap of %zu bytes "
                  "(resid_set_alloc_cap)",
                  label, what, bytes, cap);
}

/* ------------------------------------------------------------------------- */
/* JSON                                                                      */
/* ------------------------------------------------------------------------- */

resid_status rs_json_check(const char *buf, size_t n, size_t max_size, const char *label,
                           resid_error *err) {
    if (n > max_size)
        return rs_err(err, RESID_E_FORMAT, "%s: JSON is %zu bytes, over the %zu-byte limit", label,
                      n, max_size);
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = buf[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > RS_JSON_MAX_DEPTH)
                return rs_err(err, RESID_E_FORMAT,
                              "%s: JSON nested deeper than %d levels (at byte %zu)", label,
                              RS_JSON_MAX_DEPTH, i);
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return RESID_OK;
}

resid_status rs_json_parse(const char *buf, size_t n, const char *label, size_t max_size,
                           cJSON **out, resid_error *err) {
    *out = NULL;
    resid_status st = rs_json_check(buf, n, max_size, label, err);
    if (st) return st;
    const char *stop = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, n, &stop, 0);
    if (!j) {
        size_t at = stop && stop >= buf ? (size_t)(stop - buf) : 0;
        return rs_err(err, RESID_E_FORMAT, "%s: invalid JSON near byte %zu", label, at);
    }
    /* Only white space may follow the value (cJSON stops after it). */
    for (const char *p = stop ? stop : buf + n; p < buf + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
            cJSON_Delete(j);
            return rs_err(err, RESID_E_FORMAT, "%s: unexpected data after the JSON value at byte %zu",
                          label, (size_t)(p - buf));
        }
    }
    *out = j;
    return RESID_OK;
}

resid_status rs_json_read(const char *path, size_t max_size, cJSON **out, resid_error *err) {
    *out = NULL;
    char *buf;
    size_t n;
    resid_status st = rs_read_file(path, max_size, &buf, &n, err);
    if (st) return st;
    st = rs_json_parse(buf, n, path, max_size, out, err);
    free(buf);
    return st;
}

resid_status rs_map_file(const char *path, rs_mapped *out, resid_error *err) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return rs_err(err, RESID_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return rs_err(err, RESID_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return rs_err(err, RESID_E_FORMAT, "%s: file is empty", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return rs_err(err, RESID_E_IO, "%s: mmap failed: %s", path, strerror(errno));
    out->data = p;
    out->size = (size_t)st.st_size;
    out->path = rs_strdup(path);
    return RESID_OK;
}

void rs_unmap(rs_mapped *m) {
    if (!m) return;
    if (m->data) munmap((void *)m->data, m->size);
    free(m->path);
    memset(m, 0, sizeof *m);
}

resid_status rs_read_file(const char *path, size_t max_size, char **out,
                          size_t *size, resid_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return rs_err(err, RESID_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return rs_err(err, RESID_E_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_size) {
        fclose(f);
        return rs_err(err, RESID_E_FORMAT, "%s: file is %lld bytes, over the %zu-byte limit",
                      path, (long long)st.st_size, max_size);
    }
    resid_status cs = rs_check_alloc((size_t)st.st_size + 1, path, "reading the file", err);
    if (cs) {
        fclose(f);
        return cs;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return rs_err(err, RESID_E_NOMEM, "%s: cannot allocate %lld bytes", path,
                      (long long)st.st_size);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (n != (size_t)st.st_size) {
        free(buf);
        return rs_err(err, RESID_E_IO, "%s: short read", path);
    }
    buf[n] = 0;
    *out = buf;
    if (size) *size = n;
    return RESID_OK;
}

char *rs_strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

char *rs_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

char *rs_path_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return rs_strdup(".");
    if (slash == path) return rs_strdup("/");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

bool rs_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool rs_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int rs_utf8_seq_len(const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* reject overlong forms, surrogates and values past U+10FFFF */
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
        (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

int64_t rs_utf8_validate(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        int l = rs_utf8_seq_len(u + i, n - i);
        if (l == 0) return (int64_t)i;
        i += (size_t)l;
    }
    return -1;
}

float rs_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while ((mant & 0x400) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float rs_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
