/*
 * safetensors.c - the safetensors format and Hugging Face model folders.
 *
 * A safetensors file is: u64 little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data section; offsets are relative to
 * its start. We keep F32/F16/BF16 tensors as views into the map and skip
 * every other dtype (integer buffers, bool masks, F64...), after checking
 * that their entries are well formed too.
 */
#include "format/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* Largest header we accept. Real headers are a few hundred KB at most (a
 * 70B model's shard with ~1000 tensors is ~100 KB). */
#define ST_MAX_HEADER ((uint64_t)100 << 20)
/* Largest tensor rank we accept; real checkpoints use at most 4 or 5. */
#define ST_MAX_RANK 8
/* config.json and the shard index are small JSON files. */
#define HF_MAX_CONFIG RS_JSON_MAX_CONFIG
#define HF_MAX_INDEX  RS_JSON_MAX_INDEX
/* Integers above 2^53 are not exact in a JSON double. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* ------------------------------------------------------------------------- */
/* dtypes                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct st_dtype {
    const char *name;
    size_t size;     /* bytes per element */
    int resid_dtype; /* resid_dtype, or -1: skipped */
} st_dtype;

static const st_dtype st_dtypes[] = {
    {"F32", 4, RESID_DTYPE_F32},
    {"F16", 2, RESID_DTYPE_F16},
    {"BF16", 2, RESID_DTYPE_BF16},
    {"F64", 8, -1},
    {"I64", 8, -1},
    {"U64", 8, -1},
    {"I32", 4, -1},
    {"U32", 4, -1},
    {"I16", 2, -1},
    {"U16", 2, -1},
    {"I8", 1, -1},
    {"U8", 1, -1},
    {"BOOL", 1, -1},
    {"F8_E4M3", 1, -1},
    {"F8_E5M2", 1, -1},
    {"F8_E8M0", 1, -1},
};

/* NULL for a dtype we do not know (e.g. a future sub-byte type): such a
 * tensor is skipped without a size check. */
static const st_dtype *st_find_dtype(const char *name) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* one file                                                                  */
/* ------------------------------------------------------------------------- */

/* A JSON number that is a non-negative integer exactly representable. */
static bool st_json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d > ST_MAX_JSON_INT || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

/* Names of every entry, sorted, to find duplicates (cJSON keeps both). */
static int st_cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool st_is_pad(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0;
}

/* Validates one entry `e` named `name`; on success fills *t when the dtype is
 * kept (returns true in *keep). data0 is the data section, data_size its
 * length. */
