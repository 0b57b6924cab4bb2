/*
 * tok_spm.c - SentencePiece-style BPE (Llama 1/2), the algorithm of
 * llama.cpp's llm_tokenizer_spm: spaces become "▁" (and one "▁" is
 * prepended), the text is split into UTF-8 characters, and the adjacent
 * pair whose concatenation is the highest-scoring vocabulary piece is merged
 * (ties: leftmost) until no pair is in the vocabulary. A symbol left outside
 * the vocabulary (a character never seen in training) falls back to one
 * "<0xXX>" token per byte.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

static bool try_bigram(const resid_tokenizer *t, const char *s, rs_sym *sym,
                       rs_heap *h, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return true;
    uint32_t size = sym[l].n + sym[r].n;
    int32_t id = rs_tok_lookup(t, s + sym[l].off, size);
    if (id < 0) return true;
    float score = t->score[id];
    if (t->scores_from_merges && isinf(score)) return true; /* no merge makes it */
    rs_bigram b = {(double)score, l, r, size, id};
    return rs_heap_push(h, b);
}

resid_status rs_spm_encode(const resid_tokenizer *t, const char *text,
                           size_t len, bool prefix, rs_ids *out,
                           resid_error *err) {
    static const char SP[] = "\xE2\x96\x81"; /* U+2581 ▁ */
    size_t n_sp = 0;
    for (size_t i = 0; i < len; i++) n_sp += text[i] == ' ';
    size_t cap = len + 2 * n_sp + 3;
    if (cap >= UINT32_MAX / 2 || cap < len)
        return rs_err(err, RESID_E_TOKENIZE, "tokenize: a %zu-byte text is too long", len);
    char *s = malloc(cap);
    rs_sym *sym = malloc(cap * sizeof *sym);
    rs_heap h = {0};
    resid_status st = RESID_OK;
    if (!s || !sym) {
        st = rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
        goto done;
    }
    size_t k = 0;
    if (prefix) {
        memcpy(s, SP, 3);
        k = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s + k, SP, 3);
            k += 3;
        } else {
            s[k++] = text[i];
        }
    }
    /* one symbol per UTF-8 character */
    int32_t n_sym = 0;
    for (size_t i = 0; i < k;) {
        int l = rs_utf8_seq_len((const uint8_t *)s + i, k - i);
        if (l <= 0) l = 1; /* cannot happen: the text was validated */
        sym[n_sym] = (rs_sym){n_sym - 1, -1, (uint32_t)i, (uint32_t)l, -1};
        if (n_sym > 0) sym[n_sym - 1].next = n_sym;
        n_sym++;
        i += (size_t)l;
    }
    for (int32_t i = 1; i < n_sym; i++)
        if (!try_bigram(t, s, sym, &h, i - 1, i)) goto nomem;
    while (h.n > 0) {
        rs_bigram b = rs_heap_pop(&h);
        rs_sym *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        if (!try_bigram(t, s, sym, &h, l->prev, b.left) ||
            !try_bigram(t, s, sym, &h, b.left, l->next))
            goto nomem;
    }
    for (int32_t i = n_sym > 0 ? 0 : -1; i >= 0; i = sym[i].next) {
        int32_t id = rs_tok_lookup(t, s + sym[i].off, sym[i].n);
        if (id >= 0) {
            if (!rs_ids_push(out, id)) goto nomem;
            continue;
        }
        /* A merged symbol is always in the vocabulary, so this is a single
         * character: llama.cpp's resegment() falls back to its bytes. */
        for (uint32_t j = sym[i].off; j < sym[i].off + sym[i].n; j++) {
            int32_t bt = t->byte_tok[(uint8_t)s[j]];
            if (bt < 0) bt = t->unk;
            if (bt < 0) {
                st = rs_err(err, RESID_E_TOKENIZE,
                            "tokenize: byte 0x%02X has no token in this vocabulary",
                            (unsigned)(uint8_t)s[j]);
                goto done;
            }
            if (!rs_ids_push(out, bt)) goto nomem;
        }
    }
    goto done;
nomem:
    st = rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
done:
    free(s);
    free(sym);
    free(h.v);
    return st;
}
