/*
 * intervene.h - what `resid ablate` and `resid serve` (/api/ablate) share
 * to turn a unit list and a mode into a resid_intervention: the MEAN widths
 * check, the edits of each mode, and ADD's default vectors (each unit's own
 * vector at the last position). Thin wrappers of the intervention API in
 * resid.h; like the library they print nothing and fill a resid_error.
 */
#ifndef RESID_CLI_INTERVENE_H
#define RESID_CLI_INTERVENE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resid.h"

/* The edits of one request. */
typedef struct cli_iv_spec {
    resid_iv_mode mode;
    const resid_unit *units; /* ZERO, MEAN, REPLACE: one edit per unit */
    int64_t n_units;
    const int32_t *pos; /* query positions; NULL/0: each kind's default */
    int32_t n_pos;
    const float *means; /* MEAN: the units' values concatenated in order
                         * (resid_unit_means' layout) */
    const float *vecs;  /* ADD: n_vecs vectors [n_vecs][d_model] */
    int64_t n_vecs;
    double scale;          /* ADD: multiplies each vector */
    const int32_t *layers; /* ADD: residual inputs x_in[l], l in [0, L] */
    int32_t n_layers;
} cli_iv_spec;

/* MEAN: *width = Σ resid_iv_mean_width over the units. false with msg[n]
 * naming the unit when one names a source position (no position-free
 * mean). */
bool cli_iv_mean_width(const resid_model *m, const resid_unit *u, int64_t nu, int64_t *width,
                       char *msg, size_t n);

/* Adds the edits of s to iv (REPLACE: the caller sets the clean prompt
 * with resid_intervention_set_clean). ADD adds every vector at every
 * layer. Returns the first library error. */
resid_status cli_iv_build(const resid_model *m, resid_intervention *iv, const cli_iv_spec *s,
                          resid_error *err);

/* ADD without a given vector: *vecs (malloc'd, [nu][d_model]) receives each
 * unit's own output vector at the last position t* of tokens[0..n): aL, fL
 * and heads their output there, an FFN neuron m_k·fc2_k, attention units
 * with sources Σ_j α_{t*,j} v_j[n] W_O^h[n,:] over their sources. One
 * forward pass. */
resid_status cli_iv_unit_vectors(const resid_model *m, const int32_t *tokens, int32_t n,
                                 const resid_unit *u, int64_t nu, float **vecs, resid_error *err);

#endif
