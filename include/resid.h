/*
 * resid.h - the public API of resid, a toolkit that explains a transformer's
 * next-token prediction by taking its residual stream apart.
 *
 * A tour in five calls:
 *
 *     resid_error err;
 *     resid_model *m;
 *     if (resid_model_open("stories260K.bin", NULL, &m, &err) != RESID_OK) {
 *         fprintf(stderr, "%s\n", err.msg);
 *         return 1;
 *     }
 *     int32_t *ids; int32_t n;
 *     resid_encode_opts eo = resid_encode_defaults(resid_model_tokenizer(m));
 *     resid_tokenize(resid_model_tokenizer(m), "Once upon a time", -1, &eo, &ids, &n, &err);
 *     resid_trace_opts to = resid_trace_defaults();
 *     resid_trace *tr;
 *     resid_forward(m, ids, n, &to, &tr, &err);   // tr->x_in, tr->attn_out, ...
 *     resid_trace_free(tr); free(ids); resid_model_free(m);
 *
 * Conventions:
 *  - Every fallible call returns a resid_status (RESID_OK == 0) and, when
 *    `err` is not NULL, fills it with a message that names the file or the
 *    argument and the problem. The library never prints and never exits.
 *  - Objects come in _open/_new and _free pairs. _free(NULL) is a no-op.
 *  - Arrays returned through `T **out` are owned by the caller and freed with
 *    free(). Pointers returned as `const` are owned by the object they came
 *    from and live as long as it does.
 *  - Shapes are given in comments as [dim0][dim1]..., row-major, 0-based.
 *    Notation follows METHOD.md: L layers, D = d_model, H heads, d_h = d_head,
 *    N = d_ffn (FFN neurons per layer), V = n_vocab, T tokens.
 */
#ifndef RESID_H
#define RESID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RESID_VERSION "0.1.0"

/* ------------------------------------------------------------------------- */
/* Errors                                                                    */
/* ------------------------------------------------------------------------- */

typedef enum resid_status {
    RESID_OK = 0,
    RESID_E_IO = -1,          /* a file could not be opened, read or mapped */
    RESID_E_FORMAT = -2,      /* a file is malformed, truncated or lies */
    RESID_E_UNSUPPORTED = -3, /* well-formed, but an architecture/dtype we lack */
    RESID_E_ARG = -4,         /* a bad argument: out-of-range id, bad option */
    RESID_E_NOMEM = -5,       /* an allocation failed or exceeded the cap */
    RESID_E_TOKENIZE = -6,    /* text cannot be tokenized (invalid UTF-8, ...) */
    RESID_E_CONTEXT = -7,     /* the prompt is longer than the model's context */
} resid_status;

typedef struct resid_error {
    resid_status code;
    char msg[512];
} resid_error;

/* A short constant name for a status, e.g. "format error". */
const char *resid_status_str(resid_status s);

/* The allocation cap: the largest single buffer whose size comes from a
 * file (or from a trace request) resid will allocate; above it, loaders and
 * resid_forward fail with RESID_E_NOMEM and a message naming the size.
 * Default (and after resid_set_alloc_cap(0)): the machine's physical
 * memory. Process-wide; set it before opening models. */
void resid_set_alloc_cap(size_t bytes);
size_t resid_alloc_cap(void);

/* ------------------------------------------------------------------------- */
/* Models                                                                    */
/* ------------------------------------------------------------------------- */

typedef enum resid_arch {
    RESID_ARCH_UNKNOWN = 0,
    RESID_ARCH_GPT2 = 1,  /* LayerNorm, learned positions, gelu(tanh), biases */
    RESID_ARCH_LLAMA = 2, /* RMSNorm, RoPE, SwiGLU, GQA, no biases */
} resid_arch;

typedef enum resid_format {
    RESID_FORMAT_HF = 1,      /* folder with config.json + *.safetensors */
    RESID_FORMAT_GGUF = 2,    /* GGUF v2/v3 file */
    RESID_FORMAT_LLAMA2C = 3, /* llama2.c .bin checkpoint */
} resid_format;

typedef enum resid_dtype {
    RESID_DTYPE_F32 = 0,
    RESID_DTYPE_F16 = 1,
    RESID_DTYPE_BF16 = 2,
    RESID_DTYPE_Q8_0 = 3,
    RESID_DTYPE_Q4_0 = 4,
    RESID_DTYPE_Q4_K = 5,
    RESID_DTYPE_Q6_K = 6,
    RESID_DTYPE_COUNT
} resid_dtype;

typedef enum resid_rope {
    RESID_ROPE_NONE = 0,        /* learned absolute positions (GPT-2) */
    RESID_ROPE_INTERLEAVED = 1, /* pairs (2i, 2i+1): llama2.c, GGUF, Meta */
    RESID_ROPE_HALVES = 2,      /* pairs (i, i+d_h/2): Hugging Face rotate_half */
} resid_rope;

const char *resid_arch_name(resid_arch a);
const char *resid_format_name(resid_format f);
const char *resid_dtype_name(resid_dtype t);

typedef struct resid_model resid_model;
typedef struct resid_tokenizer resid_tokenizer;

typedef struct resid_model_info {
    resid_arch arch;
    resid_format format;
    int32_t n_layer;   /* L */
    int32_t d_model;   /* D */
    int32_t n_head;    /* H (query heads) */
    int32_t n_kv_head; /* key/value heads (GQA); == n_head without GQA */
    int32_t d_head;    /* d_h = D / H */
    int32_t d_ffn;     /* N, FFN neurons per layer */
    int32_t n_vocab;   /* V */
    int32_t n_ctx;     /* maximum positions */
    float norm_eps;    /* LayerNorm / RMSNorm epsilon, from the file */
    float rope_theta;  /* RoPE base (Llama) */
    resid_rope rope;
    bool tied_output;  /* unembedding shares the token embedding */
    bool has_bias;     /* GPT-2 style biases everywhere */
    int64_t n_params;  /* learned parameters (mask buffers excluded) */
    int64_t n_bytes;   /* bytes of the tensors as stored */
    int32_t n_tensors;
    /* Number of tensors of each dtype, indexed by resid_dtype. */
    int32_t dtype_count[RESID_DTYPE_COUNT];
    const char *name; /* from the file's metadata, or the path */
    const char *path;
} resid_model_info;

typedef struct resid_open_opts {
    /* llama2.c: the tokenizer.bin to use. NULL looks for tokenizer.bin and
     * tok<V>.bin beside the checkpoint. Other formats: overrides the
     * tokenizer found in the model (any path resid_tokenizer_open accepts). */
    const char *tokenizer_path;
} resid_open_opts;

/* Opens a model. The format is detected from the path: a directory is a
 * Hugging Face folder, a file starting with "GGUF" is GGUF, anything else is
 * tried as a llama2.c checkpoint. Weights are memory-mapped; F32 tensors are
 * used in place. A model without a tokenizer opens fine:
 * resid_model_tokenizer() then returns NULL. `opts` may be NULL. */
resid_status resid_model_open(const char *path, const resid_open_opts *opts,
                              resid_model **out, resid_error *err);
void resid_model_free(resid_model *m);
const resid_model_info *resid_model_get_info(const resid_model *m);
/* NULL when the model came without one. Owned by the model. */
const resid_tokenizer *resid_model_tokenizer(const resid_model *m);

typedef struct resid_tensor_info {
    const char *name;     /* as in the file */
    const char *role;     /* e.g. "blk.3.ffn_down", see src/model/arch.c */
    resid_dtype dtype;
    int64_t n_rows;       /* logical [n_rows][n_cols]; for matrices [out][in] */
    int64_t n_cols;
    bool transposed;      /* stored as [n_cols][n_rows] (GPT-2 Conv1D) */
} resid_tensor_info;

/* i in [0, info->n_tensors). */
resid_status resid_model_tensor(const resid_model *m, int32_t i,
                                resid_tensor_info *out, resid_error *err);

/* ------------------------------------------------------------------------- */
/* Tokenizers                                                                */
/* ------------------------------------------------------------------------- */

