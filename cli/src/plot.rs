//! SVG charts (plotters, SVG backend only): `bench --plot` (per-stage latency distribution and
//! the timeline over the run) and `calibrate`'s per-layer quantization error (`fidelity.svg`).

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const STAGE_COLORS: [RGBColor; 7] = [
    RGBColor(150, 150, 150),
    RGBColor(46, 160, 44),
    RGBColor(245, 130, 20),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(31, 119, 180),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e}")
}

/// The latency chart of a bench run: `samples[frame][stage]` in ms, `stages` their names.
/// Top: each stage's latency at every percentile (log scale); bottom: the models' stages and
/// end to end, frame by frame.
pub fn bench_svg(title: &str, stages: &[&str], samples: &[[f32; 7]]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (top, bottom) = root.split_vertically(370);
        let floor = 0.001f64;
        let max = samples
            .iter()
            .flat_map(|r| r.iter())
            .fold(floor, |m, &v| m.max(v as f64));
        let mut chart = ChartBuilder::on(&top)
            .caption("latency distribution per stage", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..100f64, (floor..max * 1.5).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile of frames")
            .y_desc("ms (log)")
            .draw()
            .map_err(err)?;
        for (i, name) in stages.iter().enumerate() {
            let mut v: Vec<f64> = samples.iter().map(|r| (r[i] as f64).max(floor)).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let points = (0..=200).map(|k| {
                let p = k as f64 / 2.0;
                let rank = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n);
                (p, v[rank - 1])
            });
            let color = STAGE_COLORS[i % STAGE_COLORS.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;

        let shown = [2usize, 3, 6];
        let tmax = samples
            .iter()
            .flat_map(|r| shown.iter().map(|&i| r[i] as f64))
            .fold(0.001f64, f64::max);
        let mut chart = ChartBuilder::on(&bottom)
            .caption("over the run", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0usize..samples.len().max(2), 0f64..tmax * 1.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("frame")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        for &i in &shown {
            let color = STAGE_COLORS[i];
            chart
                .draw_series(LineSeries::new(
                    samples.iter().enumerate().map(|(f, r)| (f, r[i] as f64)),
                    color.stroke_width(1),
                ))
                .map_err(err)?
                .label(stages[i])
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One bar per int8 layer (in model order): its relative activation quantization error,
/// coloured by model. `layers`: (model, layer, error).
pub fn quantization_svg(title: &str, layers: &[(&str, &str, f64)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let max = layers.iter().map(|l| l.2).fold(1e-6f64, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..layers.len().max(1) as f64, 0f64..max * 1.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("int8 layer, in model order")
            .y_desc("relative activation error")
            .draw()
            .map_err(err)?;
        let mut models: Vec<&str> = layers.iter().map(|l| l.0).collect();
        models.dedup();
        for (m, model) in models.iter().enumerate() {
            let color = STAGE_COLORS[(m * 2 + 2) % STAGE_COLORS.len()];
            chart
                .draw_series(
                    layers
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.0 == *model)
                        .map(|(i, l)| {
                            let x = i as f64;
                            Rectangle::new([(x + 0.1, 0.0), (x + 0.9, l.2)], color.filled())
                        }),
                )
                .map_err(err)?
                .label(*model)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_series() {
        let samples: Vec<[f32; 7]> = (0..50)
            .map(|i| {
                [
                    0.01,
                    0.2,
                    5.0 + i as f32 * 0.1,
                    3.0,
                    0.1,
                    0.001,
                    9.0 + i as f32 * 0.1,
                ]
            })
            .collect();
        let names = edgefuse_runtime::pipeline::STAGES;
        let svg = bench_svg("bench", &names, &samples).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for n in names {
            assert!(svg.contains(n), "{n} in the legend");
        }
        let svg = quantization_svg(
            "int8",
            &[
                ("encoder", "a", 0.01),
                ("encoder", "b", 0.02),
                ("qformer", "c", 0.05),
            ],
        )
        .unwrap();
        assert!(svg.contains("qformer") && svg.contains("<rect"));
        // An empty run still draws (axes only).
        bench_svg("empty", &names, &[]).unwrap();
    }
}
