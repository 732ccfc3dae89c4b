/* Matrix products straight from GGUF blocks, for decoding on a CPU with AVX2 and FMA.

   Decoding one token reads every weight once, so it is bound by memory: fp32 weights are 540 MB a
   token for SmolLM2-135M, its Q4_1 blocks 5 times less. These kernels multiply fp32 activations by
   the blocks directly. Each weight is rebuilt exactly as transformers dequantises the file
   (d * q + m, in fp32), so the weights are the fp32 model's own; only the order of the sums differs.

   Built at run time by backends/local/kernels/__init__.py (gcc -O3 -mavx2 -mfma) and called through
   ctypes, which releases the GIL. Products of several rows use 16-lane AVX-512 where the CPU has it
   (the wide kernels below, chosen at run time). A product is split by output columns among a small
   thread pool (qmm_set_threads; use_gguf_blocks gives it OMP_NUM_THREADS, else the process's CPUs). */

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "simd.h"

/* Block b of a column as fp32, 8 weights a vector in k order, exactly as transformers dequantises
   the file. Every path (the row kernels, the panels, whole-weight dequantising) rebuilds weights
   with these two, so they all hold the same bits. */

/* Q4_1: w = d * q + m (q in 0..15: the low nibbles of the block's 16 bytes hold elements 0..15,
   the high ones 16..31). */
static inline __attribute__((always_inline)) void q4_1_block(const uint8_t *q, float d, float m, __m256 w[4]) {
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
    __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
    w[0] = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo))), mv);
    w[1] = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)))), mv);
    w[2] = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi))), mv);
    w[3] = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)))), mv);
}

/* Q8_0: w = d * q (q int8). */
static inline __attribute__((always_inline)) void q8_0_block(const int8_t *q, float d, __m256 w[4]) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)q);
    __m128i a0 = _mm256_castsi256_si128(raw), a1 = _mm256_extracti128_si256(raw, 1);
    __m256 dv = _mm256_set1_ps(d);
    w[0] = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a0)));
    w[1] = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a0, 8))));
    w[2] = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a1)));
    w[3] = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a1, 8))));
}

/* acc += block b's 32 weights w[0..3] times each row's 32 activations. One row keeps four
   accumulators (four independent FMA chains, which FMA latency would otherwise stall); several
   rows keep one each and their chains interleave. Shared by the Q4_1 and Q8_0 kernels, which
   differ only in how they rebuild w; it uses their locals (x, R, K, b, w, acc). */
#define ACCUMULATE_BLOCK()                                                      \
    do {                                                                        \
        if (R == 1) {                                                           \
            const float *xr = x + b * 32;                                       \
            acc[0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xr), acc[0]);          \
            acc[1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xr + 8), acc[1]);      \
            acc[2] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xr + 16), acc[2]);     \
            acc[3] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xr + 24), acc[3]);     \
            break;                                                              \
        }                                                                       \
        for (int r = 0; r < R; r++) {                                           \
            const float *xr = x + r * K + b * 32;                               \
            __m256 a = acc[r];                                                  \
            a = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xr), a);                    \
            a = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xr + 8), a);                \
            a = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xr + 16), a);               \
            a = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xr + 24), a);               \
            acc[r] = a;                                                         \
        }                                                                       \
    } while (0)

/* out[r, n] for each row from its accumulators (one row: the sum of its four); uses acc, R, N, n, out. */
#define STORE_ROW()                                                                                   \
    do {                                                                                              \
        if (R == 1) acc[0] = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])); \
        for (int r = 0; r < R; r++) out[r * N + n] = hsum8(acc[r]);                                    \
    } while (0)

/* Ask for the blocks of column n + PREFETCH_COLUMNS while column n is computed. A column's blocks
   are three short runs (its nibbles, d and m), and the hardware prefetchers did not keep up with
   them. The bundled model's decode step, without and with it, alternating in one process (medians
   of 10 rounds, a 2-core Xeon): one row 55.5 -> 37.4 ms, eight rows 94.2 -> 88.2 ms, same bits;
   2, 8 and 16 columns ahead measured the same as 4. */
#define PREFETCH_COLUMNS 4
static inline __attribute__((always_inline)) void prefetch_column(const void *q, int64_t bytes, const float *d,
                                                                  const float *m, int64_t blocks) {
    for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch((const char *)q + i, _MM_HINT_T0);
    for (int64_t i = 0; i < blocks * 4; i += 64) _mm_prefetch((const char *)d + i, _MM_HINT_T0);
    if (m)
        for (int64_t i = 0; i < blocks * 4; i += 64) _mm_prefetch((const char *)m + i, _MM_HINT_T0);
}

/* out[r, n] = sum_k x[r, k] * w[n, k] for rows r0..r0+R (R <= 8), with w stored as Q4_1 blocks of 32:
   w = d * q + m (q in 0..15: the low nibbles of qs hold elements 0..15, the high ones 16..31). */
static inline __attribute__((always_inline)) void q4_1_rows(const float *x, int64_t R, int64_t K, const uint8_t *qs, const float *d, const float *m,
                      int64_t n0, int64_t n1, int64_t N, float *out) {
    const int64_t B = K / 32;
    for (int64_t n = n0; n < n1; n++) {
        __m256 acc[8];
        for (int r = 0; r < (R < 4 ? 4 : R); r++) acc[r] = _mm256_setzero_ps();
        const uint8_t *q = qs + n * (K / 2);
        if (n + PREFETCH_COLUMNS < n1)
            prefetch_column(q + PREFETCH_COLUMNS * (K / 2), K / 2, d + (n + PREFETCH_COLUMNS) * B, m + (n + PREFETCH_COLUMNS) * B, B);
        for (int64_t b = 0; b < B; b++) {
            __m256 w[4];
            q4_1_block(q + b * 16, d[n * B + b], m[n * B + b], w);
            ACCUMULATE_BLOCK();
        }
        STORE_ROW();
    }
}