typedef enum resid_tokenizer_kind {
    RESID_TOKENIZER_BPE = 1, /* byte-level BPE: GPT-2, Llama 3 */
    RESID_TOKENIZER_SPM = 2, /* SentencePiece-style BPE: Llama 1/2 */
} resid_tokenizer_kind;

/* Opens a tokenizer alone: a GGUF file (vocab-only or full), a
 * tokenizer.json, a vocab.json (merges.txt beside it), a folder holding one
 * of those, or a llama2.c tokenizer.bin. */
resid_status resid_tokenizer_open(const char *path, resid_tokenizer **out,
                                  resid_error *err);
void resid_tokenizer_free(resid_tokenizer *t);

resid_tokenizer_kind resid_tokenizer_get_kind(const resid_tokenizer *t);
int32_t resid_tokenizer_n_vocab(const resid_tokenizer *t);
int32_t resid_tokenizer_bos(const resid_tokenizer *t); /* -1 if none */
int32_t resid_tokenizer_eos(const resid_tokenizer *t); /* -1 if none */

typedef struct resid_encode_opts {
    bool add_bos;       /* prepend BOS (default: what the model does) */
    bool parse_special; /* "<s>" in text becomes the special token */
} resid_encode_opts;

resid_encode_opts resid_encode_defaults(const resid_tokenizer *t);

/* Encodes `len` bytes of UTF-8 (len < 0: NUL-terminated). Invalid UTF-8 is
 * an error (RESID_E_TOKENIZE) naming the byte offset. *ids is malloc'd. */
resid_status resid_tokenize(const resid_tokenizer *t, const char *text,
                            int64_t len, const resid_encode_opts *opts,
                            int32_t **ids, int32_t *n_ids, resid_error *err);

/* The bytes token `id` decodes to when it follows `prev` (pass -1 at the
 * start; SentencePiece drops the leading space after BOS). NULL if id is out
 * of range. The bytes are owned by the tokenizer; *len receives the length. */
const char *resid_token_bytes(const resid_tokenizer *t, int32_t prev,
                              int32_t id, size_t *len);

/* The piece as stored in the vocabulary (e.g. "▁the", "Ġthe", "<0x0A>"). */
const char *resid_token_piece(const resid_tokenizer *t, int32_t id);

/* Decodes ids to text exactly; *text is malloc'd and NUL-terminated. */
resid_status resid_detokenize(const resid_tokenizer *t, const int32_t *ids,
                              int32_t n_ids, char **text, size_t *len,
                              resid_error *err);

/* ------------------------------------------------------------------------- */
/* Forward pass and the trace                                                */
/* ------------------------------------------------------------------------- */

/* What a trace records. Combine with |. */
enum resid_capture {
    RESID_CAP_RESID = 1u << 0,  /* x_in, attn_out (a), x_mid, ffn_out (f) */
    RESID_CAP_HEADS = 1u << 1,  /* per-head attention outputs, no b_O */
    RESID_CAP_ATTN = 1u << 2,   /* attention weights (post-softmax) */
    RESID_CAP_VALUES = 1u << 3, /* value vectors at every position */
    RESID_CAP_COEF = 1u << 4,   /* FFN coefficients m */
    RESID_CAP_LOGITS = 1u << 5, /* logits */
    RESID_CAP_ALL = 0x3fu,
};

typedef enum resid_positions {
    RESID_POS_AUTO = 0, /* ALL when T <= auto_max_pos, else LAST */
    RESID_POS_ALL = 1,  /* decompose every position */
    RESID_POS_LAST = 2, /* decompose only t* = T-1 */
} resid_positions;

/* Hooks: intervene during the forward pass. A hook is called at each point
 * below, for every layer, with the rows of the current call; it may read or
 * modify `data` in place, and the forward pass continues with what it left.
 * Zero a neuron: set ffn_coef column k to 0. Zero a head: zero its d_h
 * columns of ATTN_MIX. Patch or steer: write into RESID_IN / ATTN_OUT. */
typedef enum resid_hook_point {
    RESID_HOOK_RESID_IN = 0,     /* x_in[l]      data [n_rows][D]        */
    RESID_HOOK_VALUES = 1,       /* values       data [n_rows][H_kv*d_h] */
    RESID_HOOK_ATTN_WEIGHTS = 2, /* alpha        data [H][n_rows][n_ctx] */
    RESID_HOOK_ATTN_MIX = 3,     /* sum_j a v_j  data [n_rows][H*d_h]    */
    RESID_HOOK_ATTN_OUT = 4,     /* a[l]         data [n_rows][D]        */
    RESID_HOOK_FFN_COEF = 5,     /* m[l]         data [n_rows][N]        */
    RESID_HOOK_FFN_OUT = 6,      /* f[l]         data [n_rows][D]        */
    RESID_HOOK_COUNT
} resid_hook_point;

typedef struct resid_hook_event {
    resid_hook_point point;
    int32_t layer;
    int32_t pos0;   /* absolute position of row 0 */
    int32_t n_rows; /* positions in this call */
    int32_t n_ctx;  /* ATTN_WEIGHTS: keys visible = pos0 + n_rows */
    int32_t width;  /* floats per row (per head row for ATTN_WEIGHTS) */
    float *data;
} resid_hook_event;

typedef void (*resid_hook_fn)(void *user, const resid_hook_event *ev);

typedef struct resid_trace_opts {
    uint32_t capture;         /* RESID_CAP_* flags */
    resid_positions positions;
    int32_t auto_max_pos;     /* AUTO threshold (default 64) */
    resid_hook_fn hook;       /* NULL: no interventions */
    void *hook_user;
} resid_trace_opts;

resid_trace_opts resid_trace_defaults(void);

/* The trace of one forward pass. All arrays are NULL unless captured. Rows
 * cover the captured positions pos_first .. n_tokens-1 (n_cap of them);
 * "[n_cap]" below means those rows. Memory, in floats:
 *   RESID:  (4L+1)·n_cap·D      HEADS: L·n_cap·H·D     ATTN: L·H·n_cap·T
 *   VALUES: L·T·H_kv·d_h        COEF:  L·n_cap·N       LOGITS: n_cap·V
 * resid_trace_bytes() computes the total before running. */
typedef struct resid_trace {
    int32_t n_tokens; /* T */
    int32_t pos_first;
    int32_t n_cap; /* n_tokens - pos_first */
    int32_t n_layer, d_model, n_head, n_kv_head, d_head, d_ffn, n_vocab;
    resid_arch arch;
    int32_t *tokens; /* [T] */

    float *x_in;     /* [L+1][n_cap][D]; x_in[L] is x_L, the final residual */
    float *attn_out; /* a     [L][n_cap][D], includes b_O */
    float *x_mid;    /* x_mid [L][n_cap][D] */
    float *ffn_out;  /* f     [L][n_cap][D], includes b_2 */
    float *head_out; /* [L][n_cap][H][D]: sum_j alpha v_j W_O^h, no b_O */
    float *attn;     /* [L][H][n_cap][T]: alpha, zero above the diagonal */
    float *values;   /* [L][T][H_kv][d_h]: v_j incl. V bias, every position */
    float *ffn_coef; /* m     [L][n_cap][N] */
    float *final_mean;  /* [n_cap]: final-norm mean (GPT-2) or 0 (RMSNorm) */
    float *final_scale; /* [n_cap]: sigma_f = sqrt(var+eps) or sqrt(ms+eps) */
    float *logits;      /* [n_cap][V], the model's own logits */
} resid_trace;

/* Size in bytes of the trace resid_forward would allocate. */
size_t resid_trace_bytes(const resid_model *m, int32_t n_tokens,
                         const resid_trace_opts *opts);

/* Runs tokens[0..n) from position 0 and records what opts asks for. Errors:
 * RESID_E_CONTEXT when n > n_ctx, RESID_E_ARG for a token id >= V or n < 1. */
resid_status resid_forward(const resid_model *m, const int32_t *tokens,
                           int32_t n, const resid_trace_opts *opts,
                           resid_trace **out, resid_error *err);
void resid_trace_free(resid_trace *t);

/* Incremental evaluation with a key/value cache, for generation. */
typedef struct resid_session resid_session;

resid_status resid_session_new(const resid_model *m, resid_session **out,
                               resid_error *err);
