// Time spent in the engine's products and fused attention, per shape, for the benchmarks that
// report achieved GFLOP/s per layer kind (Benchmarks/EngineBench `unet-profile`,
// Docs/performance.md). Off unless `wp_profile_start` was called: a recording call costs one
// relaxed atomic load when off. Times are per calling thread, so with the guidance pair's
// single-threaded products their sum is core-seconds.
#include "CEngineKernels.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define SLOTS 1024

static _Atomic int profiling = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static wp_profile_record records[SLOTS];
static int64_t used = 0;
static wp_profile_record overflow; // shapes beyond SLOTS distinct ones, summed

void wp_profile_start(void) {
    pthread_mutex_lock(&lock);
    memset(records, 0, sizeof records);
    memset(&overflow, 0, sizeof overflow);
    overflow.kind = -1;
    used = 0;
    pthread_mutex_unlock(&lock);
    atomic_store_explicit(&profiling, 1, memory_order_release);
}

void wp_profile_stop(void) { atomic_store_explicit(&profiling, 0, memory_order_release); }

int wp_profiling(void) { return atomic_load_explicit(&profiling, memory_order_relaxed); }

double wp_profile_clock(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void wp_profile_add(int32_t kind, int32_t flags, int64_t m, int64_t n, int64_t k, double seconds) {
    if (!wp_profiling()) return;
    pthread_mutex_lock(&lock);
    const uint64_t hash = ((((uint64_t)kind * 31 + (uint64_t)flags) * 1000003u + (uint64_t)m) * 1000003u + (uint64_t)n) * 1000003u + (uint64_t)k;
    wp_profile_record *slot = &overflow;
    for (int64_t i = 0; i < SLOTS; i++) {
        wp_profile_record *r = &records[(hash + (uint64_t)i) % SLOTS];
        if (r->calls == 0) {
            if (used == SLOTS) break;
            used++;
            r->kind = kind, r->flags = flags, r->m = m, r->n = n, r->k = k;
            slot = r;
            break;
        }
        if (r->kind == kind && r->flags == flags && r->m == m && r->n == n && r->k == k) {
            slot = r;
            break;
        }
    }
    slot->calls++;
    slot->seconds += seconds;
    pthread_mutex_unlock(&lock);
}

int64_t wp_profile_read(wp_profile_record *into, int64_t capacity) {
    pthread_mutex_lock(&lock);
    int64_t count = 0;
    for (int64_t i = 0; i < SLOTS; i++) {
        if (records[i].calls == 0) continue;
        if (count < capacity) into[count] = records[i];
        count++;
    }
    if (overflow.calls > 0) {
        if (count < capacity) into[count] = overflow;
        count++;
    }
    pthread_mutex_unlock(&lock);
    return count;
}
