//! The SVG of throughput over time: one panel per workload, one line per system, drawn with
//! plotters' SVG backend.
//!
//! It draws the [`Panel`]s it is given and knows nothing of reports: `report` picks what goes
//! into each panel and calls [`draw`]. Only the units (`measure`) are shared with the rest.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::measure::Unit;

/// One panel: a title and its lines, each in `unit`s per second over time.
pub struct Panel<'a> {
    /// The panel's caption (the workload's name).
    pub title: &'a str,
    /// What every line counts.
    pub unit: Unit,
    /// `(legend, [seconds since start, units per second])` for each line.
    pub lines: Vec<(&'a str, &'a [[f64; 2]])>,
}

/// How a unit is scaled and labelled on the y axis.
fn axis(unit: Unit) -> (f64, &'static str) {
    match unit {
        Unit::Bytes => ((1u64 << 20) as f64, "MiB/s"),
        Unit::Requests => (1.0, "requests/s"),
        Unit::Connections => (1.0, "connections/s"),
        Unit::Datagrams => (1.0, "datagrams/s"),
    }
}

/// Draws `panels`, one above the other, into an SVG file at `path` (a panel without lines stays
/// blank).
pub fn draw(panels: &[Panel<'_>], path: &Path) -> Result<()> {
    let count = panels.len().max(1);
    let root = SVGBackend::new(path, (1000, 320 * count as u32)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    for (area, panel) in root.split_evenly((count, 1)).iter().zip(panels) {
        if panel.lines.is_empty() {
            continue;
        }
        let (scale, label) = axis(panel.unit);
        let points = panel.lines.iter().flat_map(|(_, t)| t.iter());
        let x_max = points.clone().map(|p| p[0]).fold(0.1, f64::max);
        let y_max = points.map(|p| p[1] / scale).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(label)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(err)?;
        for (i, (name, timeline)) in panel.lines.iter().enumerate() {
            let color = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    timeline.iter().map(|p| (p[0], p[1] / scale)),
                    color,
                ))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(i).stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