void resid_session_free(resid_session *s);
/* Appends n tokens; writes the logits of the last one to logits[V] if not
 * NULL. `hook` (may be NULL) sees the same events as in resid_forward. */
resid_status resid_session_eval(resid_session *s, const int32_t *tokens,
                                int32_t n, float *logits, resid_error *err);
int32_t resid_session_n_past(const resid_session *s);
void resid_session_set_hook(resid_session *s, resid_hook_fn hook, void *user);

/* ------------------------------------------------------------------------- */
/* Attribution: lenses, unit scores, certified ranking (src/analysis/)       */
/* ------------------------------------------------------------------------- */

/*
 * The explainer scores "units" (pieces of the residual stream at the
 * prediction position t* = T-1, METHOD.md §3.2) by their log-probability
 * increase for a target token w:
 *
 *     LPI(v; x) = log p(w | x + v) - log p(w | x),   p = softmax(bs(.)),
 *
 * where bs is the lens (the model's final norm, linearised) followed by the
 * unembedding, and x is the residual the unit is added to (x_in[l][t*] for
 * attention units, x_mid[l][t*] for FFN units). Scores are exact; the
 * certified ranking returns exactly the top-K (or bottom-K) units an
 * exhaustive scoring would, while scoring only a few of them through the
 * vocabulary (METHOD.md §10).
 *
 *     resid_explain_opts eo = resid_explain_defaults();
 *     resid_explainer *ex;
 *     resid_explainer_new(m, tr, &eo, &ex, &err);  // tr: resid_forward trace
 *     resid_rank_opts ro = resid_rank_defaults(RESID_UNIT_FFN_NEURON, 10);
 *     resid_score *top; int64_t n; resid_rank_stats st;
 *     resid_rank(ex, &ro, &top, &n, &st, &err);     // top[0] is the best
 *     free(top); resid_explainer_free(ex);
 *
 * The trace must hold RESID_CAP_RESID | RESID_CAP_ATTN | RESID_CAP_VALUES |
 * RESID_CAP_COEF (RESID_EXPLAIN_CAPTURE) and must cover t* (always true).
 */

/* How a vector is read in vocabulary space. */
typedef enum resid_lens {
    /* The paper's lens (default): the final norm linearised with the scale
     * s of x_L = x_in[L][t*]. GPT-2: bs(v) = W_U·(γ_f ⊙ (v − mean(v)))/s,
     * s = sqrt(var(x_L)+eps), the final-LN bias dropped. Llama:
     * bs(v) = W_U·(γ_f ⊙ v)/s, s = sqrt(mean(x_L²)+eps). Linear in v. */
    RESID_LENS_PAPER = 0,
    /* The paper's lens plus the constant W_U·β_f in every context's logits,
     * so that softmax(bs(x_L)) is the model's own distribution (GPT-2).
     * Identical to PAPER for Llama. Unit vectors are projected as in PAPER,
     * so sums over units still telescope. */
    RESID_LENS_EXACT = 1,
    /* The usual logit lens: every vector normalised by its own statistics,
     * with the final-norm bias: bs(y) = W_U·LN_f(y). Not linear; only
     * the layer-level view (resid_layer_table) accepts it. */
    RESID_LENS_LOGIT = 2,
} resid_lens;

/* "paper", "exact", "logit-lens"; "?" for anything else. */
const char *resid_lens_name(resid_lens lens);
/* Parses those names; RESID_E_ARG for anything else. */
resid_status resid_lens_parse(const char *s, resid_lens *out, resid_error *err);

/* The granularities of METHOD.md §3.2, all at t*. Ids are 0-based. */
typedef enum resid_unit_kind {
    RESID_UNIT_ATTN_LAYER = 0, /* "aL":      a[l][t*] incl. b_O; ctx x_in[l] */
    RESID_UNIT_FFN_LAYER = 1,  /* "fL":      f[l][t*] incl. b_2; ctx x_mid[l] */
    RESID_UNIT_HEAD = 2,       /* "L_H":     sum_j α_j v_j W_O^h, no b_O */
    RESID_UNIT_HEAD_POS = 3,   /* "L_H_J":   α_{t*,j} v_j W_O^h */
    RESID_UNIT_ATTN_NEURON = 4,/* "L_H_N_J": α_{t*,j} v_j[n] W_O^h[n,:] */
    RESID_UNIT_FFN_NEURON = 5, /* "L_K":     m_k[t*] fc2_k; ctx x_mid[l] */
    RESID_UNIT_POS = 6,        /* "aL_J":    v1 subvalue, heads concatenated:
                                  sum_h α^h_{t*,j} v^h_j W_O^h; ctx x_in[l] */
    RESID_UNIT_KIND_COUNT
} resid_unit_kind;

/* Short names: "attn-layer", "ffn-layer", "head", "head-pos",
 * "attn-neuron", "ffn-neuron", "pos". */
const char *resid_unit_kind_name(resid_unit_kind k);

/* One unit. Fields a kind does not use are -1. GQA: query head h reads
 * key/value head h / (H / H_kv). */
typedef struct resid_unit {
    resid_unit_kind kind;
    int32_t layer; /* l */
    int32_t head;  /* h (HEAD, HEAD_POS, ATTN_NEURON) */
    int32_t index; /* n (ATTN_NEURON, within the head) or k (FFN_NEURON) */
    int32_t pos;   /* source position j (HEAD_POS, ATTN_NEURON, POS) */
} resid_unit;

/* Writes the id ("3_17", "a2", ...) into buf[n] (NUL-terminated, truncated
 * to fit); returns the length it needed, like snprintf. */
int resid_unit_format(const resid_unit *u, char *buf, size_t n);

/* Parses an id of the expected kind ("L_K" and "L_H" look alike). When `tr`
 * is not NULL each field is checked against its dimensions (layers, heads,
 * d_head, d_ffn, tokens) and an out-of-range id is RESID_E_ARG naming the
 * limit; malformed text is RESID_E_ARG too. */
resid_status resid_unit_parse(const char *s, resid_unit_kind kind,
                              const resid_trace *tr, resid_unit *out,
                              resid_error *err);

/* Per-unit scores. With a contrast token c, `contrast` is the increase of
 * log p(w) − log p(c) when v is added: because both share the softmax
 * normaliser this is bs_w(v) − bs_c(v), the logit-difference (linear,
 * context-free); NAN without a contrast. */
typedef struct resid_score {
    resid_unit unit;
    double lpi;       /* log p(w|x+v) − log p(w|x) */
    double prob_inc;  /* p(w|x+v) − p(w|x) = p(w|x)·expm1(lpi) */
    double bs_target; /* bs_w(v): the direct logit of the target */
    double contrast;  /* bs_w(v) − bs_c(v), or NAN */
    double coef;      /* m_k (FFN neuron), α (head-pos), α·v_j[n] (attn
                         neuron); NAN for other kinds */
} resid_score;

/* The captures the explainer needs. */
#define RESID_EXPLAIN_CAPTURE                                                 \
    (RESID_CAP_RESID | RESID_CAP_ATTN | RESID_CAP_VALUES | RESID_CAP_COEF)

/* A model's direction ranges (resid_ranges_build / resid_ranges_load,
 * at the end of this header). */
typedef struct resid_ranges resid_ranges;

typedef struct resid_explain_opts {
    resid_lens lens;  /* default RESID_LENS_PAPER */
    int32_t target;   /* w; -1: the model's argmax at t* (default) */
    int32_t contrast; /* c for the contrast score; -1: none (default) */
    /* Optional (default NULL): the model's direction ranges, which tighten
     * the lower bounds of FFN and attention neurons (the bottom-K search
     * scores far fewer of them exactly). Scores and rankings are the same
     * bits with or without. Must be of this model (its shape is checked;
     * resid_ranges_load checked its weights) and outlive the explainer. */
    const resid_ranges *ranges;
} resid_explain_opts;

resid_explain_opts resid_explain_defaults(void);

typedef struct resid_explainer resid_explainer;

