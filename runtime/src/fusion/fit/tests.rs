use super::*;
use edgefuse_models::manifest::{Fusion, HeadParams};

const N: usize = 3;
const DIM: usize = 4;

/// Label embeddings along the first three axes.
fn label_rows() -> Vec<f32> {
    let mut t = vec![0.0; N * DIM];
    (0..N).for_each(|l| t[l * DIM + l] = 1.0);
    t
}

fn head() -> FusionHead {
    let f = Fusion {
        method: FusionMethod::WeightedLogits,
        clip: HeadParams {
            logit_scale: 10.0,
            weight: 0.5,
        },
        qformer: Some(HeadParams {
            logit_scale: 10.0,
            weight: 0.5,
        }),
    };
    FusionHead::new(&label_rows(), DIM, &f, true)
}

/// A small deterministic generator (xorshift) for noise in -0.5..0.5.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// `per` frames of each label with a domain shift the zero-shot heads get wrong: images of label
/// `c` point between axis `c` and axis 3, and half the time toward label `(c + 1) % 3` more than
/// toward `c`; the classes stay linearly separable (axis 3 and the shift tell them apart).
fn data(per: usize, counts: Option<&[usize]>) -> (FitData, FusionHead) {
    let mut h = head();
    let mut d = FitData::new(&h);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for c in 0..N {
        let m = counts.map_or(per, |k| k[c]);
        for j in 0..m {
            let mut e = [0.0f32; DIM];
            e[c] = 0.6;
            e[(c + 1) % N] = if j % 2 == 0 { 0.8 } else { 0.3 };
            e[3] = 0.5 + 0.3 * c as f32;
            e.iter_mut().for_each(|v| *v += 0.05 * noise.next());
            let q: Vec<f32> = e
                .iter()
                .chain(e.iter())
                .map(|v| v + 0.05 * noise.next())
                .collect();
            h.heads_only(&e, Some(&q));
            d.push(&h, c as u16, &format!("f{c}_{j}")).unwrap();
        }
    }
    (d, h)
}

fn opts(methods: Vec<FusionMethod>) -> FitOptions {
    FitOptions {
        methods,
        adapter: true,
        folds: 5,
        label_names: vec!["a".into(), "b".into(), "c".into()],
        label_embeddings: label_rows(),
        clip_scale: 10.0,
        weights: vec![0.5, 0.5],
        zero_shot: FusionMethod::WeightedLogits,
    }
}

#[test]
fn a_separable_shift_is_learned_to_100_percent() {
    let (d, _) = data(10, None);
    let r = fit(&d, &opts(FusionMethod::ALL.to_vec())).unwrap();
    assert!(
        r.cv_accuracy["clip"] < 0.8,
        "the zero-shot head is fooled: {:?}",
        r.cv_accuracy
    );
    assert_eq!(r.cv_accuracy["adapter"], 1.0, "{:?}", r.cv_accuracy);
    for m in [FusionMethod::Stacking, FusionMethod::Concat] {
        assert_eq!(r.cv_accuracy[m.name()], 1.0, "{m:?}: {:?}", r.cv_accuracy);
    }
    assert_eq!(r.cv_accuracy[r.method.name()], 1.0);
    assert_eq!(r.folds, 5);
    // Every fitted method runs in a head built from the parameters, and the chosen one is
    // right on every training frame.
    r.params.check(N, DIM, true).unwrap();
    let f = Fusion {
        method: r.method,
        clip: HeadParams {
            logit_scale: 10.0,
            weight: 0.5,
        },
        qformer: Some(HeadParams {
            logit_scale: 10.0,
            weight: 0.5,
        }),
    };
    let mut h = FusionHead::build(&label_rows(), DIM, &f, true, Some(r.params.clone()));
    assert_eq!(h.methods(), FusionMethod::ALL.to_vec());
    let mut right = 0;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for c in 0..N {
        for j in 0..10 {
            let mut e = [0.0f32; DIM];
            e[c] = 0.6;
            e[(c + 1) % N] = if j % 2 == 0 { 0.8 } else { 0.3 };
            e[3] = 0.5 + 0.3 * c as f32;
            e.iter_mut().for_each(|v| *v += 0.05 * noise.next());
            let q: Vec<f32> = e
                .iter()
                .chain(e.iter())
                .map(|v| v + 0.05 * noise.next())
                .collect();
            let mut top = crate::fusion::TopK::new();
            h.run(&e, Some(&q), 1, &mut top);
            right += usize::from(usize::from(top[0].0) == c);
        }
    }
    assert_eq!(right, 30);
}

