/* Matrix products straight from GGUF blocks, for decoding on a CPU with AVX2 and FMA.

   Decoding one token reads every weight once, so it is bound by memory: fp32 weights are 540 MB a
   token for SmolLM2-135M, its Q4_1 blocks 5 times less. These kernels multiply fp32 activations by
   the blocks directly. Each weight is rebuilt exactly as transformers dequantises the file
   (d * q + m, in fp32), so the weights are the fp32 model's own; only the order of the sums differs.

   Built at run time by backends/local/kernels/__init__.py (gcc -O3 -mavx2 -mfma) and called through
   ctypes, which releases the GIL. Single-threaded: on the 2-vCPU machines measured, one thread
   decoded fastest. */

#include <immintrin.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* acc += block b's 32 weights w0..w3 times each row's 32 activations. One row keeps four
   accumulators (four independent FMA chains, which FMA latency would otherwise stall); several
   rows keep one each and their chains interleave. Shared by the Q4_1 and Q8_0 kernels, which
   differ only in how they rebuild w0..w3; it uses their locals (x, R, K, b, w0..w3, acc). */
#define ACCUMULATE_BLOCK()                                                      \
    do {                                                                        \
        if (R == 1) {                                                           \
            const float *xr = x + b * 32;                                       \
            acc[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[0]);          \
            acc[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[1]);      \
            acc[2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[2]);     \
            acc[3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[3]);     \
            break;                                                              \
        }                                                                       \
        for (int r = 0; r < R; r++) {                                           \
            const float *xr = x + r * K + b * 32;                               \
            __m256 a = acc[r];                                                  \
            a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a);                    \
            a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), a);                \
            a = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), a);               \
            a = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), a);               \
            acc[r] = a;                                                         \
        }                                                                       \
    } while (0)

/* out[r, n] for each row from its accumulators (one row: the sum of its four); uses acc, R, N, n, out. */
#define STORE_ROW()                                                                                   \
    do {                                                                                              \
        if (R == 1) acc[0] = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])); \
        for (int r = 0; r < R; r++) out[r * N + n] = hsum(acc[r]);                                    \
    } while (0)

/* out[r, n] = sum_k x[r, k] * w[n, k] for rows r0..r0+R (R <= 8), with w stored as Q4_1 blocks of 32:
   w = d * q + m (q in 0..15: the low nibbles of qs hold elements 0..15, the high ones 16..31). */
static inline __attribute__((always_inline)) void q4_1_rows(const float *x, int64_t R, int64_t K, const uint8_t *qs, const float *d, const float *m,
                      int64_t n0, int64_t n1, int64_t N, float *out) {
    const __m128i low = _mm_set1_epi8(0x0F);
    const int64_t B = K / 32;
    for (int64_t n = n0; n < n1; n++) {
        __m256 acc[8];
        for (int r = 0; r < (R < 4 ? 4 : R); r++) acc[r] = _mm256_setzero_ps();
        const uint8_t *q = qs + n * (K / 2);
        for (int64_t b = 0; b < B; b++) {
            __m128i raw = _mm_loadu_si128((const __m128i *)(q + b * 16));
            __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
            __m256 dv = _mm256_set1_ps(d[n * B + b]), mv = _mm256_set1_ps(m[n * B + b]);
            __m256 w0 = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo))), mv);
            __m256 w1 = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)))), mv);
            __m256 w2 = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi))), mv);
            __m256 w3 = _mm256_add_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)))), mv);
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
        for (int64_t b = 0; b < B; b++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(q + b * 32));
            __m128i a0 = _mm256_castsi256_si128(raw), a1 = _mm256_extracti128_si256(raw, 1);
            __m256 dv = _mm256_set1_ps(d[n * B + b]);
            __m256 w0 = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a0)));
            __m256 w1 = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a0, 8))));
            __m256 w2 = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a1)));
            __m256 w3 = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a1, 8))));
            ACCUMULATE_BLOCK();
        }
        STORE_ROW();
    }
}

/* Entry points: x [M, K] row-major fp32, out [M, N]; rows are taken 8 at a time. */
void q4_1_mm(const float *x, int64_t M, int64_t K, const uint8_t *qs, const float *d, const float *m, int64_t N, float *out) {
    for (int64_t r0 = 0; r0 < M; r0 += 8) {
        int64_t R = M - r0 < 8 ? M - r0 : 8;
        if (R == 8) q4_1_rows(x + r0 * K, 8, K, qs, d, m, 0, N, N, out + r0 * N);
        else if (R == 1) q4_1_rows(x + r0 * K, 1, K, qs, d, m, 0, N, N, out + r0 * N);
        else q4_1_rows(x + r0 * K, R, K, qs, d, m, 0, N, N, out + r0 * N);
    }
}

void q8_0_mm(const float *x, int64_t M, int64_t K, const int8_t *qs, const float *d, int64_t N, float *out) {
    for (int64_t r0 = 0; r0 < M; r0 += 8) {
        int64_t R = M - r0 < 8 ? M - r0 : 8;
        if (R == 8) q8_0_rows(x + r0 * K, 8, K, qs, d, 0, N, N, out + r0 * N);
        else if (R == 1) q8_0_rows(x + r0 * K, 1, K, qs, d, 0, N, N, out + r0 * N);
        else q8_0_rows(x + r0 * K, R, K, qs, d, 0, N, N, out + r0 * N);
    }
}

/* Whole fp32 weights [N, K] from Q4_1 blocks, for products with many rows (a prompt's prefill). */
void q4_1_dequant(const uint8_t *qs, const float *d, const float *m, int64_t N, int64_t K, float *out) {
    const int64_t B = K / 32;
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < B; b++) {
            const uint8_t *q = qs + n * (K / 2) + b * 16;
            float *o = out + n * K + b * 32, db = d[n * B + b], mb = m[n * B + b];
            for (int j = 0; j < 16; j++) {
                o[j] = db * (float)(q[j] & 0x0F) + mb;
                o[j + 16] = db * (float)(q[j] >> 4) + mb;
            }
        }
}

void q8_0_dequant(const int8_t *qs, const float *d, int64_t N, int64_t K, float *out) {
    const int64_t B = K / 32;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) out[n * K + k] = d[n * B + k / 32] * (float)qs[n * K + k];
}
