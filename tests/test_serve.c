/*
 * test_serve.c - `resid serve` as a child process on a free loopback port
 * (--port 0; the port is read from its first stderr line), spoken to over
 * plain sockets (HTTP/1.1, Connection: close):
 *  - 8 concurrent clients with 4 different requests all get the answer the
 *    CLI gives (`resid explain --json -`): same target, p(target) (1e-12),
 *    same ranked unit ids and LPIs (1e-12), plus the extra views;
 *  - malformed JSON, an oversized body, a prompt of several thousand
 *    tokens, an unknown unit, a bad field type each get a 4xx with a clear
 *    message, and the server stays up (GET /api/info);
 *  - /api/ablate gives what `resid ablate --json` gives for the same prompt,
 *    units and mode (tokens, target, units and every field of before/after
 *    exactly, as printed): zero (unit ids as strings and as objects),
 *    replace (clean text and clean ids; patching the prompt into itself is
 *    a bit-exact no-op), mean (the CLI's --mean-prompts file as a JSON
 *    array) and add (each unit's own vector, scale, layers); the edits
 *    actually change p(target);
 *  - a malformed or out-of-range unit, no units, an unknown mode, replace
 *    without a clean prompt or with one of another length, mean without
 *    mean prompts or with too many, a field of another mode, a clean or
 *    mean prompt over --max-tokens each get a 4xx with a clear message;
 *  - GET /api/progress answers while a computation runs (busy, the
 *    request's id, a known stage at its number, steps never going back)
 *    and while four more wait for it (waiting 4); idle before and after;
 *  - a stalled client (half a request, then silence) does not hold up
 *    another request;
 *  - binding to a non-loopback address is refused without --allow-remote;
 *  - a request to this machine's non-loopback address is refused by the
 *    default server and answered with --host 0.0.0.0 --allow-remote.
 * All other traffic goes to 127.0.0.1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <math.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define STORIES "tinyllamas/stories260K.bin"

static pid_t server_pid = -1;
static int server_port;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Starts `resid serve` on a free port of `host` (NULL: the default,
 * 127.0.0.1; another one is passed with --allow-remote) with the test's
 * options (and --max-queue max_queue when not NULL); sets *pid and *port. */
