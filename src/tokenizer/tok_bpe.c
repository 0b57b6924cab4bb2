/*
 * tok_bpe.c - byte-level BPE (GPT-2, Llama 3): the regex pre-tokenizer
 * splits the text into words; each word's bytes are shown as GPT-2's
 * printable code points (bytes_to_unicode) and merged pairwise, lowest
 * merge rank first (ties: leftmost), as llama.cpp's llm_tokenizer_bpe and
 * Hugging Face's BPE model do.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

const char *const RS_REGEX_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

const char *const RS_REGEX_LLAMA3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes take code points 256.. in byte order. */
static bool printable(unsigned b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The 68 others, in byte order: 0x00-0x20 (33), 0x7F-0xA0 (34), 0xAD. */
uint32_t rs_bpe_byte_to_cp(uint8_t b) {
    if (printable(b)) return b;
    if (b <= 0x20) return 256u + b;
    if (b <= 0xA0) return 256u + 33u + (b - 0x7Fu);
    return 256u + 67u; /* 0xAD */
}

int rs_bpe_cp_to_byte(uint32_t cp) {
    if (cp < 256) return printable(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n < 33) return (int)n;
    if (n < 67) return (int)(0x7F + n - 33);
    if (n == 67) return 0xAD;
    return -1;
}

/* Scratch space reused across the words of one call. */
typedef struct bpe_work {
    char *enc;        /* the word in GPT-2 code points */
    size_t enc_cap;
    uint32_t *byte_at; /* enc offset of each original byte; [n+1] */
    size_t byte_cap;
    rs_sym *sym;
    size_t sym_cap;
    rs_heap heap;
} bpe_work;

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static bool add_bigram(const resid_tokenizer *t, bpe_work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return true;
    int32_t res;
    int32_t rank = rs_tok_find_merge(t, w->sym[l].id, w->sym[r].id, &res);
    if (rank < 0) return true;
    rs_bigram b = {-(double)rank, l, r, w->sym[l].n + w->sym[r].n, res};
    return rs_heap_push(&w->heap, b);
}

/* Encodes one pre-tokenized word s[0..n). */
static resid_status bpe_word(const resid_tokenizer *t, bpe_work *w, const char *s,
                             size_t n, rs_ids *out, resid_error *err) {
    if (n >= UINT32_MAX / 4)
        return rs_err(err, RESID_E_TOKENIZE, "tokenize: a %zu-byte word is too long", n);
    if (!grow((void **)&w->enc, &w->enc_cap, 2 * n + 1, 1) ||
        !grow((void **)&w->byte_at, &w->byte_cap, n + 1, sizeof *w->byte_at) ||
        !grow((void **)&w->sym, &w->sym_cap, n, sizeof *w->sym))
        return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        w->byte_at[i] = (uint32_t)k;
        k += (size_t)rs_utf8_put(rs_bpe_byte_to_cp((uint8_t)s[i]), w->enc + k);
    }
    w->byte_at[n] = (uint32_t)k;
    if (t->ignore_merges) {
        int32_t id = rs_tok_lookup(t, w->enc, k);
        if (id >= 0) return rs_ids_push(out, id) ? RESID_OK
                                                 : rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    }
    /* one symbol per byte of the word */
    for (size_t i = 0; i < n; i++) {
        rs_sym *y = &w->sym[i];
        y->prev = (int32_t)i - 1;
        y->next = i + 1 < n ? (int32_t)i + 1 : -1;
        y->off = (uint32_t)i;
        y->n = 1;
        y->id = t->byte_tok[(uint8_t)s[i]];
    }
    w->heap.n = 0;
    for (size_t i = 1; i < n; i++)
        if (!add_bigram(t, w, (int32_t)i - 1, (int32_t)i))
            return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    while (w->heap.n > 0) {
        rs_bigram b = rs_heap_pop(&w->heap);
        rs_sym *l = &w->sym[b.left], *r = &w->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        l->id = b.result;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->sym[r->next].prev = b.left;
        if (!add_bigram(t, w, l->prev, b.left) || !add_bigram(t, w, b.left, l->next))
            return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    }
    for (int32_t i = 0; i >= 0; i = w->sym[i].next) {
        const rs_sym *y = &w->sym[i];
        if (y->id >= 0) {
            if (!rs_ids_push(out, y->id)) return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
            continue;
        }
        /* not in the vocabulary: one token per byte, or <unk> */
        for (uint32_t j = y->off; j < y->off + y->n; j++) {
            int32_t id = t->byte_tok[(uint8_t)s[j]];
            if (id < 0) id = t->unk;
            if (id < 0)
                return rs_err(err, RESID_E_TOKENIZE,
                              "tokenize: byte 0x%02X has no token in this vocabulary",
                              (unsigned)(uint8_t)s[j]);
            if (!rs_ids_push(out, id)) return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
        }
    }
    return RESID_OK;
}

resid_status rs_bpe_encode(const resid_tokenizer *t, const char *text,
                           size_t len, rs_ids *out, resid_error *err) {
    bpe_work w = {0};
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    resid_status st = RESID_OK;
    PCRE2_SPTR subj = (PCRE2_SPTR)text;
    size_t pos = 0, done = 0; /* done: end of the last emitted word */
    while (pos < len && st == RESID_OK) {
        int rc = -1;
        if (t->re_jit) rc = pcre2_jit_match(t->re, subj, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (!t->re_jit || rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(t->re, subj, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            char msg[120];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
            st = rs_err(err, RESID_E_TOKENIZE, "tokenize: pre-tokenizer regex failed: %s", msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (e == s) { /* empty match: step over one character */
            int l = rs_utf8_seq_len((const uint8_t *)text + pos, len - pos);
            pos += l > 0 ? (size_t)l : 1;
            continue;
        }
        /* text the regex skipped is a word of its own (HF Split: Isolated) */
        if (s > done) st = bpe_word(t, &w, text + done, s - done, out, err);
        if (st == RESID_OK) st = bpe_word(t, &w, text + s, e - s, out, err);
        done = pos = e;
    }
    if (st == RESID_OK && done < len) st = bpe_word(t, &w, text + done, len - done, out, err);
    pcre2_match_data_free(md);
    free(w.enc);
    free(w.byte_at);
    free(w.sym);
    free(w.heap.v);
    return st;
}
