// Fused scaled dot-product attention for the encoder's self-attention and the Q-Former's self-
// and cross-attention: for query row i of head h,
//   O[i, h*d + c] = sum_j softmax_j(scale * Q_i . K_j) V_j[c]
// Q, K, V and O are row-major with their own row strides, heads side by side in a row, so the
// kernel reads the packed QKV projection directly. One block per (query row, head); the Lk
// scores live in dynamic shared memory (host checks Lk fits), the softmax subtracts the row
// maximum before exponentiating (numerically stable for any logit range).
extern "C" __global__ void ef_attention_f32(
    const float* __restrict__ q, int q_stride, const float* __restrict__ k, int k_stride,
    const float* __restrict__ v, int v_stride, float* __restrict__ o, int o_stride, int lq,
    int lk, int d, float scale) {
    extern __shared__ float smem[];
    float* qs = smem;              // d
    float* sc = smem + d;          // lk
    __shared__ float red[32];
    const int i = blockIdx.x, h = blockIdx.y;
    if (i >= lq) return;
    const float* qi = q + (size_t)i * q_stride + (size_t)h * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) qs[c] = qi[c] * scale;
    __syncthreads();
    for (int j = threadIdx.x; j < lk; j += blockDim.x) {
        const float* kj = k + (size_t)j * k_stride + (size_t)h * d;
        float s = 0.0f;
        for (int c = 0; c < d; ++c) s += qs[c] * kj[c];
        sc[j] = s;
    }
    // Unnormalised: the 1/sum is applied once per output value below.
    const float sum = ef_block_exp_sum(sc, sc, lk, 1, red); // its barriers also publish sc[]
    const float inv = 1.0f / sum;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < lk; ++j) acc += sc[j] * v[(size_t)j * v_stride + (size_t)h * d + c];
        o[(size_t)i * o_stride + (size_t)h * d + c] = acc * inv;
    }
}
