/*
 * fuzz_jsonl.c - the JSON Lines input of `resid batch`: the capped line
 * reader over the whole input (fmemopen, a small cap so over-long lines are
 * hit), and the record parser on every line and on the input as one line.
 * A parsed record must hold a NUL-free, valid UTF-8 prompt or 1..max ids.
 */
#include "fuzz_common.h"

#include "core/util.h"
#include "output/jsonl.h"

static void check(const char *buf, size_t n) {
    rs_batch_input in;
    resid_error err;
    if (rs_jsonl_parse_input(buf, n, &in, &err) == RESID_OK) {
        if (!in.prompt == !in.ids) abort();
        if (in.prompt && rs_utf8_validate(in.prompt, strlen(in.prompt)) >= 0) abort();
        if (in.ids && (in.n_ids < 1 || in.n_ids > RS_JSONL_MAX_IDS)) abort();
        for (int32_t i = 0; i < in.n_ids; i++)
            if (in.ids[i] < 0) abort();
    }
    rs_batch_input_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check((const char *)data, size);
    if (size == 0) return 0;
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f) return 0;
    resid_error err;
    rs_jsonl_reader *rd;
    if (rs_jsonl_reader_new(f, "fuzz", 256, &rd, &err) == RESID_OK) {
        for (int guard = 0; guard < 100000; guard++) {
            const char *line;
            size_t len;
            int64_t no;
            bool eof;
            resid_status st = rs_jsonl_next(rd, &line, &len, &no, &eof, &err);
            if (st == RESID_OK && eof) break;
            if (st == RESID_OK) {
                if (len > 256 || strlen(line) > len) abort();
                check(line, len);
            } else if (st != RESID_E_FORMAT) {
                break;
            }
        }
        rs_jsonl_reader_free(rd);
    }
    fclose(f);
    return 0;
}
