// The fusion head: zero-shot logits of the CLIP head and the Q-Former head against the label
// embeddings (rows L2-normalised on the host), then late fusion, softmax and top-k.

// One block per label l (blockDim a multiple of 32):
//   clip[l] = clip_scale * (e . t_l) / max(|e|, 1e-12)
//   qf[l]   = max_q qf_scale * (q . t_l) / max(|q|, 1e-12)      (when nq > 0)
extern "C" __global__ void ef_head_logits(const float* __restrict__ emb,
                                          const float* __restrict__ queries, int nq,
                                          const float* __restrict__ labels, int n_labels,
                                          int dim, float clip_scale, float qf_scale,
                                          float* __restrict__ clip, float* __restrict__ qf) {
    __shared__ float red[32];
    const int l = blockIdx.x;
    if (l >= n_labels) return;
    const float* t = labels + (size_t)l * dim;
    const EfDotNorm e = ef_block_dot_norm2(emb, t, dim, red);
    if (threadIdx.x == 0) clip[l] = clip_scale * e.dot / fmaxf(sqrtf(e.norm2), 1e-12f);
    float best = EF_NEG_INF;
    for (int qi = 0; qi < nq; ++qi) {
        const EfDotNorm q = ef_block_dot_norm2(queries + (size_t)qi * dim, t, dim, red);
        best = fmaxf(best, qf_scale * q.dot / fmaxf(sqrtf(q.norm2), 1e-12f));
    }
    if (threadIdx.x == 0 && nq > 0) qf[l] = best;
}

#define EF_FUSE_CLIP_ONLY 0
#define EF_FUSE_WEIGHTED_LOGITS 1
#define EF_FUSE_WEIGHTED_PROBS 2
#define EF_FUSE_MAX 3

// One block. probs (n) and tmp (n) are global scratch; writes the best k labels, best first,
// ties to the lower label index (the CPU head's order).
extern "C" __global__ void ef_fuse_topk(const float* __restrict__ clip,
                                        const float* __restrict__ qf, int n, int method,
                                        float cw, float qw, float* __restrict__ probs,
                                        float* __restrict__ tmp, int k,
                                        int* __restrict__ top_idx, float* __restrict__ top_p) {
    __shared__ float red[32];
    __shared__ float best_p[32];
    __shared__ int best_i[32];
    if (method == EF_FUSE_WEIGHTED_LOGITS) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) probs[i] = cw * clip[i] + qw * qf[i];
        __syncthreads();
        ef_block_softmax(probs, probs, n, 1, red);
    } else if (method == EF_FUSE_WEIGHTED_PROBS || method == EF_FUSE_MAX) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            probs[i] = clip[i];
            tmp[i] = qf[i];
        }
        __syncthreads();
        ef_block_softmax(probs, probs, n, 1, red);
        ef_block_softmax(tmp, tmp, n, 1, red);
        const float total = fmaxf(cw + qw, 1e-12f);
        float s = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = method == EF_FUSE_MAX ? fmaxf(probs[i], tmp[i])
                                                  : (cw * probs[i] + qw * tmp[i]) / total;
            probs[i] = v;
            s += v;
        }
        s = ef_block_sum(s, red);
        for (int i = threadIdx.x; i < n; i += blockDim.x) probs[i] /= s;
        __syncthreads();
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) probs[i] = clip[i];
        __syncthreads();
        ef_block_softmax(probs, probs, n, 1, red);
    }
    // Top-k by k rounds of a block argmax over the labels not yet taken.
    const int lane = threadIdx.x % EF_WARP, warp = threadIdx.x / EF_WARP;
    const int warps = blockDim.x / EF_WARP;
    for (int r = 0; r < k; ++r) {
        float bp = EF_NEG_INF;
        int bi = 0x7fffffff;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            bool taken = false;
            for (int s = 0; s < r; ++s) taken |= top_idx[s] == i;
            // The first untaken label is always a candidate, so a NaN row still yields indices.
            if (!taken && (bi == 0x7fffffff || probs[i] > bp || (probs[i] == bp && i < bi))) {
                bp = probs[i];
                bi = i;
            }
        }
        for (int o = EF_WARP / 2; o > 0; o >>= 1) {
            const float op = __shfl_xor_sync(0xffffffffu, bp, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (op > bp || (op == bp && oi < bi)) {
                bp = op;
                bi = oi;
            }
        }
        if (lane == 0) {
            best_p[warp] = bp;
            best_i[warp] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int wi = 1; wi < warps; ++wi)
                if (best_p[wi] > bp || (best_p[wi] == bp && best_i[wi] < bi)) {
                    bp = best_p[wi];
                    bi = best_i[wi];
                }
            top_idx[r] = bi;
            top_p[r] = bp;
        }
        __syncthreads();
    }
}
