/*
 * ref64.h - an independent float64 reference for the attribution scores,
 * written straight from METHOD.md §2.2 and §3.1-3.2 with naive loops. It
 * shares no code with src/analysis: it reads the model's weights one
 * element at a time (rs_tensor_get / rs_tensor_rows) and the trace's
 * recorded vectors, and does every sum in double. Slow by design; the tests
 * use it on a sample of units.
 */
#ifndef RESID_REF64_H
#define RESID_REF64_H

#include <stdbool.h>

#include "resid.h"

typedef struct ref64 ref64;

/* exact_lens: add W_U·β_f to every context's logits (GPT-2). target: w. */
ref64 *ref64_new(const resid_model *m, const resid_trace *tr, bool exact_lens,
                 int32_t target);
void ref64_free(ref64 *r);

double ref64_scale(const ref64 *r);
/* bs(v)[V] of a D-vector (no bias term). */
void ref64_bs(const ref64 *r, const double *v, double *out);
/* The unit's vector v[D], rebuilt from α, values, W_O, m and W_down. */
void ref64_unit_vector(const ref64 *r, const resid_unit *u, double *v);
/* The unit's context x[D]: x_in[l][t*] or x_mid[l][t*]. */
void ref64_unit_context(const ref64 *r, const resid_unit *u, double *x);
/* log p(w | x) in the lens (exact lens: plus W_U·β_f). */
double ref64_logp(const ref64 *r, const double *x);
/* log p(w | x) of the unit's context. */
double ref64_context_logp(const ref64 *r, const resid_unit *u);
/* LPI(v; x) of the unit, bs_w(v), and the coefficient (NAN if none). */
double ref64_lpi(const ref64 *r, const resid_unit *u);
double ref64_bs_target(const ref64 *r, const resid_unit *u);
double ref64_coef(const ref64 *r, const resid_unit *u);

#endif
