//! The chart `make bench` writes: requests/s and p99 latency against scale,
//! one line per configuration, as SVG.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::Report;

const COLOURS: [RGBColor; 5] =
    [RGBColor(90, 90, 90), RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(188, 189, 34)];
const CONFIGS: [&str; 6] = ["baseline", "rbac", "ext_authz", "krites", "wasm-floor", "wasm-min"];

/// Writes the two-panel chart to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let title = format!("Krites load benchmark ({}, {} cores, {})", report.machine.cpu, report.machine.cores, report.machine.date);
    let root = root.titled(&title, ("sans-serif", 18)).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(550);
    panel(report, &left, "requests/s (higher is better)", |m| m.rps)?;
    panel(report, &right, "p99 latency, us (lower is better)", |m| f64::from(m.p99_us))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    value: impl Fn(&crate::report::Measurement) -> f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // One series: Istio's --concurrency 2 where it was run.
    let primary = if report.scales.iter().any(|s| s.concurrency == 2) { 2 } else { 1 };
    let scales: Vec<&crate::report::ScaleReport> = report.scales.iter().filter(|s| s.concurrency == primary).collect();
    let names: Vec<String> = scales.iter().map(|s| format!("{} (c{})", s.name, s.concurrency)).collect();
    let max = scales.iter().flat_map(|s| s.measurements.iter().map(&value)).fold(0.0_f64, f64::max).max(1.0);
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3_f64..(n - 0.7), 0.0_f64..max * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (config, colour) in CONFIGS.iter().zip(COLOURS) {
        let points: Vec<(f64, f64)> = scales
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.get(config).map(|m| (i as f64, value(m))))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(*config)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, colour.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