static resid_status st_entry(const char *label, const char *name, const cJSON *e,
                             const uint8_t *data0, uint64_t data_size, rs_tensor *t, bool *keep,
                             resid_error *err) {
    *keep = false;
    if (!cJSON_IsObject(e))
        return rs_err(err, RESID_E_FORMAT, "%s: safetensors entry \"%s\" is not an object", label,
                      name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !jd->valuestring)
        return rs_err(err, RESID_E_FORMAT, "%s: tensor \"%s\": missing or non-string \"dtype\"",
                      label, name);
    if (!cJSON_IsArray(js))
        return rs_err(err, RESID_E_FORMAT, "%s: tensor \"%s\": missing or non-array \"shape\"",
                      label, name);
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tensor \"%s\": \"data_offsets\" must be an array [begin, end]", label,
                      name);
    uint64_t begin, end;
    if (!st_json_uint(cJSON_GetArrayItem(jo, 0), &begin) ||
        !st_json_uint(cJSON_GetArrayItem(jo, 1), &end))
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tensor \"%s\": data_offsets must be non-negative integers", label, name);
    if (begin > end)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tensor \"%s\": data_offsets [%llu, %llu] has begin > end", label, name,
                      (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tensor \"%s\": data_offsets [%llu, %llu] past the end of the "
                      "%llu-byte data section (truncated file?)",
                      label, name, (unsigned long long)begin, (unsigned long long)end,
                      (unsigned long long)data_size);

    int rank = cJSON_GetArraySize(js);
    if (rank > ST_MAX_RANK)
        return rs_err(err, RESID_E_FORMAT, "%s: tensor \"%s\": rank %d is over the limit of %d",
                      label, name, rank, ST_MAX_RANK);
    uint64_t dims[ST_MAX_RANK];
    uint64_t n_elems = 1;
    bool overflow = false;
    for (int i = 0; i < rank; i++) {
        if (!st_json_uint(cJSON_GetArrayItem(js, i), &dims[i]))
            return rs_err(err, RESID_E_FORMAT,
                          "%s: tensor \"%s\": shape[%d] is not a non-negative integer", label, name,
                          i);
        if (__builtin_mul_overflow(n_elems, dims[i], &n_elems)) overflow = true;
    }

    const st_dtype *dt = st_find_dtype(jd->valuestring);
    if (!dt) return RESID_OK; /* unknown dtype: skipped */
    uint64_t n_bytes;
    if (overflow || __builtin_mul_overflow(n_elems, (uint64_t)dt->size, &n_bytes) ||
        n_elems > (uint64_t)INT64_MAX)
        return rs_err(err, RESID_E_FORMAT, "%s: tensor \"%s\": the shape's element count overflows",
                      label, name);
    if (end - begin != n_bytes)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: tensor \"%s\": data_offsets [%llu, %llu] hold %llu bytes, but "
                      "%s with this shape needs %llu",
                      label, name, (unsigned long long)begin, (unsigned long long)end,
                      (unsigned long long)(end - begin), dt->name, (unsigned long long)n_bytes);
    if (dt->resid_dtype < 0) return RESID_OK; /* known, not a float we use */

    const uint8_t *p = data0 + begin;
    if (((uintptr_t)p % dt->size) != 0)
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "%s: tensor \"%s\" (%s) starts at a data offset that is not %zu-byte "
                      "aligned; unaligned safetensors are not supported",
                      label, name, dt->name, dt->size);
    uint64_t n_cols = rank >= 1 ? dims[rank - 1] : 1;
    uint64_t n_rows = 1;
    /* A prefix of the product above, which did not overflow. */
    for (int i = 0; i + 1 < rank; i++)
        n_rows *= dims[i];
    t->name = NULL; /* set by the caller */
    t->dtype = (resid_dtype)dt->resid_dtype;
    t->n_rows = (int64_t)n_rows;
    t->n_cols = (int64_t)n_cols;
    t->transposed = false;
    t->data = p;
    t->n_bytes = (size_t)n_bytes;
    *keep = true;
    return RESID_OK;
}

resid_status rs_st_parse(const uint8_t *data, size_t size, const char *label, rs_safetensors *st,
                         resid_error *err) {
    memset(st, 0, sizeof *st);
    if (size < 8)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: file is %zu bytes, too small for a safetensors header (8-byte "
                      "length + JSON)",
                      label, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | data[i];
    if (n > ST_MAX_HEADER)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: safetensors header length %llu is over the %llu-byte limit "
                      "(not a safetensors file?)",
                      label, (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
    if (n > size - 8)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: safetensors header length %llu is larger than the %zu bytes "
                      "after it (truncated file?)",
                      label, (unsigned long long)n, size - 8);
    if (n < 2)
        return rs_err(err, RESID_E_FORMAT,
                      "%s: safetensors header length %llu is too small for a JSON object", label,
                      (unsigned long long)n);

    /* A NUL-terminated copy, so the JSON parser never reads past it. */
    char *json = malloc((size_t)n + 1);
    if (!json)
        return rs_err(err, RESID_E_NOMEM, "%s: cannot allocate the %llu-byte header", label,
                      (unsigned long long)n);
    memcpy(json, data + 8, (size_t)n);
    json[n] = 0;
    resid_status jc = rs_json_check(json, (size_t)n, ST_MAX_HEADER, label, err);
    if (jc != RESID_OK) {
        free(json);
        return jc;
    }
    const char *stop = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)n, &stop, 0);
    if (!root) {
        size_t at = stop ? (size_t)(stop - json) : 0;
        free(json);
        return rs_err(err, RESID_E_FORMAT,
                      "%s: safetensors header is not valid JSON (error near byte %zu of "
                      "the %llu-byte header, file offset %zu)",
                      label, at, (unsigned long long)n, at + 8);
    }
    if (stop) {
        for (size_t i = (size_t)(stop - json); i < n; i++) {
            if (!st_is_pad((uint8_t)json[i])) {
                cJSON_Delete(root);
                free(json);
                return rs_err(err, RESID_E_FORMAT,
                              "%s: safetensors header has trailing bytes after the JSON "
                              "(at byte %zu of the header)",
                              label, i);
            }
        }
    }
    free(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return rs_err(err, RESID_E_FORMAT, "%s: safetensors header is JSON but not an object",
                      label);
    }

    const uint8_t *data0 = data + 8 + n;
    uint64_t data_size = size - 8 - n;
    int n_entries = cJSON_GetArraySize(root);
    resid_status rc = RESID_OK;
    const char **names = malloc(sizeof *names * (size_t)(n_entries + 1));
    st->tensors = calloc((size_t)n_entries + 1, sizeof *st->tensors);
    if (!names || !st->tensors) {
        rc =
            rs_err(err, RESID_E_NOMEM, "%s: out of memory for %d tensor entries", label, n_entries);
        goto done;
    }
    int n_names = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        const char *name = e->string ? e->string : "";
        names[n_names++] = name;
        if (strcmp(name, "__metadata__") == 0) continue;
        rs_tensor t;
        bool keep;
        rc = st_entry(label, name, e, data0, data_size, &t, &keep, err);
        if (rc != RESID_OK) goto done;
        if (!keep) continue;
        t.name = rs_strdup(name);
        if (!t.name) {
            rc = rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
            goto done;
        }
        st->tensors[st->n_tensors++] = t;
    }
    qsort(names, (size_t)n_names, sizeof *names, st_cmp_str);
    for (int i = 1; i < n_names; i++) {
        if (strcmp(names[i - 1], names[i]) == 0) {
            rc = rs_err(err, RESID_E_FORMAT, "%s: safetensors header names \"%s\" more than once",
                        label, names[i]);
            goto done;
        }
    }
