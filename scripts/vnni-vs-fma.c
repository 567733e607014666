// How many int8 (vpdpbusd) and f32 (vfmadd) AVX-512 instructions one core, and each of two
// cores at once, issue per second: the ceiling on how much faster an int8 product can be than a
// float one on this CPU (64 vs 16 multiply-adds per instruction). 16 independent accumulators
// per thread, kept in registers (the loops are unrolled; no memory traffic). Used for
// docs/BENCHMARKS.md (issue 13).
//
//   cc -O2 -mavx512f -mavx512bw -mavx512vnni -pthread scripts/vnni-vs-fma.c -o /tmp/vnni-vs-fma
//   /tmp/vnni-vs-fma            # 6 rounds, alternating; prints G instructions/s per thread
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define ITERS 40000000L

static volatile int sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *int8_loop(void *arg) {
    (void)arg;
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_epi32(i);
    __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
    for (long i = 0; i < ITERS; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    int s = 0;
    for (int i = 0; i < 16; i++) s += _mm512_reduce_add_epi32(acc[i]);
    sink = s;
    return NULL;
}

static void *f32_loop(void *arg) {
    (void)arg;
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
    for (long i = 0; i < ITERS; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0;
    for (int i = 0; i < 16; i++) s += _mm512_reduce_add_ps(acc[i]);
    sink = (int)s;
    return NULL;
}

// G instructions per second per thread with `threads` threads running `body`.
static double rate(void *(*body)(void *), int threads) {
    pthread_t t[2];
    double t0 = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, body, NULL);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    return ITERS * 16.0 / (now() - t0) / 1e9;
}

int main(void) {
    printf("round  vpdpbusd 1t  vpdpbusd 2t (each)  vfmadd 1t  vfmadd 2t (each)\n");
    for (int r = 1; r <= 6; r++) {
        double i1 = rate(int8_loop, 1), i2 = rate(int8_loop, 2);
        double f1 = rate(f32_loop, 1), f2 = rate(f32_loop, 2);
        printf("%5d  %11.2f  %18.2f  %9.2f  %16.2f\n", r, i1, i2, f1, f2);
    }
    return 0;
}
