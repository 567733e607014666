// Fused preprocessing, one thread per output pixel: camera pixel format -> RGB -> antialiased
// bilinear resize with the CLIP centre crop -> (x/255 - mean)/std -> planar CHW, f32 or f16.
//
// The filter taps are computed on the host by the same code as the CPU preprocessor and
// uploaded once per source geometry, so both paths sample the same source pixels with the same
// weights in the same order (rows first); they differ only where the compiler fuses a multiply
// and an add (--fmad=true). Taps per axis: for output i, source
// indices start[i] .. start[i]+len[i]-1 with weights w[off[i] ..], packed as int3 (start, len,
// off) in `tx`/`ty`.

#define EF_FMT_YUYV 0
#define EF_FMT_NV12 1
#define EF_FMT_GREY 2
#define EF_FMT_RGB 3
#define EF_FMT_BGR 4

// BT.601 limited range, the CPU preprocessor's formula (clamped to 0..255).
__device__ __forceinline__ void ef_yuv_rgb(float y, float u, float v, float* rgb) {
    const float c = 1.164f * (y - 16.0f), d = u - 128.0f, e = v - 128.0f;
    rgb[0] = fminf(fmaxf(c + 1.596f * e, 0.0f), 255.0f);
    rgb[1] = fminf(fmaxf(c - 0.392f * d - 0.813f * e, 0.0f), 255.0f);
    rgb[2] = fminf(fmaxf(c + 2.017f * d, 0.0f), 255.0f);
}

__device__ __forceinline__ void ef_pixel(const unsigned char* __restrict__ src, int fmt, int w,
                                         int h, int x, int y, float* rgb) {
    switch (fmt) {
    case EF_FMT_YUYV: {
        const unsigned char* pair = src + (size_t)y * w * 2 + (size_t)(x >> 1) * 4;
        ef_yuv_rgb(pair[(x & 1) * 2], pair[1], pair[3], rgb);
        break;
    }
    case EF_FMT_NV12: {
        const unsigned char* uv = src + (size_t)w * h + (size_t)(y >> 1) * w + (x & ~1);
        ef_yuv_rgb(src[(size_t)y * w + x], uv[0], uv[1], rgb);
        break;
    }
    case EF_FMT_GREY: {
        const float v = src[(size_t)y * w + x];
        rgb[0] = v; rgb[1] = v; rgb[2] = v;
        break;
    }
    case EF_FMT_BGR: {
        const unsigned char* p = src + ((size_t)y * w + x) * 3;
        rgb[0] = p[2]; rgb[1] = p[1]; rgb[2] = p[0];
        break;
    }
    default: { // RGB
        const unsigned char* p = src + ((size_t)y * w + x) * 3;
        rgb[0] = p[0]; rgb[1] = p[1]; rgb[2] = p[2];
        break;
    }
    }
}

// Weighted sum of the source pixels under output pixel (ox, oy): rows first, like the CPU path.
__device__ __forceinline__ void ef_resample(const unsigned char* __restrict__ src, int fmt,
                                            int w, int h, const int* __restrict__ tx,
                                            const int* __restrict__ ty,
                                            const float* __restrict__ wx,
                                            const float* __restrict__ wy, int ox, int oy,
                                            float* acc) {
    const int xs = tx[ox * 3], xn = tx[ox * 3 + 1], xo = tx[ox * 3 + 2];
    const int ys = ty[oy * 3], yn = ty[oy * 3 + 1], yo = ty[oy * 3 + 2];
    acc[0] = 0.0f; acc[1] = 0.0f; acc[2] = 0.0f;
    for (int j = 0; j < yn; ++j) {
        float row[3] = {0.0f, 0.0f, 0.0f};
        for (int i = 0; i < xn; ++i) {
            float p[3];
            ef_pixel(src, fmt, w, h, xs + i, ys + j, p);
            const float wt = wx[xo + i];
            row[0] += wt * p[0]; row[1] += wt * p[1]; row[2] += wt * p[2];
        }
        const float wt = wy[yo + j];
        acc[0] += wt * row[0]; acc[1] += wt * row[1]; acc[2] += wt * row[2];
    }
}

__device__ __forceinline__ void ef_store(float* p, float v) { *p = v; }
// IEEE half, round to nearest even, for f16 models.
__device__ __forceinline__ void ef_store(unsigned short* p, float v) { *p = ef_f32_to_f16_bits(v); }

#define EF_PRE_PARAMS                                                                           \
    const unsigned char *__restrict__ src, int fmt, int w, int h, const int *__restrict__ tx,  \
        const int *__restrict__ ty, const float *__restrict__ wx, const float *__restrict__ wy, \
        int out_w, int out_h, int c0, int c1, int c2, float s0, float s1, float s2, float b0,   \
        float b1, float b2
#define EF_PRE_ARGS src, fmt, w, h, tx, ty, wx, wy, out_w, out_h, c0, c1, c2, s0, s1, s2, b0, b1, b2

// out[c][oy][ox] = acc[chan_c] * scale_c - bias_c, with scale = 1/(255 std), bias = mean/std and
// chan the source channel feeding output channel c (RGB or BGR models).
template <typename T>
__device__ __forceinline__ void ef_preprocess(EF_PRE_PARAMS, T* __restrict__ out) {
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= out_w || oy >= out_h) return;
    float acc[3];
    ef_resample(src, fmt, w, h, tx, ty, wx, wy, ox, oy, acc);
    const size_t plane = (size_t)out_w * out_h, at = (size_t)oy * out_w + ox;
    ef_store(out + at, acc[c0] * s0 - b0);
    ef_store(out + plane + at, acc[c1] * s1 - b1);
    ef_store(out + 2 * plane + at, acc[c2] * s2 - b2);
}

extern "C" __global__ void ef_preprocess_f32(EF_PRE_PARAMS, float* __restrict__ out) {
    ef_preprocess(EF_PRE_ARGS, out);
}

extern "C" __global__ void ef_preprocess_f16(EF_PRE_PARAMS, unsigned short* __restrict__ out) {
    ef_preprocess(EF_PRE_ARGS, out);
}
