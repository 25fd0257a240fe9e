/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The host peer of scripts/demo: a host process in the same Shoal group as
 * the Linux guests and the Shoal test-guest VM.
 *
 *   SHOAL_SOCKET=/path/g.sock demo-peer testguest
 *       Creates the named object "demo-testguest" (two pages), prints
 *         demo-peer: ready id <peer id> offset <region offset> pattern 0x<P> answer 0x<A>
 *       and waits (shoal_futex_wait) until the test guest has filled the
 *       first page with P (`scenario=shm op=write,ring,await`; its ring on
 *       this peer's doorbell wakes the wait), checks every word, then
 *       writes A at offset + 4096, which the test guest awaits.
 *
 *   SHOAL_SOCKET=/path/g.sock demo-peer verify N ITERS
 *       After the guests' Jacobi run (jacobi.c, N x N, ITERS sweeps):
 *       finds its grids by name, recomputes the whole run alone on the
 *       host and compares bit for bit.
 *
 * Exit status 0 when the check passed, 1 otherwise, 2 for bad usage.
 */
#include <shoal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE 4096u
#define PATTERN 0x53484f414c544731ull /* "1GTLAOHS": written by the test guest */
#define ANSWER 0x53484f414c484f53ull  /* "SOHLAOHS": written back by this peer */
#define WAIT_SECONDS 60.0

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "demo-peer: %s failed: %s\n", what, shoal_strerror(rc));
    return 1;
}

static int testguest(shoal_t *s)
{
    shoal_off_t off;
    int rc = shoal_named(s, "demo-testguest", 2 * PAGE, &off, NULL);
    if (rc < 0)
        return fail("shoal_named(demo-testguest)", rc);
    uint64_t *words = shoal_ptr(s, off);
    uint64_t *answer = shoal_ptr(s, off + PAGE);
    if (!words || !answer)
        return fail("shoal_ptr", SHOAL_EFOREIGN);
    /* The guest fills the page in order, so the last word is the signal. */
    uint64_t *last = &words[PAGE / 8 - 1];
    /* The futex word is its low half (little-endian). */
    const uint32_t *low = (const uint32_t *)last;

    printf("demo-peer: ready id %d offset %llu pattern 0x%llx answer 0x%llx\n", shoal_id(s),
           (unsigned long long)off, PATTERN, ANSWER);
    fflush(stdout);

    double t0 = now();
    unsigned wakeups = 0, timeouts = 0;
    while (__atomic_load_n(last, __ATOMIC_ACQUIRE) != PATTERN) {
        if (now() - t0 > WAIT_SECONDS) {
            fprintf(stderr, "demo-peer: no pattern from the test guest within %.0f s\n",
                    WAIT_SECONDS);
            return 1;
        }
        uint32_t seen = __atomic_load_n(low, __ATOMIC_ACQUIRE);
        if (seen == (uint32_t)PATTERN)
            continue;
        rc = shoal_futex_wait(s, low, seen, 500 * 1000 * 1000);
        if (rc == SHOAL_ETIMEDOUT)
            timeouts++;
        else if (rc < 0)
            return fail("shoal_futex_wait", rc);
        else
            wakeups++;
    }
    double seen_at = now() - t0;
    size_t bad = 0;
    for (size_t i = 0; i < PAGE / 8; i++)
        if (__atomic_load_n(&words[i], __ATOMIC_ACQUIRE) != PATTERN)
            bad++;
    if (bad) {
        fprintf(stderr, "demo-peer: %zu of %u words from the test guest are wrong\n", bad,
                PAGE / 8);
        return 1;
    }
    __atomic_store_n(answer, ANSWER, __ATOMIC_RELEASE);
    printf("demo-peer: the test guest's %u bytes arrived %.0f ms after ready "
           "(%u doorbell wake-ups, %u timed-out waits), all correct; answered 0x%llx\n",
           PAGE, seen_at * 1e3, wakeups, timeouts, ANSWER);
    return 0;
}

/* The same arithmetic as jacobi.c, on one thread. */
static double boundary(size_t i, size_t j, size_t n)
{
    if (i == 0)
        return 100.0;
    if (j == 0 || j == n - 1)
        return 50.0 * (double)i / (double)n;
    return 0.0;
}

static int verify(shoal_t *s, size_t n, int iters)
{
    size_t bytes = n * n * sizeof(double);
    shoal_off_t off_a, off_b;
    size_t size_a, size_b;
    int rc = shoal_find(s, "jacobi-a", &off_a, &size_a);
    if (rc < 0)
        return fail("shoal_find(jacobi-a)", rc);
    rc = shoal_find(s, "jacobi-b", &off_b, &size_b);
    if (rc < 0)
        return fail("shoal_find(jacobi-b)", rc);
    if (size_a < bytes || size_b < bytes) {
        fprintf(stderr, "demo-peer: the grids hold %zu and %zu bytes, %zu expected\n", size_a,
                size_b, bytes);
        return 1;
    }
    /* After ITERS sweeps that swap source and destination, the result is in a or b. */
    const double *shared = shoal_ptr(s, iters % 2 == 0 ? off_a : off_b);
    double *ra = malloc(bytes), *rb = malloc(bytes);
    if (!shared || !ra || !rb)
        return fail("allocating the reference", SHOAL_ENOMEM);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            ra[i * n + j] = rb[i * n + j] = boundary(i, j, n);
    double t0 = now();
    double *src = ra, *dst = rb;
    for (int it = 0; it < iters; it++) {
        for (size_t i = 1; i < n - 1; i++)
            for (size_t j = 1; j < n - 1; j++)
                dst[i * n + j] = 0.25 * (src[(i - 1) * n + j] + src[(i + 1) * n + j] +
                                         src[i * n + j - 1] + src[i * n + j + 1]);
        double *t = src;
        src = dst;
        dst = t;
    }
    double took = now() - t0;
    size_t diff = 0;
    for (size_t k = 0; k < n * n; k++)
        if (memcmp(&src[k], &shared[k], sizeof(double)) != 0)
            diff++;
    printf("demo-peer: host re-check of the shared grid (%zux%zu, %d sweeps): %zu cells differ "
           "from the single-process reference (%.1f ms on the host)\n",
           n, n, iters, diff, took * 1e3);
    free(ra);
    free(rb);
    return diff == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int testguest_mode = argc == 2 && strcmp(argv[1], "testguest") == 0;
    int verify_mode = argc == 4 && strcmp(argv[1], "verify") == 0;
    size_t n = verify_mode ? (size_t)atol(argv[2]) : 0;
    int iters = verify_mode ? atoi(argv[3]) : 0;
    if (!testguest_mode && !(verify_mode && n >= 3 && n <= 4096 && iters >= 0)) {
        fprintf(stderr, "usage: %s testguest | verify N ITERS   (with SHOAL_SOCKET set)\n",
                argv[0]);
        return 2;
    }
    shoal_t *s;
    int rc = shoal_open(NULL, &s);
    if (rc < 0)
        return fail("shoal_open", rc);
    int status = testguest_mode ? testguest(s) : verify(s, n, iters);
    shoal_close(s);
    return status;
}
