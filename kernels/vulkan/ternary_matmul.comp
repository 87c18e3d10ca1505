#version 450
// y[M, N] = x[M, K] @ W^T with W = (codes - 1) * scale, W stored as model.quant.pack_ternary packs it:
// codes 0/1/2 for -1/0/+1, 2 bits each, weight i of the flattened [N, K] weight at bits 2*(i%4) of byte i/4.
// The bytes are bound as little-endian uint words, so weight i sits at bits 2*(i%16) of word i/16. K need not
// be a multiple of 4 or 16: row n starts at flat index n*K, anywhere inside a word.
//
// Register blocking: each invocation computes a TR x TC tile of y (TR rows of x, TC weight rows). It walks k
// in blocks of 16: per weight row, two word loads give the 16 codes of the block (a 32-bit window cut out of
// two neighbouring words, because a row need not start on a word boundary), decoded once and used for all TR
// rows of x. No shared memory and no barriers (lavapipe runs barriers as coroutine switches, very slowly).
// Products x * {-1, 0, +1} are exact, so only the additions round; the scale is applied once per output.
// The host pads the codes buffer with one zero word so the window's second load never leaves the buffer.
#define TR 4
#define TC 4
layout(local_size_x = 8, local_size_y = 8) in;   // x: along n, y: along m

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Codes { uint codes[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Push {
    uint M;
    uint N;
    uint K;
    float scale;
} pc;

// the 16 codes of weight row n for k in [k0, k0 + 16), code q at bits 2q
uint window(uint n, uint k0) {
    const uint i = n * pc.K + k0;
    const uint a = i & 15u;
    const uint lo = codes[i >> 4];
    return a == 0u ? lo : (lo >> (2u * a)) | (codes[(i >> 4) + 1u] << (32u - 2u * a));
}

void main() {
    const uint n0 = gl_GlobalInvocationID.x * TC;
    const uint m0 = gl_GlobalInvocationID.y * TR;
    if (n0 >= pc.N || m0 >= pc.M) return;
    uint rows[TR];
    uint cols[TC];
    for (uint r = 0; r < TR; ++r) rows[r] = min(m0 + r, pc.M - 1u) * pc.K;   // clamped: loads stay in bounds
    for (uint c = 0; c < TC; ++c) cols[c] = min(n0 + c, pc.N - 1u);
    float acc[TR][TC];
    for (uint r = 0; r < TR; ++r)
        for (uint c = 0; c < TC; ++c) acc[r][c] = 0.0;

    const uint k_full = pc.K & ~15u;
    for (uint k0 = 0; k0 < k_full; k0 += 16u) {   // full blocks: constant trip counts, unrolled
        uint bits[TC];
        for (uint c = 0; c < TC; ++c) bits[c] = window(cols[c], k0);
        for (uint q = 0; q < 16u; ++q) {
            float w[TC];
            for (uint c = 0; c < TC; ++c) w[c] = float(int((bits[c] >> (2u * q)) & 3u) - 1);
            for (uint r = 0; r < TR; ++r) {
                const float xv = x[rows[r] + k0 + q];
                for (uint c = 0; c < TC; ++c) acc[r][c] += xv * w[c];
            }
        }
    }
    if (k_full < pc.K) {   // the last K % 16 columns; the codes past K in the window are not used
        uint bits[TC];
        for (uint c = 0; c < TC; ++c) bits[c] = window(cols[c], k_full);
        for (uint q = 0; q < pc.K - k_full; ++q) {
            float w[TC];
            for (uint c = 0; c < TC; ++c) w[c] = float(int((bits[c] >> (2u * q)) & 3u) - 1);
            for (uint r = 0; r < TR; ++r) {
                const float xv = x[rows[r] + k_full + q];
                for (uint c = 0; c < TC; ++c) acc[r][c] += xv * w[c];
            }
        }
    }
    for (uint r = 0; r < TR; ++r)
        for (uint c = 0; c < TC; ++c)
            if (m0 + r < pc.M && n0 + c < pc.N) y[(m0 + r) * pc.N + n0 + c] = acc[r][c] * pc.scale;
}
