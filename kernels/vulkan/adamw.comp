#version 450
// Fused AdamW step over flat fp32 buffers, one element per invocation (grid-stride loop for large n).
// Same math and operation order as torch.optim.AdamW's single-tensor path:
//   p *= 1 - lr*wd                                   (decoupled weight decay)
//   m += (1-b1) * (g - m)                            (torch: exp_avg.lerp_(g, 1-b1); == b1*m + (1-b1)*g)
//   v  = b2*v + (1-b2)*g*g
//   p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)   bc1 = 1-b1^t, bc2 = 1-b2^t
// The scalar factors are computed by the host in float64 and rounded to float32 once, as torch does with
// Python floats (1 - 0.9 in float32 arithmetic would be 0.100000024, not torch's 0.1: 2 ulps off in m).
layout(local_size_x = 256) in;

layout(std430, binding = 0) buffer Param { float p[]; };
layout(std430, binding = 1) readonly buffer Grad { float g[]; };
layout(std430, binding = 2) buffer M { float m[]; };
layout(std430, binding = 3) buffer V { float v[]; };

layout(push_constant) uniform Push {
    float decay;       // 1 - lr * weight_decay
    float one_m_b1;    // 1 - beta1
    float beta2;
    float one_m_b2;    // 1 - beta2
    float step_size;   // lr / (1 - beta1^step)
    float bc2_sqrt;    // sqrt(1 - beta2^step)
    float eps;
    uint n;
} pc;

void main() {
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
        const float gi = g[i];
        const float pi = p[i] * pc.decay;
        const float mi = m[i] + pc.one_m_b1 * (gi - m[i]);
        const float vi = pc.beta2 * v[i] + pc.one_m_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - pc.step_size * (mi / (sqrt(vi) / pc.bc2_sqrt + pc.eps));
    }
}