/* The same for Q8_0 blocks of 32: w = d * q (q int8). */
static inline __attribute__((always_inline)) void q8_0_rows(const float *x, int64_t R, int64_t K, const int8_t *qs, const float *d,
                      int64_t n0, int64_t n1, int64_t N, float *out) {
    const int64_t B = K / 32;
    for (int64_t n = n0; n < n1; n++) {
        __m256 acc[8];
        for (int r = 0; r < (R < 4 ? 4 : R); r++) acc[r] = _mm256_setzero_ps();
        const int8_t *q = qs + n * K;
        if (n + PREFETCH_COLUMNS < n1) prefetch_column(q + PREFETCH_COLUMNS * K, K, d + (n + PREFETCH_COLUMNS) * B, NULL, B);
        for (int64_t b = 0; b < B; b++) {
            __m256 w[4];
            q8_0_block(q + b * 32, d[n * B + b], w);
            ACCUMULATE_BLOCK();
        }
        STORE_ROW();
    }
}

/* Several rows: columns are rebuilt as fp32 a panel of PANEL at a time into a per-thread buffer
   (exactly the values the one-row kernels rebuild in registers), then every row is multiplied by
   the panel in tiles of up to 3 rows x 4 columns: 12 accumulators, and per 8 weights 7 loads for
   12 FMAs, where multiplying each row by freshly rebuilt blocks took a load per FMA and rebuilt
   them per group of 8 rows. Each (row, column) keeps one accumulator over k in order, as before,
   so the results are bit for bit those of the earlier kernels. */
#define PANEL 4
#define TILE_ROWS 3

/* A thread's scratch buffer *buf of at least `bytes` (capacity *cap), 64-byte aligned, grown as
   needed and never shrunk; NULL when there is no memory for it. */
static void *scratch(void **buf, int64_t *cap, int64_t bytes) {
    if (bytes > *cap) {
        free(*buf);
        *buf = aligned_alloc(64, (size_t)(bytes + 63) / 64 * 64);
        *cap = *buf ? bytes : 0;
    }
    return *buf;
}

static __thread void *panel_buf; /* the panels' fp32 columns */
static __thread int64_t panel_cap;

/* Columns n..n+nc of a weight as fp32 rows of K in w. */
static void rebuild_q4_1(const uint8_t *qs, const float *d, const float *m, int64_t K, int64_t n, int64_t nc, float *w) {
    const int64_t B = K / 32;
    for (int64_t c = n; c < n + nc; c++) {
        const uint8_t *q = qs + c * (K / 2);
        float *o = w + (c - n) * K;
        for (int64_t b = 0; b < B; b++) {
            __m256 v[4];
            q4_1_block(q + b * 16, d[c * B + b], m[c * B + b], v);
            _mm256_storeu_ps(o + b * 32, v[0]);
            _mm256_storeu_ps(o + b * 32 + 8, v[1]);
            _mm256_storeu_ps(o + b * 32 + 16, v[2]);
            _mm256_storeu_ps(o + b * 32 + 24, v[3]);
        }
    }
}

static void rebuild_q8_0(const int8_t *qs, const float *d, int64_t K, int64_t n, int64_t nc, float *w) {
    const int64_t B = K / 32;
    for (int64_t c = n; c < n + nc; c++) {
        const int8_t *q = qs + c * K;
        float *o = w + (c - n) * K;
        for (int64_t b = 0; b < B; b++) {
            __m256 v[4];
            q8_0_block(q + b * 32, d[c * B + b], v);
            _mm256_storeu_ps(o + b * 32, v[0]);
            _mm256_storeu_ps(o + b * 32 + 8, v[1]);
            _mm256_storeu_ps(o + b * 32 + 16, v[2]);
            _mm256_storeu_ps(o + b * 32 + 24, v[3]);
        }
    }
}

/* out[r, c] = sum_k x[r, k] * w[c, k] for RT rows and CT columns of the panel (constants once inlined). */
static inline __attribute__((always_inline)) void tile(const float *x, int64_t K, const float *w, int RT, int CT,
                                                       float *out, int64_t N) {
    __m256 acc[TILE_ROWS][PANEL];
    for (int r = 0; r < RT; r++)
        for (int c = 0; c < CT; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 xv[TILE_ROWS];
        for (int r = 0; r < RT; r++) xv[r] = _mm256_loadu_ps(x + r * K + k);
        for (int c = 0; c < CT; c++) {
            __m256 wv = _mm256_load_ps(w + c * K + k);
            for (int r = 0; r < RT; r++) acc[r][c] = _mm256_fmadd_ps(wv, xv[r], acc[r][c]);
        }
    }
    for (int r = 0; r < RT; r++)
        for (int c = 0; c < CT; c++) out[r * N + c] = hsum8(acc[r][c]);
}

#define TILE_CASE(rt, ct) case (rt) * 8 + (ct): tile(x, K, w, rt, ct, out, N); break;
static void tile_any(const float *x, int64_t K, const float *w, int rt, int ct, float *out, int64_t N) {
    switch (rt * 8 + ct) {
        TILE_CASE(3, 4) TILE_CASE(3, 3) TILE_CASE(3, 2) TILE_CASE(3, 1)
        TILE_CASE(2, 4) TILE_CASE(2, 3) TILE_CASE(2, 2) TILE_CASE(2, 1)
        TILE_CASE(1, 4) TILE_CASE(1, 3) TILE_CASE(1, 2) TILE_CASE(1, 1)
    }
}

