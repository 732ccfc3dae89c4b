/* The lean decode step's kernels (backends/local/lean_step.py), on a CPU with AVX2 and FMA:
   attention (attend_decode), rotary embeddings (rope_decode) and LoRA terms (lora_add) for one
   new token per row.

   Attention: torch's scaled_dot_product_attention costs 30 us a call for one row and 200 us for eight at a
   decode step's shapes (9 query heads over 3 key/value heads, 64 dimensions, a few hundred cached
   tokens), almost all of it overhead: the arithmetic is a few microseconds. A step calls it once
   per layer. This computes the same softmax(q k^T * scale) v in fp32, reading the keys and values
   where the KV cache keeps them (any row, head and token strides; dimensions contiguous) and
   skipping the masked (left-padding) tokens of each row.

   Built into the same library as qmm.c by backends/local/kernels/__init__.py. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "simd.h"

/* e^x for x <= 0 (softmax after subtracting the maximum), 8 at a time: x = n ln2 + r with |r| <=
   ln2 / 2, e^r by its Taylor polynomial to r^7 (relative error below 2e-7 on that range, about
   fp32's own rounding), times 2^n built in the exponent bits. Below -87 the result is 0. */
static inline __m256 exp_nonpositive(__m256 x) {
    const __m256 lowest = _mm256_set1_ps(-87.0f);
    __m256 zero = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lowest);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - n ln2, with ln2 split in two so that n * hi is exact */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(p, _mm256_castsi256_ps(scale)));
}

static __thread float *score_buf;
static __thread int64_t score_cap;

/* The sums of four vectors: lane j holds the sum of a[j]'s lanes. */
static inline __m128 hsum4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* The heads of a group share their keys and values (grouped-query attention), so GB of them
   (up to 3: the accumulators must fit AVX2's 16 registers) go through the cache together and
   each key and value vector is loaded once for all of them. A row's work, for the heads
   h0..h0+GB of kv head g:

   scores: s[h][t] = q[h] . k[t] * scale + bias[t] (bias 0, or -inf for a masked token), four
   tokens at a time; best[h] = the largest. The same tokens' values are prefetched meanwhile, for
   `weighted` after the softmax: at eight rows a layer's keys and values (~1 MB) are beyond the
   core's caches, and fetching the values during the scores took a quarter off an eight-row call
   (bench/README.md, session 20). */
static inline __attribute__((always_inline)) void scores(const float *q, int64_t D, int GB, const float *k,
                                                         const float *v, int64_t k_tok, int64_t v_tok, int64_t T,
                                                         int64_t DV, float scale, const float *bias, float *s,
                                                         float *best) {
    const __m128 sv = _mm_set1_ps(scale);
    __m128 top[3];
    for (int h = 0; h < GB; h++) top[h] = _mm_set1_ps(-INFINITY);
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        __m256 acc[3][4];
        for (int h = 0; h < GB; h++)
            for (int j = 0; j < 4; j++) acc[h][j] = _mm256_setzero_ps();
        const float *k0 = k + t * k_tok;
        for (int j = 0; j < 4; j++) /* one prefetch a 64-byte line: two vectors of 8 */
            for (int64_t i = 0; i < DV; i += 2) _mm_prefetch((const char *)(v + (t + j) * v_tok + 8 * i), _MM_HINT_T0);
        for (int64_t i = 0; i < DV; i++) {
            __m256 kv[4];
            for (int j = 0; j < 4; j++) kv[j] = _mm256_loadu_ps(k0 + j * k_tok + 8 * i);
            for (int h = 0; h < GB; h++) {
                __m256 qv = _mm256_loadu_ps(q + h * D + 8 * i);
                for (int j = 0; j < 4; j++) acc[h][j] = _mm256_fmadd_ps(qv, kv[j], acc[h][j]);
            }
        }
        __m128 b = _mm_loadu_ps(bias + t);
        for (int h = 0; h < GB; h++) {
            __m128 x = _mm_add_ps(_mm_mul_ps(hsum4x8(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), sv), b);
            _mm_storeu_ps(s + h * T + t, x);
            top[h] = _mm_max_ps(top[h], x);
        }
    }
    for (int h = 0; h < GB; h++) {
        __m128 m = _mm_max_ps(top[h], _mm_movehl_ps(top[h], top[h]));
        best[h] = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    }
    for (; t < T; t++)
        for (int h = 0; h < GB; h++) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t i = 0; i < DV; i++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * D + 8 * i), _mm256_loadu_ps(k + t * k_tok + 8 * i), acc);
            float x = hsum8(acc) * scale + bias[t];
            s[h * T + t] = x;
            if (x > best[h]) best[h] = x;
        }
}

