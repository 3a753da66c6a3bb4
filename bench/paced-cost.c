/*
 * paced-cost: what a fixed piece of work costs on this machine when it comes back to back,
 * and when it comes after the process slept (as a Redis call does at a steady, non-saturating
 * rate). No Redis, no Lua, no network: if a paced run costs more here too, the difference a
 * paced EVALSHA shows (docs/benchmarks.md, "The script on a diet") belongs to the machine,
 * not to the script.
 *
 * usage: paced-cost WORK ITERATIONS PAUSE_US [sleep|spin]
 *   WORK       compute        a dependent integer loop, no memory beyond registers
 *              mem:<KiB>      one walk over a random cycle through <KiB> of cache lines
 *   PAUSE_US   0 = back to back; otherwise a pause of PAUSE_US before each iteration:
 *              sleep (default) nanosleep, so the CPU may go idle; spin a busy wait on the
 *              clock, so the process keeps its CPU and touches nothing but the clock
 * prints: work, sleep, iterations, and the time of one iteration in ns (median, p10, p90, mean)
 *
 *        paced-cost hog
 *   spins on its CPU until killed, touching no memory: run as SCHED_IDLE on another process's
 *   CPU (taskset -c N chrt -i 0 paced-cost hog), it keeps that CPU from going idle while
 *   leaving it to the other process whenever that one can run
 *
 * Build: cc -O2 -o paced-cost bench/paced-cost.c (bench/paced-cost.sh does it).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LINE 64

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A random cycle over the buffer's cache lines, so the walk defeats the prefetcher as a hash
 * table's lookups do. */
static void **make_cycle(size_t lines) {
    char *buf = aligned_alloc(LINE, lines * LINE);
    size_t *order = malloc(lines * sizeof *order);
    if (!buf || !order) {
        fprintf(stderr, "paced-cost: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < lines; i++) order[i] = i;
    srand(42);
    for (size_t i = lines - 1; i > 0; i--) {
        size_t j = (size_t)rand() % (i + 1);
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < lines; i++) {
        void **at = (void **)(buf + order[i] * LINE);
        *at = buf + order[(i + 1) % lines] * LINE;
    }
    void **start = (void **)(buf + order[0] * LINE);
    free(order);
    return start;
}

static volatile uint64_t sink;

/* A whole decimal number, or -1. */
static long number(const char *s) {
    char *end;
    long v = strtol(s, &end, 10);
    return (*s == '\0' || *end != '\0') ? -1 : v;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "hog") == 0) {
        for (;;) {
#if defined(__x86_64__) || defined(__i386__)
            __asm__ volatile("pause");
#else
            __asm__ volatile("" ::: "memory");
#endif
        }
    }
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: paced-cost compute|mem:<KiB> ITERATIONS PAUSE_US [sleep|spin] | hog\n");
        return 2;
    }
    int spin = argc == 5 && strcmp(argv[4], "spin") == 0;
    if (argc == 5 && !spin && strcmp(argv[4], "sleep") != 0) {
        fprintf(stderr, "paced-cost: the pause is sleep or spin, not '%s'\n", argv[4]);
        return 2;
    }
    const char *work = argv[1];
    long iterations = number(argv[2]);
    long sleep_us = number(argv[3]);
    if (iterations < 1 || sleep_us < 0) {
        fprintf(stderr, "paced-cost: ITERATIONS must be >= 1 and PAUSE_US >= 0\n");
        return 2;
    }
    size_t lines = 0;
    if (strncmp(work, "mem:", 4) == 0) {
        long kib = number(work + 4);
        if (kib < 1) {
            fprintf(stderr, "paced-cost: mem:<KiB> needs KiB >= 1\n");
            return 2;
        }
        lines = (size_t)kib * 1024 / LINE;
    } else if (strcmp(work, "compute") != 0) {
        fprintf(stderr, "paced-cost: unknown work '%s'\n", work);
        return 2;
    }
    void **cycle = lines ? make_cycle(lines) : NULL;
    uint64_t *took = malloc((size_t)iterations * sizeof *took);
    if (!took) return 2;
    struct timespec pause = {sleep_us / 1000000, (sleep_us % 1000000) * 1000};

    for (long it = -100; it < iterations; it++) { /* 100 unmeasured rounds first */
        if (sleep_us && spin) {
            uint64_t until = now_ns() + (uint64_t)sleep_us * 1000;
            while (now_ns() < until) {
            }
        } else if (sleep_us) {
            nanosleep(&pause, NULL);
        }
        uint64_t t0 = now_ns();
        if (cycle) {
            void **p = cycle;
            for (size_t i = 0; i < lines; i++) p = (void **)*p;
            sink = (uint64_t)(uintptr_t)p;
        } else {
            uint64_t x = 1;
            for (int i = 0; i < 20000; i++) x = x * 6364136223846793005ull + 1442695040888963407ull;
            sink = x;
        }
        uint64_t t1 = now_ns();
        if (it >= 0) took[it] = t1 - t0;
    }
    uint64_t sum = 0;
    for (long i = 0; i < iterations; i++) sum += took[i];
    qsort(took, (size_t)iterations, sizeof *took, cmp_u64);
    printf("%s %s_us=%ld n=%ld median_ns=%llu p10_ns=%llu p90_ns=%llu mean_ns=%llu\n", work,
           spin ? "spin" : "sleep", sleep_us, iterations, (unsigned long long)took[iterations / 2],
           (unsigned long long)took[iterations / 10], (unsigned long long)took[iterations * 9 / 10],
           (unsigned long long)(sum / (uint64_t)iterations));
    return 0;
}
