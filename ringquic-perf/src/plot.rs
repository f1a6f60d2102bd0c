//! The SVG of throughput over time: one panel per workload, one line per system (its first
//! successful run), drawn with plotters' SVG backend.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::{bench::Unit, report::Report};

/// How a unit is scaled and labelled on the y axis.
fn axis(unit: Unit) -> (f64, &'static str) {
    match unit {
        Unit::Bytes => ((1u64 << 20) as f64, "MiB/s"),
        Unit::Requests => (1.0, "requests/s"),
        Unit::Connections => (1.0, "connections/s"),
        Unit::Datagrams => (1.0, "datagrams/s"),
    }
}

/// Draws `report`'s timelines into an SVG file at `path`.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let mut workloads: Vec<_> = report.groups.iter().map(|g| g.workload).collect();
    workloads.dedup();
    let panels = workloads.len().max(1);
    let root = SVGBackend::new(path, (1000, 320 * panels as u32)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    for (area, workload) in root.split_evenly((panels, 1)).iter().zip(&workloads) {
        let lines: Vec<(String, Unit, &Vec<[f64; 2]>)> = report
            .groups
            .iter()
            .filter(|g| g.workload == *workload)
            .filter_map(|g| {
                let m = g.runs.iter().find(|m| m.error.is_none())?;
                Some((g.system.clone(), m.unit, &m.timeline))
            })
            .collect();
        let Some(&(_, unit, _)) = lines.first() else {
            continue;
        };
        let (scale, label) = axis(unit);
        let points = lines.iter().flat_map(|(_, _, t)| t.iter());
        let x_max = points.clone().map(|p| p[0]).fold(0.1, f64::max);
        let y_max = points.map(|p| p[1] / scale).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(workload.name(), ("sans-serif", 20))
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
        for (i, (name, _, timeline)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    timeline.iter().map(|p| (p[0], p[1] / scale)),
                    color,
                ))
                .map_err(err)?
                .label(name.as_str())
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
