//! Every CUDA kernel against its CPU reference, on a real GPU. Without a CUDA feature (`cuda-jp5`,
//! `cuda-jp6` or `cuda-jp7`), or without a usable GPU, each test prints why it is skipped and
//! passes; the NVRTC-only tests (compile errors, the cubin cache) run wherever libnvrtc loads.
//!
//! Tolerances are the ones stated in `edgefuse_runtime::gpu::reference`.

#[cfg(not(any(feature = "cuda-jp5", feature = "cuda-jp6", feature = "cuda-jp7")))]
#[test]
fn gpu_parity_needs_the_cuda_feature() {
    println!(
        "skipped: built without CUDA; run `cargo test -p edgefuse-tests --features cuda-jp6` \
         (scripts/gpu-check does) on a machine with an NVIDIA GPU"
    );
}

#[cfg(any(feature = "cuda-jp5", feature = "cuda-jp6", feature = "cuda-jp7"))]
mod cuda {
    use edgefuse_models::manifest::{
        ChannelOrder, Fusion, FusionMethod, HeadParams, Preprocess, ResizePolicy,
    };
    use edgefuse_runtime::capture::synthetic::render;
    use edgefuse_runtime::frame::PixelFormat;
    use edgefuse_runtime::fusion::{FusionHead, TopK};
    use edgefuse_runtime::gpu::cache::{CacheKey, KernelCache, Outcome};
    use edgefuse_runtime::gpu::cuda::{
        compile, nvrtc_available, options, Gpu, GpuPreprocess, Int8Kernel, Kernels, Target,
        UnwiredKernels,
    };
    use edgefuse_runtime::gpu::reference::{self as r, Activation, Strided};
    use edgefuse_runtime::gpu::{GpuError, KernelSource};
    use edgefuse_runtime::preprocess::{reference_in, Rect};

    /// The GPU and the linear-layer kernels, or `None` after printing why the test is skipped.
    fn gpu(test: &str) -> Option<(Gpu, Kernels)> {
        let mut g = open(test)?;
        let k = Kernels::load(&mut g).expect("kernels load");
        Some((g, k))
    }

    /// The GPU and the kernels no frame uses (attention, norm, fusion head), or `None`.
    fn unwired(test: &str) -> Option<(Gpu, UnwiredKernels)> {
        let mut g = open(test)?;
        let k = UnwiredKernels::load(&mut g).expect("kernels load");
        Some((g, k))
    }

    fn open(test: &str) -> Option<Gpu> {
        match Gpu::open(0) {
            Ok(g) => {
                println!("{test}: on {}", g.describe());
                Some(g)
            }
            Err(e) => {
                println!("{test}: skipped, no usable GPU: {e}");
                None
            }
        }
    }

