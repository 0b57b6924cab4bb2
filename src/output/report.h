/*
 * report.h - the explain report (docs/explain-json.md) as a cJSON tree:
 * one prompt run once, every piece of the residual stream at t* scored by
 * its LPI, the layer table, the ranked unit lists with their tokens and the
 * Q1 query layers. Internal (src/); the public entry point is
 * resid_explain_json (include/resid.h, "Reports"). `resid explain` renders
 * its text report from this tree, `resid batch` writes it as JSON lines.
 */
#ifndef RESID_OUTPUT_REPORT_H
#define RESID_OUTPUT_REPORT_H

#include <cjson/cJSON.h>

#include "resid.h"

/* Runs rq->tokens through m (RESID_EXPLAIN_CAPTURE | LOGITS, last position)
 * and builds the report into *out (free with cJSON_Delete). Errors: those of
 * resid_forward (RESID_E_CONTEXT for a prompt longer than the context) and
 * resid_explainer_new; RESID_E_ARG for no tokens or a target/contrast out of
 * [0, V); RESID_E_NOMEM. A failing Q1 analysis is not an error: the report
 * then holds "query": {"error": msg}. Never prints. */
resid_status rs_explain_cjson(const resid_model *m, const resid_explain_request *rq, cJSON **out,
                              resid_error *err);

/* The report's computation kept for more views: the trace, the explainer
 * (unit lens) and the ranked lists. The HTML report and `resid serve`
 * build their extra views (src/output/html.c) from it instead of running
 * the prompt again. */
typedef struct rs_explain_session rs_explain_session;

/* Like rs_explain_cjson, but keeps the computation. all_positions: the
 * trace captures every position (RESID_POS_ALL, for the lens grid and the
 * head/neuron views) instead of the last one; the report is the same. The
 * request (and its tokens) is copied. With all_positions the logits come
 * from a GEMM over every position, so "model_prob" may differ from
 * rs_explain_cjson's in the last float bits (~1e-7 relative); every other
 * field is identical. Errors: those of rs_explain_cjson. */
resid_status rs_explain_session_new(const resid_model *m, const resid_explain_request *rq,
                                    bool all_positions, rs_explain_session **out,
                                    resid_error *err);
/* Builds the report of a session (the tree rs_explain_cjson returns). */
resid_status rs_explain_session_json(rs_explain_session *s, cJSON **out, resid_error *err);
const resid_trace *rs_explain_session_trace(const rs_explain_session *s);
resid_explainer *rs_explain_session_explainer(rs_explain_session *s);
const resid_explain_request *rs_explain_session_request(const rs_explain_session *s);
void rs_explain_session_free(rs_explain_session *s);

/* Token object {"id", "text"[, "bytes"]}: the bytes of id read after prev,
 * sanitised to UTF-8 (a bad byte b becomes U+00bb, NUL becomes U+2400) with
 * "bytes" = their hex when anything was replaced; no "text" without a
 * tokenizer. NULL on out of memory. Same as the CLI's cli_json_token. */
cJSON *rs_report_token(const resid_tokenizer *tok, int32_t prev, int32_t id);
/* The label of query slot j (0 = "emb", 2i+1 = "ai", 2i+2 = "fi") into buf[n]. */
void rs_report_slot_name(int32_t j, char *buf, size_t n);

/* Adds obj[name] = bytes s[0..n) sanitised as above, and "bytes" (their
 * hex) when anything was replaced. false on out of memory. */
bool rs_report_add_text(cJSON *obj, const char *name, const char *s, size_t n);

/* Resolves `text` to exactly one token id, as `resid explain --target`
 * does: a token whose text after `prev` is exactly `text` wins; otherwise
 * the text must encode to one token (SentencePiece: a leading space is the
 * one the encoder adds). RESID_E_ARG "<what> \"...\" is N tokens" else;
 * RESID_E_TOKENIZE for invalid UTF-8. */
resid_status rs_report_resolve_token(const resid_tokenizer *tok, const char *what, const char *text,
                                     int32_t prev, int32_t *out, resid_error *err);

#endif
