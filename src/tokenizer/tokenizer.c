/*
 * tokenizer.c - the tokenizer object: vocabulary tables shared by both
 * kinds, special-token splitting, and the public encode/decode calls of
 * resid.h. The encoders live in tok_bpe.c and tok_spm.c, the loaders in
 * tok_load.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------------------- */
/* Building                                                                  */
/* ------------------------------------------------------------------------- */

#define RS_TOK_MAX_VOCAB (1 << 24)

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

resid_status rs_tok_new(resid_tokenizer_kind kind, int64_t n_vocab,
                        const char *label, resid_tokenizer **out,
                        resid_error *err) {
    *out = NULL;
    if (n_vocab <= 0 || n_vocab > RS_TOK_MAX_VOCAB)
        return rs_err(err, RESID_E_FORMAT, "%s: vocabulary size %lld out of range [1, %d]",
                      label, (long long)n_vocab, RS_TOK_MAX_VOCAB);
    resid_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
    size_t n = (size_t)n_vocab;
    t->kind = kind;
    t->n_vocab = (int32_t)n_vocab;
    t->piece_off = calloc(n, sizeof *t->piece_off);
    t->piece_len = calloc(n, sizeof *t->piece_len);
    t->score = calloc(n, sizeof *t->score);
    t->type = malloc(n);
    t->arena_cap = n * 8 + 64;
    t->arena = malloc(t->arena_cap);
    if (!t->piece_off || !t->piece_len || !t->score || !t->type || !t->arena) {
        resid_tokenizer_free(t);
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory for %lld tokens", label,
                      (long long)n_vocab);
    }
    memset(t->type, RS_TOK_NORMAL, n);
    /* offset 0 holds the empty string, the piece of unset tokens */
    t->arena[0] = 0;
    t->arena_len = 1;
    t->bos = t->eos = t->unk = -1;
    t->add_space_prefix = true;
    for (int i = 0; i < 256; i++) t->byte_tok[i] = -1;
    *out = t;
    return RESID_OK;
}

resid_status rs_tok_set_piece(resid_tokenizer *t, int32_t id, const char *s,
                              size_t len, resid_error *err) {
    if (id < 0 || id >= t->n_vocab || t->piece)
        return rs_err(err, RESID_E_ARG, "tokenizer: bad piece id %d", id);
    if (len > UINT32_MAX / 2)
        return rs_err(err, RESID_E_FORMAT, "tokenizer: piece %d is %zu bytes", id, len);
    size_t need = t->arena_len + len + 1;
    if (need > t->arena_cap) {
        size_t cap = t->arena_cap * 2;
        if (cap < need) cap = need;
        char *a = realloc(t->arena, cap);
        if (!a) return rs_err(err, RESID_E_NOMEM, "tokenizer: out of memory");
        t->arena = a;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, len);
    t->arena[t->arena_len + len] = 0;
    t->piece_off[id] = t->arena_len;
    t->piece_len[id] = (uint32_t)len;
    t->arena_len += len + 1;
    return RESID_OK;
}

resid_status rs_tok_build_vocab(resid_tokenizer *t, resid_error *err) {
    size_t n = (size_t)t->n_vocab;
    t->piece = malloc(n * sizeof *t->piece);
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    t->map = malloc(cap * sizeof *t->map);
    if (!t->piece || !t->map) return rs_err(err, RESID_E_NOMEM, "tokenizer: out of memory");
    t->map_cap = cap;
    memset(t->map, 0xff, cap * sizeof *t->map);
    for (size_t i = 0; i < n; i++) t->piece[i] = t->arena + t->piece_off[i];
    for (size_t i = 0; i < n; i++) {
        size_t h = hash_bytes(t->piece[i], t->piece_len[i]) & (cap - 1);
        for (;;) {
            int32_t j = t->map[h];
            if (j < 0) {
                t->map[h] = (int32_t)i;
                break;
            }
            if (t->piece_len[j] == t->piece_len[i] &&
                memcmp(t->piece[j], t->piece[i], t->piece_len[i]) == 0) {
                t->map[h] = (int32_t)i; /* last wins */
                break;
            }
            h = (h + 1) & (cap - 1);
        }
    }
    return RESID_OK;
}

int32_t rs_tok_lookup(const resid_tokenizer *t, const char *s, size_t len) {
    size_t mask = t->map_cap - 1;
    size_t h = hash_bytes(s, len) & mask;
    for (;;) {
        int32_t j = t->map[h];
        if (j < 0) return -1;
        if (t->piece_len[j] == len && memcmp(t->piece[j], s, len) == 0) return j;
        h = (h + 1) & mask;
    }
}

