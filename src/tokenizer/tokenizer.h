/*
 * tokenizer.h - constructors of resid_tokenizer from each source. The
 * public calls (encode, decode) are declared in resid.h.
 */
#ifndef RESID_TOKENIZER_H
#define RESID_TOKENIZER_H

#include "core/util.h"
#include "format/gguf.h"

/* From GGUF metadata (tokenizer.ggml.*). model "gpt2" -> byte-level BPE
 * (pre-tokenizer regex chosen from tokenizer.ggml.pre), "llama" -> SPM. */
resid_status rs_tokenizer_from_gguf(const rs_gguf *g, resid_tokenizer **out,
                                    resid_error *err);
/* llama2.c tokenizer.bin. */
resid_status rs_tokenizer_from_llama2c(const char *path, resid_tokenizer **out,
                                       resid_error *err);
/* HF tokenizer.json (BPE with ByteLevel pre-tokenizer, or SentencePiece-style
 * BPE with byte fallback). */
resid_status rs_tokenizer_from_hf_json(const char *path, resid_tokenizer **out,
                                       resid_error *err);
/* GPT-2 vocab.json + merges.txt. */
resid_status rs_tokenizer_from_vocab_merges(const char *vocab_path,
                                            const char *merges_path,
                                            resid_tokenizer **out,
                                            resid_error *err);

/* The GPT-2 pre-tokenizer regex (PCRE2 syntax). */
extern const char *const RS_REGEX_GPT2;
/* The Llama-3 pre-tokenizer regex. */
extern const char *const RS_REGEX_LLAMA3;

#endif
