//! The latency-versus-load plot of a run (SVG): p50 and p99 publish-to-deliver latency of each
//! system at each fixed load, against the throughput it reached.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::RunReport;

/// One system's points: (throughput, p50, p99).
type Points = Vec<(f64, f64, f64)>;

/// Draws `run` into `path`; `Ok(false)` when it has no fixed-load phase to draw.
///
/// # Errors
/// The file could not be written.
pub(crate) fn latency_vs_load(run: &RunReport, path: &Path) -> anyhow::Result<bool> {
    // (system, [(throughput, p50, p99)]) for the phases with a fixed offered load.
    let series: Vec<(String, Points)> = run
        .systems
        .iter()
        .map(|s| {
            let points = s
                .phases
                .iter()
                .filter(|p| p.offered_per_s.is_some())
                .filter_map(|p| {
                    p.latency
                        .map(|l| (p.throughput_per_s, l.p50_us.max(0.1), l.p99_us.max(0.1)))
                })
                .collect::<Vec<_>>();
            (s.label(), points)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0_f64, f64::MAX, 0.0_f64);
    for &(x, p50, p99) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(p50);
        y_max = y_max.max(p99);
    }
    let draw = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: latency versus load", run.label),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max * 1.08, (y_min / 1.5..y_max * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(run.unit)
            .y_desc("latency (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| duration_label(*y))
            .draw()?;
        // Set-ups of one system (the `cluster` scenario) take colours in turn.
        const OTHERS: [RGBColor; 6] = [
            RGBColor(60, 150, 60),
            RGBColor(150, 60, 170),
            RGBColor(230, 130, 20),
            RGBColor(20, 160, 170),
            RGBColor(120, 120, 120),
            RGBColor(170, 120, 60),
        ];
        for (i, (name, points)) in series.iter().enumerate() {
            let color = match name.as_str() {
                "scopecast" => RGBColor(200, 30, 45),
                "nats" => RGBColor(30, 90, 200),
                _ => OTHERS[i % OTHERS.len()],
            }
            .to_rgba();
            let p50: Vec<(f64, f64)> = points.iter().map(|&(x, p, _)| (x, p)).collect();
            let p99: Vec<(f64, f64)> = points.iter().map(|&(x, _, p)| (x, p)).collect();
            chart
                .draw_series(LineSeries::new(p50.clone(), color.stroke_width(2)))?
                .label(format!("{name} p50"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(p50.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            chart
                .draw_series(LineSeries::new(p99.clone(), color.stroke_width(1)))?
                .label(format!("{name} p99"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
                });
            chart.draw_series(
                p99.iter()
                    .map(|&p| TriangleMarker::new(p, 5, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    Ok(true)
}

/// A latency in microseconds as a short label: `850us`, `12ms`, `1.5s`.
fn duration_label(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.0}ms", us / 1_000.0)
    } else {
        format!("{:.1}s", us / 1_000_000.0)
    }
}
