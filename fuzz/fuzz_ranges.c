/*
 * fuzz_ranges.c - a direction-ranges file (`resid ranges`) as
 * resid_ranges_load() sees it for stories260K: magic, version, shape,
 * weights fingerprint, payload size and checksum. The bytes go to a
 * temporary file (the loader takes a path). Ranges that load are used once:
 * an explainer built with them ranks the bottom FFN neurons. The seed,
 * fuzz/corpus/ranges/stories260K.ranges, is `resid ranges`' own output
 * (make_corpus.py does not write it).
 */
#include "fuzz_common.h"

static resid_model *model;
static resid_trace *trace;

static void fz_ranges_init(void) {
    resid_error err;
    char *path = fz_model_path("tinyllamas/stories260K.bin");
    if (resid_model_open(path, NULL, &model, &err) != RESID_OK) {
        fprintf(stderr, "fuzz_ranges: %s\n", err.msg);
        abort();
    }
    free(path);
    const int32_t ids[] = {1, 403, 407, 261, 378};
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_EXPLAIN_CAPTURE;
    to.positions = RESID_POS_LAST;
    if (resid_forward(model, ids, 5, &to, &trace, &err) != RESID_OK) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model) fz_ranges_init();
    if (size == 0) return 0; /* rs_map_file refuses empty files */
    const char *path = fz_write_temp("model.ranges", data, size);
    resid_ranges *r = NULL;
    resid_error err;
    if (resid_ranges_load(model, path, &r, &err) != RESID_OK) return 0;
    resid_explain_opts eo = resid_explain_defaults();
    eo.ranges = r;
    resid_explainer *e;
    if (resid_explainer_new(model, trace, &eo, &e, &err) == RESID_OK) {
        resid_rank_opts ro = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 5);
        ro.bottom = true;
        resid_score *s;
        int64_t n;
        if (resid_rank(e, &ro, &s, &n, NULL, &err) == RESID_OK) {
            for (int64_t i = 0; i < n; i++)
                fz_sink = (float)s[i].lpi;
            free(s);
        }
        resid_explainer_free(e);
    }
    resid_ranges_free(r);
    return 0;
}