/* Each row count of the register kernels as a constant, so their accumulators stay in registers
   (a runtime count left 7 rows' decode steps 20% slower than 8 rows'). */
#define ROWS_CASE(fn, r, ...) case r: fn(x, r, __VA_ARGS__); break;
static void q4_1_rows_any(const float *x, int64_t R, int64_t K, const uint8_t *qs, const float *d, const float *m,
                          int64_t n0, int64_t n1, int64_t N, float *out) {
    switch (R) {
        ROWS_CASE(q4_1_rows, 1, K, qs, d, m, n0, n1, N, out) ROWS_CASE(q4_1_rows, 2, K, qs, d, m, n0, n1, N, out)
        ROWS_CASE(q4_1_rows, 3, K, qs, d, m, n0, n1, N, out) ROWS_CASE(q4_1_rows, 4, K, qs, d, m, n0, n1, N, out)
        ROWS_CASE(q4_1_rows, 5, K, qs, d, m, n0, n1, N, out) ROWS_CASE(q4_1_rows, 6, K, qs, d, m, n0, n1, N, out)
        ROWS_CASE(q4_1_rows, 7, K, qs, d, m, n0, n1, N, out) ROWS_CASE(q4_1_rows, 8, K, qs, d, m, n0, n1, N, out)
    }
}

static void q8_0_rows_any(const float *x, int64_t R, int64_t K, const int8_t *qs, const float *d, int64_t n0,
                          int64_t n1, int64_t N, float *out) {
    switch (R) {
        ROWS_CASE(q8_0_rows, 1, K, qs, d, n0, n1, N, out) ROWS_CASE(q8_0_rows, 2, K, qs, d, n0, n1, N, out)
        ROWS_CASE(q8_0_rows, 3, K, qs, d, n0, n1, N, out) ROWS_CASE(q8_0_rows, 4, K, qs, d, n0, n1, N, out)
        ROWS_CASE(q8_0_rows, 5, K, qs, d, n0, n1, N, out) ROWS_CASE(q8_0_rows, 6, K, qs, d, n0, n1, N, out)
        ROWS_CASE(q8_0_rows, 7, K, qs, d, n0, n1, N, out) ROWS_CASE(q8_0_rows, 8, K, qs, d, n0, n1, N, out)
    }
}

/* Wide kernels: several rows' products and the prompts' panels with 16-lane AVX-512 vectors, where
   the CPU has them (chosen at run time; the library is built for AVX2 and these functions alone
   for AVX-512). A block of 32 weights is two vectors instead of four, so rebuilding it takes half
   the instructions and each row half the multiply-adds. The weights are rebuilt exactly as in the
   8-lane kernels (d * q + m in fp32), each (row, column) still keeps one accumulator over k in
   order, and the decode rows and the panels sum alike, so a row's result does not depend on the
   path; only the lanes the sums are split over differ from the 8-lane kernels'. One row keeps the
   8-lane kernel: it is bound by reading the blocks, and 16 lanes measured the same there. */
#define WIDE __attribute__((target("avx512f")))
static int wide_kernels; /* set by qmm_set_wide (the Python loader turns them on where the CPU has AVX-512F) */

static inline WIDE __attribute__((always_inline)) float hsum16(__m512 v) {
    __m256 lo = _mm512_castps512_ps256(v), hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum8(_mm256_add_ps(lo, hi));
}

static inline WIDE __attribute__((always_inline)) void q4_1_block16(const uint8_t *q, float d, float m, __m512 w[2]) {
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
    __m512 dv = _mm512_set1_ps(d), mv = _mm512_set1_ps(m);
    w[0] = _mm512_add_ps(_mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo))), mv);
    w[1] = _mm512_add_ps(_mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi))), mv);
}

static inline WIDE __attribute__((always_inline)) void q8_0_block16(const int8_t *q, float d, __m512 w[2]) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)q);
    __m512 dv = _mm512_set1_ps(d);
    w[0] = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(raw))));
    w[1] = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(raw, 1))));
}

/* out[r, n] for R (2..8) rows and columns n0..n1, blocks rebuilt in registers; kind 0 Q4_1, 1 Q8_0.
   One column at a time: two at a time (each activation vector loaded feeding both) measured the same. */
static inline WIDE __attribute__((always_inline)) void rows16(int kind, const float *x, int R, int64_t K,
                                                               const void *qs, const float *d, const float *m,
                                                               int64_t n0, int64_t n1, int64_t N, float *out) {
    const int64_t B = K / 32, bytes = kind == 0 ? K / 2 : K;
    for (int64_t n = n0; n < n1; n++) {
        __m512 acc[8];
        for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
        const uint8_t *q = (const uint8_t *)qs + n * bytes;
        if (n + PREFETCH_COLUMNS < n1)
            prefetch_column(q + PREFETCH_COLUMNS * bytes, bytes, d + (n + PREFETCH_COLUMNS) * B,
                            kind == 0 ? m + (n + PREFETCH_COLUMNS) * B : NULL, B);
        for (int64_t b = 0; b < B; b++) {
            __m512 w[2];
            if (kind == 0) q4_1_block16(q + b * 16, d[n * B + b], m[n * B + b], w);
            else q8_0_block16((const int8_t *)q + b * 32, d[n * B + b], w);
            for (int r = 0; r < R; r++) {
                const float *xr = x + r * K + b * 32;
                acc[r] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xr), acc[r]);
                acc[r] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xr + 16), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) out[r * N + n] = hsum16(acc[r]);
    }
}

