// Generic kernels for the lowered encoder / Q-Former graphs (runtime/src/gpu/graph/): each
// kernel is one `Step`, and `graph::run_cpu` holds the definition it must match. Shapes arrive
// as small structs by value, laid out like the #[repr(C)] structs on the host.

#define EF_RANK 6

struct EfBroadcast { int dims[EF_RANK]; int sa[EF_RANK]; int sb[EF_RANK]; };
struct EfPermute { int dims[EF_RANK]; int src[EF_RANK]; };
struct EfMatMul { int batch[2]; int m; int n; int k; int sa[4]; int sb[4]; int sc[4]; };
struct EfConv { int input[4]; int output[3]; int kernel[2]; int stride[2]; int dilation[2]; int pad[2]; int group; };

// y = a op b with broadcasting (op: 0 add, 1 sub, 2 mul, 3 div); one thread per output.
extern "C" __global__ void __launch_bounds__(1024)
ef_binary(int op, const float* __restrict__ a,
                                     const float* __restrict__ b, float* __restrict__ y, int n,
                                     EfBroadcast s) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int r = i, ia = 0, ib = 0;
    for (int ax = EF_RANK - 1; ax >= 0; --ax) {
        const int c = r % s.dims[ax];
        r /= s.dims[ax];
        ia += c * s.sa[ax];
        ib += c * s.sb[ax];
    }
    const float x = a[ia], z = b[ib];
    y[i] = op == 0 ? x + z : op == 1 ? x - z : op == 2 ? x * z : x / z;
}

// y = f(x) (op: 0 GELU, 1 exp, 2 sqrt, 3 rsqrt, 4 recip, 5 tanh, 6 sigmoid, 7 erf, 8 NaN → 0).
extern "C" __global__ void __launch_bounds__(1024)
ef_unary(int op, const float* __restrict__ x, float* __restrict__ y,
                                    int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    float r;
    switch (op) {
    case 0: r = ef_act(v, EF_ACT_GELU); break;
    case 1: r = expf(v); break;
    case 2: r = sqrtf(v); break;
    case 3: r = 1.0f / sqrtf(v); break;
    case 4: r = 1.0f / v; break;
    case 5: r = tanhf(v); break;
    case 6: r = 1.0f / (1.0f + expf(-v)); break;
    case 8: r = isnan(v) ? 0.0f : v; break;
    default: r = erff(v); break;
    }
    y[i] = r;
}

// One block per (outer, inner) row of a [outer, len, inner] tensor; op 0 sum, 1 max, 2 min.
extern "C" __global__ void ef_reduce(int op, const float* __restrict__ x, float* __restrict__ y,
                                     int outer, int len, int inner) {
    __shared__ float red[32];
    const int row = blockIdx.x;
    if (row >= outer * inner) return;
    const int o = row / inner, ni = row % inner;
    const float* base = x + (size_t)o * len * inner + ni;
    float acc = op == 0 ? 0.0f : op == 1 ? EF_NEG_INF : -EF_NEG_INF;
    for (int l = threadIdx.x; l < len; l += blockDim.x) {
        const float v = base[(size_t)l * inner];
        acc = op == 0 ? acc + v : op == 1 ? fmaxf(acc, v) : fminf(acc, v);
    }
    if (op == 0) acc = ef_block_sum(acc, red);
    else if (op == 1) acc = ef_block_max(acc, red);
    else acc = -ef_block_max(-acc, red);
    if (threadIdx.x == 0) y[row] = acc;
}

// x / sqrt(mean(x^2) + eps) along the middle axis; one block per row.
extern "C" __global__ void ef_rms_norm(const float* __restrict__ x, float* __restrict__ y,
                                       int outer, int len, int inner, float eps) {
    __shared__ float red[32];
    const int row = blockIdx.x;
    if (row >= outer * inner) return;
    const int o = row / inner, ni = row % inner;
    const size_t base = (size_t)o * len * inner + ni;
    float s = 0.0f;
    for (int l = threadIdx.x; l < len; l += blockDim.x) {
        const float v = x[base + (size_t)l * inner];
        s += v * v;
    }
    const float inv = rsqrtf(ef_block_sum(s, red) / len + eps);
    for (int l = threadIdx.x; l < len; l += blockDim.x)
        y[base + (size_t)l * inner] = x[base + (size_t)l * inner] * inv;
}