static int spawn_server_on(const char *host, const char *max_queue, pid_t *pid, int *port) {
    int pfd[2];
    if (pipe(pfd) != 0) return -1;
    char *model = tu_model_path(STORIES);
    *pid = fork();
    if (*pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        const char *argv[20] = {tu_cli(),       "serve", model,       "--port", "0",
                                "--max-tokens", "512",   "--timeout", "3"};
        int argc = 9;
        if (max_queue) argv[argc++] = "--max-queue", argv[argc++] = max_queue;
        if (host) argv[argc++] = "--host", argv[argc++] = host, argv[argc++] = "--allow-remote";
        argv[argc] = NULL;
        execv(tu_cli(), (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    free(model);
    char buf[1024], url[64];
    size_t len = 0;
    FILE *f = fdopen(pfd[0], "r");
    /* First line: "resid serve: NAME on http://HOST:PORT/ ...". */
    if (!fgets(buf, sizeof buf, f)) return -1;
    len = strlen(buf);
    snprintf(url, sizeof url, "http://%s:", host ? host : "127.0.0.1");
    const char *p = strstr(buf, url);
    if (!p || !len) {
        fprintf(stderr, "server said: %s\n", buf);
        return -1;
    }
    *port = atoi(p + strlen(url));
    /* Keep draining stderr in the background (a detached reader). */
    if (fork() == 0) {
        char b[256];
        while (fgets(b, sizeof b, f))
            ;
        _exit(0);
    }
    fclose(f);
    return *port > 0 ? 0 : -1;
}

static int spawn_server(const char *max_queue, pid_t *pid, int *port) {
    return spawn_server_on(NULL, max_queue, pid, port);
}

static int start_server(void **state) {
    (void)state;
    return spawn_server(NULL, &server_pid, &server_port);
}

/* Stops a server started by spawn_server_on and waits for it. */
static void stop_child(pid_t pid) {
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
}

static int stop_server(void **state) {
    (void)state;
    if (server_pid > 0) stop_child(server_pid);
    return 0;
}

/* A TCP socket, and in *a the address addr:port to connect it to. */
static int tcp_socket(struct in_addr addr, int port, struct sockaddr_in *a) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    a->sin_addr = addr;
    return fd;
}

/* A socket connected to addr:port, reads timing out after timeout_s. */
static int connect_to(struct in_addr addr, int port, int timeout_s) {
    struct sockaddr_in a;
    int fd = tcp_socket(addr, port, &a);
    struct timeval tv = {timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static int connect_local(void) {
    const struct in_addr lo = {htonl(INADDR_LOOPBACK)};
    return connect_to(lo, server_port, 120);
}

/* One HTTP request, with the header lines `extra` ("Name: value\r\n"...,
 * or NULL); returns the status, *body the response body. */
static int http_ex(const char *method, const char *path, const char *extra, const char *body,
                   size_t blen, char **out) {
    int fd = connect_local();
    char head[768];
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      method, path, extra ? extra : "", body ? blen : 0);
    if (write(fd, head, (size_t)hl) != hl) return -1;
    size_t off = 0;
    while (body && off < blen) {
        ssize_t w = write(fd, body + off, blen - off);
        if (w <= 0) break; /* the server may answer early (413) and close */
        off += (size_t)w;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (cap - len < 4096) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    close(fd);
    int status = -1;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    char *b = strstr(buf, "\r\n\r\n");
    *out = strdup(b ? b + 4 : "");
    free(buf);
    return status;
}

static int http(const char *method, const char *path, const char *body, size_t blen, char **out) {
    return http_ex(method, path, NULL, body, blen, out);
}

static cJSON *post_json(const char *path, const char *body, int *status) {
    char *out;
    *status = http("POST", path, body, strlen(body), &out);
    cJSON *j = cJSON_Parse(out);
    if (!j) print_error("%s: not JSON: %.300s\n", path, out);
    free(out);
    return j;
}

/* `resid COMMAND STORIES ARGS JSON_OPT` (stderr dropped), which must exit
 * 0 with JSON on stdout; parsed. */
static cJSON *cli_run_json(const char *command, const char *args, const char *json_opt) {
    size_t cap = strlen(args) + strlen(json_opt) + 2;
    char *full = malloc(cap);
    snprintf(full, cap, "%s %s", args, json_opt);
    char *line = tu_cli_line(command, STORIES, NULL, full, false);
    cJSON *j = tu_run_json(line);
    free(line), free(full);
    return j;
}

/* `resid explain STORIES ARGS --json -`, parsed. */
static cJSON *cli_json(const char *args) {
    return cli_run_json("explain", args, "--json -");
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* head, then "a " 4000 times (a prompt of several thousand tokens), then
 * tail; *n its length. malloc'd. */
static char *many_tokens(const char *head, const char *tail, size_t *n) {
    size_t cap = 64 * 1024;
    char *p = malloc(cap);
    *n = (size_t)snprintf(p, cap, "%s", head);
    for (int i = 0; i < 4000; i++)
        *n += (size_t)snprintf(p + *n, cap - *n, "a ");
    *n += (size_t)snprintf(p + *n, cap - *n, "%s", tail);
    return p;
}

/* The served report matches the CLI's: target, p, ranked ids and LPIs. */
static double compare_reports(const cJSON *a, const cJSON *b) {
    const cJSON *ta = cJSON_GetObjectItem(a, "target"), *tb = cJSON_GetObjectItem(b, "target");
    if (num(ta, "id") != num(tb, "id")) return INFINITY;
    double worst = fabs(num(ta, "prob") - num(tb, "prob"));
    static const char *lists[] = {"heads", "head_positions", "ffn_neurons", "attn_neurons"};
    for (int li = 0; li < 4; li++) {
        const cJSON *la = cJSON_GetObjectItem(a, lists[li]),
                    *lb = cJSON_GetObjectItem(b, lists[li]);
        if (cJSON_GetArraySize(la) != cJSON_GetArraySize(lb) || cJSON_GetArraySize(la) == 0)
            return INFINITY;
        for (int i = 0; i < cJSON_GetArraySize(la); i++) {
            const cJSON *x = cJSON_GetArrayItem(la, i), *y = cJSON_GetArrayItem(lb, i);
            if (strcmp(cJSON_GetObjectItem(x, "id")->valuestring,
                       cJSON_GetObjectItem(y, "id")->valuestring))
                return INFINITY;
            worst = fmax(worst, fabs(num(x, "lpi") - num(y, "lpi")));
        }
    }
    return worst;
}

#define N_REQ 4
static const char *req_body[N_REQ] = {
    "{\"prompt\": \"Once upon a time, there was a boy named Tim. Tim had a big red\"}",
    "{\"prompt\": \"Once upon a time, there was a boy named Tim. Tim had a big red\", \"vs\": \" "
    "a\"}",
    "{\"prompt\": \"Lily went to the park\", \"lens\": \"logit-lens\", \"top\": 5}",
    "{\"ids\": [1, 403, 407, 261, 378], \"target_id\": 432}",
};
static const char *req_args[N_REQ] = {
    "-p 'Once upon a time, there was a boy named Tim. Tim had a big red'",
    "-p 'Once upon a time, there was a boy named Tim. Tim had a big red' --vs ' a'",
    "-p 'Lily went to the park' --lens logit-lens --top 5",
    "--ids 1,403,407,261,378 --no-bos --target-id 432",
};
static cJSON *ref[N_REQ];

typedef struct client {
    int which, status;
    double diff;
    bool extras;
} client;

static void *client_main(void *arg) {
    client *c = arg;
    char *out;
    c->status = http("POST", "/api/explain", req_body[c->which], strlen(req_body[c->which]), &out);
    cJSON *j = cJSON_Parse(out);
    c->diff = j ? compare_reports(j, ref[c->which]) : INFINITY;
    c->extras = j && cJSON_GetObjectItem(j, "lens_grid") &&
                cJSON_GetObjectItem(j, "head_details") && cJSON_GetObjectItem(j, "neuron_details");
    cJSON_Delete(j);
    free(out);
    return NULL;
}

static void test_concurrent(void **state) {
    (void)state;
    for (int i = 0; i < N_REQ; i++)
        ref[i] = cli_json(req_args[i]);
    enum { N = 8 };
    client cl[N];
    pthread_t th[N];
    double t0 = now();
    for (int i = 0; i < N; i++) {
        cl[i] = (client){i % N_REQ, 0, INFINITY, false};
        assert_int_equal(pthread_create(&th[i], NULL, client_main, &cl[i]), 0);
    }
    double worst = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(cl[i].status, 200);
        assert_true(cl[i].extras);
        worst = fmax(worst, cl[i].diff);
    }
    printf("# %d concurrent clients: all 200 in %.2f s; max |served - CLI| (p, LPIs) = %.2e\n", N,
           now() - t0, worst);
    assert_true(worst <= 1e-12);
    for (int i = 0; i < N_REQ; i++)
        cJSON_Delete(ref[i]);
}

static void expect_error(const char *path, const char *body, size_t blen, int status,
                         const char *needle) {
    char *out;
    int st = http("POST", path, body, blen, &out);
    cJSON *j = cJSON_Parse(out);
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    printf("# %s -> %d %s\n", path, st, cJSON_IsString(e) ? e->valuestring : out);
    assert_int_equal(st, status);
    assert_true(cJSON_IsString(e));
    if (!strstr(e->valuestring, needle)) {
        print_error("expected '%s' in '%s'\n", needle, e->valuestring);
        fail();
    }
    cJSON_Delete(j);
    free(out);
    /* Still up. */
    assert_int_equal(http("GET", "/api/info", NULL, 0, &out), 200);
    free(out);
}

static void test_errors(void **state) {
    (void)state;
    const char *bad = "{\"prompt\": \"Once upon\", ";
    expect_error("/api/explain", bad, strlen(bad), 400, "JSON object");
    expect_error("/api/explain", "[1,2]", 5, 400, "JSON object");
    /* Oversized body: 200 KB (limit 64 KiB). */
    size_t big = 200 * 1024;
    char *b = malloc(big + 1);
    memset(b, ' ', big);
    b[0] = '{', b[big - 1] = '}';
    expect_error("/api/explain", b, big, 413, "larger than 65536 bytes");
    free(b);
    /* A prompt of several thousand tokens (limit 512 here). */
    size_t n;
    char *p = many_tokens("{\"prompt\": \"", "\"}", &n);
    expect_error("/api/explain", p, n, 413, "at most 512");
    free(p);
    /* Bad requests: path, body, status, a piece of the message. */
    static const struct {
        const char *path, *body;
        int status;
        const char *says;
    } bad_reqs[] = {
        {"/api/neuron", "{\"layer\": 99, \"neuron\": 0}", 400, "out of range"},
        {"/api/neuron", "{\"layer\": 0, \"neuron\": 100000}", 400, "out of range"},
        {"/api/head", "{\"prompt\": \"Once upon\", \"layer\": 7, \"head\": 0}", 400,
         "out of range"},
        {"/api/explain", "{\"prompt\": 42}", 400, "must be a string"},
        {"/api/explain", "{\"prompt\": \"Once upon\", \"target\": \"not one token\"}", 400,
         "tokens"},
        {"/api/explain", "{\"ids\": [1, 99999]}", 400, "not a token id"},
        {"/api/nothing", "{}", 404, "not found"},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": [\"n:3_x\"]}", 400, "ablate"},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": [\"n:99_0\"]}", 400,
         "out of range"},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": [\"1_2\"]}", 400, "ambiguous"},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": []}", 400, "non-empty array"},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": [\"h:1_0\"], \"mode\": \"steer\"}",
         400, "\"mode\" must be \"zero\", \"mean\", \"replace\" or \"add\""},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": [{\"kind\": \"bogus\"}]}", 400,
         "unknown"},
        {"/api/ablate",
         "{\"prompt\": \"Once upon\", \"units\": [{\"kind\": \"head-pos\", "
         "\"layer\": 1, \"head\": 0}]}",
         400, "missing"},
        {"/api/ablate", "{\"prompt\": \"Once upon\", \"units\": [\"1_0_99\"]}", 400,
         "source position"},
        {"/api/ablate", "{}", 400, "prompt"},
    };
    for (size_t i = 0; i < sizeof bad_reqs / sizeof bad_reqs[0]; i++)
        expect_error(bad_reqs[i].path, bad_reqs[i].body, strlen(bad_reqs[i].body),
                     bad_reqs[i].status, bad_reqs[i].says);

    /* A valid neuron request without a prompt: its tokens. */
    int st;
    cJSON *j = post_json("/api/neuron", "{\"layer\": 1, \"neuron\": 150}", &st);
    assert_int_equal(st, 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "top_tokens")), 10);
    cJSON_Delete(j);
}

