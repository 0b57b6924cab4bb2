/*
 * intervene.c - interventions during the forward pass (zero / mean /
 * replace / add), the target's statistics before and after, random
 * baselines, the scoring-method comparison of METHOD.md §3.5 and the
 * additivity check of §3.4. Public API: the "Interventions and
 * verification" section of resid.h.
 *
 * Everything is done through the forward pass hooks: an intervention is a
 * list of edits, and one hook callback applies every edit whose hook point
 * and layer match the event. REPLACE first runs the clean prompt with the
 * same callback in "record" mode, which copies each edited activation at
 * every position instead of changing it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis.h"
#include "core/util.h"

/* ---------------------------------------------------------------------- */
/* Modes                                                                  */
/* ---------------------------------------------------------------------- */

static const char *const mode_names[] = {"zero", "mean", "replace", "add"};

const char *resid_iv_mode_name(resid_iv_mode mode) {
    return (unsigned)mode < 4 ? mode_names[mode] : "?";
}

resid_status resid_iv_mode_parse(const char *s, resid_iv_mode *out, resid_error *err) {
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, mode_names[i])) {
            *out = (resid_iv_mode)i;
            return RESID_OK;
        }
    return rs_err(err, RESID_E_ARG, "mode '%s' unknown (zero, mean, replace or add)", s ? s : "");
}

/* ---------------------------------------------------------------------- */
/* The intervention                                                       */
/* ---------------------------------------------------------------------- */

/* One edit. `width` is the number of floats of the unit's activation at one
 * query position (what REPLACE records and MEAN writes). */
typedef struct iv_edit {
    resid_iv_mode mode;
    resid_unit u;      /* unused for ADD */
    int32_t add_layer; /* ADD: 0..L */
    int32_t *pos;      /* query positions, NULL = the kind's default */
    int32_t n_pos;
    int64_t width;
    float *value; /* MEAN [width]; ADD [D], already scaled */
    float *rec;   /* REPLACE / record: [rec_T][width] */
    /* per run */
    bool *sel;    /* [T] selected query positions */
    float *alpha; /* [T] α^h_{t,j} (attention neuron with a source) */
    float vj;     /* v_j[n] (same) */
} iv_edit;

struct resid_intervention {
    const resid_model *m;
    iv_edit *e;
    int32_t n, cap;
    int32_t *clean;
    int32_t n_clean;
    int32_t rec_T; /* length the records are for; 0: not recorded */
};

resid_status resid_intervention_new(const resid_model *m, resid_intervention **out,
                                    resid_error *err) {
    *out = NULL;
    if (!m) return rs_err(err, RESID_E_ARG, "intervention: model is required");
    resid_intervention *iv = calloc(1, sizeof *iv);
    if (!iv) return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
    iv->m = m;
    *out = iv;
    return RESID_OK;
}

static void edit_run_free(iv_edit *e) {
    free(e->sel), free(e->alpha);
    e->sel = NULL, e->alpha = NULL;
}

void resid_intervention_free(resid_intervention *iv) {
    if (!iv) return;
    for (int32_t i = 0; i < iv->n; i++) {
        iv_edit *e = &iv->e[i];
        free(e->pos), free(e->value), free(e->rec);
        edit_run_free(e);
    }
    free(iv->e);
    free(iv->clean);
    free(iv);
}

int32_t resid_intervention_count(const resid_intervention *iv) {
    return iv ? iv->n : 0;
}

/* Width of a unit's activation at one position (see the header). */
static int64_t act_width(const rs_hparams *hp, const resid_unit *u) {
    switch (u->kind) {
    case RESID_UNIT_FFN_NEURON:
    case RESID_UNIT_HEAD_POS:
    case RESID_UNIT_ATTN_NEURON: return 1;
    case RESID_UNIT_HEAD: return hp->d_head;
    case RESID_UNIT_POS: return hp->n_head;
    case RESID_UNIT_ATTN_LAYER:
    case RESID_UNIT_FFN_LAYER: return hp->d_model;
    default: return 0;
    }
}

/* Kinds that name a source position: default query position t*, no mean. */
static bool has_source(const resid_unit *u) {
    return u->kind == RESID_UNIT_HEAD_POS || u->kind == RESID_UNIT_POS ||
           (u->kind == RESID_UNIT_ATTN_NEURON && u->pos >= 0);
}

int64_t resid_iv_mean_width(const resid_model *m, const resid_unit *u) {
    if (!m || !u || has_source(u)) return 0;
    return act_width(&m->hp, u);
}

/* Checks a unit against the model (positions are checked at run time). */
static resid_status check_unit(const rs_hparams *hp, const resid_unit *u, resid_error *err) {
    char id[64];
    resid_unit_format(u, id, sizeof id);
    if ((unsigned)u->kind >= RESID_UNIT_KIND_COUNT)
        return rs_err(err, RESID_E_ARG, "intervention: unit kind %d unknown", (int)u->kind);
    if (u->layer < 0 || u->layer >= hp->n_layer)
        return rs_err(err, RESID_E_ARG, "unit %s: layer %d out of range (model has %d)", id,
                      u->layer, hp->n_layer);
    bool head = u->kind == RESID_UNIT_HEAD || u->kind == RESID_UNIT_HEAD_POS ||
                u->kind == RESID_UNIT_ATTN_NEURON;
    if (head && (u->head < 0 || u->head >= hp->n_head))
        return rs_err(err, RESID_E_ARG, "unit %s: head %d out of range (model has %d)", id, u->head,
                      hp->n_head);
    if (u->kind == RESID_UNIT_ATTN_NEURON && (u->index < 0 || u->index >= hp->d_head))
        return rs_err(err, RESID_E_ARG, "unit %s: head dimension %d out of range (d_head is %d)",
                      id, u->index, hp->d_head);
    if (u->kind == RESID_UNIT_FFN_NEURON && (u->index < 0 || u->index >= hp->d_ffn))
        return rs_err(err, RESID_E_ARG, "unit %s: FFN neuron %d out of range (layer has %d)", id,
                      u->index, hp->d_ffn);
    if ((u->kind == RESID_UNIT_HEAD_POS || u->kind == RESID_UNIT_POS) && u->pos < 0)
        return rs_err(err, RESID_E_ARG, "unit %s: source position %d is negative", id, u->pos);
    if (u->kind == RESID_UNIT_ATTN_NEURON && u->pos < -1)
        return rs_err(err, RESID_E_ARG, "unit %s: source position %d is negative", id, u->pos);
    return RESID_OK;
}

