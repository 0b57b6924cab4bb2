/*
 * safetensors.h - safetensors reader (one file) and the Hugging Face folder
 * (config.json + model.safetensors or a sharded index).
 */
#ifndef RESID_FORMAT_SAFETENSORS_H
#define RESID_FORMAT_SAFETENSORS_H

#include "core/util.h"
#include "tensor/tensor.h"

typedef struct rs_safetensors {
    rs_mapped map;
    int64_t n_tensors;
    rs_tensor *tensors; /* names owned here; data points into the map.
                           Shape [d0,...,dk-1] -> n_rows = d0*...*d(k-2),
                           n_cols = d(k-1); 1-D -> n_rows = 1. Dtypes other
                           than F32/F16/BF16 are skipped (never referenced). */
} rs_safetensors;

resid_status rs_st_open(const char *path, rs_safetensors *st, resid_error *err);
resid_status rs_st_parse(const uint8_t *data, size_t size, const char *label,
                         rs_safetensors *st, resid_error *err);
void rs_st_close(rs_safetensors *st);

/* A Hugging Face folder: the parsed config.json and every shard. */
typedef struct rs_hf {
    char *dir;
    struct cJSON *config; /* parsed config.json */
    int n_shards;
    rs_safetensors *shards;
} rs_hf;

resid_status rs_hf_open(const char *dir, rs_hf *hf, resid_error *err);
void rs_hf_close(rs_hf *hf);
/* Looks a tensor up across shards; NULL if absent. */
const rs_tensor *rs_hf_tensor(const rs_hf *hf, const char *name);

#endif