/* `resid ablate MODEL ARGS --json`, parsed: the reference of /api/ablate. */
static cJSON *cli_ablate(const char *args) {
    return cli_run_json("ablate", args, "--json");
}

/* The field `k` of a and b printed unformatted: equal strings = every
 * number equal to the last digit cJSON prints (it prints the shortest
 * decimal that reads back as the same double). */
static void assert_same_field(const cJSON *a, const cJSON *b, const char *k) {
    char *x = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(a, k));
    char *y = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(b, k));
    if (!x || !y || strcmp(x, y)) {
        print_error("field \"%s\": served %s, CLI %s\n", k, x ? x : "(none)", y ? y : "(none)");
        fail();
    }
    free(x), free(y);
}

/* POSTs body to /api/ablate and checks the answer against the CLI's JSON
 * ref: tokens, target, mode, units, before, after (and add's scale and
 * layers) exactly. Returns the served JSON. */
static cJSON *ablate_vs_cli(const char *what, const char *body, const cJSON *ref) {
    int st;
    cJSON *j = post_json("/api/ablate", body, &st);
    if (st != 200) print_error("%s: status %d\n", what, st);
    assert_int_equal(st, 200);
    assert_non_null(j);
    static const char *fields[] = {"tokens", "target", "mode", "units", "before", "after"};
    for (size_t k = 0; k < sizeof fields / sizeof *fields; k++)
        assert_same_field(j, ref, fields[k]);
    if (!strcmp(cJSON_GetObjectItem(ref, "mode")->valuestring, "add")) {
        assert_same_field(j, ref, "scale");
        assert_same_field(j, ref, "layers");
    }
    const double pb = num(cJSON_GetObjectItem(j, "before"), "prob");
    const double pa = num(cJSON_GetObjectItem(j, "after"), "prob");
    printf("# /api/ablate %s == resid ablate --json (every field of before/after exact); "
           "p(target) %.6f -> %.6f\n",
           what, pb, pa);
    return j;
}

