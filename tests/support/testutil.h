/*
 * testutil.h - helpers shared by the tests: where the fixture models are,
 * reading reference JSON and float32 dumps, and tolerance checks that print
 * the worst difference.
 */
#ifndef RESID_TESTUTIL_H
#define RESID_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>

#include "resid.h"

/* $RESID_MODELS, else ../shared/models next to the source tree. */
const char *tu_models_dir(void);
/* tu_models_dir()/rel, malloc'd. Fails the test if the file is missing. */
char *tu_model_path(const char *rel);
/* Parses a JSON file under the models dir; fails the test on error. */
cJSON *tu_load_json(const char *rel);
/* o[name]; fails the test (naming the field) when it is missing. */
cJSON *tu_json_get(const cJSON *o, const char *name);
/* o[name] as a number; fails the test when missing or not a number. */
double tu_json_num(const cJSON *o, const char *name);
/* Reads a raw little-endian float32 file; *n receives the count. */
float *tu_load_f32(const char *rel, size_t *n);
/* Opens a model under the models dir; fails the test with err.msg. */
resid_model *tu_open_model(const char *rel);
/* The model's own tokenization of text (BOS as the model wants) into
 * *ids (malloc'd); returns the count. Fails the test on an error or when
 * the model has no tokenizer. */
int32_t tu_tokenize(const resid_model *m, const char *text, int32_t **ids);
/* A fixture: a model under the models dir and a prompt as ids. */
typedef struct tu_fixture {
    const char *path;
    int32_t ids[12];
    int n;
} tu_fixture;
/* stories260K, tiny-gpt2-stories, tiny-random-llama-2 and a Q8_0 GGUF,
 * each with a short prompt: a Llama, a GPT-2, rotate-half RoPE and a
 * quantised file. */
extern const tu_fixture tu_fixtures[];
enum { TU_N_FIXTURES = 4 };
/* The progress stages of resid_explain_json with compare_scores, in order
 * (as include/resid.h lists them); without it, "scoring-method comparison"
 * (index 6) is skipped. */
extern const char *const tu_explain_stages[];
enum { TU_N_EXPLAIN_STAGES = 8 };
/* The trace of ids[0..n) with the RESID_CAP_* flags `cap` at `pos`; fails
 * the test on error. */
resid_trace *tu_trace(resid_model *m, const int32_t *ids, int n, uint32_t cap, resid_positions pos);
/* An explainer of tr with eo (NULL: the defaults); fails the test on error. */
resid_explainer *tu_explainer(const resid_model *m, const resid_trace *tr,
                              const resid_explain_opts *eo);
/* A fixture opened: its model, the trace of its prompt and an explainer. */
typedef struct tu_setup {
    resid_model *m;
    resid_trace *tr;
    resid_explainer *e;
} tu_setup;
tu_setup tu_setup_open(const tu_fixture *f, resid_positions pos, const resid_explain_opts *eo);
void tu_setup_close(tu_setup *s);
/* A vocabulary large enough that exact scores are expensive (GPT-2's). */
bool tu_big_vocab(const resid_model *m);
/* The test's own ordering of exhaustive scores all[0..n): by `key`
 * (descending, ascending for bottom), ties by index. malloc'd. */
int64_t *tu_reference_order(const resid_score *all, int64_t n, resid_rank_key key, bool bottom);
/* Ranks with o on e and checks the list against all[ord[0..k)), k = min(o->k,
 * n): the same units, LPIs, bs-values and probability increases bit for
 * bit, and the stats (k, n_units, clamped). Names `what` on a failure.
 * Returns the units scored exactly. */
int64_t tu_check_rank(resid_explainer *e, const resid_rank_opts *o, const resid_score *all,
                      const int64_t *ord, int64_t n, const char *what);
/* Path of the built `resid` CLI ($RESID_CLI). */
const char *tu_cli(void);
/* Max |a-b| over n. */
double tu_max_abs_diff(const float *a, const float *b, size_t n);
/* Asserts max |a-b| <= tol, printing the worst index and values. */
void tu_assert_close(const char *what, const float *a, const float *b,
                     size_t n, double tol);
/* Writes a temporary file with the given bytes; returns its malloc'd path. */
char *tu_write_temp(const char *name, const void *data, size_t size);
/* Reads a whole file; fails the test on error. */
uint8_t *tu_read_file(const char *path, size_t *size);
/* s in single quotes for sh, ' written as '\''. malloc'd. */
char *tu_sh_quote(const char *s);
/* Runs a shell command, captures stdout (malloc'd) and the exit status. */
char *tu_run(const char *cmd, int *status);
/* The shell line `resid CMD MODEL [-p PROMPT] ARGS`: the CLI (tu_cli()),
 * the model (under the models dir) and the prompt (NULL: none) quoted, ARGS
 * as given (already quoted); stderr merged into stdout or dropped.
 * malloc'd. */
char *tu_cli_line(const char *cmd, const char *model_rel, const char *prompt, const char *args,
                  bool merge_stderr);
/* Runs a shell line that must exit 0 with JSON on stdout; returns it
 * parsed. Fails the test, showing the line and the output, otherwise. */
cJSON *tu_run_json(const char *line);

#endif
