/*
 * jsonl.c - JSON Lines for `resid batch` (see jsonl.h): a capped line
 * reader, the input record parser, and the resume scan of an output file.
 */
#include "output/jsonl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

/* ------------------------------------------------------------------------- */
/* Input records                                                             */
/* ------------------------------------------------------------------------- */

void rs_batch_input_free(rs_batch_input *in) {
    if (!in) return;
    free(in->prompt);
    free(in->ids);
    free(in->target_text);
    free(in->type);
    cJSON_Delete(in->id);
    memset(in, 0, sizeof *in);
    in->target_id = -1;
}

/* A JSON number that is an integer in [0, INT32_MAX]. */
static bool as_id(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    const double d = v->valuedouble;
    if (!(d >= 0 && d <= INT32_MAX) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

/* A copy of a JSON string's text, checked for UTF-8. cJSON stops a string
 * at an escaped NUL (\u0000), so that is looked for in the raw text. */
static resid_status copy_text(const cJSON *v, const char *what, char **out, resid_error *err) {
    const char *s = v->valuestring;
    const size_t n = strlen(s);
    const int64_t bad = rs_utf8_validate(s, n);
    if (bad >= 0)
        return rs_err(err, RESID_E_TOKENIZE, "\"%s\" is not valid UTF-8 (byte %lld)", what,
                      (long long)bad);
    *out = rs_strdup(s);
    return *out ? RESID_OK : rs_err(err, RESID_E_NOMEM, "out of memory");
}

/* Whether buf[0..n) holds the escape \u0000 (cJSON would cut the string
 * there). Conservative: an escaped backslash before "u0000" counts too. */
static bool has_escaped_nul(const char *buf, size_t n) {
    for (size_t i = 0; i + 6 <= n; i++)
        if (buf[i] == '\\' && !memcmp(buf + i + 1, "u0000", 5)) return true;
    return false;
}

resid_status rs_jsonl_parse_input(const char *buf, size_t n, rs_batch_input *out,
                                  resid_error *err) {
    memset(out, 0, sizeof *out);
    out->target_id = -1;
    if (memchr(buf, 0, n))
        return rs_err(err, RESID_E_FORMAT, "the line holds a NUL byte (at byte %zu)",
                      (size_t)((const char *)memchr(buf, 0, n) - buf));
    cJSON *j;
    resid_status st = rs_json_parse(buf, n, "the line", n + 1, &j, err);
    if (st != RESID_OK) return st;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return rs_err(err, RESID_E_FORMAT, "the line is not a JSON object");
    }
    /* id and type first, so an error record can still name them. */
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
    if (id) {
        if (cJSON_IsArray(id) || cJSON_IsObject(id)) {
            st = rs_err(err, RESID_E_FORMAT, "\"id\" must be a string, a number or null");
            goto done;
        }
        out->id = cJSON_Duplicate(id, false);
        if (!out->id) {
            st = rs_err(err, RESID_E_NOMEM, "out of memory");
            goto done;
        }
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    if (type && !cJSON_IsNull(type)) {
        if (!cJSON_IsString(type)) {
            st = rs_err(err, RESID_E_FORMAT, "\"type\" must be a string");
            goto done;
        }
        if ((st = copy_text(type, "type", &out->type, err)) != RESID_OK) goto done;
    }
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
    if (prompt && ids) {
        st = rs_err(err, RESID_E_FORMAT, "give \"prompt\" or \"ids\", not both");
    } else if (prompt) {
        if (!cJSON_IsString(prompt))
            st = rs_err(err, RESID_E_FORMAT, "\"prompt\" must be a string");
        else if (has_escaped_nul(buf, n))
            st = rs_err(err, RESID_E_FORMAT, "the line holds an escaped NUL (\\u0000)");
        else
            st = copy_text(prompt, "prompt", &out->prompt, err);
    } else if (ids) {
        const int n_ids = cJSON_IsArray(ids) ? cJSON_GetArraySize(ids) : -1;
        if (n_ids < 1 || n_ids > RS_JSONL_MAX_IDS) {
            st = rs_err(err, RESID_E_FORMAT, "\"ids\" must be an array of 1 to %d token ids",
                        RS_JSONL_MAX_IDS);
        } else if (!(out->ids = malloc((size_t)n_ids * sizeof *out->ids))) {
            st = rs_err(err, RESID_E_NOMEM, "out of memory");
        } else {
            const cJSON *e;
            cJSON_ArrayForEach(e, ids) {
                int64_t v;
                if (!as_id(e, &v)) {
                    st = rs_err(err, RESID_E_FORMAT,
                                "\"ids\"[%d] is not a token id (an integer >= 0)", out->n_ids);
                    break;
                }
                out->ids[out->n_ids++] = (int32_t)v;
            }
        }
    } else {
        st = rs_err(err, RESID_E_FORMAT,
                    "no \"prompt\" (a string) or \"ids\" (an array of token ids)");
    }
    const cJSON *target = cJSON_GetObjectItemCaseSensitive(j, "target");
    if (st == RESID_OK && target && !cJSON_IsNull(target)) {
        if (cJSON_IsString(target))
            st = copy_text(target, "target", &out->target_text, err);
        else if (!as_id(target, &out->target_id))
            st = rs_err(err, RESID_E_FORMAT, "\"target\" must be a string or a token id");
    }
done:
    cJSON_Delete(j);
    if (st != RESID_OK) {
        free(out->prompt), free(out->ids), free(out->target_text);
        out->prompt = out->target_text = NULL;
        out->ids = NULL;
        out->n_ids = 0;
        out->target_id = -1;
    }
    return st;
}

/* ------------------------------------------------------------------------- */
/* Line reader                                                               */
/* ------------------------------------------------------------------------- */

struct rs_jsonl_reader {
    FILE *f;
    char *label;
    size_t max_line;
    char *buf;
    size_t cap;
    int64_t line_no;
};

resid_status rs_jsonl_reader_new(FILE *f, const char *label, size_t max_line, rs_jsonl_reader **out,
                                 resid_error *err) {
    rs_jsonl_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->label = rs_strdup(label ? label : "input"))) {
        free(r);
        return rs_err(err, RESID_E_NOMEM, "out of memory");
    }
    r->f = f;
    r->max_line = max_line ? max_line : RS_JSONL_MAX_LINE;
    *out = r;
    return RESID_OK;
}

