/*
 * testutil.h - helpers shared by the tests: where the fixture models are,
 * reading reference JSON and float32 dumps, and tolerance checks that print
 * the worst difference.
 */
#ifndef RESID_TESTUTIL_H
#define RESID_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
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
 * *ids (malloc'd); returns the count. Fails the test on an error. */
int32_t tu_tokenize(const resid_model *m, const char *text, int32_t **ids);
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

#endif