#[test]
fn fitting_is_deterministic() {
    let (d, _) = data(6, None);
    let a = fit(&d, &opts(FusionMethod::ALL.to_vec())).unwrap();
    let b = fit(&d, &opts(FusionMethod::ALL.to_vec())).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.cv_accuracy, b.cv_accuracy);
    assert_eq!(a.method, b.method);
}

#[test]
fn too_few_frames_are_refused_naming_the_label() {
    let (d, _) = data(0, Some(&[3, 0, 2]));
    let e = fit(&d, &opts(vec![FusionMethod::Stacking])).unwrap_err();
    assert!(e.to_string().contains("`b` (0 frames)"), "{e}");
    let (d, _) = data(0, Some(&[3, 1, 2]));
    let e = fit(&d, &opts(vec![FusionMethod::Stacking])).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("stacking needs at least 2"), "{msg}");
    assert!(
        msg.contains("`b` (1 frame)") && !msg.contains("`a`"),
        "{msg}"
    );
    // With several candidates the ones that cannot be fitted are left out, saying why; the
    // adapter and the fixed rules still fit with one frame of a label.
    let r = fit(&d, &opts(FusionMethod::ALL.to_vec())).unwrap();
    assert_eq!(r.skipped.len(), 4, "{:?}", r.skipped);
    assert!(r.params.adapter.is_some() && r.params.stacking.is_none());
    assert!(!r.method.needs_fit());
}

#[test]
fn non_finite_outputs_are_refused() {
    let mut h = head();
    let mut d = FitData::new(&h);
    h.heads_only(&[f32::NAN, 0.0, 0.0, 1.0], Some(&[1.0; 8]));
    let e = d.push(&h, 0, "bad.png").unwrap_err();
    assert!(e.to_string().starts_with("frame bad.png: "), "{e}");
    assert_eq!(d.frames(), 0);
}

/// When the zero-shot heads are already right, `auto` keeps the zero-shot rule and gives the
/// adapter weight 0: a fit that cannot clearly help is not taken.
#[test]
fn auto_keeps_the_zero_shot_rule_when_fitting_does_not_help() {
    let mut h = head();
    let mut d = FitData::new(&h);
    let mut noise = Noise(7);
    for c in 0..N {
        for j in 0..6 {
            let mut e = [0.1f32; DIM];
            e[c] = 1.0;
            e.iter_mut().for_each(|v| *v += 0.05 * noise.next());
            let q: Vec<f32> = e.iter().chain(e.iter()).copied().collect();
            h.heads_only(&e, Some(&q));
            d.push(&h, c as u16, &format!("{c}_{j}")).unwrap();
        }
    }
    let r = fit(&d, &opts(FusionMethod::ALL.to_vec())).unwrap();
    assert_eq!(r.cv_accuracy["zero_shot"], 1.0);
    assert_eq!(r.method, FusionMethod::WeightedLogits);
    assert_eq!(r.params.adapter.as_ref().unwrap().weight, 0.0);
    // Asked for one method, it is fitted and kept.
    let r = fit(&d, &opts(vec![FusionMethod::Stacking])).unwrap();
    assert_eq!(r.method, FusionMethod::Stacking);
    assert_eq!(r.params.adapter.as_ref().unwrap().weight, ADAPTER_WEIGHT);
}