/* Appends an edit; copies pos[n_pos]. */
static resid_status push_edit(resid_intervention *iv, const iv_edit *proto, const int32_t *pos,
                              int32_t n_pos, resid_error *err) {
    if (n_pos < 0 || (n_pos > 0 && !pos))
        return rs_err(err, RESID_E_ARG, "intervention: bad position list");
    for (int32_t i = 0; i < n_pos; i++)
        if (pos[i] < 0)
            return rs_err(err, RESID_E_ARG, "intervention: position %d is negative", pos[i]);
    if (iv->n == iv->cap) {
        int32_t cap = iv->cap ? 2 * iv->cap : 8;
        iv_edit *ne = realloc(iv->e, (size_t)cap * sizeof *ne);
        if (!ne) return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
        iv->e = ne, iv->cap = cap;
    }
    iv_edit e = *proto;
    e.pos = NULL, e.n_pos = 0, e.rec = NULL, e.sel = NULL, e.alpha = NULL;
    if (n_pos > 0) {
        if (!(e.pos = malloc((size_t)n_pos * sizeof *e.pos)))
            return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
        memcpy(e.pos, pos, (size_t)n_pos * sizeof *e.pos);
        e.n_pos = n_pos;
    }
    iv->e[iv->n++] = e;
    iv->rec_T = 0; /* records (if any) are redone on the next run */
    return RESID_OK;
}

static resid_status add_unit_edit(resid_intervention *iv, resid_iv_mode mode, const resid_unit *u,
                                  const float *value, const int32_t *pos, int32_t n_pos,
                                  resid_error *err) {
    if (!iv || !u) return rs_err(err, RESID_E_ARG, "intervention: iv and unit are required");
    resid_status st = check_unit(&iv->m->hp, u, err);
    if (st) return st;
    iv_edit e = {.mode = mode, .u = *u, .add_layer = -1, .width = act_width(&iv->m->hp, u)};
    if (value) {
        if (!(e.value = malloc((size_t)e.width * sizeof(float))))
            return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
        memcpy(e.value, value, (size_t)e.width * sizeof(float));
    }
    if ((st = push_edit(iv, &e, pos, n_pos, err))) free(e.value);
    return st;
}

resid_status resid_intervention_zero(resid_intervention *iv, const resid_unit *u,
                                     const int32_t *pos, int32_t n_pos, resid_error *err) {
    return add_unit_edit(iv, RESID_IV_ZERO, u, NULL, pos, n_pos, err);
}

resid_status resid_intervention_mean(resid_intervention *iv, const resid_unit *u, const float *mean,
                                     int64_t n_mean, const int32_t *pos, int32_t n_pos,
                                     resid_error *err) {
    if (!iv || !u || !mean)
        return rs_err(err, RESID_E_ARG, "intervention: iv, unit and mean are required");
    char id[64];
    resid_unit_format(u, id, sizeof id);
    int64_t w = resid_iv_mean_width(iv->m, u);
    if (w == 0)
        return rs_err(err, RESID_E_UNSUPPORTED,
                      "unit %s: a %s names a source position and has no position-free mean "
                      "(use zero or replace)",
                      id, resid_unit_kind_name(u->kind));
    if (n_mean != w)
        return rs_err(err, RESID_E_ARG, "unit %s: mean has %lld values, expected %lld", id,
                      (long long)n_mean, (long long)w);
    return add_unit_edit(iv, RESID_IV_MEAN, u, mean, pos, n_pos, err);
}

resid_status resid_intervention_replace(resid_intervention *iv, const resid_unit *u,
                                        const int32_t *pos, int32_t n_pos, resid_error *err) {
    return add_unit_edit(iv, RESID_IV_REPLACE, u, NULL, pos, n_pos, err);
}

resid_status resid_intervention_set_clean(resid_intervention *iv, const int32_t *tokens, int32_t n,
                                          resid_error *err) {
    if (!iv || !tokens || n < 1)
        return rs_err(err, RESID_E_ARG, "intervention: the clean prompt is empty");
    int32_t *c = malloc((size_t)n * sizeof *c);
    if (!c) return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
    memcpy(c, tokens, (size_t)n * sizeof *c);
    free(iv->clean);
    iv->clean = c, iv->n_clean = n, iv->rec_T = 0;
    return RESID_OK;
}

resid_status resid_intervention_add(resid_intervention *iv, int32_t layer, const float *v,
                                    double scale, const int32_t *pos, int32_t n_pos,
                                    resid_error *err) {
    if (!iv || !v) return rs_err(err, RESID_E_ARG, "intervention: iv and vector are required");
    const rs_hparams *hp = &iv->m->hp;
    if (layer < 0 || layer > hp->n_layer)
        return rs_err(err, RESID_E_ARG,
                      "steering layer %d out of range [0, %d] (%d = the final residual)", layer,
                      hp->n_layer, hp->n_layer);
    if (!isfinite(scale)) return rs_err(err, RESID_E_ARG, "steering scale is not finite");
    iv_edit e = {.mode = RESID_IV_ADD, .add_layer = layer, .width = hp->d_model};
    e.u.kind = RESID_UNIT_KIND_COUNT;
    if (!(e.value = malloc((size_t)hp->d_model * sizeof(float))))
        return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
    for (int d = 0; d < hp->d_model; d++) {
        e.value[d] = (float)(scale * v[d]);
        if (!isfinite(e.value[d])) {
            free(e.value);
            return rs_err(err, RESID_E_ARG, "steering vector: entry %d is not finite", d);
        }
    }
    resid_status st = push_edit(iv, &e, pos, n_pos, err);
    if (st) free(e.value);
    return st;
}

/* ---------------------------------------------------------------------- */
/* The hook                                                               */
/* ---------------------------------------------------------------------- */

typedef struct iv_run {
    resid_intervention *iv; /* NULL: no edits */
    const rs_hparams *hp;
    int32_t T;
    bool record; /* record REPLACE activations instead of editing */
    float *x_L;  /* [D]: row t* of x_in[L] after the edits */
} iv_run;

/* Applies (or records) one activation a[w] of edit e at query position t;
 * off = offset of a inside the recorded row (POS records H values). */