#define WIDE_CASE(kind, r) case r: rows16(kind, x, r, K, qs, d, m, n0, n1, N, out); break;
static WIDE void wide_rows(int kind, const float *x, int64_t R, int64_t K, const void *qs, const float *d,
                           const float *m, int64_t n0, int64_t n1, int64_t N, float *out) {
    if (kind == 0) {
        switch (R) { WIDE_CASE(0, 2) WIDE_CASE(0, 3) WIDE_CASE(0, 4) WIDE_CASE(0, 5) WIDE_CASE(0, 6) WIDE_CASE(0, 7) WIDE_CASE(0, 8) }
    } else {
        switch (R) { WIDE_CASE(1, 2) WIDE_CASE(1, 3) WIDE_CASE(1, 4) WIDE_CASE(1, 5) WIDE_CASE(1, 6) WIDE_CASE(1, 7) WIDE_CASE(1, 8) }
    }
}

/* A panel tile with 16 lanes: up to 4 rows x 4 columns, 16 accumulators (of AVX-512's 32 registers),
   per 16 weights 8 loads for 16 multiply-adds. */
#define WIDE_TILE_ROWS 4
static inline WIDE __attribute__((always_inline)) void wide_tile(const float *x, int64_t K, const float *w, int RT,
                                                                  int CT, float *out, int64_t N) {
    __m512 acc[WIDE_TILE_ROWS][PANEL];
    for (int r = 0; r < RT; r++)
        for (int c = 0; c < CT; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __m512 xv[WIDE_TILE_ROWS];
        for (int r = 0; r < RT; r++) xv[r] = _mm512_loadu_ps(x + r * K + k);
        for (int c = 0; c < CT; c++) {
            __m512 wv = _mm512_loadu_ps(w + c * K + k);
            for (int r = 0; r < RT; r++) acc[r][c] = _mm512_fmadd_ps(wv, xv[r], acc[r][c]);
        }
    }
    for (int r = 0; r < RT; r++)
        for (int c = 0; c < CT; c++) out[r * N + c] = hsum16(acc[r][c]);
}

#define WIDE_TILE_CASE(rt, ct) case (rt) * 8 + (ct): wide_tile(x, K, w, rt, ct, out, N); break;
static WIDE void wide_tile_any(const float *x, int64_t K, const float *w, int rt, int ct, float *out, int64_t N) {
    switch (rt * 8 + ct) {
        WIDE_TILE_CASE(4, 4) WIDE_TILE_CASE(4, 3) WIDE_TILE_CASE(4, 2) WIDE_TILE_CASE(4, 1)
        WIDE_TILE_CASE(3, 4) WIDE_TILE_CASE(3, 3) WIDE_TILE_CASE(3, 2) WIDE_TILE_CASE(3, 1)
        WIDE_TILE_CASE(2, 4) WIDE_TILE_CASE(2, 3) WIDE_TILE_CASE(2, 2) WIDE_TILE_CASE(2, 1)
        WIDE_TILE_CASE(1, 4) WIDE_TILE_CASE(1, 3) WIDE_TILE_CASE(1, 2) WIDE_TILE_CASE(1, 1)
    }
}

/* Use the wide kernels (on > 0) where this CPU has AVX-512F, or not (on == 0); returns whether they
   are in use (on < 0: only that). */
int qmm_set_wide(int on) {
    if (on >= 0) wide_kernels = on && __builtin_cpu_supports("avx512f");
    return wide_kernels;
}

/* 8-bit activations on AVX-512 VNNI (chosen at run time, qmm_set_int8), as llama.cpp computes on
   CPUs. Each row's activations are rounded to 8 bits per block of 32 (x ~ dx * xq, xq in -127..127,
   dx = max|x| / 127), and a block's 32 products are summed exactly in integers by vpdpbusd (64
   multiply-adds an instruction, against 16 for an fp32 FMA): a Q4_1 block gives
   d * dx * sum(q * xq) + m * dx * sum(xq), a Q8_0 block d * dx * sum(q * xq). So the product is the
   fp32 weights' product with the rounded activations: answers can differ from the fp32 kernels'.

   Sixteen columns are packed at a time, block by block, into a per-thread buffer in the order
   vpdpbusd takes them (for each 4 of a block's 32 weights, those 4 of each of the 16 columns),
   with the 16 columns' d and m beside them; then every row, 8 at a time, is multiplied by the
   packed columns, each of a block's 4-weight groups broadcast from the row's 8-bit activations.
   Lanes are columns, and each (row, column) adds its blocks in order with the same operations
   whatever the number of rows, so a row's result does not depend on its batch or on the path. */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define PACKED_BLOCK 640 /* bytes a packed block of 16 columns takes: 8 x 64 weights, d, m (or Q8_0's correction) */
static int int8_kernels;            /* set by qmm_set_int8 */
static __thread int int8_held_off;  /* set by qmm_hold_int8_off: this thread's products keep fp32 activations */

static __thread void *packed_buf; /* 16 columns packed for vpdpbusd */
static __thread int64_t packed_cap;

/* Use 8-bit activations (on > 0) where this CPU has AVX-512 VNNI and BW, or not (on == 0); returns
   whether they are in use (on < 0: only that). */
int qmm_set_int8(int on) {
    if (on >= 0)
        int8_kernels = on && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vnni");
    return int8_kernels;
}

/* Keep fp32 activations for this thread's products (off != 0) or follow qmm_set_int8 again (off == 0);
   returns the previous hold. For checks that compare two computations of the same fp32 sums (the lean
   decode step against transformers' forward), which rounding to 8 bits would tell apart by chance. */
int qmm_hold_int8_off(int off) {
    int was = int8_held_off;
    int8_held_off = off != 0;
    return was;
}

/* Rows' activations x [M, K] as 8 bits a value: xq (and xu = xq + 128 as unsigned, for Q8_0 weights,
   when u is not NULL), and per block of 32 the scale dx and dx * sum(xq). */
