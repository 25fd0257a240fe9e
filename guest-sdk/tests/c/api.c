/* SPDX-License-Identifier: Apache-2.0 */
/* C ABI checks: error codes instead of crashes, pointer/offset conversion,
 * mutex, futex and team basics. Prints "api: ok" on success. */
#include <shoal.h>
#include <stdio.h>
#include <string.h>

#define EXPECT(cond)                                                         \
    do {                                                                     \
        if (!(cond)) {                                                       \
            printf("api: FAILED %s (line %d)\n", #cond, __LINE__);           \
            return 1;                                                        \
        }                                                                    \
    } while (0)

int main(void)
{
    shoal_t *s = NULL;
    EXPECT(shoal_open("/nonexistent/socket", &s) == SHOAL_ETRANSPORT);
    EXPECT(shoal_open(NULL, NULL) == SHOAL_EINVAL);
    EXPECT(shoal_open(NULL, &s) == SHOAL_OK);
    EXPECT(shoal_id(s) >= 0);
    EXPECT(shoal_id(NULL) == SHOAL_EINVAL);

    shoal_off_t off = 0;
    EXPECT(shoal_alloc(s, 100, &off) == SHOAL_OK && off != 0);
    char *p = shoal_ptr(s, off);
    EXPECT(p != NULL && shoal_off(s, p) == off);
    memset(p, 0x5a, 100);
    EXPECT(shoal_free(s, off) == SHOAL_OK);
    EXPECT(shoal_free(s, off) == SHOAL_ENOTALLOC);
    EXPECT(shoal_free(s, 8) == SHOAL_EFOREIGN);
    EXPECT(shoal_alloc(s, 0, &off) == SHOAL_EINVAL);
    EXPECT(shoal_ptr(s, 0) == NULL);
    EXPECT(shoal_ptr(s, ~0ull) == NULL);
    int local = 0;
    EXPECT(shoal_off(s, &local) == 0);

    shoal_off_t named, again;
    int created = -1;
    EXPECT(shoal_named(s, "api-obj", 64, &named, &created) == SHOAL_OK && created == 1);
    EXPECT(shoal_named(s, "api-obj", 64, &again, &created) == SHOAL_OK && created == 0);
    EXPECT(named == again);
    EXPECT(shoal_named(s, "api-obj", 128, &again, NULL) == SHOAL_ESIZE);
    EXPECT(shoal_free(s, named) == SHOAL_ENAMED);
    EXPECT(shoal_named(s, NULL, 8, &again, NULL) == SHOAL_EINVAL);

    shoal_mutex_t *m = shoal_ptr(s, named);
    EXPECT(shoal_mutex_lock(s, m) == SHOAL_OK);
    EXPECT(shoal_mutex_trylock(s, m) == SHOAL_EBUSY);
    EXPECT(shoal_mutex_unlock(s, m) == SHOAL_OK);
    EXPECT(shoal_mutex_unlock(s, m) == SHOAL_ENOTOWNER);
    shoal_mutex_t outside = {0};
    EXPECT(shoal_mutex_lock(s, &outside) == SHOAL_EFOREIGN);

    uint32_t *word = (uint32_t *)(shoal_ptr(s, named) + 8);
    EXPECT(shoal_futex_wait(s, word, 1, -1) == SHOAL_OK); /* value differs */
    EXPECT(shoal_futex_wait(s, word, 0, 1000000) == SHOAL_ETIMEDOUT);
    EXPECT(shoal_futex_wake(s, word, 1) >= 0);

    shoal_barrier_t *b = (shoal_barrier_t *)((char *)shoal_ptr(s, named) + 16);
    EXPECT(shoal_barrier_wait(s, b) == SHOAL_EPARTIES);
    EXPECT(shoal_barrier_init(s, b, 1) == SHOAL_OK);
    EXPECT(shoal_barrier_wait(s, b) == SHOAL_BARRIER_SERIAL);

    shoal_team_t *t;
    EXPECT(shoal_team_join(s, "solo", 1, &t) == SHOAL_OK);
    EXPECT(shoal_team_rank(t) == 0 && shoal_team_size(t) == 1);
    double sum;
    EXPECT(shoal_team_sum_f64(t, 2.5, &sum) == SHOAL_OK && sum == 2.5);
    uint64_t lo, hi;
    EXPECT(shoal_team_range(t, 10, &lo, &hi) == SHOAL_OK && lo == 0 && hi == 10);
    EXPECT(shoal_team_broadcast_u64(t, 3, 1, &lo) == SHOAL_EINVAL);
    EXPECT(shoal_team_leave(t) == SHOAL_OK);

    size_t errors = 99, blocks = 99;
    EXPECT(shoal_check_heap(s, &errors, &blocks) == SHOAL_OK && errors == 0);
    EXPECT(strcmp(shoal_strerror(SHOAL_ENOTALLOC), "block not allocated") == 0);
    EXPECT(shoal_close(s) == SHOAL_OK);
    EXPECT(shoal_close(NULL) == SHOAL_OK);
    printf("api: ok\n");
    return 0;
}