static void handle(const iv_run *r, iv_edit *e, int32_t t, int64_t off, float *a, int64_t w) {
    if (r->record) {
        memcpy(e->rec + (size_t)t * e->width + off, a, (size_t)w * sizeof(float));
        return;
    }
    switch (e->mode) {
    case RESID_IV_ZERO: memset(a, 0, (size_t)w * sizeof(float)); break;
    case RESID_IV_MEAN: memcpy(a, e->value + off, (size_t)w * sizeof(float)); break;
    case RESID_IV_REPLACE:
        memcpy(a, e->rec + (size_t)t * e->width + off, (size_t)w * sizeof(float));
        break;
    default: break;
    }
}

static void iv_hook(void *user, const resid_hook_event *ev) {
    iv_run *r = user;
    const rs_hparams *hp = r->hp;
    const int dh = hp->d_head, qd = hp->n_head * hp->d_head, D = hp->d_model;
    const int kvd = hp->n_kv_head * dh, group = hp->n_head / hp->n_kv_head;
    const int32_t nr = ev->n_rows;
    resid_intervention *iv = r->iv;
    for (int32_t k = 0; iv && k < iv->n; k++) {
        iv_edit *e = &iv->e[k];
        if (r->record && e->mode != RESID_IV_REPLACE) continue;
        const resid_unit *u = &e->u;
        if (e->mode == RESID_IV_ADD) {
            if (ev->point != RESID_HOOK_RESID_IN || ev->layer != e->add_layer) continue;
            for (int32_t i = 0; i < nr; i++)
                if (e->sel[ev->pos0 + i]) {
                    float *x = ev->data + (size_t)i * D;
                    for (int d = 0; d < D; d++)
                        x[d] += e->value[d];
                }
            continue;
        }
        if (ev->layer != u->layer) continue;
        switch (u->kind) {
        case RESID_UNIT_FFN_NEURON:
            if (ev->point == RESID_HOOK_FFN_COEF)
                for (int32_t i = 0; i < nr; i++)
                    if (e->sel[ev->pos0 + i])
                        handle(r, e, ev->pos0 + i, 0, ev->data + (size_t)i * hp->d_ffn + u->index,
                               1);
            break;
        case RESID_UNIT_HEAD:
            if (ev->point == RESID_HOOK_ATTN_MIX)
                for (int32_t i = 0; i < nr; i++)
                    if (e->sel[ev->pos0 + i])
                        handle(r, e, ev->pos0 + i, 0,
                               ev->data + (size_t)i * qd + (size_t)u->head * dh, dh);
            break;
        case RESID_UNIT_ATTN_LAYER:
        case RESID_UNIT_FFN_LAYER: {
            resid_hook_point p =
                u->kind == RESID_UNIT_ATTN_LAYER ? RESID_HOOK_ATTN_OUT : RESID_HOOK_FFN_OUT;
            if (ev->point == p)
                for (int32_t i = 0; i < nr; i++)
                    if (e->sel[ev->pos0 + i])
                        handle(r, e, ev->pos0 + i, 0, ev->data + (size_t)i * D, D);
            break;
        }
        case RESID_UNIT_HEAD_POS:
        case RESID_UNIT_POS:
            if (ev->point == RESID_HOOK_ATTN_WEIGHTS) {
                int h0 = u->kind == RESID_UNIT_POS ? 0 : u->head;
                int h1 = u->kind == RESID_UNIT_POS ? hp->n_head : u->head + 1;
                for (int32_t i = 0; i < nr; i++) {
                    int32_t t = ev->pos0 + i;
                    if (!e->sel[t] || u->pos > t) continue;
                    for (int h = h0; h < h1; h++)
                        handle(r, e, t, u->kind == RESID_UNIT_POS ? h : 0,
                               ev->data + ((size_t)h * nr + i) * ev->n_ctx + u->pos, 1);
                }
            }
            break;
        case RESID_UNIT_ATTN_NEURON:
            if (u->pos < 0) { /* mix column h·d_h+n at every source */
                if (ev->point == RESID_HOOK_ATTN_MIX)
                    for (int32_t i = 0; i < nr; i++)
                        if (e->sel[ev->pos0 + i])
                            handle(r, e, ev->pos0 + i, 0,
                                   ev->data + (size_t)i * qd + (size_t)u->head * dh + u->index, 1);
                break;
            }
            /* The contribution α_{t,j}·v_j[n]: capture v_j and α (after any
             * α edit made earlier in this list), change the mix. */
            if (ev->point == RESID_HOOK_VALUES) {
                int32_t j = u->pos - ev->pos0;
                if (j >= 0 && j < nr)
                    e->vj = ev->data[(size_t)j * kvd + (size_t)(u->head / group) * dh + u->index];
            } else if (ev->point == RESID_HOOK_ATTN_WEIGHTS) {
                for (int32_t i = 0; i < nr; i++) {
                    int32_t t = ev->pos0 + i;
                    e->alpha[t] = u->pos <= t
                                      ? ev->data[((size_t)u->head * nr + i) * ev->n_ctx + u->pos]
                                      : 0.0f;
                }
            } else if (ev->point == RESID_HOOK_ATTN_MIX) {
                for (int32_t i = 0; i < nr; i++) {
                    int32_t t = ev->pos0 + i;
                    if (!e->sel[t]) continue;
                    float c = e->alpha[t] * e->vj;
                    float *a = ev->data + (size_t)i * qd + (size_t)u->head * dh + u->index;
                    if (r->record) {
                        e->rec[t] = c;
                    } else if (e->mode == RESID_IV_ZERO) {
                        *a -= c;
                    } else if (e->mode == RESID_IV_REPLACE) {
                        float cl = e->rec[t];
                        if (cl != c) *a += cl - c; /* equal: bit-exact no-op */
                    }
                }
            }
            break;
        default: break;
        }
    }
    if (ev->point == RESID_HOOK_RESID_IN && ev->layer == hp->n_layer && r->x_L &&
        ev->pos0 + nr == r->T)
        memcpy(r->x_L, ev->data + (size_t)(nr - 1) * D, (size_t)D * sizeof(float));
}

/* Builds each edit's per-run state for a prompt of T tokens; `record`
 * selects every position of the REPLACE edits. Checks positions. */