/* Precomputes, for every context x (x_in[l][t*], x_mid[l][t*], x_L), the
 * lens values bs(x), log-sum-exp and p, and the bound vectors g of §10.
 * The explainer keeps pointers to `m` and `tr`; both must outlive it. It
 * also remembers every exact score it computes (a unit scored or ranked
 * again costs no projection and gives the same bits) and lazily built
 * per-layer data, so one explainer must not be used from two threads at
 * once.
 * Errors: RESID_E_ARG for a target/contrast id out of [0, V), a trace of
 * another model or one lacking RESID_EXPLAIN_CAPTURE; RESID_E_NOMEM. */
resid_status resid_explainer_new(const resid_model *m, const resid_trace *tr,
                                 const resid_explain_opts *opts,
                                 resid_explainer **out, resid_error *err);
void resid_explainer_free(resid_explainer *e);

int32_t resid_explainer_target(const resid_explainer *e);
int32_t resid_explainer_contrast(const resid_explainer *e); /* -1: none */
resid_lens resid_explainer_lens(const resid_explainer *e);
/* The lens scale s (σ_f or rms of x_L). */
double resid_explainer_scale(const resid_explainer *e);
/* p(w | x_L) in the explainer's lens (the model's probability for Llama
 * and in the exact lens). */
double resid_explainer_target_prob(const resid_explainer *e);

/* Number of units of a kind, and the i-th in enumeration order: layers
 * ascending, then head, then neuron, then source position (the order ties
 * keep in rankings). */
int64_t resid_unit_count(const resid_explainer *e, resid_unit_kind kind);
resid_status resid_unit_at(const resid_explainer *e, resid_unit_kind kind,
                           int64_t i, resid_unit *out, resid_error *err);

/* Scores n arbitrary units exactly into out[n] (same order). Units are
 * checked (RESID_E_ARG names the bad one). The lens must not be LOGIT. */
resid_status resid_score_units(resid_explainer *e, const resid_unit *units,
                               int64_t n, resid_score *out, resid_error *err);

/* Scores every unit of a kind exactly (batched GEMMs), in enumeration
 * order; *out is malloc'd, *n receives resid_unit_count(). */
resid_status resid_score_all(resid_explainer *e, resid_unit_kind kind,
                             resid_score **out, int64_t *n, resid_error *err);

/* The layer table: per layer the attention and FFN layer scores and the
 * target's probability entering the layer. Works in every lens (in the
 * logit lens each residual is normalised by its own statistics). */
typedef struct resid_layer_row {
    double attn_lpi, ffn_lpi;             /* LPI of a[l] and of f[l] */
    double attn_bs_target, ffn_bs_target; /* change of the target logit */
    double p_in;  /* p(w | x_in[l][t*]) */
    double p_mid; /* p(w | x_mid[l][t*]) */
} resid_layer_row;

/* out[L]. */
resid_status resid_layer_table(resid_explainer *e, resid_layer_row *out,
                               resid_error *err);

/* What a ranking sorts by. LPI and PROB_INC are certified through the
 * bounds of §10; LOGIT and CONTRAST are linear in v and computed exactly
 * for every unit in O(D). */
typedef enum resid_rank_key {
    RESID_KEY_LPI = 0,
    RESID_KEY_PROB_INC = 1,
    RESID_KEY_LOGIT = 2,    /* bs_target */
    RESID_KEY_CONTRAST = 3, /* needs a contrast token */
} resid_rank_key;

typedef struct resid_rank_opts {
    resid_unit_kind kind;
    int64_t k;          /* how many; clamped to the number of units */
    bool bottom;        /* the k lowest instead of the k highest */
    resid_rank_key key; /* default RESID_KEY_LPI */
    int32_t layer;      /* only this layer; -1: all (default) */
    bool exhaustive;    /* score every unit exactly (the reference path) */
} resid_rank_opts;

resid_rank_opts resid_rank_defaults(resid_unit_kind kind, int64_t k);

typedef struct resid_rank_stats {
    int64_t n_units;       /* units of the kind (in the layer filter) */
    int64_t k_requested;
    int64_t k;             /* returned: min(k_requested, n_units) */
    bool clamped;          /* k_requested > n_units */
    int64_t n_exact;       /* units whose LPI was computed through the vocabulary */
    int64_t n_projections; /* vocabulary projections (GEMM rows) done */
} resid_rank_stats;

/* The top-k (or bottom-k) units by the key: best first (bottom: lowest
 * first); ties keep enumeration order. The certified path returns the same
 * units with bit-identical scores as the exhaustive one. *out is malloc'd
 * (k entries, possibly 0); stats may be NULL. */
resid_status resid_rank(resid_explainer *e, const resid_rank_opts *opts,
                        resid_score **out, int64_t *n_out,
                        resid_rank_stats *stats, resid_error *err);

/* ------------------------------------------------------------------------- */
/* Projections, distribution change, logit-lens grid, query analysis         */
/* ------------------------------------------------------------------------- */

/*
 * Reading vectors and parameters in vocabulary space, how a unit changes
 * the predicted distribution, the layer × position lens grid, and the
 * cross-layer "query" analyses of METHOD.md §5.
 *
 * bs-values here are the linear map of the paper's lens (METHOD.md §2.2):
 * bs(v) = W_U·(γ_f ⊙ centre(v))/s with centre = minus v's own mean for
 * GPT-2 (applied per vector) and the identity for Llama. The ranking of
 * tokens in bs(v) depends only on v's direction and sign, not on s (s > 0);
 * a parameter row read outside an explainer uses s = 1, one read through an
 * explainer uses the explainer's s (the scale of x_L at t*).
 */

/* One token and its value (a bs-value, or a probability change). */
typedef struct resid_token_value {
    int32_t id;
    double value;
} resid_token_value;

/* bs(v)[V] of one vector v[D] into out[V]:
 *   PAPER  W_U·(γ_f ⊙ centre(v))/scale                 (scale <= 0: 1)
 *   EXACT  the same plus W_U·β_f (GPT-2), for full residuals
 *   LOGIT  W_U·LN_f(v): v normalised by its own statistics, with β_f
 *          (scale ignored).
 * Works on every weight dtype (quantised unembeddings are read row-panel
 * by row-panel). RESID_E_ARG for an unknown lens or NULL pointers. */
resid_status resid_lens_apply(const resid_model *m, resid_lens lens, double scale,
                              const float *v, float *out, resid_error *err);

/* The k highest values of x[n] into top[k] (highest first) and the k lowest
 * into bottom[k] (lowest first); either may be NULL. Ties: lower id first.
 * k is clamped to n; returns the number written to each list. */
int32_t resid_top_bottom(const float *x, int32_t n, int32_t k, resid_token_value *top,
                         resid_token_value *bottom);

/* Top-k and bottom-k tokens of bs(v) for any vector v[D] (PAPER map with
 * the given scale, <= 0: 1). Returns the clamped k through *k_out (may be
 * NULL). */
resid_status resid_project_vector(const resid_model *m, const float *v, double scale,
                                  int32_t k, resid_token_value *top,
                                  resid_token_value *bottom, int32_t *k_out,
                                  resid_error *err);

/* Parameter vectors with a fixed direction. */
typedef enum resid_param {
    RESID_PARAM_FC2 = 0, /* FFN subvalue fc2_k: column k of w_down (GPT-2
                            mlp.c_proj.weight[k,:]; Llama down_proj[:,k]) */
    RESID_PARAM_WO = 1,  /* attention subvalue W_O^{l,h}[n,:]: column
                            h·d_h+n of o_proj / row of GPT-2 c_proj;
                            row = h·d_h + n */
    RESID_PARAM_FC1 = 2, /* FFN subkey: GPT-2 c_fc column k, Llama up_proj[k] */
    RESID_PARAM_GATE = 3,/* SwiGLU gate_proj[k] (Llama only) */
    RESID_PARAM_WV = 4,  /* attention value row of KV head h_kv, dim n:
                            row = h_kv·d_h + n (GPT-2: c_attn column 2D+row) */
} resid_param;

/* "fc2", "wo", "fc1", "gate", "wv". */
const char *resid_param_name(resid_param p);

/* The raw parameter vector into v[D] (no norm gain, no bias). RESID_E_ARG
 * names a layer or row out of range, or GATE on a model without one. */
resid_status resid_param_vector(const resid_model *m, resid_param p, int32_t layer,
                                int64_t row, float *v, resid_error *err);