done:
    free(names);
    cJSON_Delete(root);
    if (rc != RESID_OK) rs_st_close(st);
    return rc;
}

resid_status rs_st_open(const char *path, rs_safetensors *st, resid_error *err) {
    memset(st, 0, sizeof *st);
    rs_mapped m;
    resid_status rc = rs_map_file(path, &m, err);
    if (rc != RESID_OK) return rc;
    rc = rs_st_parse(m.data, m.size, path, st, err);
    if (rc != RESID_OK) {
        rs_unmap(&m);
        return rc;
    }
    st->map = m;
    return RESID_OK;
}

void rs_st_close(rs_safetensors *st) {
    if (!st) return;
    if (st->tensors)
        for (int64_t i = 0; i < st->n_tensors; i++)
            free((void *)st->tensors[i].name);
    free(st->tensors);
    rs_unmap(&st->map);
    memset(st, 0, sizeof *st);
}

static const rs_tensor *st_find(const rs_safetensors *st, const char *name) {
    for (int64_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

/* Whether the shard's header lists `name` at all (possibly with a dtype we
 * skip). Re-reads the header; only used to explain a missing name. */
static bool st_header_has(const rs_safetensors *st, const char *name) {
    if (!st->map.data || st->map.size < 8) return false;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | st->map.data[i];
    if (n > st->map.size - 8) return false;
    cJSON *root = cJSON_ParseWithLength((const char *)st->map.data + 8, (size_t)n);
    bool has = root && cJSON_GetObjectItemCaseSensitive(root, name) != NULL;
    cJSON_Delete(root);
    return has;
}

/* ------------------------------------------------------------------------- */
/* Hugging Face folder                                                       */
/* ------------------------------------------------------------------------- */

/* Reads and parses a JSON file that must hold an object. */
static resid_status hf_read_json(const char *path, size_t cap, cJSON **out, resid_error *err) {
    cJSON *j;
    resid_status rc = rs_json_read(path, cap, &j, err);
    if (rc != RESID_OK) return rc;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return rs_err(err, RESID_E_FORMAT, "%s: JSON is not an object", path);
    }
    *out = j;
    return RESID_OK;
}

/* A shard file name from the index must stay inside the folder. */
static bool hf_safe_name(const char *s) {
    if (!*s || s[0] == '/') return false;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return false;
        if (!q) break;
        p = q + 1;
    }
    return true;
}

