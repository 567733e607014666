//! The calibrators against reference thresholds computed independently (in Python, from the
//! published algorithms: TensorRT/MXNet entropy calibration, percentile, MSE sweep) on analytic
//! histograms of |N(0,1)| and |Laplace(0,1)|: `tests/fixtures/make_reference.py` writes
//! `tests/fixtures/calibration_reference.json`.

use edgefuse_calibration::{AbsHistogram, Method};

fn histogram(counts: &[u64], max: f32) -> AbsHistogram {
    // One batch whose maximum is `max` fixes the bin width at max / 2048; every other value sits
    // at a bin centre, so the histogram holds exactly `counts`.
    let width = max / counts.len() as f32;
    let mut values = Vec::new();
    for (i, &c) in counts.iter().enumerate() {
        let c = if i == counts.len() - 1 { c - 1 } else { c };
        values.extend(std::iter::repeat_n((i as f32 + 0.5) * width, c as usize));
    }
    values.push(max);
    let mut h = AbsHistogram::default();
    h.add(&values);
    h
}

#[test]
fn thresholds_match_the_independent_reference() {
    let text = include_str!("fixtures/calibration_reference.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    for dist in ["gaussian", "laplacian"] {
        let d = &v["histograms"][dist];
        let counts: Vec<u64> = d["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        let h = histogram(&counts, d["max"].as_f64().unwrap() as f32);
        assert_eq!(h.total(), counts.iter().sum::<u64>());
        for (name, method) in [
            ("minmax", Method::MinMax),
            ("percentile:99.9", Method::Percentile(99.9)),
            ("percentile:99.99", Method::Percentile(99.99)),
            ("entropy", Method::Entropy),
            ("mse", Method::Mse),
        ] {
            let want = d["expected"][name].as_f64().unwrap();
            let got = h.amax(method, dist).unwrap();
            println!("{dist:>9} {name:<17} reference {want:<12} ours {got}");
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1.0),
                "{dist} {name}: reference {want}, ours {got}"
            );
        }
    }
}