    /// Deterministic values in [-1, 1).
    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0f32, |m, x| m.max(x.abs()))
    }

    fn assert_close(what: &str, tol: r::Tolerance, got: &[f32], want: &[f32], scale: f32) {
        if let Some((i, d)) = tol.check(got, want, scale) {
            panic!(
                "{what}: element {i}: gpu {} vs reference {} (|diff| {d:e}, allowed {:e})",
                got.get(i).copied().unwrap_or(f32::NAN),
                want.get(i).copied().unwrap_or(f32::NAN),
                tol.abs + tol.rel * scale
            );
        }
        println!("{what}: ok (max |ref| {scale:.3})");
    }

    #[test]
    fn a_broken_kernel_names_itself_and_carries_the_nvrtc_log() {
        if !nvrtc_available() {
            println!("skipped: libnvrtc not loadable (scripts/test points LD_LIBRARY_PATH at the PyPI copy)");
            return;
        }
        let broken = KernelSource {
            file: "broken.cu",
            text: "extern \"C\" __global__ void ef_broken(float* x) { x[0] = undefined_name; }",
            entry_points: &["ef_broken"],
        };
        match compile(&broken, Target::Cubin(87)) {
            Err(GpuError::KernelCompile { kernel, arch, log }) => {
                assert_eq!((kernel.as_str(), arch.as_str()), ("broken.cu", "sm_87"));
                assert!(log.contains("undefined_name"), "log: {log}");
                let msg = GpuError::KernelCompile { kernel, arch, log }.to_string();
                assert!(msg.starts_with("kernel broken.cu failed to compile for sm_87: "));
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
    }

    #[test]
    fn cubins_are_cached_and_rebuilt_for_another_driver() {
        if !nvrtc_available() {
            println!("skipped: libnvrtc not loadable");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(Some(dir.path().to_path_buf()));
        let k = edgefuse_runtime::gpu::kernel("norm.cu").unwrap();
        let t = Target::Cubin(87);
        let nv = edgefuse_runtime::gpu::cuda::nvrtc_version().unwrap();
        let key = |drv| CacheKey::new(k.file, &k.full_source(), &options(t), nv, 87, drv);
        let build = || compile(k, t).map(|c| c.binary);
        let (a, o1) = cache.get_or_build(&key(12060), build).unwrap();
        let (b, o2) = cache.get_or_build(&key(12060), build).unwrap();
        let (c, o3) = cache.get_or_build(&key(12080), build).unwrap();
        assert_eq!((o1, o2, o3), (Outcome::Built, Outcome::Hit, Outcome::Built));
        assert_eq!(a, b);
        assert_eq!(a, c, "NVRTC output is deterministic");
        assert!(a.starts_with(b"\x7fELF"), "a cubin is an ELF image");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn spec(size: u32, order: ChannelOrder) -> Preprocess {
        Preprocess {
            image_size: [size, size],
            resize: ResizePolicy::ShortestSideCenterCrop,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            channel_order: order,
        }
    }

    #[test]
    fn preprocessing_matches_the_reference_for_every_format() {
        let Some((mut g, _)) = gpu("preprocess") else {
            return;
        };
        // The kernel converts every source pixel, then filters: the semantics of the 2-D
        // reference (the CPU preprocessor filters YUV before converting, which differs where
        // colours leave the gamut). Whole frames and a region of interest at odd offsets.
        let rois = [None, Some("13,7,301,211")];
        for ((size, order), roi) in [(224, ChannelOrder::Rgb), (32, ChannelOrder::Bgr)]
            .into_iter()
            .flat_map(|c| rois.map(|r| (c, r)))
        {
            let sp = spec(size, order);
            let roi = roi.map(|r| r.parse().unwrap());
            let mut pre = GpuPreprocess::new(&mut g, &sp).unwrap();
            pre.set_roi(roi);
            let n = 3 * size as usize * size as usize;
            for format in PixelFormat::ALL {
                for (w, h) in [(640, 480), (320, 240)] {
                    let frame = render(w, h, format, 3, "synthetic://");
                    let rect = match &roi {
                        Some(r) => edgefuse_runtime::preprocess::Roi::resolve(r, w, h).unwrap(),
                        None => Rect { x: 0, y: 0, w, h },
                    };
                    let want = reference_in(&frame, &sp, rect);
                    let (mut got, mut half) = (vec![0.0; n], vec![0u16; n]);
                    pre.run(&frame, &mut got).unwrap();
                    let what =
                        format!("preprocess {w}x{h} {} -> {size} roi {roi:?}", format.name());
                    assert_close(&what, r::TOL_PREPROCESS_F32, &got, &want, max_abs(&want));
                    pre.run_f16(&frame, &mut half).unwrap();
                    let h32: Vec<f32> = half.iter().map(|b| r::f16_bits_to_f32(*b)).collect();
                    assert_close(
                        &(what + " f16"),
                        r::TOL_PREPROCESS_F16,
                        &h32,
                        &want,
                        max_abs(&want),
                    );
                }
            }
            // A frame shorter than its geometry is refused on the host, never launched.
            let mut bad = render(640, 480, PixelFormat::Yuyv, 0, "synthetic://");
            bad.data.truncate(1000);
            assert!(pre.run(&bad, &mut vec![0.0; n]).is_err());
        }
    }

    #[test]
    fn f32_linear_matches_the_reference() {
        let Some((g, k)) = gpu("linear_f32") else {
            return;
        };
        // ViT-B/32 shapes (50 tokens: qkv, MLP up with QuickGELU) and an awkward one.
        for (m, n, kk, act) in [
            (50, 2304, 768, Activation::None),
            (50, 3072, 768, Activation::QuickGelu),
            (7, 13, 29, Activation::Gelu),
        ] {
            let (x, w, b) = (rand(m * kk, 1), rand(n * kk, 2), rand(n, 3));
            let want = r::linear_f32(&x, &w, Some(&b), m, n, kk, act);
            let (dx, dw, db) = (
                g.upload(&x).unwrap(),
                g.upload(&w).unwrap(),
                g.upload(&b).unwrap(),
            );
            let mut dy = g.zeros::<f32>(m * n).unwrap();
            k.linear_f32(&dx, &dw, Some(&db), &mut dy, (m, n, kk), act)
                .unwrap();
            let got = g.download(&dy).unwrap();
            assert_close(
                &format!("linear_f32 {m}x{n}x{kk} {act:?}"),
                r::TOL_LINEAR_F32,
                &got,
                &want,
                max_abs(&want),
            );
        }
    }

    #[test]
    fn int8_linear_is_exact_on_both_kernels() {
        let Some((g, k)) = gpu("linear_i8") else {
            return;
        };
        for (m, n, kk, act) in [
            (50, 768, 768, Activation::None),
            (32, 3072, 768, Activation::QuickGelu),
            (17, 40, 96, Activation::Gelu),
            (3, 5, 40, Activation::None),
        ] {
            let (x, w, b) = (rand(m * kk, 4), rand(n * kk, 5), rand(n, 6));
            let rw = r::RowWeights::quantize(&w, n, kk);
            let scale = max_abs(&x) / 127.0;
            let q = r::quantize_i8(&x, m, kk, rw.kp, scale);
            let want = r::linear_i8(&q, &rw, scale, Some(&b), m, act);
            let dx = g.upload(&x).unwrap();
            let mut dq = g.zeros::<i8>(m * rw.kp).unwrap();
            k.quantize_i8(&dx, &mut dq, (m, kk, rw.kp), scale).unwrap();
            assert_eq!(g.download(&dq).unwrap(), q, "quantize_i8 {m}x{kk}");
            let (dw, ds, db) = (
                g.upload(&rw.q).unwrap(),
                g.upload(&rw.scales).unwrap(),
                g.upload(&b).unwrap(),
            );
            let mut kernels = vec![Int8Kernel::Dp4a];
            if k.has_mma() {
                kernels.push(Int8Kernel::Mma);
            }
            for which in kernels {
                let mut dy = g.zeros::<f32>(m * n).unwrap();
                k.linear_i8(
                    which,
                    &dq,
                    &dw,
                    &ds,
                    scale,
                    Some(&db),
                    &mut dy,
                    (m, n, rw.kp),
                    act,
                )
                .unwrap();
                let got = g.download(&dy).unwrap();
                let what = format!("linear_i8 {which:?} {m}x{n}x{kk} {act:?}");
                assert_close(&what, r::TOL_LINEAR_I8, &got, &want, max_abs(&want));
            }
        }
    }

    #[test]
    fn attention_matches_the_reference() {
        let Some((g, k)) = unwired("attention") else {
            return;
        };
        // Encoder self-attention on a packed QKV row (stride 3·768), and Q-Former
        // cross-attention of 32 queries over 257 tokens.
        for (lq, lk, heads, d, packed) in [(50, 50, 12, 64, true), (32, 257, 12, 64, false)] {
            let width = heads * d;
            let scale = 1.0 / (d as f32).sqrt();
            let (want, got) = if packed {
                let qkv = rand(lq * 3 * width, 7);
                let s = |o: usize| Strided {
                    data: &qkv[o..],
                    stride: 3 * width,
                };
                let want = r::attention(s(0), s(width), s(2 * width), lq, lk, heads, d, scale);
                let dq = g.upload(&qkv).unwrap();
                let dk = g.upload(&qkv[width..]).unwrap();
                let dv = g.upload(&qkv[2 * width..]).unwrap();
                let mut o = g.zeros::<f32>(lq * width).unwrap();
                let st = 3 * width;
                k.attention(
                    (&dq, st),
                    (&dk, st),
                    (&dv, st),
                    &mut o,
                    (lq, lk, heads, d),
                    scale,
                )
                .unwrap();
                (want, g.download(&o).unwrap())
            } else {
                let (q, kv_k, kv_v) = (
                    rand(lq * width, 8),
                    rand(lk * width, 9),
                    rand(lk * width, 10),
                );
                fn s(data: &[f32], stride: usize) -> Strided<'_> {
                    Strided { data, stride }
                }
                let want = r::attention(
                    s(&q, width),
                    s(&kv_k, width),
                    s(&kv_v, width),
                    lq,
                    lk,
                    heads,
                    d,
                    scale,
                );
                let (dq, dk, dv) = (
                    g.upload(&q).unwrap(),
                    g.upload(&kv_k).unwrap(),
                    g.upload(&kv_v).unwrap(),
                );
                let mut o = g.zeros::<f32>(lq * width).unwrap();
                k.attention(
                    (&dq, width),
                    (&dk, width),
                    (&dv, width),
                    &mut o,
                    (lq, lk, heads, d),
                    scale,
                )
                .unwrap();
                (want, g.download(&o).unwrap())
            };
            assert_close(
                &format!("attention {lq}x{lk} h{heads} d{d}"),
                r::TOL_ELEMENTWISE,
                &got,
                &want,
                max_abs(&want),
            );
        }
    }

    #[test]
    fn layer_norm_residual_activations_and_half_match() {
        let Some((g, k)) = unwired("norm") else {
            return;
        };
        let (rows, cols) = (50, 768);
        let x: Vec<f32> = rand(rows * cols, 11)
            .iter()
            .map(|v| v * 4.0 + 1.0)
            .collect();
        let (gamma, beta) = (rand(cols, 12), rand(cols, 13));
        let want = r::layer_norm(&x, &gamma, &beta, cols, 1e-5);
        let (dx, dg, db) = (
            g.upload(&x).unwrap(),
            g.upload(&gamma).unwrap(),
            g.upload(&beta).unwrap(),
        );
        let mut dy = g.zeros::<f32>(rows * cols).unwrap();
        k.layer_norm(&dx, &dg, &db, &mut dy, (rows, cols), 1e-5)
            .unwrap();
        assert_close(
            "layer_norm 50x768",
            r::TOL_ELEMENTWISE,
            &g.download(&dy).unwrap(),
            &want,
            max_abs(&want),
        );

        let y = rand(rows * cols, 14);
        let dy2 = g.upload(&y).unwrap();
        let mut sum = g.zeros::<f32>(rows * cols).unwrap();
        k.add(&dx, &dy2, &mut sum).unwrap();
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        assert_eq!(g.download(&sum).unwrap(), want, "residual add is exact");

        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
        ] {
            let v: Vec<f32> = rand(4096, 15).iter().map(|t| t * 8.0).collect();
            let mut dv = g.upload(&v).unwrap();
            k.activation(&mut dv, act).unwrap();
            let want: Vec<f32> = v.iter().map(|t| r::act(*t, act)).collect();
            assert_close(
                &format!("{act:?}"),
                r::TOL_ELEMENTWISE,
                &g.download(&dv).unwrap(),
                &want,
                max_abs(&want),
            );
        }

        let v: Vec<f32> = rand(4096, 16).iter().map(|t| t * 70000.0).collect();
        let dv = g.upload(&v).unwrap();
        let mut dh = g.zeros::<u16>(v.len()).unwrap();
        k.to_f16(&dv, &mut dh).unwrap();
        let want: Vec<u16> = v.iter().map(|t| r::f32_to_f16_bits(*t)).collect();
        assert_eq!(
            g.download(&dh).unwrap(),
            want,
            "f32 -> f16 is exact (round to nearest even)"
        );
    }

    #[test]
    fn fusion_head_matches_the_cpu_head_for_every_method() {
        let Some((g, k)) = unwired("fusion") else {
            return;
        };
        let (labels, dim, nq) = (1000, 256, 32);
        let mut t = rand(labels * dim, 17);
        for row in t.chunks_exact_mut(dim) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= n);
        }
        let (emb, queries) = (rand(dim, 18), rand(nq * dim, 19));
        let (dt, de, dq) = (
            g.upload(&t).unwrap(),
            g.upload(&emb).unwrap(),
            g.upload(&queries).unwrap(),
        );
        for (code, method) in [
            (1, FusionMethod::WeightedLogits),
            (2, FusionMethod::WeightedProbabilities),
            (3, FusionMethod::Max),
        ] {
            let fusion = Fusion {
                method,
                clip: HeadParams {
                    logit_scale: 100.0,
                    weight: 0.6,
                },
                qformer: Some(HeadParams {
                    logit_scale: 50.0,
                    weight: 0.4,
                }),
            };
            let mut head = FusionHead::new(&t, dim, &fusion, true);
            let mut top = TopK::new();
            head.run(&emb, Some(&queries), 5, &mut top);
            let mut clip = g.zeros::<f32>(labels).unwrap();
            let mut qf = g.zeros::<f32>(labels).unwrap();
            k.head_logits(
                &de,
                Some((&dq, nq)),
                &dt,
                (labels, dim),
                (100.0, 50.0),
                &mut clip,
                &mut qf,
            )
            .unwrap();
            let gl = g.download(&clip).unwrap();
            assert_close(
                "clip logits",
                r::TOL_ELEMENTWISE,
                &gl,
                head.clip_logits(),
                100.0,
            );
            assert_close(
                "q-former logits",
                r::TOL_ELEMENTWISE,
                &g.download(&qf).unwrap(),
                head.qformer_logits(),
                50.0,
            );
            let mut probs = g.zeros::<f32>(labels).unwrap();
            let mut tmp = g.zeros::<f32>(labels).unwrap();
            let mut ti = g.zeros::<i32>(5).unwrap();
            let mut tp = g.zeros::<f32>(5).unwrap();
            k.fuse_topk(
                &clip,
                &qf,
                code,
                (0.6, 0.4),
                &mut probs,
                &mut tmp,
                (&mut ti, &mut tp),
            )
            .unwrap();
            assert_close(
                &format!("{method:?} probabilities"),
                r::TOL_ELEMENTWISE,
                &g.download(&probs).unwrap(),
                head.probabilities(),
                1.0,
            );
            let idx: Vec<u16> = g.download(&ti).unwrap().iter().map(|i| *i as u16).collect();
            let want: Vec<u16> = top.iter().map(|(i, _)| *i).collect();
            assert_eq!(idx, want, "{method:?} top-5");
        }
    }

    #[test]
    fn graph_executor_matches_the_plan_run_on_the_cpu() {
        use edgefuse_runtime::gpu::cuda::GraphExec;
        use edgefuse_runtime::plan::{lower_bundle, run_reference};
        let Some((mut g, _)) = gpu("graph") else {
            return;
        };
        let bundle = edgefuse_models::Bundle::open(edgefuse_tests::default_bundle()).unwrap();
        let (enc, qf) = lower_bundle(&bundle).unwrap();
        let qf = qf.unwrap();
        let input = rand(enc.buffers[enc.input].len(), 20);
        let want = run_reference(&enc, &input).unwrap();
        let want_q = run_reference(&qf, &want[1]).unwrap();
        let mut e = GraphExec::new(&mut g, enc).unwrap();
        let mut q = GraphExec::new(&mut g, qf).unwrap();
        let dx = g.upload(&input).unwrap();
        for _ in 0..2 {
            // Twice: the second run reuses every buffer.
            e.set_input_from(&dx).unwrap();
            e.run().unwrap();
            q.set_input_from(e.output(1)).unwrap();
            q.run().unwrap();
            let emb = g.download(e.output(0)).unwrap();
            assert_close(
                "graph encoder embedding",
                r::TOL_LINEAR_F32,
                &emb,
                &want[0],
                max_abs(&want[0]),
            );
            let tok = g.download(e.output(1)).unwrap();
            assert_close(
                "graph encoder tokens",
                r::TOL_LINEAR_F32,
                &tok,
                &want[1],
                max_abs(&want[1]),
            );
            let qo = g.download(q.output(0)).unwrap();
            assert_close(
                "graph q-former",
                r::TOL_LINEAR_F32,
                &qo,
                &want_q[0],
                max_abs(&want_q[0]),
            );
        }
    }

    #[test]
    fn the_cuda_backend_classifies_like_the_cpu() {
        use edgefuse_models::Bundle;
        use edgefuse_runtime::backend::Backend;
        use edgefuse_runtime::gpu::{cuda::CudaBackend, GpuModels};
        if let Err(e) = Gpu::open(0) {
            println!("backend: skipped, no usable GPU: {e}");
            return;
        }
        let bundle = Bundle::open(edgefuse_tests::default_bundle()).unwrap();
        let mut acc = CudaBackend::new(&bundle, GpuModels::Ours).unwrap();
        println!("backend: {}", acc.describe());
        let mut cpu =
            edgefuse_runtime::pipeline::Pipeline::new(&bundle, Default::default()).unwrap();
        let dim = bundle.manifest().encoder.embedding_dim;
        let mut emb = vec![0.0; dim];
        let mut queries = vec![0.0; cpu.queries().len()];
        let mut times = Default::default();
        for i in 0..8 {
            let frame = render(640, 480, PixelFormat::Yuyv, i, "synthetic://");
            acc.run(&frame, &mut emb, &mut queries, &mut times).unwrap();
            cpu.process(&frame).unwrap().expect("classified");
            let dot: f32 = emb.iter().zip(cpu.embedding()).map(|(a, b)| a * b).sum();
            let na = emb.iter().map(|v| v * v).sum::<f32>().sqrt();
            let nb = cpu.embedding().iter().map(|v| v * v).sum::<f32>().sqrt();
            let cos = dot / (na * nb);
            assert!(cos > 0.9999, "frame {i}: embedding cosine {cos}");
        }
    }
}