static resid_status prepare_run(resid_intervention *iv, int32_t T, bool record, resid_error *err) {
    for (int32_t k = 0; iv && k < iv->n; k++) {
        iv_edit *e = &iv->e[k];
        edit_run_free(e);
        char id[64];
        if (e->mode == RESID_IV_ADD)
            snprintf(id, sizeof id, "steering at layer %d", e->add_layer);
        else
            resid_unit_format(&e->u, id, sizeof id);
        if (e->mode != RESID_IV_ADD && has_source(&e->u) && e->u.pos >= T)
            return rs_err(err, RESID_E_ARG,
                          "unit %s: source position %d out of range (prompt has %d tokens)", id,
                          e->u.pos, T);
        if (!(e->sel = calloc((size_t)T, sizeof *e->sel)) ||
            !(e->alpha = calloc((size_t)T, sizeof *e->alpha)))
            return rs_err(err, RESID_E_NOMEM, "intervention: out of memory");
        if (record) {
            for (int32_t t = 0; t < T; t++)
                e->sel[t] = true;
        } else if (e->n_pos > 0) {
            for (int32_t i = 0; i < e->n_pos; i++) {
                if (e->pos[i] >= T)
                    return rs_err(err, RESID_E_ARG,
                                  "%s: position %d out of range (prompt has %d tokens)", id,
                                  e->pos[i], T);
                e->sel[e->pos[i]] = true;
            }
        } else if (e->mode == RESID_IV_ADD || has_source(&e->u)) {
            e->sel[T - 1] = true;
        } else {
            for (int32_t t = 0; t < T; t++)
                e->sel[t] = true;
        }
    }
    return RESID_OK;
}

/* One forward pass with the hook; x_L[D] and logits[V] of t*. */
static resid_status run_once(const resid_model *m, resid_intervention *iv, const int32_t *tokens,
                             int32_t n, bool record, float *x_L, float *logits, resid_error *err) {
    resid_status st = prepare_run(iv, n, record, err);
    if (st) return st;
    iv_run r = {.iv = iv, .hp = &m->hp, .T = n, .record = record, .x_L = x_L};
    resid_trace_opts to = resid_trace_defaults();
    to.capture = logits ? RESID_CAP_LOGITS : 0;
    to.positions = RESID_POS_LAST;
    to.hook = iv_hook;
    to.hook_user = &r;
    resid_trace *tr;
    if ((st = resid_forward(m, tokens, n, &to, &tr, err))) return st;
    if (logits)
        memcpy(logits, tr->logits + (size_t)(tr->n_cap - 1) * m->hp.n_vocab,
               (size_t)m->hp.n_vocab * sizeof(float));
    resid_trace_free(tr);
    return RESID_OK;
}

/* Records the clean activations of the REPLACE edits for prompts of T
 * tokens (once per T). */
static resid_status ensure_records(const resid_model *m, resid_intervention *iv, int32_t T,
                                   resid_error *err) {
    bool any = false;
    for (int32_t k = 0; k < iv->n; k++)
        any |= iv->e[k].mode == RESID_IV_REPLACE;
    if (!any || iv->rec_T == T) return RESID_OK;
    if (!iv->clean) return rs_err(err, RESID_E_ARG, "replace: no clean prompt given");
    if (iv->n_clean != T)
        return rs_err(err, RESID_E_ARG,
                      "replace: the clean prompt has %d tokens but the run has %d (they must "
                      "be the same length)",
                      iv->n_clean, T);
    for (int32_t k = 0; k < iv->n; k++) {
        iv_edit *e = &iv->e[k];
        if (e->mode != RESID_IV_REPLACE) continue;
        free(e->rec);
        size_t sz;
        if (!rs_mul_size((size_t)T, (size_t)e->width, &sz) || !(e->rec = calloc(sz, sizeof(float))))
            return rs_err(err, RESID_E_NOMEM, "replace: out of memory");
    }
    resid_status st = run_once(m, iv, iv->clean, T, true, NULL, NULL, err);
    if (!st) iv->rec_T = T;
    return st;
}

/* ---------------------------------------------------------------------- */
/* Target statistics                                                      */
/* ---------------------------------------------------------------------- */

/* log-softmax at w, 0-based rank of w (ties: lower id first). */
static void dist_stats(const float *z, int32_t V, int32_t w, double *logp, int32_t *rank) {
    double mx = -INFINITY;
    for (int32_t t = 0; t < V; t++)
        if (z[t] > mx) mx = z[t];
    double sum = 0;
    int32_t rk = 0;
    for (int32_t t = 0; t < V; t++) {
        sum += exp((double)z[t] - mx);
        if (z[t] > z[w] || (z[t] == z[w] && t < w)) rk++;
    }
    *logp = (double)z[w] - mx - log(sum);
    *rank = rk;
}

