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
 *  - /api/ablate gives what `resid ablate --json` gives for the same prompt
 *    and units (before/after p, log p, rank: 1e-12; unit ids as strings and
 *    as objects), the zeroed units actually change p(target), and a
 *    malformed or out-of-range unit, a bad mode or no units is a 400;
 *  - a stalled client (half a request, then silence) does not hold up
 *    another request;
 *  - binding to a non-loopback address is refused without --allow-remote.
 * All traffic goes to 127.0.0.1 only.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
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

static int start_server(void **state) {
    (void)state;
    int pfd[2];
    if (pipe(pfd) != 0) return -1;
    char *model = tu_model_path(STORIES);
    server_pid = fork();
    if (server_pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        execl(tu_cli(), tu_cli(), "serve", model, "--port", "0", "--max-tokens", "512",
              "--timeout", "3", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    free(model);
    char buf[1024];
    size_t len = 0;
    FILE *f = fdopen(pfd[0], "r");
    /* First line: "resid serve: NAME on http://127.0.0.1:PORT/ ...". */
    if (!fgets(buf, sizeof buf, f)) return -1;
    len = strlen(buf);
    const char *p = strstr(buf, "http://127.0.0.1:");
    if (!p || !len) {
        fprintf(stderr, "server said: %s\n", buf);
        return -1;
    }
    server_port = atoi(p + strlen("http://127.0.0.1:"));
    /* Keep draining stderr in the background (a detached reader). */
    if (fork() == 0) {
        char b[256];
        while (fgets(b, sizeof b, f))
            ;
        _exit(0);
    }
    fclose(f);
    return server_port > 0 ? 0 : -1;
}

static int stop_server(void **state) {
    (void)state;
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        int st;
        waitpid(server_pid, &st, 0);
    }
    return 0;
}

static int connect_local(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)server_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {120, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* One HTTP request; returns the status, *body the response body. */
static int http(const char *method, const char *path, const char *body, size_t blen, char **out) {
    int fd = connect_local();
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      method, path, body ? blen : 0);
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

static cJSON *post_json(const char *path, const char *body, int *status) {
    char *out;
    *status = http("POST", path, body, strlen(body), &out);
    cJSON *j = cJSON_Parse(out);
    if (!j) print_error("%s: not JSON: %.300s\n", path, out);
    free(out);
    return j;
}

static cJSON *cli_json(const char *args) {
    char *path = tu_model_path(STORIES);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' explain '%s' %s --json - 2>/dev/null", tu_cli(), path, args);
    int st;
    char *out = tu_run(cmd, &st);
    assert_int_equal(st, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    free(out), free(path);
    return j;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* The served report matches the CLI's: target, p, ranked ids and LPIs. */
static double compare_reports(const cJSON *a, const cJSON *b) {
    const cJSON *ta = cJSON_GetObjectItem(a, "target"), *tb = cJSON_GetObjectItem(b, "target");
    if (num(ta, "id") != num(tb, "id")) return INFINITY;
    double worst = fabs(num(ta, "prob") - num(tb, "prob"));
    static const char *lists[] = {"heads", "head_positions", "ffn_neurons", "attn_neurons"};
    for (int li = 0; li < 4; li++) {
        const cJSON *la = cJSON_GetObjectItem(a, lists[li]), *lb = cJSON_GetObjectItem(b, lists[li]);
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
    "{\"prompt\": \"Once upon a time, there was a boy named Tim. Tim had a big red\", \"vs\": \" a\"}",
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
    c->extras = j && cJSON_GetObjectItem(j, "lens_grid") && cJSON_GetObjectItem(j, "head_details") &&
                cJSON_GetObjectItem(j, "neuron_details");
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
    size_t n = 0, cap = 64 * 1024;
    char *p = malloc(cap);
    n += (size_t)snprintf(p, cap, "{\"prompt\": \"");
    for (int i = 0; i < 4000; i++)
        n += (size_t)snprintf(p + n, cap - n, "a ");
    n += (size_t)snprintf(p + n, cap - n, "\"}");
    expect_error("/api/explain", p, n, 413, "at most 512");
    free(p);
    const char *u1 = "{\"layer\": 99, \"neuron\": 0}";
    expect_error("/api/neuron", u1, strlen(u1), 400, "out of range");
    const char *u2 = "{\"layer\": 0, \"neuron\": 100000}";
    expect_error("/api/neuron", u2, strlen(u2), 400, "out of range");
    const char *u3 = "{\"prompt\": \"Once upon\", \"layer\": 7, \"head\": 0}";
    expect_error("/api/head", u3, strlen(u3), 400, "out of range");
    const char *u4 = "{\"prompt\": 42}";
    expect_error("/api/explain", u4, strlen(u4), 400, "must be a string");
    const char *u5 = "{\"prompt\": \"Once upon\", \"target\": \"not one token\"}";
    expect_error("/api/explain", u5, strlen(u5), 400, "tokens");
    const char *u6 = "{\"ids\": [1, 99999]}";
    expect_error("/api/explain", u6, strlen(u6), 400, "not a token id");
    expect_error("/api/nothing", "{}", 2, 404, "not found");
    const char *a1 = "{\"prompt\": \"Once upon\", \"units\": [\"n:3_x\"]}";
    expect_error("/api/ablate", a1, strlen(a1), 400, "ablate");
    const char *a2 = "{\"prompt\": \"Once upon\", \"units\": [\"n:99_0\"]}";
    expect_error("/api/ablate", a2, strlen(a2), 400, "out of range");
    const char *a3 = "{\"prompt\": \"Once upon\", \"units\": [\"1_2\"]}";
    expect_error("/api/ablate", a3, strlen(a3), 400, "ambiguous");
    const char *a4 = "{\"prompt\": \"Once upon\", \"units\": []}";
    expect_error("/api/ablate", a4, strlen(a4), 400, "non-empty array");
    const char *a5 = "{\"prompt\": \"Once upon\", \"units\": [\"h:1_0\"], \"mode\": \"mean\"}";
    expect_error("/api/ablate", a5, strlen(a5), 400, "\"zero\"");
    const char *a6 = "{\"prompt\": \"Once upon\", \"units\": [{\"kind\": \"bogus\"}]}";
    expect_error("/api/ablate", a6, strlen(a6), 400, "unknown");
    const char *a7 = "{\"prompt\": \"Once upon\", \"units\": [{\"kind\": \"head-pos\", "
                     "\"layer\": 1, \"head\": 0}]}";
    expect_error("/api/ablate", a7, strlen(a7), 400, "missing");
    const char *a8 = "{\"prompt\": \"Once upon\", \"units\": [\"1_0_99\"]}";
    expect_error("/api/ablate", a8, strlen(a8), 400, "source position");
    expect_error("/api/ablate", "{}", 2, 400, "prompt");

    /* A valid neuron request without a prompt: its tokens. */
    int st;
    cJSON *j = post_json("/api/neuron", "{\"layer\": 1, \"neuron\": 150}", &st);
    assert_int_equal(st, 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "top_tokens")), 10);
    cJSON_Delete(j);
}

/* /api/ablate vs `resid ablate --json` (the CLI is the reference; both call
 * the interventions library, so equal to 1e-12), units as ids and as
 * objects. */
static void test_ablate(void **state) {
    (void)state;
    char *path = tu_model_path(STORIES);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "'%s' ablate '%s' -p 'Once upon a time, there was a boy named Tim. Tim had a big "
             "red' --units n:3_17,h:4_2,2_1_5 --json 2>/dev/null",
             tu_cli(), path);
    int st;
    char *out = tu_run(cmd, &st);
    assert_int_equal(st, 0);
    cJSON *ref_j = cJSON_Parse(out);
    assert_non_null(ref_j);
    free(out), free(path);
    static const char *bodies[2] = {
        "{\"prompt\": \"Once upon a time, there was a boy named Tim. Tim had a big red\", "
        "\"units\": [\"n:3_17\", \"h:4_2\", \"2_1_5\"], \"mode\": \"zero\"}",
        "{\"prompt\": \"Once upon a time, there was a boy named Tim. Tim had a big red\", "
        "\"units\": [{\"kind\": \"ffn-neuron\", \"layer\": 3, \"neuron\": 17}, {\"kind\": "
        "\"head\", \"layer\": 4, \"head\": 2}, {\"kind\": \"head-pos\", \"layer\": 2, \"head\": 1, "
        "\"pos\": 5}]}",
    };
    static const char *stats[] = {"prob", "logprob", "rank", "model_prob", "model_logprob",
                                  "model_rank"};
    for (int b = 0; b < 2; b++) {
        cJSON *j = post_json("/api/ablate", bodies[b], &st);
        assert_int_equal(st, 200);
        assert_non_null(j);
        assert_int_equal(num(cJSON_GetObjectItem(j, "target"), "id"),
                         num(cJSON_GetObjectItem(ref_j, "target"), "id"));
        char *ua = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "units"));
        char *ub = cJSON_PrintUnformatted(cJSON_GetObjectItem(ref_j, "units"));
        assert_string_equal(ua, ub);
        free(ua), free(ub);
        double worst = 0;
        for (int w = 0; w < 2; w++) {
            const char *when = w ? "after" : "before";
            for (size_t k = 0; k < sizeof stats / sizeof *stats; k++)
                worst = fmax(worst, fabs(num(cJSON_GetObjectItem(j, when), stats[k]) -
                                         num(cJSON_GetObjectItem(ref_j, when), stats[k])));
        }
        const double pb = num(cJSON_GetObjectItem(j, "before"), "prob");
        const double pa = num(cJSON_GetObjectItem(j, "after"), "prob");
        printf("# /api/ablate (%s) vs resid ablate --json: maxdiff %.2e; p(target) %.6f -> "
               "%.6f\n",
               b ? "objects" : "ids", worst, pb, pa);
        assert_true(worst <= 1e-12);
        assert_true(fabs(pa - pb) > 1e-6); /* the intervention did something */
        cJSON_Delete(j);
    }
    cJSON_Delete(ref_j);
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
        cmocka_unit_test(test_stalled_client),
        cmocka_unit_test(test_non_loopback_refused),
    };
    return cmocka_run_group_tests(tests, start_server, stop_server);
}
