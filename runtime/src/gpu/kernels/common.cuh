// Shared helpers for edgefuse's CUDA kernels. Prepended by the host to every kernel file, so the
// kernels need no CUDA headers on the target: NVRTC alone compiles them.
//
// Conventions: row-major tensors, f32 unless a name says otherwise, `extern "C"` entry points
// prefixed `ef_`, every index computed in size_t where a product can pass 2^31.

#define EF_WARP 32
#define EF_NEG_INF __int_as_float(0xff800000)

// Round-to-nearest-even f32 -> f16 bits, without cuda_fp16.h.
__device__ __forceinline__ unsigned short ef_f32_to_f16_bits(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

struct EfAdd {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct EfMax {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class Op> __device__ __forceinline__ float ef_warp_reduce(float v, Op op) {
    for (int o = EF_WARP / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reduction; every thread gets the result. `scratch` holds 32 floats; blockDim.x is a
// multiple of 32 and at most 1024. Contains __syncthreads(): call from all threads.
template <class Op>
__device__ __forceinline__ float ef_block_reduce(float v, float* scratch, Op op, float identity) {
    const int lane = threadIdx.x % EF_WARP, warp = threadIdx.x / EF_WARP;
    const int warps = blockDim.x / EF_WARP;
    v = ef_warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : identity;
    return ef_warp_reduce(v, op);
}

__device__ __forceinline__ float ef_block_sum(float v, float* scratch) {
    return ef_block_reduce(v, scratch, EfAdd(), 0.0f);
}

__device__ __forceinline__ float ef_block_max(float v, float* scratch) {
    return ef_block_reduce(v, scratch, EfMax(), EF_NEG_INF);
}

// The n values x[i * stride] -> y[i * stride] = exp(x - max) by one block (the maximum subtracted
// first: stable for any range); returns their sum to every thread. y may be x. Each thread
// touches only i = threadIdx.x + j * blockDim.x; the reductions' barriers publish y to the block.
__device__ __forceinline__ float ef_block_exp_sum(const float* x, float* y, int n, size_t stride,
                                                  float* scratch) {
    float mx = EF_NEG_INF;
    for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, x[(size_t)i * stride]);
    mx = ef_block_max(mx, scratch);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(x[(size_t)i * stride] - mx);
        y[(size_t)i * stride] = e;
        s += e;
    }
    return ef_block_sum(s, scratch);
}

// Softmax of the n values x[i * stride] into y[i * stride] by one block (y may be x).
__device__ __forceinline__ void ef_block_softmax(const float* x, float* y, int n, size_t stride,
                                                 float* scratch) {
    const float inv = 1.0f / ef_block_exp_sum(x, y, n, stride, scratch);
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[(size_t)i * stride] *= inv;
}

// a . b and |a|^2 over n floats by one block; every thread gets both. Contains __syncthreads().
struct EfDotNorm {
    float dot, norm2;
};
__device__ __forceinline__ EfDotNorm ef_block_dot_norm2(const float* a, const float* b, int n,
                                                        float* scratch) {
    float d = 0.0f, nn = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        d += a[c] * b[c];
        nn += a[c] * a[c];
    }
    d = ef_block_sum(d, scratch);
    nn = ef_block_sum(nn, scratch);
    return EfDotNorm{d, nn};
}

// Activation epilogues shared by the linear kernels and ef_activation.
#define EF_ACT_NONE 0
#define EF_ACT_GELU 1        // x * Phi(x), exact (erf)
#define EF_ACT_GELU_TANH 2   // tanh approximation
#define EF_ACT_QUICK_GELU 3  // x * sigmoid(1.702 x), CLIP's

__device__ __forceinline__ float ef_act(float x, int act) {
    switch (act) {
    case EF_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case EF_ACT_GELU_TANH: {
        const float c = 0.79788456080286536f; // sqrt(2/pi)
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    case EF_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    default: return x;
    }
}