resid_status resid_target_stats_from(const resid_model *m, const float *x_L, const float *logits,
                                     int32_t target, resid_target_stats *out, resid_error *err) {
    if (!m || !x_L || !logits || !out)
        return rs_err(err, RESID_E_ARG, "target stats: model, x_L, logits and out are required");
    const int32_t V = m->hp.n_vocab, D = m->hp.d_model;
    if (target < 0 || target >= V)
        return rs_err(err, RESID_E_ARG, "target token %d out of range [0, %d)", target, V);
    double mean = 0, ss = 0;
    if (m->hp.arch == RESID_ARCH_GPT2) {
        for (int d = 0; d < D; d++)
            mean += x_L[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++)
        ss += (x_L[d] - mean) * (x_L[d] - mean);
    double s = sqrt(ss / D + (double)m->hp.norm_eps);
    float *bs = malloc((size_t)V * sizeof(float));
    if (!bs) return rs_err(err, RESID_E_NOMEM, "target stats: out of memory");
    resid_status st = resid_lens_apply(m, RESID_LENS_PAPER, s, x_L, bs, err);
    if (!st) {
        dist_stats(bs, V, target, &out->logprob, &out->rank);
        out->prob = exp(out->logprob);
        out->rr = 1.0 / (out->rank + 1.0);
        dist_stats(logits, V, target, &out->model_logprob, &out->model_rank);
        out->model_prob = exp(out->model_logprob);
        out->model_rr = 1.0 / (out->model_rank + 1.0);
    }
    free(bs);
    return st;
}

static int32_t argmax(const float *z, int32_t V) {
    int32_t b = 0;
    for (int32_t t = 1; t < V; t++)
        if (z[t] > z[b]) b = t;
    return b;
}

resid_status resid_intervention_run(const resid_model *m, resid_intervention *iv,
                                    const int32_t *tokens, int32_t n, int32_t target,
                                    resid_target_stats *out, int32_t *target_out, float *x_L,
                                    float *logits, resid_error *err) {
    if (!m || !tokens || !out)
        return rs_err(err, RESID_E_ARG, "intervention run: model, tokens and out are required");
    if (iv && iv->m != m)
        return rs_err(err, RESID_E_ARG, "intervention run: the intervention is for another model");
    const int32_t V = m->hp.n_vocab, D = m->hp.d_model;
    if (target >= V)
        return rs_err(err, RESID_E_ARG, "target token %d out of range [0, %d)", target, V);
    float *xl = malloc((size_t)D * sizeof(float));
    float *lg = malloc((size_t)V * sizeof(float));
    resid_status st = RESID_OK;
    if (!xl || !lg) st = rs_err(err, RESID_E_NOMEM, "intervention run: out of memory");
    bool edits = iv && iv->n > 0;
    if (!st && target < 0 && edits) {
        st = run_once(m, NULL, tokens, n, false, xl, lg, err);
        if (!st) target = argmax(lg, V);
    }
    if (!st && edits) st = ensure_records(m, iv, n, err);
    if (!st) st = run_once(m, edits ? iv : NULL, tokens, n, false, xl, lg, err);
    if (!st && target < 0) target = argmax(lg, V);
    if (!st) st = resid_target_stats_from(m, xl, lg, target, out, err);
    if (!st) {
        if (target_out) *target_out = target;
        if (x_L) memcpy(x_L, xl, (size_t)D * sizeof(float));
        if (logits) memcpy(logits, lg, (size_t)V * sizeof(float));
    }
    free(xl), free(lg);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Means over prompts                                                     */
/* ---------------------------------------------------------------------- */

resid_status resid_unit_means(const resid_model *m, const int32_t *const *prompts,
                              const int32_t *n_tokens, int32_t n_prompts, const resid_unit *units,
                              int64_t n_units, float **means, int64_t *n_means, resid_error *err) {
    *means = NULL;
    *n_means = 0;
    if (!m || n_prompts < 1 || !prompts || !n_tokens || n_units < 1 || !units)
        return rs_err(err, RESID_E_ARG, "means: need at least one prompt and one unit");
    int64_t total = 0;
    for (int64_t i = 0; i < n_units; i++) {
        resid_status st = check_unit(&m->hp, &units[i], err);
        if (st) return st;
        int64_t w = resid_iv_mean_width(m, &units[i]);
        if (w == 0) {
            char id[64];
            resid_unit_format(&units[i], id, sizeof id);
            return rs_err(err, RESID_E_UNSUPPORTED,
                          "unit %s: a %s names a source position and has no position-free mean", id,
                          resid_unit_kind_name(units[i].kind));
        }
        total += w;
    }
    double *acc = calloc((size_t)total, sizeof *acc);
    resid_intervention *iv = NULL;
    resid_status st = acc ? resid_intervention_new(m, &iv, err)
                          : rs_err(err, RESID_E_NOMEM, "means: out of memory");
    for (int64_t i = 0; !st && i < n_units; i++)
        st = resid_intervention_replace(iv, &units[i], NULL, 0, err);
    int64_t n_pos = 0;
    for (int32_t p = 0; !st && p < n_prompts; p++) {
        if ((st = resid_intervention_set_clean(iv, prompts[p], n_tokens[p], err))) break;
        if ((st = ensure_records(m, iv, n_tokens[p], err))) break;
        int64_t off = 0;
        for (int32_t k = 0; k < iv->n; k++) {
            const iv_edit *e = &iv->e[k];
            for (int32_t t = 0; t < n_tokens[p]; t++)
                for (int64_t c = 0; c < e->width; c++)
                    acc[off + c] += e->rec[(size_t)t * e->width + c];
            off += e->width;
        }
        n_pos += n_tokens[p];
    }
    float *out = NULL;
    if (!st && !(out = malloc((size_t)total * sizeof *out)))
        st = rs_err(err, RESID_E_NOMEM, "means: out of memory");
    if (!st) {
        for (int64_t i = 0; i < total; i++)
            out[i] = (float)(acc[i] / (double)n_pos);
        *means = out;
        *n_means = total;
    }
    resid_intervention_free(iv);
    free(acc);
    return st;
}

/* ---------------------------------------------------------------------- */
/* Random units                                                           */
/* ---------------------------------------------------------------------- */

uint64_t resid_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) by rejection. */
static uint64_t rand_below(uint64_t *s, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = resid_splitmix64(s);
    while (x >= lim);
    return x % n;
}

/* Units of the same "class" as u (kind, and W_O-row vs sourced neuron). */
static int64_t class_count(const rs_hparams *hp, int32_t T, const resid_unit *u) {
    int64_t L = hp->n_layer, H = hp->n_head, dh = hp->d_head, N = hp->d_ffn;
    switch (u->kind) {
    case RESID_UNIT_ATTN_LAYER:
    case RESID_UNIT_FFN_LAYER: return L;
    case RESID_UNIT_HEAD: return L * H;
    case RESID_UNIT_HEAD_POS: return L * H * T;
    case RESID_UNIT_ATTN_NEURON: return u->pos < 0 ? L * H * dh : L * H * dh * T;
    case RESID_UNIT_FFN_NEURON: return L * N;
    case RESID_UNIT_POS: return L * T;
    default: return 0;
    }
}

static resid_unit class_unit(const rs_hparams *hp, int32_t T, const resid_unit *proto, int64_t i) {
    int64_t H = hp->n_head, dh = hp->d_head, N = hp->d_ffn;
    resid_unit u = {proto->kind, -1, -1, -1, -1};
    switch (proto->kind) {
    case RESID_UNIT_ATTN_LAYER:
    case RESID_UNIT_FFN_LAYER: u.layer = (int32_t)i; break;
    case RESID_UNIT_HEAD: u.layer = (int32_t)(i / H), u.head = (int32_t)(i % H); break;
    case RESID_UNIT_HEAD_POS:
        u.pos = (int32_t)(i % T), i /= T;
        u.head = (int32_t)(i % H), u.layer = (int32_t)(i / H);
        break;
    case RESID_UNIT_ATTN_NEURON:
        if (proto->pos >= 0) u.pos = (int32_t)(i % T), i /= T;
        u.index = (int32_t)(i % dh), i /= dh;
        u.head = (int32_t)(i % H), u.layer = (int32_t)(i / H);
        break;
    case RESID_UNIT_FFN_NEURON: u.layer = (int32_t)(i / N), u.index = (int32_t)(i % N); break;
    case RESID_UNIT_POS: u.layer = (int32_t)(i / T), u.pos = (int32_t)(i % T); break;
    default: break;
    }
    return u;
}

static bool same_unit(const resid_unit *a, const resid_unit *b) {
    return a->kind == b->kind && a->layer == b->layer && a->head == b->head &&
           a->index == b->index && a->pos == b->pos;
}

static bool same_class(const resid_unit *a, const resid_unit *b) {
    return a->kind == b->kind &&
           (a->kind != RESID_UNIT_ATTN_NEURON || (a->pos < 0) == (b->pos < 0));
}

resid_status resid_random_units(const resid_model *m, int32_t n_tokens, const resid_unit *chosen,
                                int64_t n_chosen, int64_t n_random, uint64_t seed, resid_unit *out,
                                resid_error *err) {
    if (!m || n_chosen < 1 || !chosen || n_random < 0 || (n_random > 0 && !out) || n_tokens < 1)
        return rs_err(err, RESID_E_ARG, "random units: need chosen units and a prompt length");
    const rs_hparams *hp = &m->hp;
    uint64_t s = seed;
    for (int64_t i = 0; i < n_random; i++) {
        const resid_unit *proto = &chosen[i % n_chosen];
        int64_t cnt = class_count(hp, n_tokens, proto), taken = 0;
        for (int64_t c = 0; c < n_chosen; c++) {
            bool dup = false; /* count distinct chosen units of the class */
            for (int64_t d = 0; d < c && !dup; d++)
                dup = same_unit(&chosen[c], &chosen[d]);
            if (!dup && same_class(&chosen[c], proto)) taken++;
        }
        for (int64_t c = 0; c < i; c++)
            taken += same_class(&out[c], proto);
        if (cnt - taken <= 0)
            return rs_err(err, RESID_E_ARG,
                          "random units: no %s left to draw (%lld in the model, all taken)",
                          resid_unit_kind_name(proto->kind), (long long)cnt);
        for (;;) {
            resid_unit u = class_unit(hp, n_tokens, proto, (int64_t)rand_below(&s, (uint64_t)cnt));
            bool bad = false;
            for (int64_t c = 0; c < n_chosen && !bad; c++)
                bad = same_unit(&u, &chosen[c]);
            for (int64_t c = 0; c < i && !bad; c++)
                bad = same_unit(&u, &out[c]);
            if (!bad) {
                out[i] = u;
                break;
            }
        }
    }
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Scoring-method comparison                                              */
/* ---------------------------------------------------------------------- */

static const char *const fscore_names[RESID_FSCORE_COUNT] = {
    "lpi", "logp-alone", "prob-inc", "norm", "coef", "rank", "coef-norm", "coef-rank"};

const char *resid_fscore_name(resid_fscore s) {
    return (unsigned)s < RESID_FSCORE_COUNT ? fscore_names[s] : "?";
}

/* Projections c[n][V] = bs(fc2_k) (lens scale s, coefficient not applied)
 * of neurons k0 .. k0+n-1 of layer l, n <= RS_PROJ_ROWS; norms[n] = ‖fc2_k‖. */
static void project_fc2(resid_explainer *e, int32_t l, int32_t k0, int n, float *d, float *y,
                        float *pad, float *c, double *norms) {
    const int D = e->D;
    for (int r = 0; r < n; r++) {
        rs_dir_row(e, RESID_UNIT_FFN_NEURON, l, k0 + r, d);
        norms[r] = sqrt(rs_dot(d, d, D));
        rs_lensmap(e, d, y + (size_t)r * D);
    }
    rs_project(e, y, n, pad, c);
}

resid_status resid_ffn_neuron_scores(resid_explainer *e, double *out, resid_error *err) {
    if (!e || !out) return rs_err(err, RESID_E_ARG, "neuron scores: explainer and out required");
    if (e->lens == RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG, "neuron scores: the logit lens is not linear");
    resid_score *sc;
    int64_t n;
    resid_status st = resid_score_all(e, RESID_UNIT_FFN_NEURON, &sc, &n, err);
    if (st) return st;
    const int D = e->D, V = e->V, N = e->N, w = e->target;
    const int64_t LN = n;
    float *d = malloc((size_t)D * sizeof(float));
    float *y = malloc((size_t)RS_PROJ_ROWS * D * sizeof(float));
    float *pad = malloc((size_t)RS_PROJ_ROWS * D * sizeof(float));
    float *c = malloc((size_t)RS_PROJ_ROWS * V * sizeof(float));
    if (!d || !y || !pad || !c) {
        st = rs_err(err, RESID_E_NOMEM, "neuron scores: out of memory");
        goto done;
    }
    for (int32_t l = 0; l < e->L; l++)
        for (int32_t k0 = 0; k0 < N; k0 += RS_PROJ_ROWS) {
            int nb = N - k0 < RS_PROJ_ROWS ? N - k0 : RS_PROJ_ROWS;
            double norms[RS_PROJ_ROWS];
            project_fc2(e, l, k0, nb, d, y, pad, c, norms);
            for (int r = 0; r < nb; r++) {
                int64_t i = (int64_t)l * N + k0 + r;
                const resid_score *s = &sc[i];
                const float *cr = c + (size_t)r * V;
                double mk = s->coef;
                int32_t rank = 0;
                double mx = -INFINITY;
                for (int32_t t = 0; t < V; t++) {
                    if (cr[t] > cr[w] || (cr[t] == cr[w] && t < w)) rank++;
                    double z = mk * cr[t];
                    if (z > mx) mx = z;
                }
                double sum = 0;
                for (int32_t t = 0; t < V; t++)
                    sum += exp(mk * cr[t] - mx);
                out[RESID_FSCORE_LPI * LN + i] = s->lpi;
                out[RESID_FSCORE_LOGP_ALONE * LN + i] = mk * cr[w] - mx - log(sum);
                out[RESID_FSCORE_PROB_INC * LN + i] = s->prob_inc;
                out[RESID_FSCORE_NORM * LN + i] = fabs(mk) * norms[r];
                out[RESID_FSCORE_COEF * LN + i] = mk;
                out[RESID_FSCORE_RANK * LN + i] = -(double)rank;
                out[RESID_FSCORE_COEF_NORM * LN + i] = mk * norms[r];
                out[RESID_FSCORE_COEF_RANK * LN + i] =
                    mk * (V > 1 ? 1.0 - 2.0 * rank / (double)(V - 1) : 1.0);
            }
        }
done:
    free(sc), free(d), free(y), free(pad), free(c);
    return st;
}

/* Indices of the k largest of x[n] (ties: lower index first), best first. */
typedef struct idx_val {
    double v;
    int64_t i;
} idx_val;

static int cmp_idx_val(const void *pa, const void *pb) {
    const idx_val *a = pa, *b = pb;
    if (a->v != b->v) {
        if (isnan(a->v)) return 1;
        if (isnan(b->v)) return -1;
        return a->v > b->v ? -1 : 1;
    }
    return (a->i > b->i) - (a->i < b->i);
}

static resid_status top_indices(const double *x, int64_t n, int64_t k, int64_t *out,
                                resid_error *err) {
    idx_val *a = malloc((size_t)n * sizeof *a);
    if (!a) return rs_err(err, RESID_E_NOMEM, "ranking: out of memory");
    for (int64_t i = 0; i < n; i++)
        a[i] = (idx_val){x[i], i};
    qsort(a, (size_t)n, sizeof *a, cmp_idx_val);
    for (int64_t i = 0; i < k; i++)
        out[i] = a[i].i;
    free(a);
    return RESID_OK;
}

static resid_status zero_units_run(const resid_model *m, const int32_t *tokens, int32_t n,
                                   int32_t target, const resid_unit *u, int32_t k,
                                   resid_target_stats *out, resid_error *err) {
    resid_intervention *iv;
    resid_status st = resid_intervention_new(m, &iv, err);
    for (int32_t i = 0; !st && i < k; i++)
        st = resid_intervention_zero(iv, &u[i], NULL, 0, err);
    if (!st) st = resid_intervention_run(m, iv, tokens, n, target, out, NULL, NULL, NULL, err);
    resid_intervention_free(iv);
    return st;
}

void resid_score_compare_free(resid_score_compare *c) {
    if (!c) return;
    free(c->units);
    free(c);
}

resid_status resid_compare_scores(const resid_model *m, const int32_t *tokens, int32_t n,
                                  int32_t target, int32_t k, uint64_t seed,
                                  resid_score_compare **out, resid_error *err) {
    *out = NULL;
    if (!m || !tokens || n < 1) return rs_err(err, RESID_E_ARG, "compare: no prompt");
    const rs_hparams *hp = &m->hp;
    const int64_t LN = (int64_t)hp->n_layer * hp->d_ffn;
    if (k < 1 || k >= LN)
        return rs_err(err, RESID_E_ARG, "compare: k = %d must be in [1, %lld)", k, (long long)LN);
    resid_trace_opts to = resid_trace_defaults();
    to.capture = RESID_EXPLAIN_CAPTURE;
    to.positions = RESID_POS_LAST;
    resid_trace *tr = NULL;
    resid_explainer *ex = NULL;
    double *scores = NULL;
    int64_t *idx = NULL;
    resid_score_compare *c = calloc(1, sizeof *c);
    resid_status st = c ? RESID_OK : rs_err(err, RESID_E_NOMEM, "compare: out of memory");
    if (!st)
        st = resid_intervention_run(m, NULL, tokens, n, target, &c->original, &target, NULL, NULL,
                                    err);
    if (!st) st = resid_forward(m, tokens, n, &to, &tr, err);
    if (!st) {
        resid_explain_opts eo = resid_explain_defaults();
        eo.target = target;
        st = resid_explainer_new(m, tr, &eo, &ex, err);
    }
    if (!st) {
        c->k = k, c->target = target;
        scores = malloc((size_t)RESID_FSCORE_COUNT * LN * sizeof *scores);
        idx = malloc((size_t)k * sizeof *idx);
        c->units = malloc((size_t)(RESID_FSCORE_COUNT + 1) * k * sizeof *c->units);
        if (!scores || !idx || !c->units) st = rs_err(err, RESID_E_NOMEM, "compare: out of memory");
    }
    if (!st) st = resid_ffn_neuron_scores(ex, scores, err);
    for (int f = 0; !st && f < RESID_FSCORE_COUNT; f++) {
        if ((st = top_indices(scores + (size_t)f * LN, LN, k, idx, err))) break;
        resid_unit *u = c->units + (size_t)f * k;
        for (int32_t i = 0; i < k; i++)
            u[i] = (resid_unit){RESID_UNIT_FFN_NEURON, (int32_t)(idx[i] / hp->d_ffn), -1,
                                (int32_t)(idx[i] % hp->d_ffn), -1};
        st = zero_units_run(m, tokens, n, target, u, k, &c->method[f], err);
    }
    if (!st) {
        /* random: not any of the LPI top-k */
        resid_unit *ru = c->units + (size_t)RESID_FSCORE_COUNT * k;
        st = resid_random_units(m, n, c->units, k, k, seed, ru, err);
        if (!st) st = zero_units_run(m, tokens, n, target, ru, k, &c->random, err);
    }
    resid_explainer_free(ex);
    resid_trace_free(tr);
    free(scores), free(idx);
    if (st) {
        resid_score_compare_free(c);
        return st;
    }
    *out = c;
    return RESID_OK;
}

/* ---------------------------------------------------------------------- */
/* Additivity                                                             */
/* ---------------------------------------------------------------------- */

void resid_pearson_slope(const double *x, const double *y, int64_t n, double *r, double *slope) {
    double mx = 0, my = 0;
    for (int64_t i = 0; i < n; i++)
        mx += x[i], my += y[i];
    if (n > 0) mx /= n, my /= n;
    double sxx = 0, syy = 0, sxy = 0;
    for (int64_t i = 0; i < n; i++) {
        double dx = x[i] - mx, dy = y[i] - my;
        sxx += dx * dx, syy += dy * dy, sxy += dx * dy;
    }
    *r = (n > 1 && sxx > 0 && syy > 0) ? sxy / sqrt(sxx * syy) : NAN;
    *slope = (n > 1 && sxx > 0) ? sxy / sxx : NAN;
    if (!isnan(*r)) *r = fmax(-1.0, fmin(1.0, *r)); /* rounding */
}

void resid_additivity_free(resid_additivity *a) {
    if (!a) return;
    free(a->order), free(a->sum_lpi), free(a->lpi_sum), free(a->sum_pinc), free(a->pinc_sum);
    free(a);
}

resid_status resid_additivity_new(resid_explainer *e, int32_t layer, int32_t n_max,
                                  resid_additivity **out, resid_error *err) {
    *out = NULL;
    if (!e) return rs_err(err, RESID_E_ARG, "additivity: explainer required");
    if (e->lens == RESID_LENS_LOGIT)
        return rs_err(err, RESID_E_ARG, "additivity: the logit lens is not linear");
    if (layer < 0 || layer >= e->L)
        return rs_err(err, RESID_E_ARG, "additivity: layer %d out of range [0, %d)", layer, e->L);
    const int32_t N = e->N, V = e->V, D = e->D, w = e->target;
    int32_t nu = (n_max <= 0 || n_max > N) ? N : n_max;
    resid_additivity *a = calloc(1, sizeof *a);
    resid_unit *u = calloc((size_t)N, sizeof *u);
    resid_score *sc = malloc((size_t)N * sizeof *sc);
    double *lpi = malloc((size_t)N * sizeof *lpi);
    int64_t *ord = malloc((size_t)N * sizeof *ord);
    double *cum = calloc((size_t)V, sizeof *cum);
    float *d = malloc((size_t)D * sizeof(float));
    float *y = malloc((size_t)RS_PROJ_ROWS * D * sizeof(float));
    float *pad = malloc((size_t)RS_PROJ_ROWS * D * sizeof(float));
    float *c = malloc((size_t)RS_PROJ_ROWS * V * sizeof(float));
    resid_status st = RESID_OK;
    if (!a || !u || !sc || !lpi || !ord || !cum || !d || !y || !pad || !c ||
        !(a->order = malloc((size_t)nu * sizeof *a->order)) ||
        !(a->sum_lpi = malloc((size_t)nu * sizeof(double))) ||
        !(a->lpi_sum = malloc((size_t)nu * sizeof(double))) ||
        !(a->sum_pinc = malloc((size_t)nu * sizeof(double))) ||
        !(a->pinc_sum = malloc((size_t)nu * sizeof(double)))) {
        st = rs_err(err, RESID_E_NOMEM, "additivity: out of memory");
        goto done;
    }
    a->layer = layer, a->n = nu;
    for (int32_t k = 0; k < N; k++)
        u[k] = (resid_unit){RESID_UNIT_FFN_NEURON, layer, -1, k, -1};
    if ((st = resid_score_units(e, u, N, sc, err))) goto done;
    for (int32_t k = 0; k < N; k++)
        lpi[k] = sc[k].lpi;
    if ((st = top_indices(lpi, N, nu, ord, err))) goto done;
    const rs_context *cx = &e->ctx[2 * layer + 1];
    double sl = 0, sp = 0;
    for (int32_t i0 = 0; i0 < nu; i0 += RS_PROJ_ROWS) {
        int nb = nu - i0 < RS_PROJ_ROWS ? nu - i0 : RS_PROJ_ROWS;
        for (int r = 0; r < nb; r++) {
            rs_dir_row(e, RESID_UNIT_FFN_NEURON, layer, ord[i0 + r], d);
            rs_lensmap(e, d, y + (size_t)r * D);
        }
        rs_project(e, y, nb, pad, c);
        for (int r = 0; r < nb; r++) {
            int32_t i = i0 + r, k = (int32_t)ord[i];
            double mk = sc[k].coef;
            const float *cr = c + (size_t)r * V;
            double mx = -INFINITY;
            for (int32_t t = 0; t < V; t++) {
                cum[t] += mk * cr[t];
                double z = cx->logp[t] + cum[t];
                if (z > mx) mx = z;
            }
            double sum = 0;
            for (int32_t t = 0; t < V; t++)
                sum += exp(cx->logp[t] + cum[t] - mx);
            double logp = cx->logp[w] + cum[w] - mx - log(sum);
            sl += sc[k].lpi, sp += sc[k].prob_inc;
            a->order[i] = k;
            a->sum_lpi[i] = sl;
            a->sum_pinc[i] = sp;
            a->lpi_sum[i] = logp - cx->logpw;
            a->pinc_sum[i] = exp(logp) - cx->pw;
        }
    }
    resid_pearson_slope(a->sum_lpi, a->lpi_sum, nu, &a->r_lpi, &a->slope_lpi);
    resid_pearson_slope(a->sum_pinc, a->pinc_sum, nu, &a->r_pinc, &a->slope_pinc);
done:
    free(u), free(sc), free(lpi), free(ord), free(cum), free(d), free(y), free(pad), free(c);
    if (st) {
        resid_additivity_free(a);
        return st;
    }
    *out = a;
    return RESID_OK;
}

void resid_additivity_aggregate(const resid_additivity *const *a, int32_t n,
                                resid_additivity_summary *out) {
    memset(out, 0, sizeof *out);
    out->n_prompts = n;
    int64_t tot = 0;
    int32_t nl = 0, np = 0;
    for (int32_t i = 0; i < n; i++) {
        tot += a[i]->n;
        if (!isnan(a[i]->r_lpi))
            out->mean_r_lpi += a[i]->r_lpi, out->mean_slope_lpi += a[i]->slope_lpi, nl++;
        if (!isnan(a[i]->r_pinc))
            out->mean_r_pinc += a[i]->r_pinc, out->mean_slope_pinc += a[i]->slope_pinc, np++;
    }
    out->mean_r_lpi = nl ? out->mean_r_lpi / nl : NAN;
    out->mean_slope_lpi = nl ? out->mean_slope_lpi / nl : NAN;
    out->mean_r_pinc = np ? out->mean_r_pinc / np : NAN;
    out->mean_slope_pinc = np ? out->mean_slope_pinc / np : NAN;
    double *x = malloc((size_t)(tot ? tot : 1) * 4 * sizeof *x);
    if (!x) {
        out->pooled_r_lpi = out->pooled_slope_lpi = NAN;
        out->pooled_r_pinc = out->pooled_slope_pinc = NAN;
        return;
    }
    double *y = x + tot, *xp = y + tot, *yp = xp + tot;
    int64_t o = 0;
    for (int32_t i = 0; i < n; i++) {
        memcpy(x + o, a[i]->sum_lpi, (size_t)a[i]->n * sizeof *x);
        memcpy(y + o, a[i]->lpi_sum, (size_t)a[i]->n * sizeof *x);
        memcpy(xp + o, a[i]->sum_pinc, (size_t)a[i]->n * sizeof *x);
        memcpy(yp + o, a[i]->pinc_sum, (size_t)a[i]->n * sizeof *x);
        o += a[i]->n;
    }
    resid_pearson_slope(x, y, tot, &out->pooled_r_lpi, &out->pooled_slope_lpi);
    resid_pearson_slope(xp, yp, tot, &out->pooled_r_pinc, &out->pooled_slope_pinc);
    free(x);
}
