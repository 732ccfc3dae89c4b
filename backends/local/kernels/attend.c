/* Attention for one decode step (one new query per row), on a CPU with AVX2 and FMA.

   torch's scaled_dot_product_attention costs 30 us a call for one row and 200 us for eight at a
   decode step's shapes (9 query heads over 3 key/value heads, 64 dimensions, a few hundred cached
   tokens), almost all of it overhead: the arithmetic is a few microseconds. A step calls it once
   per layer. This computes the same softmax(q k^T * scale) v in fp32, reading the keys and values
   where the KV cache keeps them (any row, head and token strides; dimensions contiguous) and
   skipping the masked (left-padding) tokens of each row.

   Built into the same library as qmm.c by backends/local/kernels/__init__.py. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

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

/* The sums of eight vectors, as one vector: lane j holds the sum of a[j]'s lanes. */
static inline __m256 hsum8x8(const __m256 a[8]) {
    __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
    __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
    __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* s[t] = q . k[t] * scale + bias[t] for t in 0..T (bias: 0, or -inf for a masked token), eight
   tokens at a time (one accumulator each); returns the largest. */
static inline __attribute__((always_inline)) float scores(const float *q, const float *k, int64_t k_tok, int64_t T, int64_t DV, float scale,
                    const float *bias, float *s) {
    const __m256 sv = _mm256_set1_ps(scale);
    __m256 top = _mm256_set1_ps(-INFINITY);
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) {
        __m256 acc[8];
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < DV; i++) {
            __m256 qv = _mm256_loadu_ps(q + 8 * i);
            for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + (t + j) * k_tok + 8 * i), acc[j]);
        }
        __m256 x = _mm256_add_ps(_mm256_mul_ps(hsum8x8(acc), sv), _mm256_loadu_ps(bias + t));
        _mm256_storeu_ps(s + t, x);
        top = _mm256_max_ps(top, x);
    }
    float best = hmax8(top);
    for (; t < T; t++) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < DV; i++) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * i), _mm256_loadu_ps(k + t * k_tok + 8 * i), acc);
        s[t] = hsum8(acc) * scale + bias[t];
        if (s[t] > best) best = s[t];
    }
    return best;
}

/* out[0..8*DV] = sum_t p[t] v[t] / total, 64 dimensions (eight vectors) at a time. */
static inline __attribute__((always_inline)) void weighted(const float *p, const float *v, int64_t v_tok, int64_t T, int64_t DV, float inv, float *out) {
    const __m256 iv = _mm256_set1_ps(inv);
    for (int64_t c = 0; c < DV; c += 8) {
        const float *vc = v + 8 * c;
        if (DV - c >= 8) {
            __m256 acc[8];
            for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
            for (int64_t t = 0; t < T; t++) {
                if (p[t] == 0.0f) continue;
                __m256 pt = _mm256_set1_ps(p[t]);
                for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vc + t * v_tok + 8 * i), acc[i]);
            }
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(out + 8 * (c + i), _mm256_mul_ps(acc[i], iv));
        } else {
            for (int64_t i = 0; i < DV - c; i++) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t t = 0; t < T; t++)
                    if (p[t] != 0.0f) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(vc + t * v_tok + 8 * i), acc);
                _mm256_storeu_ps(out + 8 * (c + i), _mm256_mul_ps(acc, iv));
            }
        }
    }
}

/* One query head of one row: scores, softmax, weighted values into out[0..8*DV]. Inlined with DV a
   constant for the usual head sizes (64 and 128), so the loops over dimensions unroll. */
static inline __attribute__((always_inline)) void head(const float *q, const float *k, const float *v, int64_t k_tok,
                                                       int64_t v_tok, int64_t T, int64_t DV, float scale,
                                                       const float *bias, float *s, float *out) {
    float best = scores(q, k, k_tok, T, DV, scale, bias, s);
    /* a row with every token masked cannot happen in a batch (its own token is always
       there); it gets zeros rather than NaNs all the same */
    float total = 0;
    if (best == -INFINITY) {
        for (int64_t t = 0; t < T; t++) s[t] = 0;
    } else {
        __m256 bv = _mm256_set1_ps(best), sum = _mm256_setzero_ps();
        int64_t t = 0;
        for (; t + 8 <= T; t += 8) {
            __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), bv));
            _mm256_storeu_ps(s + t, e);
            sum = _mm256_add_ps(sum, e);
        }
        total = hsum8(sum);
        for (; t < T; t++) {
            float e = s[t] == -INFINITY ? 0.0f : expf(s[t] - best);
            s[t] = e;
            total += e;
        }
    }
    weighted(s, v, v_tok, T, DV, total > 0 ? 1.0f / total : 0.0f, out);
}

/* out[r, 0, h * D + j] = sum_t softmax_t(q[r, h] . k[r, h / G, t] * scale) v[r, h / G, t, j], over
   the tokens t of row r whose mask is non-zero. q is [rows, H, D] contiguous, mask [rows, T]
   (int64, as the attention mask the batch keeps), k and v [rows, KV, T, D] with the given element
   strides for rows, heads and tokens. D must be a multiple of 8; H a multiple of KV. Returns 0
   when it cannot (bad shape, no memory) and has written nothing. */
int attend_decode(const float *q, int64_t rows, int64_t H, int64_t KV, int64_t D, const float *k, const float *v,
                  int64_t k_row, int64_t k_head, int64_t k_tok, int64_t v_row, int64_t v_head, int64_t v_tok,
                  int64_t T, const int64_t *mask, float scale, float *out) {
    if (D % 8 || KV < 1 || H % KV || T < 1) return 0;
    if (2 * T > score_cap) {
        free(score_buf);
        score_buf = malloc((size_t)(2 * T) * sizeof(float));
        score_cap = score_buf ? 2 * T : 0;
        if (!score_buf) return 0;
    }
    const int64_t G = H / KV, DV = D / 8;
    float *s = score_buf, *bias = score_buf + T;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t t = 0; t < T; t++) bias[t] = mask[r * T + t] ? 0.0f : -INFINITY;
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / G;
            const float *kg = k + r * k_row + g * k_head, *vg = v + r * v_row + g * v_head;
            if (DV == 8) head(q + (r * H + h) * D, kg, vg, k_tok, v_tok, T, 8, scale, bias, s, out + (r * H + h) * D);
            else if (DV == 16) head(q + (r * H + h) * D, kg, vg, k_tok, v_tok, T, 16, scale, bias, s, out + (r * H + h) * D);
            else head(q + (r * H + h) * D, kg, vg, k_tok, v_tok, T, DV, scale, bias, s, out + (r * H + h) * D);
        }
    }
    return 1;
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