static VNNI void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *q, uint8_t *u, float *dx, float *sx) {
    const int64_t B = K / 32;
    for (int64_t r = 0; r < M; r++)
        for (int64_t b = 0; b < B; b++) {
            const float *v = x + r * K + b * 32;
            __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            float d = amax / 127.0f;
            __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
            __m128i b0 = _mm512_cvtsepi32_epi8(i0), b1 = _mm512_cvtsepi32_epi8(i1);
            int8_t *o = q + r * K + b * 32;
            _mm_storeu_si128((__m128i *)o, b0);
            _mm_storeu_si128((__m128i *)(o + 16), b1);
            if (u) {
                const __m128i flip = _mm_set1_epi8((char)0x80);
                _mm_storeu_si128((__m128i *)(u + r * K + b * 32), _mm_xor_si128(b0, flip));
                _mm_storeu_si128((__m128i *)(u + r * K + b * 32 + 16), _mm_xor_si128(b1, flip));
            }
            dx[r * B + b] = d;
            sx[r * B + b] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        }
}

/* 4x4 transposes of 32-bit words within each 128-bit lane: t[g] lane L = word g of a[0..3]'s lane L. */
static inline VNNI __attribute__((always_inline)) void transpose4(const __m512i a[4], __m512i t[4]) {
    __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpackhi_epi32(a[0], a[1]);
    __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
    t[0] = _mm512_unpacklo_epi64(t0, t2);
    t[1] = _mm512_unpackhi_epi64(t0, t2);
    t[2] = _mm512_unpacklo_epi64(t1, t3);
    t[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* a[j] lane L = the 16 bytes at col[j + 4 L] + offset: after transpose4, word i of t[g] is word g of column i. */
static inline VNNI __attribute__((always_inline)) void gather16(const uint8_t *const col[16], int64_t offset, __m512i a[4]) {
    for (int j = 0; j < 4; j++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(col[j] + offset)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(col[j + 4] + offset)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(col[j + 8] + offset)), 2);
        a[j] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(col[j + 12] + offset)), 3);
    }
}

/* Columns n..n+nc (nc <= 16; missing ones repeat the last) of a Q4_1 (kind 0) or Q8_0 (kind 1)
   weight, packed block by block into buf. The next 16 columns (when `ahead`) are fetched meanwhile:
   16 columns are one run of memory, but read 16 bytes a column at a time it is 16 streams. */
static VNNI void pack16(int kind, const void *qs, const float *d, const float *m, int64_t K, int64_t n, int nc,
                        int ahead, uint8_t *buf) {
    const int64_t B = K / 32, stride = kind == 0 ? K / 2 : K;
    const uint8_t *col[16];
    int idx[16];
    for (int i = 0; i < 16; i++) {
        int c = i < nc ? i : nc - 1;
        col[i] = (const uint8_t *)qs + (n + c) * stride;
        idx[i] = c * (int)B;
    }
    const __m512i where = _mm512_loadu_si512(idx), nibble = _mm512_set1_epi8(0x0F);
    const char *next_q = (const char *)qs + (n + 16) * stride, *next_d = (const char *)(d + (n + 16) * B),
               *next_m = m ? (const char *)(m + (n + 16) * B) : NULL;
    for (int64_t b = 0; b < B; b++) {
        uint8_t *o = buf + b * PACKED_BLOCK;
        __m512i a[4], t[4];
        if (ahead) { /* block b's share of the next 16 columns: 16 * stride / B bytes of q, 64 of d and of m */
            for (int64_t i = 0; i < 16 * stride / B; i += 64) _mm_prefetch(next_q + b * (16 * stride / B) + i, _MM_HINT_T0);
            _mm_prefetch(next_d + b * 64, _MM_HINT_T0);
            if (next_m) _mm_prefetch(next_m + b * 64, _MM_HINT_T0);
        }
        if (kind == 0) {
            gather16(col, b * 16, a); /* bytes 4g..4g+3 hold elements 4g.. (low nibbles) and 16+4g.. (high) */
            transpose4(a, t);
            for (int g = 0; g < 4; g++) {
                _mm512_store_si512(o + g * 64, _mm512_and_si512(t[g], nibble));
                _mm512_store_si512(o + (g + 4) * 64, _mm512_and_si512(_mm512_srli_epi16(t[g], 4), nibble));
            }
            _mm512_store_ps(o + 576, _mm512_i32gather_ps(where, m + n * B + b, 4));
        } else {
            __m512i c = _mm512_setzero_si512();
            const __m512i bias = _mm512_set1_epi8((char)0x80);
            for (int half = 0; half < 2; half++) {
                gather16(col, b * 32 + half * 16, a);
                transpose4(a, t);
                for (int g = 0; g < 4; g++) {
                    _mm512_store_si512(o + (half * 4 + g) * 64, t[g]);
                    c = _mm512_dpbusd_epi32(c, bias, t[g]); /* 128 * sum(q): what xu = xq + 128 adds */
                }
            }
            _mm512_store_si512(o + 576, c);
        }
        _mm512_store_ps(o + 512, _mm512_i32gather_ps(where, d + n * B + b, 4));
    }
}

/* A product's rows as quantize_rows leaves them. */
typedef struct {
    const int8_t *q;
    const uint8_t *u;
    const float *dx, *sx;
} Int8Rows;