/* Top/bottom tokens of bs(sign·d) for a parameter row d (scale s as in
 * resid_project_vector; sign < 0 swaps the lists, which is how a negative
 * coefficient reads: METHOD.md §2.3). */
resid_status resid_project_param(const resid_model *m, resid_param p, int32_t layer,
                                 int64_t row, double sign, double scale, int32_t k,
                                 resid_token_value *top, resid_token_value *bottom,
                                 int32_t *k_out, resid_error *err);

/* bs(v)[V] of a unit's vector (a subvalue with its coefficient applied:
 * m_k·fc2_k, α v_j[n]·W_O^h[n,:], ...) through the explainer's linear map
 * (scale s of x_L; no β_f in any lens). */
resid_status resid_unit_bs(resid_explainer *e, const resid_unit *u, float *out,
                           resid_error *err);

/* Top/bottom tokens of resid_unit_bs. */
resid_status resid_project_unit(resid_explainer *e, const resid_unit *u, int32_t k,
                                resid_token_value *top, resid_token_value *bottom,
                                int32_t *k_out, resid_error *err);

/* Batched projections (for many vectors at once; additive API).
 *
 * resid_lens_vector: y[D] = the model-space image of v under the lens, so
 * that bs(v) = W_U·y (PAPER: γ_f ⊙ centre(v)/scale; EXACT adds β_f; LOGIT
 * normalises v by its own statistics). resid_lens_apply(v) = W_U·y.
 * resid_unit_lens_vector: the same for a unit through the explainer's map
 * (resid_unit_bs(u) = W_U·y). */
resid_status resid_lens_vector(const resid_model *m, resid_lens lens, double scale,
                               const float *v, float *y, resid_error *err);
resid_status resid_unit_lens_vector(resid_explainer *e, const resid_unit *u, float *y,
                                    resid_error *err);

/* Top-k and bottom-k tokens of W_U·y_i for n lens-prepared vectors
 * y[n][D] (from resid_lens_vector / resid_unit_lens_vector; apply any sign
 * before). The products are GEMMs over blocks of rows (scratch: one block
 * × V floats), then a per-row selection as resid_top_bottom. Row i's lists
 * go to top + i·k and bottom + i·k (either may be NULL); k is clamped to V
 * and the clamped k returned through *k_out (may be NULL). Same lists as
 * resid_project_vector row by row, within float rounding of the values. */
resid_status resid_project_many_topk(const resid_model *m, const float *y, int64_t n,
                                     int32_t k, resid_token_value *top,
                                     resid_token_value *bottom, int32_t *k_out,
                                     resid_error *err);

/* How adding a unit's vector v to its context x (x_in[l][t*] or
 * x_mid[l][t*]) changes the distribution (METHOD.md §2.3), beside bs(v).
 * Probabilities are softmax of the explainer's lens values (PAPER or
 * EXACT). Overlaps compare token sets: overlap_top = |rise ∩ bs_top|,
 * jaccard_top = |rise ∩ bs_top| / |rise ∪ bs_top| (likewise fall vs
 * bs_bottom); overlap fraction = overlap / k. */
typedef struct resid_dist_change {
    resid_unit unit;
    int32_t k;                    /* entries in each list */
    resid_token_value *rise;      /* [k] largest p(t|x+v) − p(t|x), first = most */
    resid_token_value *fall;      /* [k] most negative change first */
    resid_token_value *bs_top;    /* [k] largest bs_t(v) */
    resid_token_value *bs_bottom; /* [k] smallest bs_t(v) */
    int32_t overlap_top, overlap_bottom;
    double jaccard_top, jaccard_bottom;
    double lpi;                   /* log p(w|x+v) − log p(w|x) */
    double bs_range;              /* max_t bs_t(v) − min_t bs_t(v) */
} resid_dist_change;

/* *out is malloc'd; free with resid_dist_change_free. The explainer's lens
 * must not be LOGIT (RESID_E_ARG). */
resid_status resid_dist_change_new(resid_explainer *e, const resid_unit *u, int32_t k,
                                   resid_dist_change **out, resid_error *err);
void resid_dist_change_free(resid_dist_change *d);

/* The lens grid (METHOD.md §7 items 1-2): for every layer l and captured
 * position t, the top-1 token and p(w) of x_in[l][t] and x_mid[l][t], and
 * of x_L[t] = x_in[L][t].
 *   PAPER  at position t the scale is that of the final residual at the
 *          same position, x_in[L][t] (at t* this is the explainer's s); the
 *          final-norm bias is dropped. p(w|x_L[t*]) is the model's
 *          probability for Llama.
 *   EXACT  PAPER plus W_U·β_f (GPT-2): at x_L the model's distribution.
 *   LOGIT  every vector normalised by its own statistics, β_f included.
 * w is one token for the whole grid (the model's argmax at t* unless
 * given). */
typedef struct resid_lens_cell {
    int32_t top1;    /* argmax_t bs_t (lowest id on ties) */
    double p_top1;   /* its probability */
    double p_target; /* p(w) */
    int32_t rank_target; /* 0-based rank of w */
} resid_lens_cell;

typedef struct resid_lens_grid {
    resid_lens lens;
    int32_t target;
    int32_t n_layer;   /* L */
    int32_t pos_first; /* position of column 0 */
    int32_t n_pos;     /* captured positions (trace n_cap) */
    resid_lens_cell *in;  /* [L+1][n_pos]: x_in[l][t]; row L is x_L */
    resid_lens_cell *mid; /* [L][n_pos]: x_mid[l][t] */
} resid_lens_grid;

/* Needs RESID_CAP_RESID. target < 0: the model's argmax at t* (its logits
 * when captured, else the EXACT lens of x_L). *out: free with
 * resid_lens_grid_free. */
resid_status resid_lens_grid_new(const resid_model *m, const resid_trace *tr,
                                 resid_lens lens, int32_t target,
                                 resid_lens_grid **out, resid_error *err);
void resid_lens_grid_free(resid_lens_grid *g);

/* ---- The exact split of a pre-activation (METHOD.md §5.1, §8 item 9) ---- */

/* Which input key ("subkey") of a neuron. */
typedef enum resid_subkey {
    RESID_SUBKEY_UP = 0,    /* FFN neuron (l,k): GPT-2 fc1 (its only key);
                               Llama up_proj[k] */
    RESID_SUBKEY_GATE = 1,  /* FFN neuron (l,k): Llama gate_proj[k] */
    RESID_SUBKEY_VALUE = 2, /* attention value neuron (l,h,n): W_V row of
                               KV head h/(H/H_kv), dim n, read at source j */
} resid_subkey;

/*
 * The neuron's input x is x_mid[l][j] (FFN keys) or x_in[l][j] (value key),
 * a sum of lower vectors u_0 = x_in[0][j], u_{2i+1} = a[i][j],
 * u_{2i+2} = f[i][j] (i < l) and, for FFN keys, u_{2l+1} = a[l][j]. With
 * K = γ ⊙ w (γ the norm gain in front of the neuron, w the weight row),
 * λ = Σ_d K[d], B = β·w + b (GPT-2) and σ = sqrt(var(x)+eps) (LayerNorm) or
 * rms = sqrt(mean(x²)+eps) (RMSNorm):
 *
 *     pre = Σ_j u_j·K / σ  −  mean(x)·λ / σ  +  B             (exact)
 *
 * share[j] = u_j·K/σ, mean_term = −mean(x)λ/σ (0 for RMSNorm), bias_term =
 * B (0 for Llama). `pre` is their sum; `pre_direct` is norm(x)·w + b
 * computed the ordinary way (the model's pre-activation; for the value key
 * the value v_j[n] before attention mixing). dot[j] = u_j·K are the raw
 * inner products the query analyses share credit by (Σ dot = x·K).
 */
typedef struct resid_preact {
    int32_t n_slots; /* 2l+2 (FFN keys) or 2l+1 (value key) */
    double *dot;     /* [n_slots] u_j·K */
    double *share;   /* [n_slots] u_j·K / σ */
    double mean_term, bias_term;
    double pre;        /* Σ share + mean_term + bias_term */
    double pre_direct; /* the ordinary computation */
    double sigma;      /* σ or rms of x */
} resid_preact;