// Softmax along the middle axis (max subtracted first); one block per row.
extern "C" __global__ void ef_softmax(const float* __restrict__ x, float* __restrict__ y,
                                      int outer, int len, int inner) {
    __shared__ float red[32];
    const int row = blockIdx.x;
    if (row >= outer * inner) return;
    const int o = row / inner, ni = row % inner;
    const size_t base = (size_t)o * len * inner + ni;
    ef_block_softmax(x + base, y + base, len, inner, red);
}

// Transposition: output element i reads the input at sum(coord[ax] * src[ax]).
extern "C" __global__ void __launch_bounds__(1024)
ef_permute(const float* __restrict__ x, float* __restrict__ y, int n,
                                      EfPermute s) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int r = i, src = 0;
    for (int ax = EF_RANK - 1; ax >= 0; --ax) {
        src += (r % s.dims[ax]) * s.src[ax];
        r /= s.dims[ax];
    }
    y[i] = x[src];
}

// y[o, g, i] = x[o, idx[g], i] for a [outer, len, inner] input and g < count.
extern "C" __global__ void __launch_bounds__(1024)
ef_gather(const float* __restrict__ x, float* __restrict__ y,
                                     const int* __restrict__ idx, int outer, int len, int inner,
                                     int count) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= outer * count * inner) return;
    const int ni = i % inner, g = (i / inner) % count, o = i / (inner * count);
    y[i] = x[((size_t)o * len + idx[g]) * inner + ni];
}

// Copy x ([outer, len, inner]) into y ([outer, total, inner]) at `offset` on the middle axis.
extern "C" __global__ void __launch_bounds__(1024)
ef_concat_part(const float* __restrict__ x, float* __restrict__ y,
                                          int outer, int len, int inner, int total, int offset) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= outer * len * inner) return;
    const int o = i / (len * inner), rest = i % (len * inner);
    y[((size_t)o * total + offset) * inner + rest] = x[i];
}

// C[b0,b1,i,j] = sum_k A[b0,b1,i,k] B[b0,b1,k,j], every index strided; 16x16 tiles, grid
// (n/16, m/16, b0*b1), block (16, 16).
extern "C" __global__ void __launch_bounds__(256)
ef_matmul(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
          EfMatMul s) {
    __shared__ float as[16][17];
    __shared__ float bs[16][17];
    const int bz = blockIdx.z, b0 = bz / s.batch[1], b1 = bz % s.batch[1];
    const float* A = a + (size_t)b0 * s.sa[0] + (size_t)b1 * s.sa[1];
    const float* B = b + (size_t)b0 * s.sb[0] + (size_t)b1 * s.sb[1];
    float* C = c + (size_t)b0 * s.sc[0] + (size_t)b1 * s.sc[1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < s.k; k0 += 16) {
        const int ka = k0 + tx, kb = k0 + ty;
        as[ty][tx] = (row < s.m && ka < s.k) ? A[(size_t)row * s.sa[2] + (size_t)ka * s.sa[3]] : 0.0f;
        bs[ty][tx] = (kb < s.k && col < s.n) ? B[(size_t)kb * s.sb[2] + (size_t)col * s.sb[3]] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) acc += as[ty][kk] * bs[kk][tx];
        __syncthreads();
    }
    if (row < s.m && col < s.n) C[(size_t)row * s.sc[2] + (size_t)col * s.sc[3]] = acc;
}

// Direct 2-D convolution, NCHW input, OIHW weights, optional bias; one thread per output.
extern "C" __global__ void __launch_bounds__(1024)
ef_conv2d(const float* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, float* __restrict__ y,
                                     EfConv s) {
    const int n = s.input[0], c = s.input[1], h = s.input[2], wd = s.input[3];
    const int o = s.output[0], oh = s.output[1], ow = s.output[2];
    const int total = n * o * oh * ow;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int ox = i % ow, oy = (i / ow) % oh, oc = (i / (ow * oh)) % o, ni = i / (ow * oh * o);
    const int cg = c / s.group, og = o / s.group, grp = oc / og;
    float acc = bias ? bias[oc] : 0.0f;
    for (int ic = 0; ic < cg; ++ic) {
        const int ci = grp * cg + ic;
        for (int ky = 0; ky < s.kernel[0]; ++ky) {
            const int iy = oy * s.stride[0] + ky * s.dilation[0] - s.pad[0];
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < s.kernel[1]; ++kx) {
                const int ix = ox * s.stride[1] + kx * s.dilation[1] - s.pad[1];
                if (ix < 0 || ix >= wd) continue;
                acc += x[(((size_t)ni * c + ci) * h + iy) * wd + ix] *
                       w[(((size_t)oc * cg + ic) * s.kernel[0] + ky) * s.kernel[1] + kx];
            }
        }
    }
    y[i] = acc;
}
