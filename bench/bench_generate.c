/*
 * bench_generate.c - greedy generation speed of resid_session_eval, measured
 * the way llama2.c's run.c measures its own (`run MODEL -t 0.0 -n STEPS`):
 *
 *   bench_generate MODEL [--tokenizer PATH] [--steps 256] [--runs 5]
 *                  [--text-out FILE]
 *
 * As in run.c's generate(): start from BOS at position 0, feed one token per
 * step, take the argmax (first maximum) of the logits, stop after STEPS
 * positions (capped at n_ctx) or when BOS comes out. The clock starts after
 * the first step, and tokens/s = (steps done - 1) / elapsed. Each run uses a
 * fresh session; the median and best runs are printed as `key=value` lines.
 *
 * --text-out writes the decoded text of the last run, filtered like run.c's
 * safe_printf, so scripts/bench.sh can check both programs generated the
 * same tokens.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "resid.h"

static int32_t argmax(const float *v, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* One generation; returns the positions done (run.c's `pos`) or -1. The
 * generated tokens (BOS excluded) go to out_ids[0..*n_out). */
static int32_t generate(const resid_model *m, int32_t bos, int32_t steps, float *logits,
                        int32_t *out_ids, int32_t *n_out, double *elapsed, resid_error *err) {
    const resid_model_info *info = resid_model_get_info(m);
    resid_session *s = NULL;
    if (resid_session_new(m, &s, err) != RESID_OK) return -1;
    int32_t token = bos, pos = 0;
    double start = 0;
    *n_out = 0;
    while (pos < steps) {
        if (resid_session_eval(s, &token, 1, logits, err) != RESID_OK) {
            resid_session_free(s);
            return -1;
        }
        int32_t next = argmax(logits, info->n_vocab);
        pos++;
        if (next == bos) break;
        out_ids[(*n_out)++] = next;
        token = next;
        if (start == 0) start = bu_now();
    }
    *elapsed = bu_now() - start;
    resid_session_free(s);
    return pos;
}

int main(int argc, char **argv) {
    const char *path = NULL, *tok_path = NULL, *text_out = NULL;
    int32_t steps = 256;
    int runs = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            tok_path = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--text-out") && i + 1 < argc)
            text_out = argv[++i];
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "bench_generate: bad argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path || steps < 2 || runs < 1) {
        fprintf(stderr,
                "usage: %s MODEL [--tokenizer PATH] [--steps N>=2] [--runs N] "
                "[--text-out FILE]\n",
                argv[0]);
        return 2;
    }

    resid_error err = {0};
    resid_model *m = NULL;
    resid_open_opts oo = {.tokenizer_path = tok_path};
    if (resid_model_open(path, &oo, &m, &err) != RESID_OK) {
        fprintf(stderr, "bench_generate: %s\n", err.msg);
        return 1;
    }
    const resid_model_info *info = resid_model_get_info(m);
    const resid_tokenizer *tok = resid_model_tokenizer(m);
    int32_t bos = tok && resid_tokenizer_bos(tok) >= 0 ? resid_tokenizer_bos(tok) : 1;
    if (steps > info->n_ctx) steps = info->n_ctx; /* as run.c does */

    float *logits = malloc((size_t)info->n_vocab * sizeof *logits);
    int32_t *gen = malloc((size_t)steps * sizeof *gen);
    double *tps = malloc((size_t)runs * sizeof *tps);
    if (!logits || !gen || !tps) {
        fprintf(stderr, "bench_generate: out of memory\n");
        return 1;
    }
    int32_t pos = 0, n_gen = 0;
    for (int r = 0; r < runs; r++) {
        double elapsed = 0;
        pos = generate(m, bos, steps, logits, gen, &n_gen, &elapsed, &err);
        if (pos < 0) {
            fprintf(stderr, "bench_generate: %s\n", err.msg);
            return 1;
        }
        if (pos < 2 || elapsed <= 0) {
            fprintf(stderr, "bench_generate: generation stopped after %d steps\n", pos);
            return 1;
        }
        tps[r] = (double)(pos - 1) / elapsed;
    }
    double best = tps[0];
    for (int r = 1; r < runs; r++)
        if (tps[r] > best) best = tps[r];

    if (text_out && tok) {
        FILE *f = fopen(text_out, "wb");
        if (!f) {
            fprintf(stderr, "bench_generate: %s: %s\n", text_out, strerror(errno));
            return 1;
        }
        int32_t prev = bos;
        for (int32_t i = 0; i < n_gen; i++) {
            size_t len = 0;
            const char *b = resid_token_bytes(tok, prev, gen[i], &len);
            /* run.c's safe_printf: skip lone non-printable, non-space bytes */
            if (b && !(len == 1 && !isprint((unsigned char)b[0]) && !isspace((unsigned char)b[0])))
                fwrite(b, 1, len, f);
            prev = gen[i];
        }
        fputc('\n', f);
        if (fclose(f) != 0) {
            fprintf(stderr, "bench_generate: %s: write failed\n", text_out);
            return 1;
        }
    }
    printf("resid_gen_model=%s\n", path);
    printf("resid_gen_steps=%d\n", pos);
    printf("resid_gen_tok_s_median=%.2f\n", bu_median(tps, runs));
    printf("resid_gen_tok_s_best=%.2f\n", best);

    free(logits);
    free(gen);
    free(tps);
    resid_model_free(m);
    return 0;
}