/* out[r, n..n+nc] for R (1..8) rows r0.. of the product, from 16 packed columns. */
static inline VNNI __attribute__((always_inline)) void int8_rows(int kind, int R, const Int8Rows *x, int64_t r0,
                                                                  int64_t K, const uint8_t *buf, int64_t n, int nc,
                                                                  int64_t N, float *out) {
    const int64_t B = K / 32;
    __m512 acc[8];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < B; b++) {
        const uint8_t *blk = buf + b * PACKED_BLOCK;
        __m512i s[8];
        for (int r = 0; r < R; r++) s[r] = _mm512_setzero_si512();
        for (int g = 0; g < 8; g++) {
            __m512i w = _mm512_load_si512(blk + g * 64);
            for (int r = 0; r < R; r++) {
                int32_t four;
                if (kind == 0) {
                    __builtin_memcpy(&four, x->q + (r0 + r) * K + b * 32 + g * 4, 4);
                    s[r] = _mm512_dpbusd_epi32(s[r], w, _mm512_set1_epi32(four));
                } else {
                    __builtin_memcpy(&four, x->u + (r0 + r) * K + b * 32 + g * 4, 4);
                    s[r] = _mm512_dpbusd_epi32(s[r], _mm512_set1_epi32(four), w);
                }
            }
        }
        __m512 dw = _mm512_load_ps(blk + 512);
        for (int r = 0; r < R; r++) {
            int64_t at = (r0 + r) * B + b;
            if (kind == 1) s[r] = _mm512_sub_epi32(s[r], _mm512_load_si512(blk + 576));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(dw, _mm512_set1_ps(x->dx[at])), acc[r]);
            if (kind == 0) acc[r] = _mm512_fmadd_ps(_mm512_load_ps(blk + 576), _mm512_set1_ps(x->sx[at]), acc[r]);
        }
    }
    __mmask16 keep = (__mmask16)((1u << nc) - 1);
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(out + (r0 + r) * N + n, keep, acc[r]);
}

#define INT8_CASE(kind, r) case r: int8_rows(kind, r, x, r0, K, buf, n, nc, N, out); break;
static VNNI void int8_rows_any(int kind, int64_t R, const Int8Rows *x, int64_t r0, int64_t K, const uint8_t *buf,
                               int64_t n, int nc, int64_t N, float *out) {
    if (kind == 0) {
        switch (R) { INT8_CASE(0, 1) INT8_CASE(0, 2) INT8_CASE(0, 3) INT8_CASE(0, 4) INT8_CASE(0, 5) INT8_CASE(0, 6) INT8_CASE(0, 7) INT8_CASE(0, 8) }
    } else {
        switch (R) { INT8_CASE(1, 1) INT8_CASE(1, 2) INT8_CASE(1, 3) INT8_CASE(1, 4) INT8_CASE(1, 5) INT8_CASE(1, 6) INT8_CASE(1, 7) INT8_CASE(1, 8) }
    }
}

/* One product, split by output columns among the pool's threads; or (kind 2) any work split into
   N units, computed by fn(ctx, u0, u1) for units u0..u1 (qmm_parallel). */
typedef struct {
    int kind; /* 0: Q4_1, 1: Q8_0, 2: units of fn */
    const float *x;
    int64_t M, K;
    const void *qs;
    const float *d, *m;
    int64_t N;
    float *out;
    void (*fn)(const void *ctx, int64_t u0, int64_t u1);
    const void *ctx;
    int64_t work; /* multiply-adds in all: whether the pool is worth waking */
    Int8Rows int8; /* the rows as 8 bits (int8.q set) when the product uses 8-bit activations */
} Job;

/* Rows 0..R of `job` (R >= 2) for columns n0..n1, panel by panel. Returns 0 if no buffer. */
static int panel_columns(const Job *job, int64_t R, int64_t n0, int64_t n1) {
    const int64_t K = job->K, N = job->N;
    float *w = scratch(&panel_buf, &panel_cap, PANEL * K * (int64_t)sizeof(float));
    if (!w) return 0;
    void (*tiles)(const float *, int64_t, const float *, int, int, float *, int64_t) =
        wide_kernels ? wide_tile_any : tile_any;
    const int rows = wide_kernels ? WIDE_TILE_ROWS : TILE_ROWS;
    for (int64_t n = n0; n < n1; n += PANEL) {
        int ct = n1 - n < PANEL ? (int)(n1 - n) : PANEL;
        if (job->kind == 0) rebuild_q4_1(job->qs, job->d, job->m, K, n, ct, w);
        else rebuild_q8_0(job->qs, job->d, K, n, ct, w);
        for (int64_t r = 0; r < R; r += rows) {
            int rt = R - r < rows ? (int)(R - r) : rows;
            tiles(job->x + r * K, K, w, rt, ct, job->out + r * N + n, N);
        }
    }
    return 1;
}

/* Columns n0..n1 of `job` for all its rows, with 8-bit activations, 16 columns at a time. Returns 0 if no buffer. */
static int int8_columns(const Job *job, int64_t n0, int64_t n1) {
    const int64_t M = job->M, K = job->K, N = job->N;
    uint8_t *buf = scratch(&packed_buf, &packed_cap, K / 32 * PACKED_BLOCK);
    if (!buf) return 0;
    for (int64_t n = n0; n < n1; n += 16) {
        int nc = n1 - n < 16 ? (int)(n1 - n) : 16;
        pack16(job->kind, job->qs, job->d, job->m, K, n, nc, n + 16 < n1, buf);
        for (int64_t r0 = 0; r0 < M; r0 += 8)
            int8_rows_any(job->kind, M - r0 < 8 ? M - r0 : 8, &job->int8, r0, K, buf, n, nc, N, job->out);
    }
    return 1;
}

/* Columns n0..n1 of `job` for all its rows. Up to 8 rows (a decode step) rebuild each block in
   registers for all of them, which measured faster there; more rows (a prompt) go through panels,
   1.4-1.8 times faster at 37 and 296 rows. Rows are counted in groups of 8 either way, and a last
   group of one row takes the one-row kernel, so a row's result never depends on the path. */
