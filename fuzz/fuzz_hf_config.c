/*
 * fuzz_hf_config.c - a Hugging Face config.json: the JSON checks (size,
 * nesting depth), then the model builder against a fixed small safetensors
 * (tiny-random-llama-2, loaded once), then every tensor's first row and a
 * 2-token forward pass when the config builds a model.
 */
#include "fuzz_common.h"

#include <cjson/cJSON.h>

#include "format/safetensors.h"

static rs_safetensors shard;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char *p = fz_model_path("tiny-random-llama-2/model.safetensors");
    resid_error err;
    if (rs_st_open(p, &shard, &err) != RESID_OK) {
        fprintf(stderr, "fuzz_hf_config: %s (set RESID_MODELS)\n", err.msg);
        exit(1);
    }
    free(p);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    resid_error err;
    cJSON *cfg = NULL;
    if (rs_json_parse((const char *)data, size, "fuzz/config.json", RS_JSON_MAX_CONFIG, &cfg,
                      &err) != RESID_OK)
        return 0;
    rs_hf hf = {.dir = "fuzz", .config = cfg, .n_shards = 1, .shards = &shard};
    resid_model *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->path = strdup("fuzz");
    if (rs_model_from_hf(m, &hf, &err) == RESID_OK) fz_exercise_model(m);
    resid_model_free(m); /* m->hf is NULL: the shard stays ours */
    cJSON_Delete(cfg);
    return 0;
}