/* softmax in place: s[h][t] = e^(s[h][t] - best[h]); returns the sums in total[h] (0 when the row
   has no unmasked token: a row's own token is always there in a batch, but it gets zeros rather
   than NaNs all the same). */
static inline __attribute__((always_inline)) void softmax(int GB, int64_t T, const float *best, float *s, float *total) {
    for (int h = 0; h < GB; h++) {
        float *sh = s + h * T;
        total[h] = 0;
        if (best[h] == -INFINITY) {
            for (int64_t t = 0; t < T; t++) sh[t] = 0;
            continue;
        }
        __m256 bv = _mm256_set1_ps(best[h]), sum = _mm256_setzero_ps();
        int64_t t = 0;
        for (; t + 8 <= T; t += 8) {
            __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(sh + t), bv));
            _mm256_storeu_ps(sh + t, e);
            sum = _mm256_add_ps(sum, e);
        }
        total[h] = hsum8(sum);
        for (; t < T; t++) {
            float e = sh[t] == -INFINITY ? 0.0f : expf(sh[t] - best[h]);
            sh[t] = e;
            total[h] += e;
        }
    }
}

/* out[h][0..8*DV] = sum_t p[h][t] v[t] / total[h], four vectors (32 dimensions) at a time:
   3 heads x 4 accumulators and 3 weights fill the 16 registers. */
static inline __attribute__((always_inline)) void weighted(const float *p, int GB, const float *v, int64_t v_tok, int64_t T,
                                                           int64_t DV, const float *total, float *out, int64_t D) {
    for (int64_t c = 0; c < DV; c += 4) {
        const int64_t w = DV - c < 4 ? DV - c : 4;
        __m256 acc[3][4];
        for (int h = 0; h < GB; h++)
            for (int i = 0; i < 4; i++) acc[h][i] = _mm256_setzero_ps();
        const float *vc = v + 8 * c;
        for (int64_t t = 0; t < T; t++) {
            int any = 0;
            __m256 pt[3];
            for (int h = 0; h < GB; h++) {
                any |= p[h * T + t] != 0.0f;
                pt[h] = _mm256_set1_ps(p[h * T + t]);
            }
            if (!any) continue; /* a masked token */
            const float *vt = vc + t * v_tok;
            if (w == 4) {
                for (int i = 0; i < 4; i++) {
                    __m256 vv = _mm256_loadu_ps(vt + 8 * i);
                    for (int h = 0; h < GB; h++) acc[h][i] = _mm256_fmadd_ps(pt[h], vv, acc[h][i]);
                }
            } else {
                for (int64_t i = 0; i < w; i++) {
                    __m256 vv = _mm256_loadu_ps(vt + 8 * i);
                    for (int h = 0; h < GB; h++) acc[h][i] = _mm256_fmadd_ps(pt[h], vv, acc[h][i]);
                }
            }
        }
        for (int h = 0; h < GB; h++) {
            __m256 iv = _mm256_set1_ps(total[h] > 0 ? 1.0f / total[h] : 0.0f);
            for (int64_t i = 0; i < w; i++) _mm256_storeu_ps(out + h * D + 8 * (c + i), _mm256_mul_ps(acc[h][i], iv));
        }
    }
}

/* GB heads of one row sharing one kv head. Inlined with GB and DV constants for the usual cases
   (groups of 3, 2 or 1; head sizes 64 and 128), so the loops unroll. */
static inline __attribute__((always_inline)) void heads(const float *q, int64_t D, int GB, const float *k, const float *v,
                                                        int64_t k_tok, int64_t v_tok, int64_t T, int64_t DV, float scale,
                                                        const float *bias, float *s, float *out) {
    float best[3], total[3];
    scores(q, D, GB, k, v, k_tok, v_tok, T, DV, scale, bias, s, best);
    softmax(GB, T, best, s, total);
    weighted(s, GB, v, v_tok, T, DV, total, out, D);
}