static void job_columns(const Job *job, int64_t n0, int64_t n1) {
    if (job->kind == 2) {
        job->fn(job->ctx, n0, n1);
        return;
    }
    if (job->int8.q && int8_columns(job, n0, n1)) return;
    const int64_t M = job->M, K = job->K, N = job->N;
    int64_t multi = M % 8 == 1 ? M - 1 : M, r0 = 0;
    if (multi > 8 && panel_columns(job, multi, n0, n1)) r0 = multi;
    for (; r0 < M; r0 += 8) {
        int64_t R = M - r0 < 8 ? M - r0 : 8;
        const float *x = job->x + r0 * K;
        float *out = job->out + r0 * N;
        if (R > 1 && wide_kernels) wide_rows(job->kind, x, R, K, job->qs, job->d, job->m, n0, n1, N, out);
        else if (job->kind == 0) q4_1_rows_any(x, R, K, job->qs, job->d, job->m, n0, n1, N, out);
        else q8_0_rows_any(x, R, K, job->qs, job->d, n0, n1, N, out);
    }
}

/* The thread pool. A product's output columns are cut into chunks of whole groups of 8 columns,
   and every thread (the caller included) takes the next chunk until none is left. Each column is
   computed by the same code whichever thread takes it, so results do not depend on the thread
   count. Nobody waits on a thread that is not running: when other processes hold the cores (a
   training job, say), a worker may be preempted, and the caller then takes the chunks that
   worker would have taken; it only ever waits for chunks already being computed, yielding its
   core while it does. Workers poll for half a millisecond after each product (a decode step calls
   the kernels 211 times, tens of microseconds apart), then sleep. One product at a time uses the
   pool: a second caller (another model's worker thread) computes its product alone instead of
   waiting.

   The poll is timed rather than counted: a `pause` takes 11 ns on one CPU and over 40 on another.
   It was 4,000 pauses (44 us on a 2-core Xeon), shorter than some gaps between a lean decode
   step's products (lean_step.py), so workers fell asleep within a step and woke late for the next
   product; polling 0.5 ms made the one-row step 27.4 -> 24.8 ms (medians of 16 alternating rounds;
   2 ms and 100,000 pauses measured the same as 0.5 ms). */
#define MAX_THREADS 64
#define WORKER_SPIN_NS 500000 /* how long a worker polls (with pause) before it sleeps */
#define WAIT_SPINS 200    /* polls before a waiting caller yields its core */
#define CHUNKS_PER_THREAD 4
static int pool_threads = 1; /* started, the caller's included */
static int pool_active = 1;  /* used per product (qmm_set_threads may lower it) */
static Job pool_job;
static int64_t pool_chunk, pool_chunks; /* columns per chunk, chunks in the job */
/* (generation << 32) | chunks not yet claimed. A chunk is claimed by counting this down while its
   job's generation is current, so a late worker of an earlier product can claim nothing. */
static _Atomic uint64_t pool_ticket;
static atomic_long pool_done;
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Claim and compute chunks of generation `gen` until none is left or the job has moved on;
   returns how many this thread computed. */
