/*
 * test_regress_l2c_tokenizer_score.c - a llama2.c tokenizer.bin whose entry
 * has a NaN score was refused with a message about the entry's length (which
 * was fine); the message must name the score. Found by fuzz/malformed.py.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static void test_nan_score(void **state) {
    (void)state;
    uint8_t buf[13];
    int32_t max_len = 8, len = 1;
    float score = NAN;
    memcpy(buf, &max_len, 4);
    memcpy(buf + 4, &score, 4);
    memcpy(buf + 8, &len, 4);
    buf[12] = 'a';
    char *path = tu_write_temp("nan-score.bin", buf, sizeof buf);
    resid_tokenizer *t = NULL;
    resid_error err = {0};
    assert_int_equal(resid_tokenizer_open(path, &t, &err), RESID_E_FORMAT);
    assert_null(t);
    assert_non_null(strstr(err.msg, "score is not finite"));
    /* the same entry with a finite score loads */
    score = -1.0f;
    memcpy(buf + 4, &score, 4);
    free(path);
    path = tu_write_temp("ok-score.bin", buf, sizeof buf);
    assert_int_equal(resid_tokenizer_open(path, &t, &err), RESID_OK);
    assert_int_equal(resid_tokenizer_n_vocab(t), 1);
    resid_tokenizer_free(t);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_nan_score)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
