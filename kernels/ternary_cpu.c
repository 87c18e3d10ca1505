// A ternary linear on CPU, on the 2-bit packed codes: y = (int8 codes of x) . (ternary codes of W), summed in
// int32, times the two scales. kernels/ternary_cpu.py builds and calls it; the why is in its docstring.
//
// x      [M, K] float32, row-major
// w      the [N, K] weight's codes packed 4 to a byte (kernels/ternary_codes.py): weight i = n * K + k is
//        (byte i / 4 >> 2 * (i % 4) & 3) - 1; K % 4 == 0, so row n starts at byte n * K / 4
// scale  [N] float32, the weight's scale per output (a fused linear's outputs have their own linears' scales)
// y      [M, N] float32
//
// Per row m, as kernels/ternary_codes.py's activation_codes: s = 127 / max(max_k |x[m, k]|, 1e-5), q = round(x * s)
// (to nearest even), integers in [-127, 127]. Then y[m, n] = (float) sum_k q[m, k] * w[n, k] * (scale[n] / s),
// the order torch computes `sums * (scale / s)` in. With AVX-512 VNNI the sum is vpdpbusd: unsigned bytes (the
// stored codes c = w + 1 in {0, 1, 2}) times signed bytes (q), 64 at a time, so sum c * q - sum q = sum w * q.
// A 64-weight block is 16 packed bytes; the code of weight k = 4j + t of the block sits at bits 2t of byte j, so
// q is stored permuted (q'[16t + j] = q[4j + t]) and the bytes are expanded as 4 shifted copies, with no shuffle.
// Tiles of 4 outputs x up to 4 token rows: each 64-block of a weight row is expanded once per tile and 16
// independent accumulators hide vpdpbusd's latency. One thread: at these sizes (a matrix-vector product per
// linear and token) starting a second one cost more than it saved on this 2-core machine (measured: ~40 us).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __AVX512VNNI__
#include <immintrin.h>
#endif

#define EPS 1e-5f
#define TILE 4  // outputs, and token rows, per tile

typedef struct {
    const int8_t *q;       // [M, K] codes, each row's full 64-blocks permuted, the tail in order
    const int32_t *qsum;   // [M] each row's sum of codes over its full 64-blocks
    const float *s;        // [M] activation scales
    const uint8_t *w;
    const float *scale;
    float *y;
    int64_t M, N, K;
} Job;

static int64_t full_blocks(int64_t K) {
#ifdef __AVX512VNNI__
    return K / 64 * 64;
#else
    (void)K;
    return 0;
#endif
}

// Outputs n0 .. n0 + nb - 1 for token rows m0 .. m0 + mb - 1 (nb, mb <= TILE; constants where inlined).
static inline __attribute__((always_inline)) void tile(const Job *j, int64_t n0, int nb, int64_t m0, int mb) {
    const int64_t K = j->K, full = full_blocks(K), row_bytes = K / 4;
    int32_t sums[TILE][TILE] = {{0}};
#ifdef __AVX512VNNI__
    const __m512i shifts = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);  // 128-bit lane t: shift by 2t
    const __m512i three = _mm512_set1_epi8(3);
    __m512i acc[TILE][TILE];
    for (int a = 0; a < nb; a++)
        for (int b = 0; b < mb; b++) acc[a][b] = _mm512_setzero_si512();
    for (int64_t k = 0; k < full; k += 64) {
        __m512i w[TILE];
        for (int a = 0; a < nb; a++) {
            __m128i packed = _mm_loadu_si128((const __m128i *)(j->w + (n0 + a) * row_bytes + k / 4));
            w[a] = _mm512_and_si512(_mm512_srlv_epi64(_mm512_broadcast_i32x4(packed), shifts), three);
        }
        for (int b = 0; b < mb; b++) {
            __m512i q = _mm512_loadu_si512(j->q + (m0 + b) * K + k);
            for (int a = 0; a < nb; a++) acc[a][b] = _mm512_dpbusd_epi32(acc[a][b], w[a], q);
        }
    }
    for (int a = 0; a < nb; a++)
        for (int b = 0; b < mb; b++) sums[a][b] = _mm512_reduce_add_epi32(acc[a][b]) - j->qsum[m0 + b];
#endif
    for (int a = 0; a < nb; a++) {
        const uint8_t *wrow = j->w + (n0 + a) * row_bytes;
        for (int b = 0; b < mb; b++) {
            const int8_t *q = j->q + (m0 + b) * K;
            int32_t sum = sums[a][b];
            for (int64_t k = full; k < K; k++) sum += ((wrow[k / 4] >> (2 * (k % 4)) & 3) - 1) * q[k];
            j->y[(m0 + b) * j->N + n0 + a] = (float)sum * (j->scale[n0 + a] / j->s[m0 + b]);
        }
    }
}

#define TILES(nb)                                                         \
    for (int64_t m0 = 0; m0 < j->M; m0 += TILE) {                         \
        switch (j->M - m0 < TILE ? (int)(j->M - m0) : TILE) {             \
            case 1: tile(j, n0, nb, m0, 1); break;                        \
            case 2: tile(j, n0, nb, m0, 2); break;                        \
            case 3: tile(j, n0, nb, m0, 3); break;                        \
            default: tile(j, n0, nb, m0, TILE); break;                    \
        }                                                                 \
    }

static void run(const Job *j) {
    int64_t n0 = 0;
    for (; n0 + TILE <= j->N; n0 += TILE) TILES(TILE)
    for (; n0 < j->N; n0++) TILES(1)
}

// One row's codes (full 64-blocks permuted for tile), the sum of those blocks' codes, and the scale.
static void quantize(const float *x, int64_t K, int8_t *q, int32_t *qsum, float *s) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    float scale = 1.0f / fmaxf(amax, EPS) * 127.0f;  // torch's 127.0 / t is reciprocal(t) * 127, rounded twice
    int64_t full = full_blocks(K);
    int32_t sum = 0;
    for (int64_t k = 0; k < K; k++) {
        int8_t c = (int8_t)nearbyintf(x[k] * scale);
        if (k < full) {
            q[(k & ~63) + 16 * (k % 4) + (k % 64) / 4] = c;
            sum += c;
        } else {
            q[k] = c;
        }
    }
    *qsum = sum;
    *s = scale;
}

// Returns 0, or -1 when out of memory.
int ternary_linear(const float *x, const uint8_t *w, const float *scale, float *y, int64_t M, int64_t N, int64_t K) {
    int8_t *q = malloc((size_t)(M * K));
    int32_t *qsum = malloc(sizeof(int32_t) * (size_t)M);
    float *s = malloc(sizeof(float) * (size_t)M);
    if (!q || !qsum || !s) {
        free(q), free(qsum), free(s);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) quantize(x + m * K, K, q + m * K, qsum + m, s + m);
    Job job = {q, qsum, s, w, scale, y, M, N, K};
    run(&job);
    free(q), free(qsum), free(s);
    return 0;
}
