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

__device__ __forceinline__ float ef_warp_sum(float v) {
    for (int o = EF_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float ef_warp_max(float v) {
    for (int o = EF_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum / max; every thread gets the result. `scratch` holds 32 floats; blockDim.x is a
// multiple of 32 and at most 1024. Contains __syncthreads(): call from all threads.
__device__ __forceinline__ float ef_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % EF_WARP, warp = threadIdx.x / EF_WARP;
    const int warps = blockDim.x / EF_WARP;
    v = ef_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return ef_warp_sum(v);
}

__device__ __forceinline__ float ef_block_max(float v, float* scratch) {
    const int lane = threadIdx.x % EF_WARP, warp = threadIdx.x / EF_WARP;
    const int warps = blockDim.x / EF_WARP;
    v = ef_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : EF_NEG_INF;
    return ef_warp_max(v);
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