#define TIM "Once upon a time, there was a boy named Tim. Tim had a big red"

/* Mode zero: units as ids and as objects. */
static void test_ablate(void **state) {
    (void)state;
    cJSON *ref_j = cli_ablate("-p '" TIM "' --units n:3_17,h:4_2,2_1_5");
    static const char *bodies[2] = {
        "{\"prompt\": \"" TIM "\", \"units\": [\"n:3_17\", \"h:4_2\", \"2_1_5\"], \"mode\": "
        "\"zero\"}",
        "{\"prompt\": \"" TIM "\", \"units\": [{\"kind\": \"ffn-neuron\", \"layer\": 3, "
        "\"neuron\": 17}, {\"kind\": \"head\", \"layer\": 4, \"head\": 2}, {\"kind\": "
        "\"head-pos\", \"layer\": 2, \"head\": 1, \"pos\": 5}]}",
    };
    for (int b = 0; b < 2; b++) {
        cJSON *j = ablate_vs_cli(b ? "zero (objects)" : "zero (ids)", bodies[b], ref_j);
        const double pb = num(cJSON_GetObjectItem(j, "before"), "prob");
        const double pa = num(cJSON_GetObjectItem(j, "after"), "prob");
        assert_true(fabs(pa - pb) > 1e-6); /* the intervention did something */
        cJSON_Delete(j);
    }
    cJSON_Delete(ref_j);
}

/* The tokens' ids of a {tokens: [{id}...]}-style array as "1,2,3". */
static void ids_text(const cJSON *tokens, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tokens) {
        len += (size_t)snprintf(buf + len, n - len, "%s%d", len ? "," : "", (int)num(t, "id"));
    }
}

/* Mode replace (activation patching) against `resid ablate --mode replace
 * --clean`: the clean prompt as text and as ids; patching in the prompt's
 * own activations changes nothing, bit for bit. */
static void test_ablate_replace(void **state) {
    (void)state;
    cJSON *ref_j = cli_ablate("-p 'Lily saw a big dog' --units a2,h:3_1,2_1_5 --mode replace "
                              "--clean 'Lily saw a big cat'");
    cJSON *j = ablate_vs_cli("replace (clean text)",
                             "{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\", "
                             "\"h:3_1\", \"2_1_5\"], \"mode\": \"replace\", \"clean\": \"Lily saw "
                             "a big cat\"}",
                             ref_j);
    /* the clean tokens, as `resid tokenize` gives them */
    cJSON *tk = cli_run_json("tokenize", "-p 'Lily saw a big cat'", "--json");
    char want[256], got[256];
    ids_text(cJSON_GetObjectItem(tk, "tokens"), want, sizeof want);
    ids_text(cJSON_GetObjectItem(j, "clean_tokens"), got, sizeof got);
    printf("# clean_tokens %s\n", got);
    assert_string_equal(got, want);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "clean_tokens")), 7);
    assert_true(fabs(num(cJSON_GetObjectItem(j, "after"), "prob") -
                     num(cJSON_GetObjectItem(j, "before"), "prob")) > 1e-6);
    cJSON_Delete(j), cJSON_Delete(tk);
    /* clean_ids: the same answer */
    char body[512];
    snprintf(body, sizeof body,
             "{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\", \"h:3_1\", \"2_1_5\"], "
             "\"mode\": \"replace\", \"clean_ids\": [%s]}",
             want);
    j = ablate_vs_cli("replace (clean_ids)", body, ref_j);
    cJSON_Delete(j), cJSON_Delete(ref_j);
    /* positions and a target given; and the prompt patched into itself:
     * after == before exactly */
    ref_j = cli_ablate("-p '" TIM "' --units f1,h:2_3 --mode replace --clean '" TIM
                       "' --positions 3,20 --target-id 395");
    j = ablate_vs_cli("replace (self, positions, target_id)",
                      "{\"prompt\": \"" TIM "\", \"units\": [\"f1\", \"h:2_3\"], \"mode\": "
                      "\"replace\", \"clean\": \"" TIM "\", \"positions\": [3, 20], "
                      "\"target_id\": 395}",
                      ref_j);
    char *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "before"));
    char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "after"));
    assert_string_equal(a, b);
    free(a), free(b);
    cJSON_Delete(j), cJSON_Delete(ref_j);
}

/* Mode mean against `resid ablate --mode mean --mean-prompts FILE`: the
 * same prompts as a JSON array (texts, and one as ids). */
