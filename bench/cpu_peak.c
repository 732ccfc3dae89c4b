/* Peak vector multiply-add rates of one core: what a decode step's products could reach at best.

   Twelve independent chains per instruction kind (more than FMA latency x ports), unrolled so they
   stay in registers: the loop is bound by how many the core issues a cycle, not by their latency
   (kept in memory, they measured 3 times slower). Prints billions of instructions a second and of
   multiply-adds a second for AVX2 fp32 FMA (8 lanes), AVX-512 fp32 FMA (16 lanes) and AVX-512
   VNNI u8 x s8 dot products (64 multiply-adds an instruction).

       gcc -O2 -march=native -o /tmp/cpu_peak bench/cpu_peak.c && taskset -c 0 /tmp/cpu_peak

   Needs a CPU with AVX-512F and AVX512-VNNI (the 2-core Xeon of bench/README.md's session 17). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define INSTRUCTIONS 240000000L
#define CHAINS 12

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void report(const char *what, double took, int per_instruction, double keep) {
    printf("%-28s %5.2f G instructions/s  %6.1f G multiply-adds/s   (%g)\n", what, INSTRUCTIONS / took / 1e9,
           INSTRUCTIONS * (double)per_instruction / took / 1e9, keep);
}

/* Time INSTRUCTIONS of OP (a macro of one register) spread over the CHAINS registers of CHAIN, and
   report them; LANE0 reads a register's first lane, so the compiler cannot drop the work. */
#define MEASURE(LABEL, PER_INSTRUCTION, CHAIN, OP, LANE0)                \
    do {                                                                 \
        double t = seconds(), keep = 0;                                  \
        for (long n = 0; n < INSTRUCTIONS / CHAINS; n++) {               \
            _Pragma("GCC unroll 12") for (int i = 0; i < CHAINS; i++)    \
                CHAIN[i] = OP(CHAIN[i]);                                 \
        }                                                                \
        t = seconds() - t;                                               \
        for (int i = 0; i < CHAINS; i++) keep += LANE0(CHAIN[i]);        \
        report(LABEL, t, PER_INSTRUCTION, keep);                         \
    } while (0)

int main(void) {
    __m256 a[CHAINS], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
    __m512 b[CHAINS], X = _mm512_set1_ps(1.0000001f), Y = _mm512_set1_ps(0.9999999f);
    __m512i c[CHAINS], u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
    for (int i = 0; i < CHAINS; i++) {
        a[i] = _mm256_set1_ps((float)i);
        b[i] = _mm512_set1_ps((float)i);
        c[i] = _mm512_set1_epi32(i);
    }
#define FMA8(r) _mm256_fmadd_ps(r, x, y)
#define FMA16(r) _mm512_fmadd_ps(r, X, Y)
#define DOT64(r) _mm512_dpbusd_epi32(r, u, v)
#define LANE0_F(r) (r)[0]
#define LANE0_I(r) (double)_mm512_reduce_add_epi32(r)
    MEASURE("AVX2 fp32 FMA (8 lanes)", 8, a, FMA8, LANE0_F);
    MEASURE("AVX-512 fp32 FMA (16 lanes)", 16, b, FMA16, LANE0_F);
    MEASURE("AVX-512 VNNI u8 x s8 dot", 64, c, DOT64, LANE0_I);
    return 0;
}