/* layer l, neuron `index` (k for FFN keys; h·d_h+n with h a query head for
 * the value key), position `pos` (absolute; must be captured). Needs
 * RESID_CAP_RESID. RESID_E_ARG: out-of-range ids, GATE on GPT-2, a
 * position not in the trace. *out: free with resid_preact_free. */
resid_status resid_preact_new(const resid_model *m, const resid_trace *tr,
                              resid_subkey key, int32_t layer, int32_t index, int32_t pos,
                              resid_preact **out, resid_error *err);
void resid_preact_free(resid_preact *p);

/* ---- Query analyses (METHOD.md §5.2) ---- */

typedef struct resid_query_opts {
    int32_t n_value;  /* N_v for Q1/Q2; <= 0: 100 (GPT-2) / 30 (Llama) */
    int32_t n_attn;   /* N_a for Q3; <= 0: 30 */
    int32_t n_top;    /* size of the query / value neuron sets; <= 0: 300 */
    /* Q1/Q2: share by the exact split of the pre-activation instead of the
     * raw inner products: weights share[j]/pre, and mean_term/pre,
     * bias_term/pre into the extra slots q_mean / q_bias (default false).
     * For RMSNorm this equals the default sharing (no mean, no bias). */
    bool exact_ln;
} resid_query_opts;

resid_query_opts resid_query_defaults(void);

/* Q1 / Q2: "query layers". Slots j = 0 .. 2L: 0 = emb, 2i+1 = a_i,
 * 2i+2 = f_i (label j/2 − 0.5 in the notebooks). For each value neuron
 * with score s and inner products s_j = u_j·K (resid_preact dot), S = Σ_j
 * s_j: q[j] += (s_j/S)·s. Hence Σ_j q[j] = Σ of the neurons' LPIs (no
 * guard for S ≈ 0, as in the paper; n_small_den counts |S| <= 1e-6·Σ|s_j|).
 * Q1 (FFN value neurons, at t*): GPT-2 key γ_2 ⊙ fc1_k in q; Llama
 * q = up key, q_gate = gate key (never down_proj). Q2 (attention value
 * neurons at their source position j): key γ_1 ⊙ W_V row; q_gate NULL. */
typedef struct resid_query_layers {
    resid_unit_kind kind; /* FFN_NEURON (Q1) or ATTN_NEURON (Q2) */
    int32_t n_slots;      /* 2L+1 */
    int32_t n_units;      /* value neurons used (N_v, clamped) */
    resid_score *units;   /* [n_units], by LPI descending */
    double *q;            /* [n_slots] */
    double *q_gate;       /* [n_slots] or NULL */
    double lpi_sum;       /* Σ LPI of the units */
    double mean_layer;    /* mean layer of the units */
    int32_t n_small_den;  /* |S| (or |pre| with exact_ln) <= 1e-6 · Σ|terms| */
    /* exact_ln only (else 0): the mean and bias terms' slots, so that
     * Σ_j q[j] + q_mean + q_bias = lpi_sum (likewise for the gate key). */
    double q_mean, q_bias, q_gate_mean, q_gate_bias;
} resid_query_layers;

/* kind: RESID_UNIT_FFN_NEURON (Q1) or RESID_UNIT_ATTN_NEURON (Q2). Q2
 * needs the trace rows of every source position it meets (error
 * otherwise). *out: free with resid_query_layers_free. */
resid_status resid_query_layers_new(resid_explainer *e, resid_unit_kind kind,
                                    const resid_query_opts *opts,
                                    resid_query_layers **out, resid_error *err);
void resid_query_layers_free(resid_query_layers *q);

/* Q3: query FFN neurons of the top-N_a attention value neurons. For each
 * attention neuron (l,h,n,j) with score s, key K = γ_1 ⊙ W_V row and
 * den = x_in[l][j]·K, every FFN neuron (i,k) with i < l gets
 *     q[i][k] += (m^i_k[j] fc2^i_k · K / den) · s.
 * "query" = top n_top by q (ties, e.g. the zeros of layers with no
 * attention neuron above them, keep (layer, index) order); "query-value" =
 * query ∩ the top n_top FFN neurons by LPI; "query-only" = the rest. Needs
 * a trace of every position (RESID_POS_ALL; RESID_E_ARG otherwise). */
typedef struct resid_query_neuron {
    int32_t layer, index; /* FFN neuron i_k */
    double score;         /* q[i][k] */
    bool is_value;        /* in the top n_top value FFN neurons */
} resid_query_neuron;

typedef struct resid_query_neurons {
    int32_t n_attn;         /* attention value neurons used */
    resid_score *attn;      /* [n_attn] */
    int32_t n_layer, d_ffn;
    double *q;              /* [L][N] all scores */
    int32_t n_query;        /* min(n_top, L·N) */
    resid_query_neuron *query; /* [n_query], score descending */
    int32_t n_value;        /* value set size min(n_top, L·N) */
    resid_score *value;     /* [n_value] FFN neurons by LPI */
    int32_t n_query_value, n_query_only;
    int32_t *per_layer_query;       /* [L] */
    int32_t *per_layer_query_value; /* [L] */
    int32_t *per_layer_query_only;  /* [L] */
} resid_query_neurons;

resid_status resid_query_neurons_new(resid_explainer *e, const resid_query_opts *opts,
                                     resid_query_neurons **out, resid_error *err);
void resid_query_neurons_free(resid_query_neurons *q);

/* ------------------------------------------------------------------------- */
/* Interventions and verification (src/analysis/intervene.c)                 */
/* ------------------------------------------------------------------------- */

/*
 * Change units during a forward pass and measure what happens to the
 * target token w at t* = T-1 (METHOD.md §4): zero a unit, replace it by its
 * mean over a data set, patch in its activation from a clean prompt, or
 * steer by adding a vector to the residual stream. Built on the forward
 * pass hooks (RESID_HOOK_*); the weights are never touched.
 *
 *     resid_intervention *iv;
 *     resid_intervention_new(m, &iv, &err);
 *     resid_unit u = {RESID_UNIT_FFN_NEURON, 3, -1, 17, -1};
 *     resid_intervention_zero(iv, &u, NULL, 0, &err);  // every position
 *     resid_target_stats before, after;
 *     resid_intervention_run(m, NULL, ids, n, w, &before, NULL, NULL, &err);
 *     resid_intervention_run(m, iv, ids, n, w, &after, NULL, NULL, &err);
 *     resid_intervention_free(iv);
 *
 * What "the unit" is for each kind, and what an intervention changes
 * (positions are query positions; "default" applies when none are given):
 *
 *   FFN neuron "L_K"     the coefficient m_k at each position; default
 *                        every position, which is exactly zeroing the
 *                        neuron's fc2 row/column (parameter zeroing,
 *                        METHOD.md §4.2): f = Σ m_k fc2_k + b_2.
 *   head "L_H"           its d_h columns of the per-head mix (Σ_j α v_j)
 *                        before W_O; default every position = zeroing its
 *                        W_O columns (METHOD.md §4.3). b_O stays.
 *   head×source "L_H_J"  the weight α^h_{t,j}, set to 0 (or the clean
 *                        value) without renormalising the row; default
 *                        query t = t* only.
 *   attention neuron     (l,h,n,j) names a source position j, so it is the
 *   "L_H_N_J"            single contribution α^h_{t,j}·v_j[n] to dim n of
 *                        head h's mix at query t (default t = t* only),
 *                        i.e. exactly the vector α v_j[n] W_O^h[n,:] the
 *                        attribution scores. With pos = -1 (CLI "wo:L_H_N")
 *                        the unit is instead mix column h·d_h+n at every
 *                        source: default every position = zeroing the
 *                        neuron's W_O row (the paper's parameter zeroing).
 *   per-position "aL_J"  α^h_{t,j} for every head h (v1's subvalue).
 *   attention layer "aL" a[l] (after W_O, including b_O); default every
 *                        position.
 *   FFN layer "fL"       f[l] (including b_2); default every position.
 *                        Zeroing all N neurons of layer l instead leaves
 *                        f[l] = b_2: the two agree exactly for models
 *                        without FFN bias (Llama) and differ by b_2 (GPT-2).
 *
 * Modes: ZERO; MEAN (a value per unit, computed by resid_unit_means: the
 * mean of the activation over every position of a set of prompts; kinds
 * with a source position have no position-free mean and are refused);
 * REPLACE (activation patching: the clean prompt set by
 * resid_intervention_set_clean is run first with no interventions, its
 * activation recorded at every position, and written into the run at the
 * chosen positions; clean and corrupt must have the same number of tokens;
 * replacing with the same prompt is a bit-exact no-op); ADD (steering: a
 * vector times a scale added to x_in[l] at the chosen layers, l in [0, L],
 * l = L is the final residual x_L before the final norm; default t* only).
 */

