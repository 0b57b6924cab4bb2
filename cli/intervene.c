/*
 * intervene.c - units + mode -> a resid_intervention, for `resid ablate`
 * and `resid serve` (see intervene.h).
 */
#include "intervene.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static resid_status nomem(resid_error *err) {
    err->code = RESID_E_NOMEM;
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return RESID_E_NOMEM;
}

bool cli_iv_mean_width(const resid_model *m, const resid_unit *u, int64_t nu, int64_t *width,
                       char *msg, size_t n) {
    *width = 0;
    for (int64_t i = 0; i < nu; i++) {
        const int64_t w = resid_iv_mean_width(m, &u[i]);
        if (!w) {
            char id[64];
            cli_unit_format(&u[i], id, sizeof id);
            snprintf(msg, n,
                     "unit %s names a source position: it has no mean (use zero or "
                     "replace)",
                     id);
            return false;
        }
        *width += w;
    }
    return true;
}

resid_status cli_iv_build(const resid_model *m, resid_intervention *iv, const cli_iv_spec *s,
                          resid_error *err) {
    const int D = resid_model_get_info(m)->d_model;
    resid_status st = RESID_OK;
    if (s->mode == RESID_IV_ADD) {
        for (int64_t i = 0; !st && i < s->n_vecs; i++)
            for (int32_t li = 0; !st && li < s->n_layers; li++)
                st = resid_intervention_add(iv, s->layers[li], s->vecs + (size_t)i * D, s->scale,
                                            s->pos, s->n_pos, err);
        return st;
    }
    int64_t off = 0;
    for (int64_t i = 0; !st && i < s->n_units; i++) {
        const resid_unit *u = &s->units[i];
        switch (s->mode) {
        case RESID_IV_ZERO: st = resid_intervention_zero(iv, u, s->pos, s->n_pos, err); break;
        case RESID_IV_MEAN: {
            const int64_t w = resid_iv_mean_width(m, u);
            st = resid_intervention_mean(iv, u, s->means + off, w, s->pos, s->n_pos, err);
            off += w;
            break;
        }
        default: st = resid_intervention_replace(iv, u, s->pos, s->n_pos, err); break;
        }
    }
    return st;
}

/* The unit's own vector at t* into v[D], from a trace of the last position
 * (tr->n_cap - 1 is t*). w[D] is scratch. */
static resid_status unit_vector(const resid_model *m, const resid_trace *tr, const resid_unit *u,
                                float *v, float *w, resid_error *err) {
    const resid_model_info *in = resid_model_get_info(m);
    const int D = in->d_model, H = in->n_head, dh = in->d_head, T = tr->n_tokens;
    const int ts = tr->n_cap - 1, l = u->layer, kvd = in->n_kv_head * dh;
    const int group = H / in->n_kv_head;
    memset(v, 0, (size_t)D * sizeof *v);
    switch (u->kind) {
    case RESID_UNIT_ATTN_LAYER:
        memcpy(v, tr->attn_out + ((size_t)l * tr->n_cap + ts) * D, (size_t)D * sizeof *v);
        return RESID_OK;
    case RESID_UNIT_FFN_LAYER:
        memcpy(v, tr->ffn_out + ((size_t)l * tr->n_cap + ts) * D, (size_t)D * sizeof *v);
        return RESID_OK;
    case RESID_UNIT_HEAD:
        memcpy(v, tr->head_out + (((size_t)l * tr->n_cap + ts) * H + u->head) * D,
               (size_t)D * sizeof *v);
        return RESID_OK;
    case RESID_UNIT_FFN_NEURON: {
        const float mk = tr->ffn_coef[((size_t)l * tr->n_cap + ts) * in->d_ffn + u->index];
        resid_status st = resid_param_vector(m, RESID_PARAM_FC2, l, u->index, w, err);
        if (st) return st;
        for (int d = 0; d < D; d++)
            v[d] = mk * w[d];
        return RESID_OK;
    }
    default: { /* attention units with sources: Σ α_{t*,j} v_j[n] W_O^h[n,:] */
        const int h0 = u->kind == RESID_UNIT_POS ? 0 : u->head;
        const int h1 = u->kind == RESID_UNIT_POS ? H : u->head + 1;
        for (int h = h0; h < h1; h++)
            for (int n = 0; n < dh; n++) {
                if (u->kind == RESID_UNIT_ATTN_NEURON && n != u->index) continue;
                resid_status st =
                    resid_param_vector(m, RESID_PARAM_WO, l, (int64_t)h * dh + n, w, err);
                if (st) return st;
                double c = 0;
                for (int j = 0; j < T; j++) {
                    if (u->pos >= 0 && j != u->pos) continue;
                    c += (double)tr->attn[(((size_t)l * H + h) * tr->n_cap + ts) * T + j] *
                         tr->values[((size_t)l * T + j) * kvd + (h / group) * dh + n];
                }
                for (int d = 0; d < D; d++)
                    v[d] += (float)(c * w[d]);
            }
        return RESID_OK;
    }
    }
}

resid_status cli_iv_unit_vectors(const resid_model *m, const int32_t *tokens, int32_t n,
                                 const resid_unit *u, int64_t nu, float **vecs, resid_error *err) {
    *vecs = NULL;
    const int D = resid_model_get_info(m)->d_model;
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_CAP_ALL & ~(unsigned)RESID_CAP_LOGITS;
    to.positions = RESID_POS_LAST;
    resid_trace *tr = NULL;
    resid_status st = resid_forward(m, tokens, n, &to, &tr, err);
    if (st) return st;
    float *v = malloc((size_t)(nu ? nu : 1) * D * sizeof *v), *w = malloc((size_t)D * sizeof *w);
    if (!v || !w) st = nomem(err);
    for (int64_t i = 0; !st && i < nu; i++)
        st = unit_vector(m, tr, &u[i], v + (size_t)i * D, w, err);
    free(w);
    resid_trace_free(tr);
    if (st) {
        free(v);
        return st;
    }
    *vecs = v;
    return RESID_OK;
}