static void test_ablate_mean(void **state) {
    (void)state;
    static const char lines[] = "Lily went to the park\nThe cat sat on the mat\nOnce upon a "
                                "time\n";
    char *file = tu_write_temp("serve_mean_prompts.txt", lines, sizeof lines - 1);
    char *q = tu_sh_quote(file);
    char args[1024];
    snprintf(args, sizeof args,
             "-p '" TIM "' --units n:3_17,h:4_2,a2,f1,wo:1_0_5 --mode mean --mean-prompts %s", q);
    cJSON *ref_j = cli_ablate(args);
    const char *body = "{\"prompt\": \"" TIM "\", \"units\": [\"n:3_17\", \"h:4_2\", \"a2\", "
                       "\"f1\", \"wo:1_0_5\"], \"mode\": \"mean\", \"mean_prompts\": [\"Lily "
                       "went to the park\", \"The cat sat on the mat\", \"Once upon a time\"]}";
    cJSON *j = ablate_vs_cli("mean (3 prompts)", body, ref_j);
    assert_int_equal(num(j, "n_mean_prompts"), 3);
    assert_true(fabs(num(cJSON_GetObjectItem(j, "after"), "prob") -
                     num(cJSON_GetObjectItem(j, "before"), "prob")) > 1e-6);
    cJSON_Delete(j);
    /* "Once upon a time" as ids */
    body = "{\"prompt\": \"" TIM "\", \"units\": [\"n:3_17\", \"h:4_2\", \"a2\", \"f1\", "
           "\"wo:1_0_5\"], \"mode\": \"mean\", \"mean_prompts\": [\"Lily went to the park\", "
           "\"The cat sat on the mat\", [1, 403, 407, 261, 378]]}";
    j = ablate_vs_cli("mean (a prompt as ids)", body, ref_j);
    cJSON_Delete(j), cJSON_Delete(ref_j);
    /* one prompt, query positions */
    static const char one[] = "Tom had a red ball\n";
    char *file1 = tu_write_temp("serve_mean_prompt1.txt", one, sizeof one - 1);
    char *q1 = tu_sh_quote(file1);
    snprintf(args, sizeof args,
             "-p '" TIM "' --units h:1_0,n:4_100 --mode mean --mean-prompts %s --positions 20", q1);
    ref_j = cli_ablate(args);
    j = ablate_vs_cli("mean (1 prompt, positions)",
                      "{\"prompt\": \"" TIM "\", \"units\": [\"h:1_0\", \"n:4_100\"], \"mode\": "
                      "\"mean\", \"mean_prompts\": [\"Tom had a red ball\"], \"positions\": [20]}",
                      ref_j);
    assert_int_equal(num(j, "n_mean_prompts"), 1);
    cJSON_Delete(j), cJSON_Delete(ref_j);
    remove(file), remove(file1);
    free(file), free(q), free(file1), free(q1);
}

/* Mode add (steering with each unit's own vector at t*) against `resid
 * ablate --mode add` without --vector: with scale and layers, and the
 * defaults (scale 1, the final residual). */
static void test_ablate_add(void **state) {
    (void)state;
    cJSON *ref_j =
        cli_ablate("-p '" TIM "' --units h:3_1,n:2_5,2_1_5,a1 --mode add --scale 2 --layers 2,4");
    cJSON *j = ablate_vs_cli("add (scale 2, layers 2,4)",
                             "{\"prompt\": \"" TIM "\", \"units\": [\"h:3_1\", \"n:2_5\", "
                             "\"2_1_5\", \"a1\"], \"mode\": \"add\", \"scale\": 2, \"layers\": "
                             "[2, 4]}",
                             ref_j);
    assert_true(fabs(num(cJSON_GetObjectItem(j, "after"), "prob") -
                     num(cJSON_GetObjectItem(j, "before"), "prob")) > 1e-6);
    cJSON_Delete(j), cJSON_Delete(ref_j);
    ref_j = cli_ablate("-p 'Lily saw a big dog' --units f3,3_1_2_4 --mode add --scale -1.5");
    j = ablate_vs_cli("add (defaults, scale -1.5)",
                      "{\"prompt\": \"Lily saw a big dog\", \"units\": [\"f3\", \"3_1_2_4\"], "
                      "\"mode\": \"add\", \"scale\": -1.5}",
                      ref_j);
    cJSON_Delete(j), cJSON_Delete(ref_j);
}

