// Layer norm, residual add, activations, f32 -> f16.

// y[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta, one block per row, biased variance
// (PyTorch/ONNX LayerNormalization). Two passes over the row: mean, then centred squares.
extern "C" __global__ void ef_layer_norm(const float* __restrict__ x,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* __restrict__ y,
                                         int rows, int cols, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    const float mean = ef_block_sum(s, red) / cols;
    float s2 = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float dlt = xr[c] - mean;
        s2 += dlt * dlt;
    }
    const float inv = rsqrtf(ef_block_sum(s2, red) / cols + eps);
    float* yr = y + (size_t)r * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        yr[c] = (xr[c] - mean) * inv * gamma[c] + beta[c];
}

// y = a + b (the residual connection; y may alias a or b).
extern "C" __global__ void __launch_bounds__(1024)
ef_add(const float* a, const float* b, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

// x = act(x) in place (EF_ACT_* of common.cuh).
extern "C" __global__ void __launch_bounds__(1024)
ef_activation(float* x, int n, int act) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = ef_act(x[i], act);
}

extern "C" __global__ void __launch_bounds__(1024)
ef_f32_to_f16(const float* __restrict__ x,
                                         unsigned short* __restrict__ y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = ef_f32_to_f16_bits(x[i]);
}
