// Linear layers: Y[M,N] = act(X[M,K] . W[N,K]^T * dequant + bias), W row-major [out, in] as in
// ONNX/PyTorch.
//
// ef_linear_f32      f32, 64x64 block tile, 16-deep k slices in shared memory, 4x4 per thread.
// ef_quantize_i8     f32 activations -> int8 with the calibrated per-tensor scale (round half
//                    away from zero, clamp to +-127; rows padded with zeros to Kp), the CPU
//                    int8 path's rule, so both see the same integers.
// ef_linear_i8_dp4a  int8 x int8 -> int32 with dp4a (sm_61+; a byte-wise fallback below), per
//                    output channel dequantisation, bias, activation.
// ef_linear_i8_mma   the same on the int8 tensor cores: mma.sync m16n8k32 (sm_80+: Orin sm_87,
//                    H100/H200 sm_90). A warp computes 16 rows x 32 columns; a block of 4 warps
//                    64 x 32. Operands are read straight from global memory (L1/L2 serve the
//                    reuse); Kp is a multiple of 32 (the host pads the weights' rows); columns
//                    past N are zero-filled and not stored.

#define EF_TM 64
#define EF_TN 64
#define EF_TK 16

// Multiply-accumulate of one tile element: f32, or 4 packed int8 pairs (dp4a, defined below).
__device__ __forceinline__ float ef_mac(float a, float b, float c) { return c + a * b; }
__device__ __forceinline__ int ef_mac(int a, int b, int c);

