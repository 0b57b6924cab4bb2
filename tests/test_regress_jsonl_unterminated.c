/*
 * test_regress_jsonl_unterminated.c - the batch JSONL record parser looked
 * for an escaped NUL with strstr() on a line buffer that is not
 * NUL-terminated, reading past its end (found by fuzz/fuzz_jsonl.c; ASan
 * reports the overread). Lines are now parsed strictly within their length.
 */
#include <stdlib.h>
#include <string.h>

#include "output/jsonl.h"
#include "testutil.h"

/* A heap copy of exactly strlen(s) bytes, with no terminator after it. */
static char *exact_copy(const char *s, size_t *n) {
    *n = strlen(s);
    char *b = malloc(*n);
    assert_non_null(b);
    memcpy(b, s, *n);
    return b;
}

static void test_unterminated_line(void **state) {
    (void)state;
    size_t n;
    rs_batch_input in;
    resid_error err = {0};
    char *b = exact_copy("{\"prompt\": \"Once upon a time\", \"type\": \"t\"}", &n);
    assert_int_equal(rs_jsonl_parse_input(b, n, &in, &err), RESID_OK);
    assert_string_equal(in.prompt, "Once upon a time");
    rs_batch_input_free(&in);
    free(b);
}

static void test_escaped_nul_at_the_end(void **state) {
    (void)state;
    size_t n;
    rs_batch_input in;
    resid_error err = {0};
    /* an escaped NUL inside the line is refused with a clear message */
    char *b = exact_copy("{\"prompt\": \"a\\u0000\"}", &n);
    assert_int_equal(rs_jsonl_parse_input(b, n, &in, &err), RESID_E_FORMAT);
    assert_non_null(strstr(err.msg, "escaped NUL"));
    rs_batch_input_free(&in);
    free(b);
    /* "\u000" cut by the end of the buffer: nothing is read past it, and the
     * line is refused for the data after its JSON value, not as a NUL */
    b = exact_copy("{\"prompt\": \"a\"} \\u000", &n);
    assert_int_equal(rs_jsonl_parse_input(b, n, &in, &err), RESID_E_FORMAT);
    assert_null(strstr(err.msg, "escaped NUL"));
    assert_non_null(strstr(err.msg, "after the JSON value"));
    rs_batch_input_free(&in);
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unterminated_line),
        cmocka_unit_test(test_escaped_nul_at_the_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