#define HEADS_DV(gb)                                                                                 \
    do {                                                                                             \
        if (DV == 8) heads(qh, D, gb, kg, vg, k_tok, v_tok, T, 8, scale, bias, s, oh);               \
        else if (DV == 16) heads(qh, D, gb, kg, vg, k_tok, v_tok, T, 16, scale, bias, s, oh);        \
        else heads(qh, D, gb, kg, vg, k_tok, v_tok, T, DV, scale, bias, s, oh);                      \
    } while (0)

/* qmm.c's thread pool (the same library): fn(ctx, u0, u1) for units u0..u1 of `units`. */
void qmm_parallel(void (*fn)(const void *ctx, int64_t u0, int64_t u1), const void *ctx, int64_t units, int64_t work);

typedef struct {
    const float *q, *k, *v;
    int64_t H, KV, D, k_row, k_head, k_tok, v_row, v_head, v_tok, T;
    const int64_t *mask;
    float scale;
    float *out;
    _Atomic int failed; /* a thread could not get its buffer */
} Attention;

/* Units u0..u1 of an attention call: unit u is row u / KV's heads of kv head u % KV. */
static void attend_units(const void *arg, int64_t u0, int64_t u1) {
    Attention *a = (Attention *)arg;
    const int64_t T = a->T, D = a->D, G = a->H / a->KV, DV = D / 8, k_tok = a->k_tok, v_tok = a->v_tok;
    const float scale = a->scale;
    if (4 * T > score_cap) {
        free(score_buf);
        score_buf = malloc((size_t)(4 * T) * sizeof(float));
        score_cap = score_buf ? 4 * T : 0;
        if (!score_buf) {
            a->failed = 1;
            return;
        }
    }
    float *s = score_buf, *bias = score_buf + 3 * T;
    int64_t biased = -1; /* the row `bias` holds */
    for (int64_t u = u0; u < u1; u++) {
        const int64_t r = u / a->KV, g = u % a->KV;
        if (r != biased) {
            for (int64_t t = 0; t < T; t++) bias[t] = a->mask[r * T + t] ? 0.0f : -INFINITY;
            biased = r;
        }
        const float *kg = a->k + r * a->k_row + g * a->k_head, *vg = a->v + r * a->v_row + g * a->v_head;
        for (int64_t h0 = 0; h0 < G; h0 += 3) {
            const float *qh = a->q + (r * a->H + g * G + h0) * D;
            float *oh = a->out + (r * a->H + g * G + h0) * D;
            int64_t gb = G - h0 < 3 ? G - h0 : 3;
            if (gb == 3) HEADS_DV(3);
            else if (gb == 2) HEADS_DV(2);
            else HEADS_DV(1);
        }
    }
}

/* out[r, 0, h * D + j] = sum_t softmax_t(q[r, h] . k[r, h / G, t] * scale) v[r, h / G, t, j], over
   the tokens t of row r whose mask is non-zero. q is [rows, H, D] contiguous, mask [rows, T]
   (int64, as the attention mask the batch keeps), k and v [rows, KV, T, D] with the given element
   strides for rows, heads and tokens. D must be a multiple of 8; H a multiple of KV. The (row, kv
   head) pairs are shared out on the kernels' pool. Returns 0 when it cannot (bad shape, no memory). */
int attend_decode(const float *q, int64_t rows, int64_t H, int64_t KV, int64_t D, const float *k, const float *v,
                  int64_t k_row, int64_t k_head, int64_t k_tok, int64_t v_row, int64_t v_head, int64_t v_tok,
                  int64_t T, const int64_t *mask, float scale, float *out) {
    if (D % 8 || KV < 1 || H % KV || T < 1) return 0;
    Attention a = {q, k, v, H, KV, D, k_row, k_head, k_tok, v_row, v_head, v_tok, T, mask, scale, out, 0};
    qmm_parallel(attend_units, &a, rows * KV, 2 * rows * H * T * D);
    return !a.failed;
}