static resid_status merge_grow(resid_tokenizer *t, resid_error *err) {
    size_t cap = t->merge_cap ? t->merge_cap * 2 : 1024;
    rs_merge_slot *m = malloc(cap * sizeof *m);
    if (!m) return rs_err(err, RESID_E_NOMEM, "tokenizer: out of memory for merges");
    for (size_t i = 0; i < cap; i++) m[i].key = UINT64_MAX;
    for (size_t i = 0; i < t->merge_cap; i++) {
        if (t->merges[i].key == UINT64_MAX) continue;
        size_t h = hash_u64(t->merges[i].key) & (cap - 1);
        while (m[h].key != UINT64_MAX) h = (h + 1) & (cap - 1);
        m[h] = t->merges[i];
    }
    free(t->merges);
    t->merges = m;
    t->merge_cap = cap;
    return RESID_OK;
}

resid_status rs_tok_add_merge(resid_tokenizer *t, const char *a, size_t alen,
                              const char *b, size_t blen, int32_t rank,
                              resid_error *err) {
    int32_t l = rs_tok_lookup(t, a, alen), r = rs_tok_lookup(t, b, blen);
    if (l < 0 || r < 0 || alen + blen > 4096) return RESID_OK;
    char stack[4096];
    memcpy(stack, a, alen);
    memcpy(stack + alen, b, blen);
    int32_t res = rs_tok_lookup(t, stack, alen + blen);
    if (res < 0) return RESID_OK;
    if ((size_t)(t->n_merges + 1) * 2 > t->merge_cap) {
        resid_status st = merge_grow(t, err);
        if (st != RESID_OK) return st;
    }
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    size_t h = hash_u64(key) & (t->merge_cap - 1);
    while (t->merges[h].key != UINT64_MAX) {
        if (t->merges[h].key == key) {
            if (rank < t->merges[h].rank) t->merges[h].rank = rank;
            return RESID_OK;
        }
        h = (h + 1) & (t->merge_cap - 1);
    }
    t->merges[h].key = key;
    t->merges[h].rank = rank;
    t->merges[h].result = res;
    t->n_merges++;
    return RESID_OK;
}

int32_t rs_tok_find_merge(const resid_tokenizer *t, int32_t left,
                          int32_t right, int32_t *result) {
    if (!t->merge_cap || left < 0 || right < 0) return -1;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t h = hash_u64(key) & (t->merge_cap - 1);
    while (t->merges[h].key != UINT64_MAX) {
        if (t->merges[h].key == key) {
            *result = t->merges[h].result;
            return t->merges[h].rank;
        }
        h = (h + 1) & (t->merge_cap - 1);
    }
    return -1;
}

