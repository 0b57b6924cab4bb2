/*
 * fuzz_tokenize.c - encoding arbitrary bytes with the two kinds of
 * tokenizer (GPT-2 byte-level BPE and Llama SentencePiece BPE, loaded once
 * from the llama.cpp vocab fixtures). The first byte picks the tokenizer
 * and the options; the rest is the text. Valid UTF-8 must encode, every id
 * must be in range, and decoding must give the text back byte for byte
 * (without special-token parsing; SentencePiece turns a literal U+2581 into
 * a space, so texts holding one are exempt for it). Invalid UTF-8 must be
 * refused with RESID_E_TOKENIZE.
 */
#include "fuzz_common.h"

static resid_tokenizer *toks[2];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *rel[2] = {"llama.cpp-vocab/ggml-vocab-gpt-2.gguf",
                          "llama.cpp-vocab/ggml-vocab-llama-spm.gguf"};
    for (int i = 0; i < 2; i++) {
        char *p = fz_model_path(rel[i]);
        resid_error err;
        if (resid_tokenizer_open(p, &toks[i], &err) != RESID_OK) {
            fprintf(stderr, "fuzz_tokenize: %s (set RESID_MODELS)\n", err.msg);
            exit(1);
        }
        free(p);
    }
    return 0;
}

static bool has_u2581(const uint8_t *s, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if (s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t sel = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    const resid_tokenizer *t = toks[sel & 1];
    resid_encode_opts eo = resid_encode_defaults(t);
    eo.add_bos = (sel >> 1) & 1;
    eo.parse_special = (sel >> 2) & 1;
    bool valid = rs_utf8_validate(text, len) < 0;

    int32_t *ids = NULL, n = 0;
    resid_error err;
    resid_status st = resid_tokenize(t, text, (int64_t)len, &eo, &ids, &n, &err);
    if (!valid) {
        if (st != RESID_E_TOKENIZE) {
            fprintf(stderr, "invalid UTF-8 not refused: status %d\n", st);
            abort();
        }
        free(ids);
        return 0;
    }
    if (st != RESID_OK) {
        fprintf(stderr, "valid UTF-8 failed to encode: %s\n", err.msg);
        abort();
    }
    int32_t V = resid_tokenizer_n_vocab(t);
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) abort();
    /* GPT-2's BOS (<|endoftext|>) decodes to its text; SentencePiece's
     * decodes to nothing (and drops the leading space): skip the former. */
    int32_t skip = (!(sel & 1) && eo.add_bos && n > 0 && ids[0] == resid_tokenizer_bos(t)) ? 1 : 0;
    char *back = NULL;
    size_t blen = 0;
    if (resid_detokenize(t, ids + skip, n - skip, &back, &blen, &err) != RESID_OK) {
        fprintf(stderr, "decode failed: %s\n", err.msg);
        abort();
    }
    bool check = !eo.parse_special && !((sel & 1) && has_u2581(data + 1, len));
    if (check && (blen != len || memcmp(back, text, len) != 0)) {
        fprintf(stderr, "round trip failed (%s): %zu bytes in, %zu bytes out\n",
                (sel & 1) ? "spm" : "gpt2", len, blen);
        abort();
    }
    free(back);
    free(ids);
    return 0;
}