/* Bad inputs of the modes: each a 4xx with a clear message, server up. */
static void test_ablate_mode_errors(void **state) {
    (void)state;
    static const struct {
        const char *body, *needle;
        int status;
    } cases[] = {
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\"}",
         "mode \"replace\" needs one of \"clean\" (text) or \"clean_ids\"", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
         "\"clean\": \"Lily saw a big elephant today\"}",
         "the clean prompt has 14 tokens but the prompt has 7", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
         "\"clean_ids\": [1, 317, 394]}",
         "the clean prompt has 3 tokens but the prompt has 7", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
         "\"clean_ids\": [1, 317, 394, 261, 370, 280, 9999]}",
         "\"clean_ids\"[6] is not a token id", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
         "\"clean\": \"Lily saw a big cat\", \"clean_ids\": [1]}",
         "not both", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
         "\"clean\": 7}",
         "\"clean\" must be a string", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"mean\"}",
         "mode \"mean\" needs \"mean_prompts\"", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"mean\", "
         "\"mean_prompts\": []}",
         "mode \"mean\" needs \"mean_prompts\"", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"mean\", "
         "\"mean_prompts\": [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", "
         "\"j\", \"k\", \"l\", \"m\", \"n\", \"o\", \"p\", \"q\"]}",
         "17 mean prompts; this server takes at most 16", 413},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"mean\", "
         "\"mean_prompts\": [\"a\", 3]}",
         "\"mean_prompts[1]\" must be a text or an array of token ids", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"2_1_5\"], \"mode\": \"mean\", "
         "\"mean_prompts\": [\"a\"]}",
         "unit 2_1_5 names a source position: it has no mean", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"mean\", "
         "\"mean_prompts\": [\"a\"], \"means\": [0.5]}",
         "\"means\" (raw unit means) is not served", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"clean\": \"x\"}",
         "\"clean\" goes with \"mode\": \"replace\"", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
         "\"clean\": \"Lily saw a big cat\", \"mean_prompts\": [\"a\"]}",
         "\"mean_prompts\" goes with \"mode\": \"mean\"", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"add\", "
         "\"vector\": [1, 2]}",
         "\"vector\" is not served", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"add\", "
         "\"layers\": [6]}",
         "\"layers\"[0] is not a layer in [0, 5]", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"add\", "
         "\"scale\": \"big\"}",
         "\"scale\" must be a finite number", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"ablate\"}",
         "\"mode\" must be \"zero\", \"mean\", \"replace\" or \"add\"", 400},
        {"{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": 2}",
         "\"mode\" must be \"zero\", \"mean\", \"replace\" or \"add\"", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_error("/api/ablate", cases[i].body, strlen(cases[i].body), cases[i].status,
                     cases[i].needle);
    /* The prompt-length limit (512 here) holds for clean and mean prompts. */
    static const char *const heads[] = {
        "{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"replace\", "
        "\"clean\": \"",
        "{\"prompt\": \"Lily saw a big dog\", \"units\": [\"a2\"], \"mode\": \"mean\", "
        "\"mean_prompts\": [\"Lily\", \"",
    };
    static const char *const tails[] = {"\"}", "\"]}"};
    static const char *const needles[] = {"the clean prompt is", "mean prompt 1"};
    for (int k = 0; k < 2; k++) {
        size_t n;
        char *p = many_tokens(heads[k], tails[k], &n);
        expect_error("/api/ablate", p, n, 413, "at most 512");
        expect_error("/api/ablate", p, n, 413, needles[k]);
        free(p);
    }
}

/* ---- GET /api/progress ------------------------------------------------- */

/* The stages of one /api/explain with compare_scores, numbered 1..11 in a
 * row: the report's (include/resid.h), then the web extras'
 * (src/output/html.h). */
static const char *const web_stages[] = {"lens grid", "head details", "neuron details"};
enum { N_EXPLAIN_STAGES = TU_N_EXPLAIN_STAGES + sizeof web_stages / sizeof *web_stages };

static const char *explain_stage(int i) {
    return i < TU_N_EXPLAIN_STAGES ? tu_explain_stages[i] : web_stages[i - TU_N_EXPLAIN_STAGES];
}

/* A slow /api/explain, sent from a thread; `done` set when answered. */
typedef struct slow_req {
    const char *body, *extra;
    int status;
    double seconds;
    atomic_int done;
} slow_req;

static void *slow_main(void *arg) {
    slow_req *q = arg;
    char *out;
    const double t0 = now();
    q->status = http_ex("POST", "/api/explain", q->extra, q->body, strlen(q->body), &out);
    q->seconds = now() - t0;
    free(out);
    atomic_store(&q->done, 1);
    return NULL;
}

/* Starts *q, a slow /api/explain of body (with the header lines extra, or
 * NULL), on the thread *th. */
static void start_slow(slow_req *q, pthread_t *th, const char *body, const char *extra) {
    *q = (slow_req){.body = body, .extra = extra};
    atomic_init(&q->done, 0);
    assert_int_equal(pthread_create(th, NULL, slow_main, q), 0);
}

/* An /api/explain body: TIM repeated `reps` times (20 tokens each; 24 of
 * them are 482 tokens, under this server's --max-tokens 512). */
static char *long_body(int reps, bool compare) {
    size_t cap = (size_t)reps * (sizeof TIM + 1) + 128, n = 0;
    char *b = malloc(cap);
    assert_non_null(b);
    n += (size_t)snprintf(b, cap, "{\"prompt\": \"");
    for (int i = 0; i < reps; i++)
        n += (size_t)snprintf(b + n, cap - n, "%s%s", i ? " " : "", TIM);
    snprintf(b + n, cap - n, "\", \"compare_scores\": %s}", compare ? "true" : "false");
    return b;
}

static const char *str_field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* GET /api/progress, parsed; *dt its latency (s). */
static cJSON *get_progress(double *dt) {
    char *out;
    const double t0 = now();
    const int st = http("GET", "/api/progress", NULL, 0, &out);
    if (dt) *dt = now() - t0;
    cJSON *j = cJSON_Parse(out);
    if (st != 200 || !j) print_error("/api/progress: %d %.300s\n", st, out);
    assert_int_equal(st, 200);
    assert_non_null(j);
    free(out);
    return j;
}

/* Nothing computing, nobody waiting, and nothing else said. */
static void assert_idle(void) {
    cJSON *j = get_progress(NULL);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "busy")));
    assert_int_equal(num(j, "waiting"), 0);
    assert_null(str_field(j, "endpoint"));
    assert_null(str_field(j, "stage"));
    cJSON_Delete(j);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* While a slow /api/explain (482 tokens, compare_scores) runs, polls of
 * /api/progress answer at once with busy true, the request's id, and a
 * stage of the known list at its own number (1..11), the steps never going
 * back; afterwards busy is false. Then five requests at once: a poll sees
 * four of them waiting while the fifth computes. No timing is asserted
 * but the median poll's being under a quarter of the computation. */
