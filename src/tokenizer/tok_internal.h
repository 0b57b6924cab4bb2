/*
 * tok_internal.h - the inside of resid_tokenizer, shared by the loaders
 * (tok_load.c), the two encoders (tok_bpe.c, tok_spm.c) and the public
 * calls (tokenizer.c). Not part of the interface others code against.
 *
 * Life of a tokenizer: a loader calls rs_tok_new(), sets every piece with
 * rs_tok_set_piece(), calls rs_tok_build_vocab() (the piece -> id map), adds
 * BPE merges with rs_tok_add_merge(), sets bos/eos/flags, and finally calls
 * rs_tok_finish() (decode table, special-token list, regex).
 */
#ifndef RESID_TOK_INTERNAL_H
#define RESID_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/tokenizer.h"

/* Token types, numbered as GGUF tokenizer.ggml.token_type (llama.cpp). */
enum {
    RS_TOK_NORMAL = 1,
    RS_TOK_UNKNOWN = 2,
    RS_TOK_CONTROL = 3,
    RS_TOK_USER = 4, /* user-defined: always matched in text, like llama.cpp */
    RS_TOK_UNUSED = 5,
    RS_TOK_BYTE = 6,
};

/* One slot of the BPE merge map: (left id, right id) -> rank, result. */
typedef struct rs_merge_slot {
    uint64_t key; /* (uint64)left << 32 | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t result;
} rs_merge_slot;

struct resid_tokenizer {
    resid_tokenizer_kind kind;
    int32_t n_vocab;

    /* Pieces as stored in the vocabulary ("Ġthe", "▁the", "<0x0A>"),
     * NUL-terminated, in one arena. During loading piece_off holds offsets;
     * rs_tok_build_vocab() turns them into pointers. */
    char *arena;
    size_t arena_len, arena_cap;
    size_t *piece_off;  /* [n_vocab] */
    const char **piece; /* [n_vocab] */
    uint32_t *piece_len; /* [n_vocab] */
    float *score;       /* [n_vocab] SPM merge priority (higher first) */
    uint8_t *type;      /* [n_vocab] RS_TOK_* */

    /* Decoded bytes of each token, in one buffer. */
    char *dec;          /* concatenation, NUL after each token */
    size_t *dec_off;    /* [n_vocab] */
    uint32_t *dec_len;  /* [n_vocab] */

    /* piece -> id: open addressing, -1 empty; on duplicates the last id
     * wins, as in llama.cpp's token_to_id. */
    int32_t *map;
    size_t map_cap; /* power of two */

    /* BPE merges. */
    rs_merge_slot *merges;
    size_t merge_cap; /* power of two, 0 when none */
    int64_t n_merges;

    int32_t bos, eos, unk; /* -1 if none */
    bool add_bos;
    bool add_space_prefix; /* SPM: prepend "▁" to the text (default true) */
    bool ignore_merges;    /* BPE: a whole word in the vocab is one token */
    bool scores_from_merges; /* SPM from tokenizer.json: -inf = no merge */

    /* Byte fallback: SPM "<0xXX>" ids; BPE the id of the 1-char piece of
     * the byte's GPT-2 unicode image. -1 if missing. */
    int32_t byte_tok[256];

    /* Tokens matched in the text before encoding (control, user-defined,
     * unknown), longest piece first. */
    int32_t *special;
    int32_t n_special;

    /* BPE pre-tokenizer. */
    char *regex;
    pcre2_code *re;
    bool re_jit;
};

/* Allocates a tokenizer with n_vocab empty pieces (type NORMAL, score 0). */
resid_status rs_tok_new(resid_tokenizer_kind kind, int64_t n_vocab,
                        const char *label, resid_tokenizer **out,
                        resid_error *err);
/* Copies piece s[0..len) for token id. */
resid_status rs_tok_set_piece(resid_tokenizer *t, int32_t id, const char *s,
                              size_t len, resid_error *err);
/* Builds the piece -> id map. Call once, after every piece is set. */
resid_status rs_tok_build_vocab(resid_tokenizer *t, resid_error *err);
/* id of the piece s[0..len), or -1. */
int32_t rs_tok_lookup(const resid_tokenizer *t, const char *s, size_t len);
/* Adds BPE merge (a, b) with the given rank. Merges whose parts or result
 * are not in the vocabulary are skipped (they could never fire). A pair
 * seen twice keeps its lower rank. */
resid_status rs_tok_add_merge(resid_tokenizer *t, const char *a, size_t alen,
                              const char *b, size_t blen, int32_t rank,
                              resid_error *err);
/* Finds merge (left, right): returns its rank or -1; *result gets the id. */
int32_t rs_tok_find_merge(const resid_tokenizer *t, int32_t left,
                          int32_t right, int32_t *result);
/* Builds the decode table, byte fallback table, the special-token list and
 * (BPE) compiles `regex` (NULL: GPT-2). `label` names the source. */
resid_status rs_tok_finish(resid_tokenizer *t, const char *regex,
                           const char *label, resid_error *err);

/* A growable id vector. */
typedef struct rs_ids {
    int32_t *v;
    size_t n, cap;
} rs_ids;
bool rs_ids_push(rs_ids *ids, int32_t id);

/* A working symbol of the merge loops: bytes [off, off+n) of the word,
 * linked to its neighbours; n == 0 once merged into its left neighbour. */
typedef struct rs_sym {
    int32_t prev, next;
    uint32_t off, n;
    int32_t id; /* BPE: the token of these bytes, -1 if none */
} rs_sym;

/* A candidate merge of symbols left and right (adjacent when queued). */
typedef struct rs_bigram {
    double key; /* higher first: SPM score, BPE -rank */
    int32_t left, right;
    uint32_t size; /* bytes of the merged symbol, to detect stale entries */
    int32_t result; /* BPE: the merged token */
} rs_bigram;

/* A max-heap of bigrams: higher key first, then the leftmost, as the
 * priority queues of llama.cpp's SPM and BPE tokenizers order them. */
typedef struct rs_heap {
    rs_bigram *v;
    size_t n, cap;
} rs_heap;
bool rs_heap_push(rs_heap *h, rs_bigram b);
rs_bigram rs_heap_pop(rs_heap *h);

/* Encoders of one raw text fragment (no special tokens inside), appending
 * to out. SPM: `prefix` prepends "▁". Return RESID_E_NOMEM or
 * RESID_E_TOKENIZE (a byte with no token) with err filled. */
resid_status rs_bpe_encode(const resid_tokenizer *t, const char *text,
                           size_t len, rs_ids *out, resid_error *err);
resid_status rs_spm_encode(const resid_tokenizer *t, const char *text,
                           size_t len, bool prefix, rs_ids *out,
                           resid_error *err);

/* GPT-2 bytes_to_unicode: the code point byte b is shown as. */
uint32_t rs_bpe_byte_to_cp(uint8_t b);
/* Inverse: the byte code point cp stands for, or -1. */
int rs_bpe_cp_to_byte(uint32_t cp);
/* Writes the UTF-8 of cp to buf (>= 4 bytes); returns its length. */
int rs_utf8_put(uint32_t cp, char *buf);

#endif
