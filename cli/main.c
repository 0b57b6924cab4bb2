/*
 * main.c - the `resid` command-line tool: global options, then a command
 * from the table below. Each command lives in cli/cmd_<name>.c.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* The command table. Adding a command: cli/cmd_<name>.c defining
 * `const cli_command cli_cmd_<name>`, and one X(<name>) line here. */
#define CLI_COMMANDS                                                                               \
    X(info)                                                                                        \
    X(tokenize)                                                                                    \
    X(run)                                                                                         \
    X(generate)                                                                                    \
    X(explain)                                                                                     \
    X(neuron)                                                                                      \
    X(batch)                                                                                       \
    X(ranges)                                                                                      \
    X(summarize)                                                                                   \
    X(serve)                                                                                       \
    X(ablate)

#define X(name) extern const cli_command cli_cmd_##name;
CLI_COMMANDS
#undef X

static const cli_command *const commands[] = {
#define X(name) &cli_cmd_##name,
    CLI_COMMANDS
#undef X
};
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void print_help(FILE *f) {
    fprintf(f, "Usage: resid [GLOBAL OPTIONS] COMMAND MODEL [OPTIONS]\n"
               "\n"
               "resid explains a transformer's next-token prediction by taking its\n"
               "residual stream apart. MODEL is a GGUF file, a Hugging Face folder\n"
               "(config.json + *.safetensors) or a llama2.c checkpoint (.bin; its\n"
               "tokenizer.bin or tok<V>.bin is looked for beside it).\n"
               "\n"
               "Commands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(f,
            "\n"
            "Global options (also accepted after the command):\n" CLI_HELP_GLOBAL
            "      --version        print the version\n"
            "\n"
            "Run `resid COMMAND --help` for a command's options. Examples:\n"
            "  resid info $RESID_MODELS/tinyllamas/stories260K.bin\n"
            "  resid generate $RESID_MODELS/tinyllamas/stories260K.bin -p \"Once upon\" -n 40\n");
}

/* Value of a global option given as "--name VALUE" or "--name=VALUE";
 * NULL if argv[*i] is not that option. Advances *i past the value. */
static const char *global_value(int argc, char **argv, int *i, const char *name, bool *missing) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != 0) return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i], *v;
        bool missing = false;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            print_help(stdout);
            return CLI_EXIT_OK;
        }
        if (!strcmp(a, "--version")) {
            printf("resid %s\n", RESID_VERSION);
            return CLI_EXIT_OK;
        }
        if ((v = global_value(argc, argv, &i, "--tokenizer", &missing))) {
            cli_globals.tokenizer_path = v;
        } else if ((v = global_value(argc, argv, &i, "--threads", &missing))) {
            long t;
            int r = cli_parse_int(NULL, "--threads", v, 1, 4096, &t);
            if (r != CLI_CONTINUE) return r;
            cli_globals.threads = (int)t;
        } else if (missing) {
            return cli_usage_error(NULL, "option '%s' needs an argument", a);
        } else {
            return cli_usage_error(NULL, "unknown option '%s'", a);
        }
    }
    if (i >= argc) {
        print_help(stderr);
        return CLI_EXIT_USAGE;
    }
    for (int c = 0; c < N_COMMANDS; c++)
        if (!strcmp(argv[i], commands[c]->name))
            return commands[c]->run(commands[c], argc - i, argv + i);
    return cli_usage_error(NULL, "unknown command '%s'", argv[i]);
}
