/*
 * cmd_ranges.c - `resid ranges MODEL -o FILE`: builds the model's direction
 * ranges (the max and min over the vocabulary of every FFN direction's and
 * W_O row's projection, METHOD.md §10) and saves them for
 * `resid explain --ranges FILE` and `resid batch --ranges FILE`.
 *
 * A thin client of resid_ranges_build / resid_ranges_save.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static const char help[] =
    "Usage: resid ranges MODEL -o FILE\n"
    "\n"
    "Builds the model's direction ranges and writes them to FILE: for every FFN\n"
    "neuron's output direction and every row of W_O, the largest and smallest\n"
    "entry of its vocabulary projection W_U (gamma_f * centre(row)). They depend\n"
    "on the model alone, so they are built once (one vocabulary projection per\n"
    "row: ~35 s for GPT-2 small on two cores) and reused:\n"
    "`resid explain --ranges FILE` bounds every neuron's score without\n"
    "projecting it, so the bottom-K lists (--bottom) score far fewer units\n"
    "exactly. Results are identical with or without the file. The file holds\n"
    "the model's shape and a fingerprint of its weights; loading it with\n"
    "another model is an error.\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE    where to write the ranges (required)\n" CLI_HELP_GLOBAL "\n"
    "Example:\n"
    "  resid ranges $RESID_MODELS/gpt2 -o gpt2.ranges\n"
    "  resid explain $RESID_MODELS/gpt2 -p \"The capital of France is\" --bottom 10 \\\n"
    "      --ranges gpt2.ranges\n";

enum { OPT_OUTPUT = 'o' };

static int on_opt(const cli_command *cmd, void *user, int opt, const char *arg) {
    if (opt == OPT_OUTPUT) {
        *(const char **)user = arg;
        return CLI_CONTINUE;
    }
    return cli_usage_error(cmd, "unknown option");
}

/* Progress on a terminal: one line of stderr, rewritten in place. */
static void tty_progress(void *user, const char *stage, int step, int n_steps) {
    (void)user;
    fprintf(stderr, "\r\033[Kresid: ranges: %s (layer %d/%d)...", stage, step, n_steps);
    fflush(stderr);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run(const cli_command *cmd, int argc, char **argv) {
    static const struct option extra[] = {
        {"output", required_argument, NULL, OPT_OUTPUT},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    cli_args a;
    int r = cli_parse(cmd, argc, argv, 0, extra, "o:", on_opt, &path, &a);
    if (r != CLI_CONTINUE) return r;
    if (!path) return cli_usage_error(cmd, "missing -o FILE");
    resid_model *m;
    if ((r = cli_open_model(&a, &m)) != CLI_EXIT_OK) return r;
    const bool tty = isatty(STDERR_FILENO);
    const double t0 = now_s();
    resid_error err;
    resid_ranges *rg = NULL;
    resid_status st = resid_ranges_build(m, tty ? tty_progress : NULL, NULL, &rg, &err);
    if (tty) fputs("\r\033[K", stderr);
    if (st == RESID_OK) st = resid_ranges_save(rg, path, &err);
    if (st != RESID_OK) {
        r = cli_lib_error(&err);
    } else {
        const resid_model_info *in = resid_model_get_info(m);
        struct stat sb;
        const long long size = stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
        printf("%s: ranges of %d layers x (%d FFN + %d W_O rows), %lld bytes, built in %.1f s\n",
               path, in->n_layer, in->d_ffn, in->n_head * in->d_head, size, now_s() - t0);
    }
    resid_ranges_free(rg);
    resid_model_free(m);
    return r;
}

const cli_command cli_cmd_ranges = {"ranges", "precompute a model's direction ranges (faster --bottom)",
                                    help, run};