void rs_jsonl_reader_free(rs_jsonl_reader *r) {
    if (!r) return;
    free(r->label);
    free(r->buf);
    free(r);
}

resid_status rs_jsonl_next(rs_jsonl_reader *r, const char **line, size_t *len, int64_t *line_no,
                           bool *eof, resid_error *err) {
    *line = NULL;
    *len = 0;
    *eof = false;
    size_t n = 0;
    bool too_long = false;
    int c;
    while ((c = getc(r->f)) != EOF && c != '\n') {
        if (too_long) continue;
        if (n >= r->max_line) {
            too_long = true;
            continue;
        }
        if (n + 1 >= r->cap) {
            size_t nc = r->cap ? 2 * r->cap : 4096;
            if (nc > r->max_line + 1) nc = r->max_line + 1;
            char *b = realloc(r->buf, nc);
            if (!b) return rs_err(err, RESID_E_NOMEM, "%s: out of memory", r->label);
            r->buf = b;
            r->cap = nc;
        }
        r->buf[n++] = (char)c;
    }
    if (ferror(r->f))
        return rs_err(err, RESID_E_IO, "%s: read error: %s", r->label, strerror(errno));
    if (c == EOF && n == 0 && !too_long) {
        *eof = true;
        return RESID_OK;
    }
    *line_no = ++r->line_no;
    if (too_long)
        return rs_err(err, RESID_E_FORMAT, "%s:%lld: line longer than %zu bytes", r->label,
                      (long long)r->line_no, r->max_line);
    if (!r->buf) { /* an empty line before any allocation */
        if (!(r->buf = malloc(1))) return rs_err(err, RESID_E_NOMEM, "out of memory");
        r->cap = 1;
    }
    if (n > 0 && r->buf[n - 1] == '\r') n--;
    r->buf[n] = 0;
    *line = r->buf;
    *len = n;
    return RESID_OK;
}

/* ------------------------------------------------------------------------- */
/* Resume scan                                                               */
/* ------------------------------------------------------------------------- */

resid_status rs_jsonl_scan_done(const char *path, bool truncate_partial, bool *done,
                                int64_t n_index, int64_t *n_done, int64_t *n_cut,
                                resid_error *err) {
    *n_done = 0;
    *n_cut = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return RESID_OK;
        return rs_err(err, RESID_E_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    long long complete = 0; /* bytes up to the last '\n' */
    int64_t line_no = 0;
    resid_status st = RESID_OK;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[got - 1] != '\n') { /* a partial last line */
            *n_cut = got;
            break;
        }
        line_no++;
        complete += got;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)got);
        const cJSON *ix = j ? cJSON_GetObjectItemCaseSensitive(j, "index") : NULL;
        const double d = cJSON_IsNumber(ix) ? ix->valuedouble : -1;
        if (!(d >= 0 && d < (double)n_index && d == floor(d))) {
            st = rs_err(err, RESID_E_FORMAT,
                        "%s:%lld: not a record of this input (no \"index\" in [0, %lld)); "
                        "refusing to resume into it",
                        path, (long long)line_no, (long long)n_index);
            cJSON_Delete(j);
            break;
        }
        if (!done[(int64_t)d]) (*n_done)++;
        done[(int64_t)d] = true;
        cJSON_Delete(j);
    }
    if (st == RESID_OK && ferror(f))
        st = rs_err(err, RESID_E_IO, "%s: read error: %s", path, strerror(errno));
    free(line);
    fclose(f);
    if (st == RESID_OK && *n_cut > 0 && truncate_partial && truncate(path, (off_t)complete) != 0)
        st = rs_err(err, RESID_E_IO, "%s: cannot truncate to %lld bytes: %s", path, complete,
                    strerror(errno));
    return st;
}
