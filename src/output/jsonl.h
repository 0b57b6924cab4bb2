/*
 * jsonl.h - JSON Lines for `resid batch`: a line reader with a length cap,
 * the parser of one input record, and the scan of an output file a run
 * left behind (for --resume). Internal (src/).
 *
 * Input record (one JSON object per line; blank lines are skipped):
 *   {"prompt": TEXT | "ids": [int...], "target": TEXT | int,
 *    "type": TEXT, "id": any scalar}
 * Only "prompt" or "ids" is required. Unknown keys are ignored.
 */
#ifndef RESID_OUTPUT_JSONL_H
#define RESID_OUTPUT_JSONL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "resid.h"

/* The longest input line accepted by default (bytes, newline excluded). */
#define RS_JSONL_MAX_LINE ((size_t)1 << 20)
/* The most ids an "ids" array may hold. */
#define RS_JSONL_MAX_IDS 1000000

/* One parsed input record. Strings are malloc'd copies (NUL-terminated;
 * a prompt with a NUL byte is rejected). */
typedef struct rs_batch_input {
    char *prompt; /* NULL when "ids" is given */
    int32_t *ids; /* [n_ids] with "ids"; NULL otherwise */
    int32_t n_ids;
    char *target_text; /* "target" as text, or NULL */
    int64_t target_id; /* "target" as an id, or -1 */
    char *type;        /* "type", or NULL */
    cJSON *id;         /* a copy of "id" (string/number/bool/null), or NULL */
} rs_batch_input;

/* Parses one line (buf[0..n), need not be NUL-terminated). Errors
 * (RESID_E_FORMAT, message without the line number): not JSON, not an
 * object, neither "prompt" nor "ids", wrong types, an id < 0 or not an
 * integer, a prompt / target that is not valid UTF-8 (RESID_E_TOKENIZE).
 * On error *out is left empty (nothing to free) except that out->id and
 * out->type are kept when they could be read, so the error record can
 * name them. Always call rs_batch_input_free. */
resid_status rs_jsonl_parse_input(const char *buf, size_t n, rs_batch_input *out, resid_error *err);
void rs_batch_input_free(rs_batch_input *in);

/* Reads lines from a stream, each at most max_line bytes. */
typedef struct rs_jsonl_reader rs_jsonl_reader;

/* f is not closed by the reader. label names the input in messages. */
resid_status rs_jsonl_reader_new(FILE *f, const char *label, size_t max_line, rs_jsonl_reader **out,
                                 resid_error *err);
void rs_jsonl_reader_free(rs_jsonl_reader *r);

/* The next line: *line (NUL-terminated, no '\n' or trailing '\r', owned by
 * the reader until the next call), *len, *line_no (1-based). *eof at the
 * end (then *line is NULL). A line over the cap is RESID_E_FORMAT
 * "<label>:<line>: line longer than N bytes" and is skipped, so the caller
 * may go on reading; a read error is RESID_E_IO. */
resid_status rs_jsonl_next(rs_jsonl_reader *r, const char **line, size_t *len, int64_t *line_no,
                           bool *eof, resid_error *err);

/* Scans an output file of `resid batch`: every complete line ('\n'
 * terminated) that is a JSON object with an integer "index" >= 0 and
 * < n_index marks done[index] = true (done[n_index], caller-owned). A
 * trailing partial line (a crash mid-write) is cut off when `truncate` is
 * set (the file is truncated to the last complete line), and *n_cut
 * receives the bytes dropped. A missing file is not an error (nothing
 * done). *n_done receives the number of distinct indices found. */
resid_status rs_jsonl_scan_done(const char *path, bool truncate, bool *done, int64_t n_index,
                                int64_t *n_done, int64_t *n_cut, resid_error *err);

#endif