resid_status rs_hf_open(const char *dir, rs_hf *hf, resid_error *err) {
    memset(hf, 0, sizeof *hf);
    if (!rs_path_is_dir(dir)) return rs_err(err, RESID_E_IO, "%s: not a directory", dir);
    resid_status rc = RESID_OK;
    char *cfg_path = rs_path_join(dir, "config.json");
    char *single = rs_path_join(dir, "model.safetensors");
    char *index_path = rs_path_join(dir, "model.safetensors.index.json");
    cJSON *index = NULL;
    char **files = NULL;
    int n_files = 0;
    hf->dir = rs_strdup(dir);
    if (!cfg_path || !single || !index_path || !hf->dir) {
        rc = rs_err(err, RESID_E_NOMEM, "%s: out of memory", dir);
        goto done;
    }

    if (!rs_path_exists(cfg_path)) {
        rc = rs_err(err, RESID_E_FORMAT, "%s: no config.json (not a Hugging Face model folder?)",
                    dir);
        goto done;
    }
    rc = hf_read_json(cfg_path, HF_MAX_CONFIG, &hf->config, err);
    if (rc != RESID_OK) goto done;

    if (rs_path_exists(single)) {
        hf->shards = calloc(1, sizeof *hf->shards);
        if (!hf->shards) {
            rc = rs_err(err, RESID_E_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        rc = rs_st_open(single, &hf->shards[0], err);
        if (rc != RESID_OK) goto done;
        hf->n_shards = 1;
        goto done;
    }
    if (!rs_path_exists(index_path)) {
        char *bin = rs_path_join(dir, "pytorch_model.bin");
        bool has_bin = bin && rs_path_exists(bin);
        free(bin);
        rc = rs_err(err, RESID_E_FORMAT,
                    "%s: no model.safetensors or model.safetensors.index.json%s", dir,
                    has_bin ? " (pytorch_model.bin is not supported: convert it to "
                              "safetensors)"
                            : "");
        goto done;
    }

    rc = hf_read_json(index_path, HF_MAX_INDEX, &index, err);
    if (rc != RESID_OK) goto done;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
    if (!cJSON_IsObject(wm) || !wm->child) {
        rc = rs_err(err, RESID_E_FORMAT, "%s: missing or empty \"weight_map\" object", index_path);
        goto done;
    }
    /* Distinct shard names, sorted, so the order does not depend on JSON. */
    int n_map = cJSON_GetArraySize(wm);
    files = calloc((size_t)n_map, sizeof *files);
    if (!files) {
        rc = rs_err(err, RESID_E_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring || !hf_safe_name(e->valuestring)) {
            rc = rs_err(err, RESID_E_FORMAT,
                        "%s: weight_map entry \"%s\" must name a shard file inside the "
                        "folder",
                        index_path, e->string ? e->string : "");
            goto done;
        }
        files[n_files++] = e->valuestring; /* borrowed from index */
    }
    qsort(files, (size_t)n_files, sizeof *files, st_cmp_str);
    int n_distinct = 0;
    for (int i = 0; i < n_files; i++)
        if (n_distinct == 0 || strcmp(files[n_distinct - 1], files[i]) != 0)
            files[n_distinct++] = files[i];
    hf->shards = calloc((size_t)n_distinct, sizeof *hf->shards);
    if (!hf->shards) {
        rc = rs_err(err, RESID_E_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (int i = 0; i < n_distinct; i++) {
        char *p = rs_path_join(dir, files[i]);
        if (!p) {
            rc = rs_err(err, RESID_E_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        if (!rs_path_exists(p)) {
            rc = rs_err(err, RESID_E_IO, "%s: the index names shard \"%s\", which is missing",
                        index_path, files[i]);
            free(p);
            goto done;
        }
        rc = rs_st_open(p, &hf->shards[i], err);
        free(p);
        if (rc != RESID_OK) goto done;
        hf->n_shards = i + 1;
    }
    /* Every name in the index must be in its shard. */
    for (const cJSON *e = wm->child; e; e = e->next) {
        int s = 0;
        while (s < n_distinct && strcmp(files[s], e->valuestring) != 0)
            s++;
        if (s == n_distinct) continue; /* cannot happen */
        if (st_find(&hf->shards[s], e->string)) continue;
        if (st_header_has(&hf->shards[s], e->string)) continue; /* skipped dtype */
        rc = rs_err(err, RESID_E_FORMAT,
                    "%s: the index puts \"%s\" in shard \"%s\", but that shard has no such "
                    "tensor",
                    index_path, e->string, e->valuestring);
        goto done;
    }

done:
    free(files);
    cJSON_Delete(index);
    free(cfg_path);
    free(single);
    free(index_path);
    if (rc != RESID_OK) rs_hf_close(hf);
    return rc;
}

void rs_hf_close(rs_hf *hf) {
    if (!hf) return;
    if (hf->shards)
        for (int i = 0; i < hf->n_shards; i++)
            rs_st_close(&hf->shards[i]);
    free(hf->shards);
    cJSON_Delete(hf->config);
    free(hf->dir);
    memset(hf, 0, sizeof *hf);
}

const rs_tensor *rs_hf_tensor(const rs_hf *hf, const char *name) {
    for (int i = 0; i < hf->n_shards; i++) {
        const rs_tensor *t = st_find(&hf->shards[i], name);
        if (t) return t;
    }
    return NULL;
}