/* Rotary position embedding of one decode step, in place: for q [rows, QH, D] and k [rows, KH, D]
   (contiguous) and each row's cos and sin [rows, D], x becomes x * cos + rotate_half(x) * sin,
   where rotate_half(x) = (-x[D/2:], x[:D/2]). Each element is rounded as torch rounds transformers'
   apply_rotary_pos_emb (two products, then their sum; the build does not fuse them), so the bits
   are the same. */
static void rope_rows(float *x, int64_t rows, int64_t heads, int64_t D, const float *cos, const float *sin) {
    const int64_t half = D / 2;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t r = 0; r < rows; r++) {
        const float *c = cos + r * D, *s = sin + r * D;
        for (int64_t h = 0; h < heads; h++) {
            float *lo = x + (r * heads + h) * D, *hi = lo + half;
            int64_t j = 0;
            for (; j + 8 <= half; j += 8) {
                __m256 a = _mm256_loadu_ps(lo + j), b = _mm256_loadu_ps(hi + j);
                __m256 na = _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(c + j)),
                                          _mm256_mul_ps(_mm256_xor_ps(b, sign), _mm256_loadu_ps(s + j)));
                __m256 nb = _mm256_add_ps(_mm256_mul_ps(b, _mm256_loadu_ps(c + half + j)),
                                          _mm256_mul_ps(a, _mm256_loadu_ps(s + half + j)));
                _mm256_storeu_ps(lo + j, na);
                _mm256_storeu_ps(hi + j, nb);
            }
            for (; j < half; j++) {
                float a = lo[j], b = hi[j];
                lo[j] = a * c[j] + (-b) * s[j];
                hi[j] = b * c[half + j] + a * s[half + j];
            }
        }
    }
}

/* Both at once (one call a layer). Returns 0 for an odd D and changes nothing. */
int rope_decode(float *q, int64_t qh, float *k, int64_t kh, int64_t rows, int64_t D, const float *cos, const float *sin) {
    if (D % 2) return 0;
    rope_rows(q, rows, qh, D, cos, sin);
    rope_rows(k, rows, kh, D, cos, sin);
    return 1;
}

/* A LoRA layer's addition for the rows of one adapter, in place: out[i] += scale * B (A x[i]) for
   each row i in rows[0..n] (all M rows of x when rows is NULL), with A [r, K] and B [N, r] fp32
   row-major, x [M, K] and out [M, N] contiguous, K a multiple of 8, r at most 256. peft computes
   the same with two tiny matrix products, a multiply and an add: about 30 us a layer at a decode
   step's one row, for some 20,000 multiply-adds. Returns 0 (and changes nothing) on a shape or a
   row it does not take. */
int lora_add(const float *x, int64_t M, int64_t K, const float *A, int64_t r, const float *B, int64_t N, float scale,
             const int64_t *rows, int64_t n, float *out) {
    if (K % 8 || r < 1 || r > 256) return 0;
    const int64_t count = rows ? n : M;
    for (int64_t j = 0; rows && j < n; j++)
        if (rows[j] < 0 || rows[j] >= M) return 0;
    float h[256];
    for (int64_t j = 0; j < count; j++) {
        const int64_t i = rows ? rows[j] : j;
        const float *xi = x + i * K;
        for (int64_t a = 0; a < r; a++) {
            const float *Aa = A + a * K;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            int64_t k = 0;
            for (; k + 16 <= K; k += 16) {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(Aa + k), _mm256_loadu_ps(xi + k), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(Aa + k + 8), _mm256_loadu_ps(xi + k + 8), acc1);
            }
            if (k < K) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(Aa + k), _mm256_loadu_ps(xi + k), acc0);
            h[a] = hsum8(_mm256_add_ps(acc0, acc1)) * scale;
        }
        float *oi = out + i * N;
        for (int64_t o = 0; o < N; o++) {
            const float *Bo = B + o * r;
            __m256 acc = _mm256_setzero_ps();
            int64_t a = 0;
            for (; a + 8 <= r; a += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(Bo + a), _mm256_loadu_ps(h + a), acc);
            float sum = hsum8(acc);
            for (; a < r; a++) sum += Bo[a] * h[a];
            oi[o] += sum;
        }
    }
    return 1;
}