static long take_chunks(uint64_t gen) {
    long taken = 0;
    uint64_t t = atomic_load_explicit(&pool_ticket, memory_order_acquire);
    for (;;) {
        if (t >> 32 != gen || (t & 0xffffffffu) == 0) return taken;
        if (!atomic_compare_exchange_weak_explicit(&pool_ticket, &t, t - 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        /* claimed: the caller waits for this chunk, so the job (set before its ticket) stays put */
        int64_t n0 = (pool_chunks - (int64_t)(t & 0xffffffffu)) * pool_chunk, n1 = n0 + pool_chunk;
        if (n1 > pool_job.N) n1 = pool_job.N;
        job_columns(&pool_job, n0, n1);
        taken++;
        atomic_fetch_add_explicit(&pool_done, 1, memory_order_release);
        t = atomic_load_explicit(&pool_ticket, memory_order_acquire);
    }
}

static void *pool_worker(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    for (;;) {
        uint64_t now = atomic_load_explicit(&pool_ticket, memory_order_acquire) >> 32;
        for (int64_t start = now_ns(), spin = 1; now == seen; spin++) {
            _mm_pause();
            now = atomic_load_explicit(&pool_ticket, memory_order_acquire) >> 32;
            if (spin % 64 == 0 && now_ns() - start > WORKER_SPIN_NS) break;
        }
        if (now == seen) {
            pthread_mutex_lock(&pool_mutex);
            while ((now = atomic_load_explicit(&pool_ticket, memory_order_acquire) >> 32) == seen)
                pthread_cond_wait(&pool_wake, &pool_mutex);
            pthread_mutex_unlock(&pool_mutex);
        }
        seen = now;
        take_chunks(now);
    }
    return NULL;
}

/* Use `n` threads (the caller's included) from now on; returns the count in effect. Threads are
   started as needed and never stopped: a lower count leaves the extra ones asleep. */
int qmm_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_mutex_lock(&pool_busy);
    for (int t = pool_threads; t < n; t++) {
        pthread_t worker;
        if (pthread_create(&worker, NULL, pool_worker, NULL) != 0) { n = t; break; }
        pthread_detach(worker);
        pool_threads = t + 1;
    }
    pool_active = n;
    pthread_mutex_unlock(&pool_busy);
    return n;
}

/* Products smaller than this many multiply-adds run on the calling thread alone: waking the
   workers costs more than it saves. */
#define POOL_MIN_WORK (1 << 18)

/* When a worker holds a claimed chunk but is not running (other processes have the cores), the
   caller waits for it, for a scheduler time slice or more, on each of a decode step's 211
   products. After such a stall the caller computes alone for a while and then tries the pool
   again. Measured with a training job beside 8 /asks on 2 cores: without this, the asks took 20
   times longer than on one thread. How long "a while" is adapts: it starts at BACKOFF_MIN
   products and doubles with each stall up to BACKOFF_MAX (about ten decode steps), and halves
   after every BACKOFF_CLEAN products the pool computed without one. So a lasting neighbour keeps
   the caller alone most of the time, while a rare stall on an idle machine (a timer, a
   page fault) costs a fraction of a step: with a fixed 2,000 products, two such stalls in 30
   decode steps left two thirds of their products on one thread (measured on a 2-core Xeon). */
#define BACKOFF_MIN 16
#define BACKOFF_MAX 2000
#define BACKOFF_CLEAN 256
static int pool_backoff;                   /* products still to compute alone */
static int backoff_len = BACKOFF_MIN;      /* the next stall's backoff */
static int pool_clean;                     /* pooled products since the last stall or halving */

static void run_job(const Job *job) {
    if (pool_active == 1 || job->work < POOL_MIN_WORK || pthread_mutex_trylock(&pool_busy) != 0) {
        job_columns(job, 0, job->N);
        return;
    }
    if (pool_backoff > 0) {
        pool_backoff--;
        pthread_mutex_unlock(&pool_busy);
        job_columns(job, 0, job->N);
        return;
    }
    /* products: whole groups of 8 columns (16 with 8-bit activations, which pack 16 at a time) */
    const int64_t align = job->kind == 2 ? 1 : job->int8.q ? 16 : 8;
    int64_t groups = (job->N + align - 1) / align, want = (int64_t)pool_active * CHUNKS_PER_THREAD;
    pool_chunk = (groups + want - 1) / want * align;
    pool_chunks = (job->N + pool_chunk - 1) / pool_chunk;
    pool_job = *job;
    atomic_store_explicit(&pool_done, 0, memory_order_relaxed);
    uint64_t gen = (atomic_load_explicit(&pool_ticket, memory_order_relaxed) >> 32) + 1;
    pthread_mutex_lock(&pool_mutex);
    atomic_store_explicit(&pool_ticket, gen << 32 | (uint64_t)pool_chunks, memory_order_release);
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_mutex);
    int64_t start = now_ns();
    long mine = take_chunks(gen);
    int64_t own = now_ns();
    for (int spin = 0; atomic_load_explicit(&pool_done, memory_order_acquire) < pool_chunks; spin++) {
        if (spin < WAIT_SPINS) _mm_pause();
        else sched_yield();
    }
    /* a wait longer than a few of the caller's own chunks means a worker was off its core */
    if (now_ns() - own > 3 * (own - start) / (mine > 0 ? mine : 1) + 50000) {
        pool_backoff = backoff_len;
        backoff_len = backoff_len * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff_len * 2;
        pool_clean = 0;
    } else if (++pool_clean >= BACKOFF_CLEAN) {
        backoff_len = backoff_len / 2 < BACKOFF_MIN ? BACKOFF_MIN : backoff_len / 2;
        pool_clean = 0;
    }
    pthread_mutex_unlock(&pool_busy);
}

/* With 8-bit activations on, the job's rows rounded to 8 bits (by the calling thread, into its own
   buffer, which the pool's threads read while the caller waits for them). */
static __thread void *rows_buf;
static __thread int64_t rows_cap;

static void quantize_job(Job *job) {
    if (!int8_kernels || int8_held_off) return;
    const int64_t M = job->M, K = job->K, B = K / 32;
    const int64_t bytes = M * K * (job->kind == 1 ? 2 : 1), need = bytes + 2 * M * B * (int64_t)sizeof(float);
    uint8_t *buf = scratch(&rows_buf, &rows_cap, need);
    if (!buf) return; /* the fp32 kernels then */
    int8_t *q = (int8_t *)buf;
    uint8_t *u = job->kind == 1 ? buf + M * K : NULL;
    float *dx = (float *)(buf + bytes), *sx = dx + M * B;
    quantize_rows(job->x, M, K, q, u, dx, sx);
    job->int8 = (Int8Rows){q, u, dx, sx};
}

/* Entry points: x [M, K] row-major fp32, out [M, N]. */
void q4_1_mm(const float *x, int64_t M, int64_t K, const uint8_t *qs, const float *d, const float *m, int64_t N, float *out) {
    Job job = {0, x, M, K, qs, d, m, N, out, NULL, NULL, M * K * N, {0}};
    quantize_job(&job);
    run_job(&job);
}

void q8_0_mm(const float *x, int64_t M, int64_t K, const int8_t *qs, const float *d, int64_t N, float *out) {
    Job job = {1, x, M, K, qs, d, NULL, N, out, NULL, NULL, M * K * N, {0}};
    quantize_job(&job);
    run_job(&job);
}

/* Other kernels' work (decode.c's attention) on the same pool: fn(ctx, u0, u1) computes units
   u0..u1 of `units`, in any order and on any thread; `work` (multiply-adds) decides whether the
   pool is worth waking. */
void qmm_parallel(void (*fn)(const void *ctx, int64_t u0, int64_t u1), const void *ctx, int64_t units, int64_t work) {
    Job job = {2, NULL, 0, 0, NULL, NULL, NULL, units, NULL, fn, ctx, work, {0}};
    run_job(&job);
}

/* Whole fp32 weights [N, K] from the blocks, for products with many rows (a long prompt's prefill
   on one kernel thread), and to check at load that the blocks hold the model's fp32 weights. */
void q4_1_dequant(const uint8_t *qs, const float *d, const float *m, int64_t N, int64_t K, float *out) {
    rebuild_q4_1(qs, d, m, K, 0, N, out);
}

void q8_0_dequant(const int8_t *qs, const float *d, int64_t N, int64_t K, float *out) {
    rebuild_q8_0(qs, d, K, 0, N, out);
}
