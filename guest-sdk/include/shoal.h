/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shoal.h - the Shoal guest SDK C API.
 *
 * Share memory and synchronise across the VMs (and host processes) of a
 * Shoal shared-memory group. Data in the region is referred to by offsets
 * (shoal_off_t), because every peer maps the region at its own address;
 * shoal_ptr/shoal_off convert. Mutexes, condvars, barriers and futex words
 * live in the region; zero-filled memory is an unlocked mutex, an idle
 * condvar and an uninitialised barrier (call shoal_barrier_init).
 *
 * Every function returns a status: 0 (SHOAL_OK) or a positive note on
 * success, a negative SHOAL_E* code on failure; none aborts the program.
 * Timeouts are in nanoseconds; a negative timeout waits forever.
 * A shoal_t may be used by any number of threads at once; shoal_close must
 * be the last call on it. Lock ownership is per process (peer): any thread
 * of the process holding a mutex may unlock it.
 *
 * Build:  cc prog.c $(pkg-config --cflags --libs shoal) -fopenmp
 * Run as a host peer:  SHOAL_SOCKET=/path/to/group.sock ./prog
 */
#ifndef SHOAL_H
#define SHOAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define SHOAL_OK 0
#define SHOAL_OWNER_DIED 1      /* lock taken over from a dead peer: repair the data */
#define SHOAL_BARRIER_SERIAL 2  /* this caller was the last to arrive */
#define SHOAL_EINVAL (-1)
#define SHOAL_ENOMEM (-2)
#define SHOAL_ETIMEDOUT (-3)
#define SHOAL_ENOTOWNER (-4)
#define SHOAL_EFOREIGN (-5)
#define SHOAL_ENOTALLOC (-6)
#define SHOAL_ENAMED (-7)
#define SHOAL_ENOENT (-8)
#define SHOAL_ESIZE (-9)
#define SHOAL_ELAYOUT (-10)
#define SHOAL_ETRANSPORT (-11)
#define SHOAL_ETEAMFULL (-12)
#define SHOAL_EPARTIES (-13)
#define SHOAL_ECORRUPT (-14)
#define SHOAL_EPANIC (-15)
#define SHOAL_EIO (-16)
#define SHOAL_EBUSY (-17)
#define SHOAL_ENAMES (-18)

/* A region offset; 0 is the null offset. */
typedef uint64_t shoal_off_t;

/* A peer's handle (opaque). */
typedef struct shoal shoal_t;
/* A team membership (opaque). */
typedef struct shoal_team shoal_team_t;

/* Objects that live in the region (allocate them there). */
typedef struct { uint32_t word; } shoal_mutex_t;
typedef struct { uint32_t seq; } shoal_cond_t;
typedef struct { uint32_t arrived, phase, parties, reserved; } shoal_barrier_t;

/* Handle. socket: group server socket (host peer); NULL: $SHOAL_SOCKET,
 * else the ivshmem PCI device. */
int shoal_open(const char *socket, shoal_t **out);
int shoal_close(shoal_t *s);
int shoal_id(const shoal_t *s);
const char *shoal_strerror(int code);

/* Allocator. Blocks are 16-byte aligned (page aligned above 2048 bytes). */
int shoal_alloc(shoal_t *s, size_t size, shoal_off_t *out);
int shoal_free(shoal_t *s, shoal_off_t off);
int shoal_named(shoal_t *s, const char *name, size_t size, shoal_off_t *out, int *created);
int shoal_find(shoal_t *s, const char *name, shoal_off_t *out, size_t *size);
int shoal_remove(shoal_t *s, const char *name);
int shoal_check_heap(shoal_t *s, size_t *errors, size_t *blocks);
void *shoal_ptr(const shoal_t *s, shoal_off_t off);
shoal_off_t shoal_off(const shoal_t *s, const void *p);

/* Futex-like wait/wake on a 32-bit word in the region. */
int shoal_futex_wait(shoal_t *s, const uint32_t *addr, uint32_t expected, int64_t timeout_ns);
int shoal_futex_wake(shoal_t *s, const uint32_t *addr, uint32_t n);

/* Robust mutex: lock returns SHOAL_OK or SHOAL_OWNER_DIED. */
int shoal_mutex_lock(shoal_t *s, shoal_mutex_t *m);
int shoal_mutex_timedlock(shoal_t *s, shoal_mutex_t *m, int64_t timeout_ns);
int shoal_mutex_trylock(shoal_t *s, shoal_mutex_t *m);
int shoal_mutex_unlock(shoal_t *s, shoal_mutex_t *m);

/* Condition variable. */
int shoal_cond_wait(shoal_t *s, shoal_cond_t *c, shoal_mutex_t *m);
int shoal_cond_timedwait(shoal_t *s, shoal_cond_t *c, shoal_mutex_t *m, int64_t timeout_ns);
int shoal_cond_signal(shoal_t *s, shoal_cond_t *c);
int shoal_cond_broadcast(shoal_t *s, shoal_cond_t *c);

/* Barrier: wait returns SHOAL_OK or SHOAL_BARRIER_SERIAL. */
int shoal_barrier_init(shoal_t *s, shoal_barrier_t *b, uint32_t parties);
int shoal_barrier_wait(shoal_t *s, shoal_barrier_t *b);

/* Team: one member per process/VM, joined by name. */
int shoal_team_join(shoal_t *s, const char *name, uint32_t size, shoal_team_t **out);
int shoal_team_leave(shoal_team_t *t);
int shoal_team_rank(const shoal_team_t *t);
int shoal_team_size(const shoal_team_t *t);
int shoal_team_barrier(shoal_team_t *t);
int shoal_team_range(const shoal_team_t *t, uint64_t n, uint64_t *begin, uint64_t *end);
int shoal_team_sum_f64(shoal_team_t *t, double value, double *out);
int shoal_team_min_f64(shoal_team_t *t, double value, double *out);
int shoal_team_max_f64(shoal_team_t *t, double value, double *out);
int shoal_team_sum_i64(shoal_team_t *t, int64_t value, int64_t *out);
int shoal_team_min_i64(shoal_team_t *t, int64_t value, int64_t *out);
int shoal_team_max_i64(shoal_team_t *t, int64_t value, int64_t *out);
int shoal_team_broadcast_u64(shoal_team_t *t, uint32_t root, uint64_t value, uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif /* SHOAL_H */