// acc = x[m0.., :] . w[n0.., :]^T for this block's 64 x 64 tile, 4 x 4 per thread (256 threads),
// k in slices of 16 elements of T: T = float (k floats) or int (k words of 4 packed int8).
template <typename T>
__device__ __forceinline__ void ef_tile(const T* __restrict__ x, const T* __restrict__ w, int m,
                                        int n, int k, T (&acc)[4][4]) {
    __shared__ T xs[EF_TK][EF_TM + 4];
    __shared__ T ws[EF_TK][EF_TN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * EF_TM, n0 = blockIdx.x * EF_TN;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
    for (int k0 = 0; k0 < k; k0 += EF_TK) {
        for (int i = tid; i < EF_TM * EF_TK; i += 256) {
            const int r = i / EF_TK, c = i % EF_TK, kk = k0 + c;
            const int mm = m0 + r, nn = n0 + r;
            xs[c][r] = (mm < m && kk < k) ? x[(size_t)mm * k + kk] : T(0);
            ws[c][r] = (nn < n && kk < k) ? w[(size_t)nn * k + kk] : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < EF_TK; ++kk) {
            T a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = xs[kk][ty * 4 + i];
                b[i] = ws[kk][tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = ef_mac(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// y = act(acc * scale * col_scale[n] + bias[n]) for the tile of ef_tile (col_scale, bias may be
// null). With scale 1 and no col_scale the products are exact, so the f32 kernel stores
// act(acc + bias).
template <typename T>
__device__ __forceinline__ void ef_tile_store(const T (&acc)[4][4], int m, int n, float scale,
                                              const float* __restrict__ col_scale,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, int act) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * EF_TM, n0 = blockIdx.x * EF_TN;
    for (int i = 0; i < 4; ++i) {
        const int mm = m0 + ty * 4 + i;
        if (mm >= m) continue;
        for (int j = 0; j < 4; ++j) {
            const int nn = n0 + tx * 4 + j;
            if (nn >= n) continue;
            const float s = scale * (col_scale ? col_scale[nn] : 1.0f);
            const float v = (float)acc[i][j] * s + (bias ? bias[nn] : 0.0f);
            y[(size_t)mm * n + nn] = ef_act(v, act);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
ef_linear_f32(const float* __restrict__ x, const float* __restrict__ w,
              const float* __restrict__ bias, float* __restrict__ y, int m, int n, int k,
              int act) {
    float acc[4][4];
    ef_tile(x, w, m, n, k, acc);
    ef_tile_store(acc, m, n, 1.0f, nullptr, bias, y, act);
}

extern "C" __global__ void __launch_bounds__(1024)
ef_quantize_i8(const float* __restrict__ x, signed char* __restrict__ q,
                                          int m, int k, int kp, float inv_scale) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m * kp) return;
    const int row = (int)(i / kp), col = (int)(i % kp);
    float v = 0.0f;
    if (col < k) {
        const float r = roundf(x[(size_t)row * k + col] * inv_scale);
        // NaN quantizes to 0, as on the CPU path (`NaN as i8`).
        v = r != r ? 0.0f : fminf(fmaxf(r, -127.0f), 127.0f);
    }
    q[i] = (signed char)(int)v;
}

// Dot product of 4 packed int8 pairs, accumulated.
__device__ __forceinline__ int ef_dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#else
    for (int s = 0; s < 32; s += 8)
        c += ((signed char)((a >> s) & 0xff)) * ((signed char)((b >> s) & 0xff));
    return c;
#endif
}

__device__ __forceinline__ int ef_mac(int a, int b, int c) { return ef_dp4a(a, b, c); }

// The f32 kernel's tiles over packed int8 words: 64-deep k slices (16 words); x: [m, kp] int8,
// w: [n, kp] int8, kp a multiple of 4.
extern "C" __global__ void __launch_bounds__(256)
ef_linear_i8_dp4a(const int* __restrict__ x, const int* __restrict__ w,
                  const float* __restrict__ w_scale, float x_scale,
                  const float* __restrict__ bias, float* __restrict__ y, int m, int n, int kp,
                  int act) {
    int acc[4][4];
    ef_tile(x, w, m, n, kp / 4, acc);
    ef_tile_store(acc, m, n, x_scale, w_scale, bias, y, act);
}

// Fragment layouts of mma.m16n8k32 .s8 (PTX ISA, "Matrix fragments for mma.m16n8k32"), with
// g = lane / 4 and t = lane % 4:
//   A (16 x 32, row):  a0 = row g,   k 4t..4t+3;      a1 = row g+8, k 4t..4t+3;
//                      a2 = row g,   k 16+4t..;       a3 = row g+8, k 16+4t..
//   B (32 x 8, col):   b0 = col g,   k 4t..4t+3;      b1 = col g,   k 16+4t..
//   C (16 x 8, s32):   c0,c1 = row g, cols 2t, 2t+1;  c2,c3 = row g+8, cols 2t, 2t+1
// With X [m, kp] and W [n, kp] both k-contiguous, every fragment register is one aligned
// 32-bit load.
extern "C" __global__ void __launch_bounds__(128)
ef_linear_i8_mma(const int* __restrict__ x, const int* __restrict__ w,
                 const float* __restrict__ w_scale, float x_scale,
                 const float* __restrict__ bias, float* __restrict__ y, int m, int n, int kp,
                 int act) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int row0 = blockIdx.y * 64 + warp * 16;
    const int col0 = blockIdx.x * 32;
    const int kw = kp / 4;
    const int ra = row0 + g, rb = row0 + g + 8;
    int c[4][4];
    for (int j = 0; j < 4; ++j)
        for (int r = 0; r < 4; ++r) c[j][r] = 0;
    const int* xa = x + (size_t)ra * kw;
    const int* xb = x + (size_t)rb * kw;
    for (int k0 = 0; k0 < kw; k0 += 8) {
        const int a0 = ra < m ? xa[k0 + t] : 0;
        const int a1 = rb < m ? xb[k0 + t] : 0;
        const int a2 = ra < m ? xa[k0 + 4 + t] : 0;
        const int a3 = rb < m ? xb[k0 + 4 + t] : 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + j * 8 + g;
            const int* wc = w + (size_t)col * kw;
            const int b0 = col < n ? wc[k0 + t] : 0;
            const int b1 = col < n ? wc[k0 + 4 + t] : 0;
            asm volatile(
                "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                : "+r"(c[j][0]), "+r"(c[j][1]), "+r"(c[j][2]), "+r"(c[j][3])
                : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = r < 2 ? ra : rb;
            const int col = col0 + j * 8 + 2 * t + (r & 1);
            if (row < m && col < n) {
                float v = (float)c[j][r] * (x_scale * w_scale[col]) + (bias ? bias[col] : 0.0f);
                y[(size_t)row * n + col] = ef_act(v, act);
            }
        }
    }
#else
    // The host never launches this below sm_80 (it picks ef_linear_i8_dp4a).
    __trap();
#endif
}