typedef enum resid_iv_mode {
    RESID_IV_ZERO = 0,
    RESID_IV_MEAN = 1,
    RESID_IV_REPLACE = 2,
    RESID_IV_ADD = 3,
} resid_iv_mode;

/* "zero", "mean", "replace", "add"; parse accepts those (RESID_E_ARG). */
const char *resid_iv_mode_name(resid_iv_mode mode);
resid_status resid_iv_mode_parse(const char *s, resid_iv_mode *out, resid_error *err);

typedef struct resid_intervention resid_intervention;

resid_status resid_intervention_new(const resid_model *m, resid_intervention **out,
                                    resid_error *err);
void resid_intervention_free(resid_intervention *iv);

/* Floats per unit in a MEAN value: 1 (FFN neuron, W_O-row neuron), d_h
 * (head), D (aL, fL); 0 for kinds without a position-free mean. */
int64_t resid_iv_mean_width(const resid_model *m, const resid_unit *u);

/* Adds one edit. `pos`: absolute query positions (n_pos of them; NULL or
 * n_pos == 0: the default above). Units are checked against the model's
 * dimensions (RESID_E_ARG names the bad field); positions and source
 * positions are checked against the prompt when the intervention runs.
 * MEAN copies mean[n_mean] (n_mean must equal resid_iv_mean_width). */
resid_status resid_intervention_zero(resid_intervention *iv, const resid_unit *u,
                                     const int32_t *pos, int32_t n_pos, resid_error *err);
resid_status resid_intervention_mean(resid_intervention *iv, const resid_unit *u,
                                     const float *mean, int64_t n_mean, const int32_t *pos,
                                     int32_t n_pos, resid_error *err);
resid_status resid_intervention_replace(resid_intervention *iv, const resid_unit *u,
                                        const int32_t *pos, int32_t n_pos, resid_error *err);
/* The clean prompt of REPLACE edits (copied). */
resid_status resid_intervention_set_clean(resid_intervention *iv, const int32_t *tokens,
                                          int32_t n, resid_error *err);
/* x_in[layer][t] += scale·v[D] at the chosen positions (default t*). */
resid_status resid_intervention_add(resid_intervention *iv, int32_t layer, const float *v,
                                    double scale, const int32_t *pos, int32_t n_pos,
                                    resid_error *err);
int32_t resid_intervention_count(const resid_intervention *iv);

/* The target at t*, in the paper lens of the run's own final residual x_L
 * (bs = W_U·(γ_f ⊙ centre(x_L))/s(x_L), final-norm bias dropped; equal to
 * the model for Llama) and in the model's own logits. rank is 0-based
 * (tokens with a higher value, ties broken by lower id); rr = 1/(rank+1).
 * The CLI reports rank + 1. */
typedef struct resid_target_stats {
    double prob, logprob, rr;
    int32_t rank;
    double model_prob, model_logprob, model_rr;
    int32_t model_rank;
} resid_target_stats;

/* The target's statistics from a final residual x_L[D] and the model's
 * logits[V]. */
resid_status resid_target_stats_from(const resid_model *m, const float *x_L,
                                     const float *logits, int32_t target,
                                     resid_target_stats *out, resid_error *err);

/* Runs tokens[0..n) with the intervention (iv may be NULL: the plain model)
 * and measures `target` (< 0: the plain model's argmax at t*, resolved by
 * an extra plain run; *target_out receives it when not NULL). x_L[D] and
 * logits[V], when not NULL, receive the run's final residual and logits at
 * t*. Errors: RESID_E_ARG for positions/source positions outside the prompt
 * or a clean prompt of another length; the forward pass's errors. */
resid_status resid_intervention_run(const resid_model *m, resid_intervention *iv,
                                    const int32_t *tokens, int32_t n, int32_t target,
                                    resid_target_stats *out, int32_t *target_out,
                                    float *x_L, float *logits, resid_error *err);

/* MEAN values of units over prompts: for each unit its activation averaged
 * over every position of every prompt; means is malloc'd, the units'
 * values concatenated in order (resid_iv_mean_width floats each), *n_means
 * their total. RESID_E_UNSUPPORTED for a kind without a mean. */
resid_status resid_unit_means(const resid_model *m, const int32_t *const *prompts,
                              const int32_t *n_tokens, int32_t n_prompts,
                              const resid_unit *units, int64_t n_units, float **means,
                              int64_t *n_means, resid_error *err);

/* splitmix64: the next 64-bit value of the state (deterministic, portable). */
uint64_t resid_splitmix64(uint64_t *state);

/* n_random units drawn uniformly (splitmix64 seeded with `seed`, rejection
 * sampling) of the same kinds as `chosen` (unit i copies the kind of
 * chosen[i % n_chosen]; a W_O-row attention neuron stays one), distinct,
 * and none equal to a chosen unit. Source positions are drawn in
 * [0, n_tokens). RESID_E_ARG when a kind has too few units left. */
resid_status resid_random_units(const resid_model *m, int32_t n_tokens,
                                const resid_unit *chosen, int64_t n_chosen,
                                int64_t n_random, uint64_t seed, resid_unit *out,
                                resid_error *err);

/* ---- Scoring-method comparison (METHOD.md §3.5, v3/v4 Table 2) ---- */

/* Scores of an FFN neuron (l,k) with v = m_k fc2_k, context x = x_mid[l][t*]
 * and P_k = bs(fc2_k) (paper lens, coefficient not applied):
 *   LPI        (a) log p(w|x+v) − log p(w|x)
 *   LOGP_ALONE (b) log softmax(bs(v))_w
 *   PROB_INC   (c) p(w|x+v) − p(w|x)
 *   NORM       (d) ‖v‖ = |m_k|·‖fc2_k‖ (residual space, no norm applied)
 *   COEF       (e) m_k
 *   RANK       (f) −rank of w in P_k (0-based; best rank = highest score)
 *   COEF_NORM  (g) m_k·‖fc2_k‖ (signed: the norm of v with m's sign)
 *   COEF_RANK  (h) m_k·(1 − 2·rank/(V−1)): Geva et al. 2022 style, the
 *                  coefficient times the target's position in the neuron's
 *                  projection mapped to [+1 (top), −1 (bottom)], so a
 *                  negative coefficient on a bottom-ranked token scores
 *                  high (METHOD.md §2.3).
 * Higher is "more important" for every score. */
typedef enum resid_fscore {
    RESID_FSCORE_LPI = 0,
    RESID_FSCORE_LOGP_ALONE,
    RESID_FSCORE_PROB_INC,
    RESID_FSCORE_NORM,
    RESID_FSCORE_COEF,
    RESID_FSCORE_RANK,
    RESID_FSCORE_COEF_NORM,
    RESID_FSCORE_COEF_RANK,
    RESID_FSCORE_COUNT
} resid_fscore;

/* "lpi", "logp-alone", "prob-inc", "norm", "coef", "rank", "coef-norm",
 * "coef-rank". */
const char *resid_fscore_name(resid_fscore s);

/* Every score of every FFN neuron into out[RESID_FSCORE_COUNT][L·N]
 * (neuron index l·N + k). The explainer's lens must be PAPER or EXACT. */
resid_status resid_ffn_neuron_scores(resid_explainer *e, double *out, resid_error *err);

/* One prompt: the top-k FFN neurons by each score (ties: enumeration
 * order) are zeroed at every position (fc2 zeroing) and the target is
 * measured; likewise k random FFN neurons (resid_random_units, `seed`). */