static void test_progress(void **state) {
    (void)state;
    assert_idle();
    char *out;
    assert_int_equal(http("POST", "/api/progress", "{}", 2, &out), 405);
    free(out);

    char *body = long_body(24, true);
    int seen = 0; /* busy observations with a stage */
    enum { MAX_LAT = 1 << 14 };
    double *lat = malloc(MAX_LAT * sizeof *lat);
    assert_non_null(lat);
    /* Retried if the computation ended before any poll saw a stage. */
    for (int attempt = 0; attempt < 3 && !seen; attempt++) {
        slow_req q;
        pthread_t th;
        start_slow(&q, &th, body, "X-Resid-Request: progress-test-1\r\n");
        int n_lat = 0, n_busy = 0, last_step = 0, first_step = 0;
        double last_elapsed = 0;
        while (!atomic_load(&q.done)) {
            double dt;
            cJSON *j = get_progress(&dt);
            if (n_lat < MAX_LAT) lat[n_lat++] = dt;
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "busy"))) {
                n_busy++;
                assert_string_equal(str_field(j, "endpoint"), "explain");
                assert_string_equal(str_field(j, "request"), "progress-test-1");
                assert_int_equal(num(j, "waiting"), 0);
                const double el = num(j, "elapsed_s");
                assert_true(el >= last_elapsed);
                last_elapsed = el;
                const char *stage = str_field(j, "stage");
                if (stage) {
                    const int step = (int)num(j, "step"), n = (int)num(j, "n_steps");
                    if (!first_step) first_step = step;
                    if (step != last_step) printf("#   %.3f s: %s (%d/%d)\n", el, stage, step, n);
                    assert_int_equal(n, N_EXPLAIN_STAGES);
                    assert_true(step >= 1 && step <= n);
                    assert_string_equal(stage, explain_stage(step - 1));
                    assert_true(step >= last_step);
                    last_step = step;
                    seen++;
                }
            }
            cJSON_Delete(j);
            usleep(10000);
        }
        pthread_join(th, NULL);
        assert_int_equal(q.status, 200);
        qsort(lat, (size_t)n_lat, sizeof *lat, cmp_double);
        const double med = n_lat ? lat[n_lat / 2] : 0, max = n_lat ? lat[n_lat - 1] : 0;
        printf("# explain (482 tokens, compare_scores) took %.2f s; %d polls, %d busy, %d with "
               "a stage (steps %d..%d of %d); poll latency median %.1f ms, max %.1f ms\n",
               q.seconds, n_lat, n_busy, seen, first_step, last_step, N_EXPLAIN_STAGES, 1e3 * med,
               1e3 * max);
        if (seen) assert_true(med < q.seconds / 4);
        assert_idle();
    }
    assert_true(seen > 0);
    free(body), free(lat);

    /* A queue: one computes, four wait on the compute lock, each holding
     * only its own connection's thread, and a poll still answers. */
    enum { NQ = 5 };
    int max_wait = 0;
    for (int attempt = 0; attempt < 3 && max_wait < NQ - 1; attempt++) {
        body = long_body(24, attempt > 0); /* slower if retried */
        slow_req q[NQ];
        pthread_t th[NQ];
        for (int i = 0; i < NQ; i++)
            start_slow(&q[i], &th[i], body, NULL);
        int n_polls = 0;
        for (int n_done = 0; n_done < NQ;) {
            n_done = 0;
            for (int i = 0; i < NQ; i++)
                n_done += atomic_load(&q[i].done);
            cJSON *j = get_progress(NULL);
            const int w = (int)num(j, "waiting");
            assert_true(w >= 0 && w <= NQ - 1);
            if (w > max_wait) max_wait = w;
            n_polls++;
            cJSON_Delete(j);
            usleep(10000);
        }
        double total = 0;
        for (int i = 0; i < NQ; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(q[i].status, 200);
            total = fmax(total, q[i].seconds);
        }
        printf("# %d explains at once: all 200 in %.2f s; %d polls, at most %d waiting\n", NQ,
               total, n_polls, max_wait);
        free(body);
        assert_idle();
    }
    assert_int_equal(max_wait, NQ - 1);
}

/* --max-queue 1: while one computation runs and one waits, more get a 429
 * JSON error that says so; every request gets 200 or that 429, and the
 * server answers normally afterwards. */
