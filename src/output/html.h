/*
 * html.h - the self-contained HTML report of `resid explain --html FILE`
 * and the extra views the web front end shows beside the explain JSON
 * (docs/explain-json.md): the lens grid, per-head details and per-neuron
 * query details. Internal (src/); used by the CLI (`explain --html`,
 * `resid serve`).
 *
 * The report is web/index.html with web/app.css and web/app.js inlined and
 * the JSON embedded in <script type="application/json" id="resid-data">,
 * every '<', '>' and '&' in it written as \u003c, \u003e, \u0026 (they can
 * occur only inside JSON strings), so no "</script>" or "<!--" can end or
 * confuse the data block. It opens from disk with no network access.
 */
#ifndef RESID_OUTPUT_HTML_H
#define RESID_OUTPUT_HTML_H

#include <stdio.h>

#include <cjson/cJSON.h>

#include "output/report.h"
#include "resid.h"

/* A prompt analysed once more with every position captured, for the views
 * the explain JSON lacks. */
typedef struct rs_web_ctx rs_web_ctx;

typedef struct rs_web_opts {
    int32_t n_head_detail; /* heads given a position breakdown (best by the
                              report's score); default 12; < 0: auto */
    int32_t n_tokens;      /* top/bottom tokens per head (default 5) */
    int32_t n_query;       /* query neurons listed per neuron (default 8) */
    int32_t grid_positions; /* lens-grid columns: the last N positions (0 =
                               all; default 0; < 0: auto). Each column
                               but t*'s costs 2L vocabulary projections. */
    int32_t n_neuron_detail; /* neurons given details (keys, query neurons):
                                the first N of each neuron list (default
                                INT32_MAX; < 0: auto). Each costs its
                                layer·N·D multiply-adds. */
    /* rs_web_extras' stages, steps 1-3 of 3: "lens grid", "head details",
     * "neuron details" (default NULL: none). */
    resid_progress_fn progress;
    void *progress_user;
} rs_web_opts;

rs_web_opts rs_web_defaults(void);

/* Runs ids[0..n) capturing every position (RESID | ATTN | VALUES | COEF)
 * and builds an explainer for target/contrast (-1: none; target -1: the
 * model's argmax) in `unit_lens` (PAPER or EXACT). `m` must outlive the
 * context. */
resid_status rs_web_ctx_new(const resid_model *m, const int32_t *ids, int32_t n, int32_t target,
                            int32_t contrast, resid_lens unit_lens, rs_web_ctx **out,
                            resid_error *err);
void rs_web_ctx_free(rs_web_ctx *c);

/* A context on an explain session's trace and explainer (no second
 * forward pass): the session must capture every position
 * (rs_explain_session_new with all_positions; RESID_E_ARG else) and must
 * outlive the context. */
resid_status rs_web_ctx_from_session(const resid_model *m, rs_explain_session *s,
                                     rs_web_ctx **out, resid_error *err);

/* {"lens", "target", "pos_first", "rows": [{"name", "layer", "kind":
 * "in"|"mid"|"out", "cells": [{"p", "rank", "top1": token, "p_top1"}]}]}
 * rows x_in[0], x_mid[0], x_in[1], ..., x_mid[L-1], x_L (2L+1). */
resid_status rs_web_lens_grid(rs_web_ctx *c, resid_lens lens, const rs_web_opts *o, cJSON **out,
                              resid_error *err);

/* One head: {"id", "layer", "head", "lpi", "bs_target", "attention": [T]
 * (α from t* to every source), "positions": [{"pos", "source", "coef",
 * "lpi", "prob_inc", "bs_target"[, "contrast"]}], "top_tokens",
 * "bottom_tokens"}. */
resid_status rs_web_head(rs_web_ctx *c, int32_t layer, int32_t head, const rs_web_opts *o,
                         cJSON **out, resid_error *err);

/* A neuron's query details (METHOD.md §5): unit kind FFN_NEURON (l,k) or
 * ATTN_NEURON (l,h,n,j). {"id", "kind", "pos", "keys": [{"key": "fc1" |
 * "up" | "gate" | "wv", "pre", "mean_term", "bias_term", "slots":
 * [{"slot", "share"}]}], "query_neurons": [{"id", "layer", "neuron",
 * "coef", "contribution"}]} where contribution = m_i·(fc2_i·K)/σ is lower
 * FFN neuron i's part of the first key's pre-activation share. */
resid_status rs_web_neuron(rs_web_ctx *c, const resid_unit *u, const rs_web_opts *o, cJSON **out,
                           resid_error *err);

/* The page's size when grid_positions, n_head_detail or n_neuron_detail is
 * < 0 (auto): each view whole when it costs at most this many
 * multiply-adds (V·D per vocabulary projection; small models), else the
 * free lens-grid column (t*), the best head's breakdown and the first
 * RS_WEB_AUTO_NEURONS neurons of each list. */
#define RS_WEB_CHEAP_MACS   ((double)(1 << 30))
#define RS_WEB_AUTO_NEURONS 10

/* Resolves o's auto fields (< 0) for a report of T tokens whose listed
 * neurons' query analysis costs neuron_macs (Σ layer·N·D). */
void rs_web_auto(rs_web_opts *o, const resid_model_info *info, int32_t T, double neuron_macs);

/* Adds "lens_grid" (in the report's "lens"), "head_details" (every head's
 * attention row; positions and tokens for the best n_head_detail heads),
 * and "neuron_details" (one per entry of "ffn_neurons" / "attn_neurons",
 * keyed by id) to an explain report. */
resid_status rs_web_extras(rs_web_ctx *c, cJSON *report, const rs_web_opts *o, resid_error *err);

/* Like rs_web_extras, but first builds the context from the report itself
 * ("tokens" ids, "target", "contrast", "unit_lens"). */
resid_status rs_web_extras_for(const resid_model *m, cJSON *report, const rs_web_opts *o,
                               resid_error *err);

/* Writes the self-contained report for `report` to f / to path. */
resid_status rs_html_write(FILE *f, const cJSON *report, resid_error *err);
resid_status rs_html_write_file(const char *path, const cJSON *report, resid_error *err);

/* The escaped JSON text of the data block (malloc'd), for tests. */
char *rs_html_json_escaped(const cJSON *report);

/* Token object {"id", "text"[, "bytes"]} of token id after prev (the text
 * sanitised to UTF-8 as the CLI does: bad bytes as U+0080..U+00FF). */
cJSON *rs_web_token(const resid_tokenizer *tok, int32_t prev, int32_t id);

#endif