typedef struct resid_score_compare {
    int32_t k, target;
    resid_target_stats original;
    resid_target_stats method[RESID_FSCORE_COUNT];
    resid_target_stats random;
    resid_unit *units; /* [RESID_FSCORE_COUNT + 1][k]: methods, then random */
} resid_score_compare;

/* tokens[0..n), target (< 0: the model's argmax). *out: free with
 * resid_score_compare_free. */
resid_status resid_compare_scores(const resid_model *m, const int32_t *tokens, int32_t n,
                                  int32_t target, int32_t k, uint64_t seed,
                                  resid_score_compare **out, resid_error *err);
void resid_score_compare_free(resid_score_compare *c);

/* ---- Additivity check (METHOD.md §3.4) ---- */

/* The FFN neurons of one layer ranked by LPI (descending, ties by index),
 * v_1, v_2, ...; for every prefix i: x = Σ_{j<=i} C(v_j) and y = C(Σ_{j<=i}
 * v_j), all in the same context x_mid[l][t*], for C = LPI and C = prob
 * increase. Pearson r of (x, y) and the least-squares slope of y on x
 * (with intercept); NAN when x or y is constant. */
typedef struct resid_additivity {
    int32_t layer, n; /* neurons used */
    int32_t *order;   /* [n] neuron index k */
    double *sum_lpi, *lpi_sum;   /* [n] x and y for C = LPI */
    double *sum_pinc, *pinc_sum; /* [n] for C = prob increase */
    double r_lpi, slope_lpi, r_pinc, slope_pinc;
} resid_additivity;

/* n_max <= 0: every neuron of the layer. Lens PAPER or EXACT. */
resid_status resid_additivity_new(resid_explainer *e, int32_t layer, int32_t n_max,
                                  resid_additivity **out, resid_error *err);
void resid_additivity_free(resid_additivity *a);

/* Over prompts: the mean of the per-prompt r and slope, and r and slope of
 * all points pooled. */
typedef struct resid_additivity_summary {
    int32_t n_prompts;
    double mean_r_lpi, mean_slope_lpi, pooled_r_lpi, pooled_slope_lpi;
    double mean_r_pinc, mean_slope_pinc, pooled_r_pinc, pooled_slope_pinc;
} resid_additivity_summary;

void resid_additivity_aggregate(const resid_additivity *const *a, int32_t n,
                                resid_additivity_summary *out);

/* Pearson r and least-squares slope of y on x; NAN when undefined. */
void resid_pearson_slope(const double *x, const double *y, int64_t n, double *r,
                         double *slope);

/* ------------------------------------------------------------------------- */
/* Reports (src/output/report.c)                                             */
/* ------------------------------------------------------------------------- */

/* Progress of a long computation: called as each stage begins, with its
 * name, its number (1-based) and the number of stages, from the calling
 * thread, never concurrently. Must not call back into the computation. */
typedef void (*resid_progress_fn)(void *user, const char *stage, int step, int n_steps);

/* What one explain report holds: the prompt, the token to explain and how
 * long the lists are. docs/explain-json.md is the schema; `resid explain
 * --json` writes the default request, `resid batch` a compact one. */
typedef struct resid_explain_request {
    const int32_t *tokens; /* [n_tokens] the prompt as run (BOS included) */
    int32_t n_tokens;
    int32_t target;        /* w; -1: the model's top-1 (default) */
    int32_t contrast;      /* c for the contrast score; -1: none (default) */
    resid_lens lens;       /* default RESID_LENS_PAPER */
    int64_t top_k;         /* head_positions (default 10) */
    int64_t neuron_top_k;  /* ffn_neurons, attn_neurons; <= 0: top_k (default) */
    int32_t n_unit_tokens; /* top/bottom tokens per unit (default 5) */
    int64_t bottom_k;      /* also the bottom-K (lowest score first) head x
                              positions, FFN and attention neurons as
                              "..._bottom" lists; 0: none (default) */
    bool exhaustive;       /* score every unit exactly (default false) */
    bool query;            /* Q1 "query_layers" + "query" (default true) */
    bool prompt_tokens;    /* the "tokens" array (default true) */
    bool compact;          /* unit entries are {"id", "lpi"[, "contrast"]} only,
                              no tokens (default false) */
    bool head_tokens;      /* also top/bottom tokens for the top_k heads by
                              score, as the text report shows (default false) */
    /* Additive: the scoring-method comparison (resid_compare_scores) of
     * the prompt's target as "score_compare" in the report. */
    bool compare_scores;   /* run it (default false; costs ~10 forward passes
                              and every FFN neuron's 8 scores) */
    int32_t compare_k;     /* FFN neurons zeroed per method (default 10) */
    uint64_t compare_seed; /* the random neurons' seed (default 1, as
                              `resid ablate --seed`) */
    /* Optional (default NULL): the stages, in order: "forward pass",
     * "contexts", "layer table", "heads", "head x positions and neurons"
     * (the top and bottom lists, ranked together), "query layers",
     * ["scoring-method comparison",] "report" (the last when the JSON is
     * built). */
    resid_progress_fn progress;
    void *progress_user;
    /* Optional (default NULL): direction ranges for the explainer
     * (resid_explain_opts.ranges); the report is the same, found faster. */
    const resid_ranges *ranges;
} resid_explain_request;

resid_explain_request resid_explain_request_defaults(void);

/* The explain report of rq as JSON text (unformatted, no newline) into
 * *json (malloc'd; free()). Runs the forward pass itself. Errors: those of
 * resid_forward (RESID_E_CONTEXT: the prompt is longer than the context)
 * and resid_explainer_new; RESID_E_ARG for an empty prompt or an id out of
 * range; RESID_E_NOMEM. */
resid_status resid_explain_json(const resid_model *m, const resid_explain_request *rq,
                                char **json, resid_error *err);

/* ------------------------------------------------------------------------- */
/* Direction ranges (src/analysis/ranges.c)                                  */
/* ------------------------------------------------------------------------- */

/*
 * For every FFN direction (column k of W_down) and every W_O row of every
 * layer, the largest and smallest entry over the vocabulary of its
 * projection at scale 1, P1 = W_U·(γ_f ⊙ centre(row)) (centre = minus the
 * row's own mean for GPT-2, the identity for Llama), computed by the exact
 * scores' canonical projection. They depend on the model alone (METHOD.md
 * §10), so they are built once (one projection of every row: minutes on
 * GPT-2 small) and kept on disk (8 bytes per row); an explainer given them
 * (resid_explain_opts.ranges) bounds every neuron's LPI from below without
 * projecting it.
 *
 *     resid_ranges *r;
 *     resid_ranges_build(m, NULL, NULL, &r, &err);   // or resid_ranges_load
 *     resid_ranges_save(r, "gpt2.ranges", &err);
 *     eo.ranges = r;  ...  resid_ranges_free(r);
 */

/* Builds the ranges of m. progress (may be NULL) is called once per layer
 * with the stage "FFN and W_O rows". *out is owned by the caller
 * (resid_ranges_free). Errors: RESID_E_UNSUPPORTED for a head geometry the
 * explainer does not take, RESID_E_NOMEM. */
resid_status resid_ranges_build(const resid_model *m, resid_progress_fn progress, void *user,
                                resid_ranges **out, resid_error *err);

/* Writes r to path: a header (magic, version, the model's shape and a
 * fingerprint of its weights), the floats, and a checksum of them
 * (docs/cli.md, `resid ranges`). Errors: RESID_E_IO. */
resid_status resid_ranges_save(const resid_ranges *r, const char *path, resid_error *err);

/* Reads path for model m, checking the magic, the version, the shape, the
 * weights' fingerprint (a hash of m's W_U, final-norm gain and bias, W_down
 * and W_O, ~0.1 s on GPT-2 small) and the checksum. Errors: RESID_E_IO (the
 * file cannot be read), RESID_E_FORMAT (not a ranges file, another version,
 * truncated or corrupt), RESID_E_ARG (the ranges of another model). */
resid_status resid_ranges_load(const resid_model *m, const char *path, resid_ranges **out,
                               resid_error *err);

void resid_ranges_free(resid_ranges *r);

#ifdef __cplusplus
}
#endif
#endif /* RESID_H */