static void test_queue_limit(void **state) {
    (void)state;
    pid_t pid;
    int port, saved = server_port;
    assert_int_equal(spawn_server("1", &pid, &port), 0);
    server_port = port;
    enum { NQ = 5 };
    int n_busy = 0, n_ok = 0;
    for (int attempt = 0; attempt < 3 && n_busy == 0; attempt++) {
        char *body = long_body(24, true);
        slow_req q[NQ];
        pthread_t th[NQ];
        for (int i = 0; i < NQ; i++)
            start_slow(&q[i], &th[i], body, NULL);
        for (int i = 0; i < NQ; i++) {
            pthread_join(th[i], NULL);
            assert_true(q[i].status == 200 || q[i].status == 429);
            n_busy += q[i].status == 429;
            n_ok += q[i].status == 200;
        }
        free(body);
    }
    char *out;
    const char *busy = "{\"prompt\": \"Once upon a time\"}";
    /* The message: one slow request computing, one waiting (seen through
     * /api/progress), then a third is refused. */
    int st = 0;
    for (int attempt = 0; attempt < 3 && st != 429; attempt++) {
        char *body = long_body(24, true);
        slow_req a, b;
        pthread_t ta, tb;
        start_slow(&a, &ta, body, NULL);
        for (int i = 0; i < 500; i++) { /* until it computes */
            cJSON *p = get_progress(NULL);
            const bool on = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "busy"));
            cJSON_Delete(p);
            if (on || atomic_load(&a.done)) break;
            usleep(5000);
        }
        start_slow(&b, &tb, body, NULL);
        int waiting = 0;
        for (int i = 0; i < 500 && !waiting && !atomic_load(&a.done); i++) {
            cJSON *p = get_progress(NULL);
            waiting = (int)num(p, "waiting");
            cJSON_Delete(p);
            if (!waiting) usleep(5000);
        }
        if (waiting && !atomic_load(&a.done)) {
            cJSON *j = post_json("/api/explain", busy, &st);
            if (st == 429) {
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
                assert_true(cJSON_IsString(e));
                assert_non_null(strstr(e->valuestring, "busy"));
                assert_non_null(strstr(e->valuestring, "--max-queue"));
                printf("# 429: %s\n", e->valuestring);
            }
            cJSON_Delete(j);
        }
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        assert_int_equal(a.status, 200);
        assert_int_equal(b.status, 200);
        free(body);
    }
    assert_int_equal(st, 429);
    assert_int_equal(http("POST", "/api/explain", busy, strlen(busy), &out), 200);
    free(out);
    printf("# --max-queue 1, %d explains at once: %d x 200, %d x 429\n", NQ, n_ok, n_busy);
    assert_true(n_busy > 0 && n_ok >= 2);
    stop_child(pid);
    server_port = saved;
}

static void test_stalled_client(void **state) {
    (void)state;
    /* Half a request, then silence, on several connections. */
    int fds[6];
    for (int i = 0; i < 6; i++) {
        fds[i] = connect_local();
        const char *half = "POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len";
        assert_true(write(fds[i], half, strlen(half)) > 0);
    }
    double t0 = now();
    int st;
    cJSON *j = post_json("/api/explain", req_body[3], &st);
    double dt = now() - t0;
    printf("# with 6 stalled connections open, a request took %.2f s\n", dt);
    assert_int_equal(st, 200);
    assert_true(dt < 3.0); /* < the 3 s connection timeout: not waited for */
    cJSON_Delete(j);
    /* The stalled ones are dropped by the timeout. */
    char c;
    struct timeval tv = {10, 0};
    setsockopt(fds[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    t0 = now();
    ssize_t r = read(fds[0], &c, 1);
    printf("# stalled connection closed by the server after %.1f s (read %zd)\n", now() - t0, r);
    assert_true(r <= 0 && now() - t0 < 9.0);
    for (int i = 0; i < 6; i++)
        close(fds[i]);
}

/* The first IPv4 address of this machine that is not loopback, or false. */
static bool non_loopback_addr(struct in_addr *out) {
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0) return false;
    bool found = false;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        const struct in_addr a = ((const struct sockaddr_in *)i->ifa_addr)->sin_addr;
        if ((ntohl(a.s_addr) >> 24) != 127) *out = a, found = true;
    }
    freeifaddrs(ifs);
    return found;
}

/* connect() to addr:port; 0 or the errno. */
static int try_connect(struct in_addr addr, int port) {
    struct sockaddr_in a;
    int fd = tcp_socket(addr, port, &a);
    int r = connect(fd, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
    close(fd);
    return r;
}

/* A request to this machine's non-loopback address: refused by the default
 * server (bound to loopback), answered by one given --host 0.0.0.0
 * --allow-remote. */
static void test_non_loopback_request(void **state) {
    (void)state;
    struct in_addr nl;
    if (!non_loopback_addr(&nl)) {
        printf("# no non-loopback IPv4 interface here: nothing to connect through\n");
        skip();
    }
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &nl, ip, sizeof ip);
    const int r = try_connect(nl, server_port);
    printf("# %s:%d (the default server): %s\n", ip, server_port, r ? strerror(r) : "connected");
    assert_int_equal(r, ECONNREFUSED);

    pid_t pid;
    int port;
    assert_int_equal(spawn_server_on("0.0.0.0", NULL, &pid, &port), 0);
    int fd = connect_to(nl, port, 30);
    const char req[] = "GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
    char buf[4096];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof buf - 1 && (k = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)k;
    buf[n] = 0;
    close(fd);
    stop_child(pid);
    printf("# %s:%d (--host 0.0.0.0 --allow-remote): %.15s\n", ip, port, buf);
    assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    assert_non_null(strstr(buf, "\"n_layer\""));
}

static void test_non_loopback_refused(void **state) {
    (void)state;
    char *path = tu_model_path(STORIES);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' serve '%s' --host 0.0.0.0 --port 0 2>&1", tu_cli(), path);
    int st;
    char *out = tu_run(cmd, &st);
    printf("# --host 0.0.0.0: exit %d: %s", st, out);
    assert_int_equal(st, 2);
    assert_non_null(strstr(out, "refusing to listen on non-loopback address 0.0.0.0"));
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' serve '%s' --host example.org 2>&1", tu_cli(), path);
    out = tu_run(cmd, &st);
    assert_int_equal(st, 2);
    free(out), free(path);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_ablate),
        cmocka_unit_test(test_ablate_replace),
        cmocka_unit_test(test_ablate_mean),
        cmocka_unit_test(test_ablate_add),
        cmocka_unit_test(test_ablate_mode_errors),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_queue_limit),
        cmocka_unit_test(test_stalled_client),
        cmocka_unit_test(test_non_loopback_refused),
        cmocka_unit_test(test_non_loopback_request),
    };
    return cmocka_run_group_tests(tests, start_server, stop_server);
}
