/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Jacobi relaxation across the VMs of a Shoal group, OpenMP inside each.
 *
 * Every member process (one per VM, or host peers) joins team "jacobi",
 * takes its static share of the grid rows, and updates them with
 * `#pragma omp parallel for`; a team barrier separates iterations. The
 * grids live in named objects, so all members see the same arrays. Rank 0
 * then recomputes the whole thing alone and checks the result is
 * bit-identical.
 *
 *   cc jacobi.c $(pkg-config --cflags --libs shoal) -fopenmp -o jacobi
 *   SHOAL_SOCKET=/tmp/g.sock ./jacobi MEMBERS [N] [ITERS]   (in each member)
 *
 * When members share cores, run with OMP_WAIT_POLICY=passive (libgomp's
 * spin-waiting otherwise starves the other members).
 */
#include <shoal.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(call)                                                         \
    do {                                                                    \
        int rc_ = (call);                                                   \
        if (rc_ < 0) {                                                      \
            fprintf(stderr, "jacobi: %s failed: %s\n", #call,               \
                    shoal_strerror(rc_));                                   \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

static double boundary(size_t i, size_t j, size_t n)
{
    if (i == 0)
        return 100.0;
    if (j == 0 || j == n - 1)
        return 50.0 * (double)i / (double)n;
    return 0.0;
}

static void init_grid(double *g, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            g[i * n + j] = boundary(i, j, n);
}

static void sweep(const double *src, double *dst, size_t n, size_t lo, size_t hi)
{
#pragma omp parallel for schedule(static)
    for (size_t i = lo; i < hi; i++)
        for (size_t j = 1; j < n - 1; j++)
            dst[i * n + j] = 0.25 * (src[(i - 1) * n + j] + src[(i + 1) * n + j] +
                                     src[i * n + j - 1] + src[i * n + j + 1]);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MEMBERS [N] [ITERS]\n", argv[0]);
        return 2;
    }
    unsigned members = (unsigned)atoi(argv[1]);
    size_t n = argc > 2 ? (size_t)atol(argv[2]) : 256;
    int iters = argc > 3 ? atoi(argv[3]) : 100;
    size_t bytes = n * n * sizeof(double);

    shoal_t *s;
    CHECK(shoal_open(NULL, &s));
    shoal_off_t off_a, off_b;
    CHECK(shoal_named(s, "jacobi-a", bytes, &off_a, NULL));
    CHECK(shoal_named(s, "jacobi-b", bytes, &off_b, NULL));
    double *a = shoal_ptr(s, off_a);
    double *b = shoal_ptr(s, off_b);

    shoal_team_t *team;
    CHECK(shoal_team_join(s, "jacobi", members, &team));
    int rank = shoal_team_rank(team);
    if (rank == 0) {
        init_grid(a, n);
        init_grid(b, n);
    }
    CHECK(shoal_team_barrier(team));

    /* Interior rows 1..n-1, split over the team. */
    uint64_t lo, hi;
    CHECK(shoal_team_range(team, n - 2, &lo, &hi));
    lo += 1;
    hi += 1;
    double t0 = now();
    double *src = a, *dst = b;
    for (int it = 0; it < iters; it++) {
        sweep(src, dst, n, lo, hi);
        CHECK(shoal_team_barrier(team));
        double *t = src;
        src = dst;
        dst = t;
    }
    double elapsed = now() - t0;

    double local = 0.0;
    for (size_t i = lo; i < hi; i++)
        for (size_t j = 0; j < n; j++)
            local += src[i * n + j];
    double total;
    CHECK(shoal_team_sum_f64(team, local, &total));
    printf("jacobi: rank %d/%u rows %llu..%llu threads %d: %.3f s\n", rank, members,
           (unsigned long long)lo, (unsigned long long)hi, omp_get_max_threads(), elapsed);

    int status = 0;
    if (rank == 0) {
        double *ra = malloc(bytes), *rb = malloc(bytes);
        if (!ra || !rb)
            return 1;
        init_grid(ra, n);
        init_grid(rb, n);
        double *rs = ra, *rd = rb;
        double r0 = now();
        for (int it = 0; it < iters; it++) {
            sweep(rs, rd, n, 1, n - 1);
            double *t = rs;
            rs = rd;
            rd = t;
        }
        double relapsed = now() - r0;
        size_t diff = 0;
        for (size_t k = 0; k < n * n; k++)
            if (memcmp(&rs[k], &src[k], sizeof(double)) != 0)
                diff++;
        printf("jacobi: n=%zu iters=%d members=%u interior sum %.9e; "
               "reference %.3f s; %zu cells differ\n",
               n, iters, members, total, relapsed, diff);
        if (diff == 0) {
            printf("jacobi: result matches the single-process reference\n");
        } else {
            printf("jacobi: MISMATCH\n");
            status = 1;
        }
        free(ra);
        free(rb);
    }
    /* Keep the grids alive until rank 0 has compared them. */
    CHECK(shoal_team_barrier(team));
    shoal_team_leave(team);
    shoal_close(s);
    return status;
}