int rs_utf8_put(uint32_t cp, char *buf) {
    uint8_t *b = (uint8_t *)buf;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (uint8_t)(0xC0 | (cp >> 6));
        b[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (uint8_t)(0xE0 | (cp >> 12));
        b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    b[0] = (uint8_t)(0xF0 | (cp >> 18));
    b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one code point at s[0..n); returns its length (1 for a stray
 * byte, whose value is returned as the code point). */
static int utf8_get(const char *s, size_t n, uint32_t *cp) {
    const uint8_t *u = (const uint8_t *)s;
    int l = rs_utf8_seq_len(u, n);
    if (l <= 1) {
        *cp = u[0];
        return 1;
    }
    uint32_t c = u[0] & (0xFF >> (l + 1));
    for (int i = 1; i < l; i++) c = (c << 6) | (u[i] & 0x3F);
    *cp = c;
    return l;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xXX>" -> the byte, else -1. */
static int byte_piece(const char *p, size_t n) {
    if (n != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int hi = hexval(p[3]), lo = hexval(p[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

/* The decoded bytes of token i, written to buf (capacity >= 4*len+4);
 * returns the length. */
static size_t decode_piece(const resid_tokenizer *t, int32_t i, char *buf) {
    const char *p = t->piece[i];
    size_t n = t->piece_len[i], k = 0;
    uint8_t ty = t->type[i];
    if (t->kind == RESID_TOKENIZER_SPM) {
        if (ty == RS_TOK_CONTROL) return 0;
        int b = byte_piece(p, n);
        if (ty == RS_TOK_BYTE && b >= 0) {
            buf[0] = (char)b;
            return 1;
        }
        for (size_t j = 0; j < n;) {
            if (j + 3 <= n && memcmp(p + j, "\xE2\x96\x81", 3) == 0) {
                buf[k++] = ' ';
                j += 3;
            } else {
                buf[k++] = p[j++];
            }
        }
        return k;
    }
    /* byte-level BPE: added tokens are stored as raw text */
    if (ty == RS_TOK_CONTROL || ty == RS_TOK_USER || ty == RS_TOK_UNKNOWN) {
        memcpy(buf, p, n);
        return n;
    }
    for (size_t j = 0; j < n;) {
        uint32_t cp;
        int l = utf8_get(p + j, n - j, &cp);
        int b = rs_bpe_cp_to_byte(cp);
        if (b >= 0) {
            buf[k++] = (char)b;
        } else {
            memcpy(buf + k, p + j, (size_t)l);
            k += (size_t)l;
        }
        j += (size_t)l;
    }
    return k;
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const resid_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->piece_len[x] != t->piece_len[y]) return t->piece_len[x] > t->piece_len[y] ? -1 : 1;
    return (x > y) - (x < y);
}

/* Insertion-free sort helper: qsort lacks a context argument in C11. */
static void sort_special(resid_tokenizer *t) {
    /* simple shell sort with the comparator above */
    int32_t *a = t->special;
    int32_t n = t->n_special;
    for (int32_t gap = n / 2; gap > 0; gap /= 2)
        for (int32_t i = gap; i < n; i++) {
            int32_t v = a[i], j = i;
            while (j >= gap && cmp_special(&a[j - gap], &v, t) > 0) {
                a[j] = a[j - gap];
                j -= gap;
            }
            a[j] = v;
        }
}

resid_status rs_tok_finish(resid_tokenizer *t, const char *regex,
                           const char *label, resid_error *err) {
    size_t n = (size_t)t->n_vocab;
    /* decode table */
    size_t total = 0, maxlen = 0;
    for (size_t i = 0; i < n; i++) {
        total += (size_t)t->piece_len[i] * 4 + 1;
        if (t->piece_len[i] > maxlen) maxlen = t->piece_len[i];
    }
    t->dec = malloc(total + 1);
    t->dec_off = malloc(n * sizeof *t->dec_off);
    t->dec_len = malloc(n * sizeof *t->dec_len);
    t->special = malloc(n * sizeof *t->special);
    if (!t->dec || !t->dec_off || !t->dec_len || !t->special)
        return rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = decode_piece(t, (int32_t)i, t->dec + off);
        t->dec[off + k] = 0;
        t->dec_off[i] = off;
        t->dec_len[i] = (uint32_t)k;
        off += k + 1;
    }
    /* byte fallback */
    for (int b = 0; b < 256; b++) {
        if (t->kind == RESID_TOKENIZER_SPM) {
            char buf[7];
            static const char hex[] = "0123456789ABCDEF";
            buf[0] = '<', buf[1] = '0', buf[2] = 'x', buf[3] = hex[b >> 4];
            buf[4] = hex[b & 15], buf[5] = '>';
            int32_t id = rs_tok_lookup(t, buf, 6);
            if (id < 0) {
                buf[0] = (char)b;
                id = rs_tok_lookup(t, buf, 1); /* as llama.cpp: the character */
            }
            t->byte_tok[b] = id;
        } else {
            char buf[4];
            int l = rs_utf8_put(rs_bpe_byte_to_cp((uint8_t)b), buf);
            t->byte_tok[b] = rs_tok_lookup(t, buf, (size_t)l);
        }
    }
    /* special tokens matched in the text */
    t->n_special = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ty = t->type[i];
        if ((ty == RS_TOK_CONTROL || ty == RS_TOK_USER || ty == RS_TOK_UNKNOWN) &&
            t->piece_len[i] > 0)
            t->special[t->n_special++] = (int32_t)i;
    }
    sort_special(t);
    if (t->bos >= t->n_vocab) t->bos = -1;
    if (t->eos >= t->n_vocab) t->eos = -1;
    if (t->unk >= t->n_vocab) t->unk = -1;
    if (t->kind == RESID_TOKENIZER_SPM && t->unk < 0) {
        int32_t u = rs_tok_lookup(t, "<unk>", 5);
        if (u >= 0) t->unk = u;
    }
    if (t->kind == RESID_TOKENIZER_BPE) {
        if (!regex) regex = RS_REGEX_GPT2;
        t->regex = rs_strdup(regex);
        if (!t->regex) return rs_err(err, RESID_E_NOMEM, "%s: out of memory", label);
        int ecode;
        PCRE2_SIZE eoff;
        t->re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP, &ecode, &eoff, NULL);
        if (!t->re) {
            char msg[160];
            pcre2_get_error_message(ecode, (PCRE2_UCHAR *)msg, sizeof msg);
            return rs_err(err, RESID_E_FORMAT,
                          "%s: pre-tokenizer regex does not compile at offset %zu: %s",
                          label, (size_t)eoff, msg);
        }
        t->re_jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    }
    return RESID_OK;
}

bool rs_ids_push(rs_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return false;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return true;
}

static bool heap_before(const rs_bigram *a, const rs_bigram *b) {
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

bool rs_heap_push(rs_heap *h, rs_bigram b) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        rs_bigram *v = realloc(h->v, cap * sizeof *v);
        if (!v) return false;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_before(&b, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return true;
}

rs_bigram rs_heap_pop(rs_heap *h) {
    rs_bigram top = h->v[0];
    rs_bigram last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && heap_before(&h->v[c + 1], &h->v[c])) c++;
        if (!heap_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

/* ------------------------------------------------------------------------- */
/* Public calls                                                              */
/* ------------------------------------------------------------------------- */

void resid_tokenizer_free(resid_tokenizer *t) {
    if (!t) return;
    free(t->arena);
    free(t->piece_off);
    free(t->piece);
    free(t->piece_len);
    free(t->score);
    free(t->type);
    free(t->dec);
    free(t->dec_off);
    free(t->dec_len);
    free(t->map);
    free(t->merges);
    free(t->special);
    free(t->regex);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

resid_tokenizer_kind resid_tokenizer_get_kind(const resid_tokenizer *t) {
    return t->kind;
}
int32_t resid_tokenizer_n_vocab(const resid_tokenizer *t) { return t->n_vocab; }
int32_t resid_tokenizer_bos(const resid_tokenizer *t) { return t->bos; }
int32_t resid_tokenizer_eos(const resid_tokenizer *t) { return t->eos; }

resid_encode_opts resid_encode_defaults(const resid_tokenizer *t) {
    resid_encode_opts o = {0};
    o.add_bos = t && t->add_bos && t->bos >= 0;
    o.parse_special = false;
    return o;
}

/* First occurrence of needle[0..m) in hay[0..n) (m > 0), or NULL. */
static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t m) {
    if (m > n) return NULL;
    for (size_t i = 0; i + m <= n; i++) {
        const char *p = memchr(hay + i, needle[0], n - m + 1 - i);
        if (!p) return NULL;
        if (memcmp(p, needle, m) == 0) return p;
        i = (size_t)(p - hay);
    }
    return NULL;
}

/* A piece of the text: raw bytes [off, off+len) or a token (tok >= 0). */
typedef struct frag {
    int32_t tok;
    size_t off, len;
} frag;

/* Splits the text around special tokens, longest first, as llama.cpp's
 * tokenizer_st_partition does. Control and unknown tokens only with
 * parse_special; user-defined ones always. */
static resid_status partition(const resid_tokenizer *t, const char *text,
                              size_t len, bool parse_special, frag **out,
                              size_t *n_out, resid_error *err) {
    size_t cap = 16, n = 0;
    frag *f = malloc(cap * sizeof *f);
    if (!f) return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    if (len > 0) f[n++] = (frag){-1, 0, len};
    for (int32_t s = 0; s < t->n_special && n > 0; s++) {
        int32_t id = t->special[s];
        if (!parse_special && t->type[id] != RS_TOK_USER) continue;
        const char *p = t->piece[id];
        size_t pl = t->piece_len[id];
        for (size_t i = 0; i < n; i++) {
            if (f[i].tok >= 0 || f[i].len < pl) continue;
            const char *base = text + f[i].off;
            const char *hit = find_bytes(base, f[i].len, p, pl);
            if (!hit) continue;
            /* split f[i] into [before][token][after]; after is revisited */
            if (n + 2 > cap) {
                cap *= 2;
                frag *g = realloc(f, cap * sizeof *f);
                if (!g) {
                    free(f);
                    return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
                }
                f = g;
            }
            size_t before = (size_t)(hit - base);
            size_t after = f[i].len - before - pl;
            size_t off = f[i].off;
            frag parts[3];
            int np = 0;
            if (before) parts[np++] = (frag){-1, off, before};
            parts[np++] = (frag){id, off + before, pl};
            if (after) parts[np++] = (frag){-1, off + before + pl, after};
            memmove(&f[i + (size_t)np], &f[i + 1], (n - i - 1) * sizeof *f);
            memcpy(&f[i], parts, (size_t)np * sizeof *f);
            n += (size_t)np - 1;
            /* the next fragment to look at is `after`, which may hold more */
            size_t next = after ? i + (size_t)np - 1 : i + (size_t)np;
            i = next - 1;
        }
    }
    *out = f;
    *n_out = n;
    return RESID_OK;
}

resid_status resid_tokenize(const resid_tokenizer *t, const char *text,
                            int64_t len, const resid_encode_opts *opts,
                            int32_t **ids, int32_t *n_ids, resid_error *err) {
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!t || !ids || !n_ids || (!text && len != 0))
        return rs_err(err, RESID_E_ARG, "tokenize: NULL argument");
    size_t n = len < 0 ? strlen(text) : (size_t)len;
    if (!text) text = "";
    int64_t bad = rs_utf8_validate(text, n);
    if (bad >= 0)
        return rs_err(err, RESID_E_TOKENIZE, "tokenize: invalid UTF-8 at byte offset %lld",
                      (long long)bad);
    resid_encode_opts o = opts ? *opts : resid_encode_defaults(t);
    frag *f = NULL;
    size_t nf = 0;
    resid_status st = partition(t, text, n, o.parse_special, &f, &nf, err);
    if (st != RESID_OK) return st;
    rs_ids out = {0};
    if (o.add_bos) {
        if (t->bos < 0) {
            free(f);
            return rs_err(err, RESID_E_ARG, "tokenize: add_bos, but the tokenizer has no BOS");
        }
        if (!rs_ids_push(&out, t->bos)) st = RESID_E_NOMEM;
    }
    /* SPM: the prefix space goes before the text and after each special
     * token, as llama.cpp does (is_prev_special). */
    bool prev_special = true;
    for (size_t i = 0; i < nf && st == RESID_OK; i++) {
        if (f[i].tok >= 0) {
            if (!rs_ids_push(&out, f[i].tok)) st = RESID_E_NOMEM;
            prev_special = true;
            continue;
        }
        if (t->kind == RESID_TOKENIZER_SPM)
            st = rs_spm_encode(t, text + f[i].off, f[i].len,
                               t->add_space_prefix && prev_special, &out, err);
        else
            st = rs_bpe_encode(t, text + f[i].off, f[i].len, &out, err);
        prev_special = false;
    }
    free(f);
    if (st == RESID_OK && out.n > INT32_MAX) st = RESID_E_TOKENIZE;
    if (st != RESID_OK) {
        free(out.v);
        if (st == RESID_E_NOMEM) return rs_err(err, st, "tokenize: out of memory");
        if (err && err->code != st) rs_err(err, st, "tokenize: text too long");
        return st;
    }
    if (!out.v) out.v = malloc(sizeof(int32_t)); /* a valid pointer for 0 ids */
    if (!out.v) return rs_err(err, RESID_E_NOMEM, "tokenize: out of memory");
    *ids = out.v;
    *n_ids = (int32_t)out.n;
    return RESID_OK;
}

const char *resid_token_piece(const resid_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    return t->piece[id];
}

const char *resid_token_bytes(const resid_tokenizer *t, int32_t prev,
                              int32_t id, size_t *len) {
    if (len) *len = 0;
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    const char *s = t->dec + t->dec_off[id];
    size_t n = t->dec_len[id];
    /* SentencePiece: the space the encoder prepended is dropped at the start
     * of the text (prev == -1) and after BOS, as llama2.c's decode does. */
    if (t->kind == RESID_TOKENIZER_SPM && t->add_space_prefix &&
        (prev < 0 || (prev == t->bos && t->bos >= 0)) && n > 0 && s[0] == ' ' &&
        t->type[id] != RS_TOK_BYTE) {
        s++;
        n--;
    }
    if (len) *len = n;
    return s;
}

resid_status resid_detokenize(const resid_tokenizer *t, const int32_t *ids,
                              int32_t n_ids, char **text, size_t *len,
                              resid_error *err) {
    if (text) *text = NULL;
    if (len) *len = 0;
    if (!t || !text || (n_ids > 0 && !ids) || n_ids < 0)
        return rs_err(err, RESID_E_ARG, "detokenize: bad argument");
    size_t total = 0;
    for (int32_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return rs_err(err, RESID_E_ARG, "detokenize: token %d at index %d out of range [0, %d)",
                          ids[i], i, t->n_vocab);
        total += t->dec_len[ids[i]];
    }
    char *s = malloc(total + 1);
    if (!s) return rs_err(err, RESID_E_NOMEM, "detokenize: out of memory");
    size_t k = 0;
    int32_t prev = -1;
    for (int32_t i = 0; i < n_ids; i++) {
        size_t l;
        const char *b = resid_token_bytes(t, prev, ids[i], &l);
        memcpy(s + k, b, l);
        k += l;
        prev = ids[i];
    }
    s[k] = 0;
    *text = s;
    if (len) *len = k;
    return RESID_OK;
}
