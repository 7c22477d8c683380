//! The simulation's chart: load and replicas over time for Weir and the HPA, as a PNG.
//!
//! plotters with its bitmap backend draws into an RGB buffer (its `image`-based encoder and its
//! font backends are left out: see `font`), the `png` crate writes the file.

use super::font;
use super::simulate::{Comparison, Point, Run};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 760;
const LEFT: i32 = 70;
const RIGHT: i32 = 30;

const GRID: RGBColor = RGBColor(225, 225, 225);
const AXIS: RGBColor = RGBColor(70, 70, 70);
const TEXT: RGBColor = RGBColor(20, 20, 20);
const LOAD: RGBColor = RGBColor(60, 60, 60);
const NEEDED: RGBColor = RGBColor(170, 170, 170);
pub(crate) const WEIR: RGBColor = RGBColor(31, 119, 180);
pub(crate) const HPA: RGBColor = RGBColor(255, 127, 14);

fn failed<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// Writes the chart of `comparison` to `path`.
pub(crate) fn draw(comparison: &Comparison, path: &Path) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    render(comparison, &mut buffer)?;
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&buffer)?;
    writer.finish()?;
    Ok(())
}

/// Draws into an RGB buffer of `WIDTH` × `HEIGHT`.
pub(crate) fn render(comparison: &Comparison, buffer: &mut [u8]) -> anyhow::Result<()> {
    let root = BitMapBackend::with_buffer(buffer, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let duration = f64::from(comparison.scenario.duration);
    let target = comparison.scenario.target;
    let title = format!(
        "{}: WEIR VS HPA, TARGET {} IN FLIGHT PER POD",
        comparison.curve.name(),
        target
    );
    text(&root, LEFT, 12, &title, 3, &TEXT)?;

    // Top panel: the load.
    let weir = &comparison.weir;
    let hpa = &comparison.hpa;
    let max_load = weir.timeline.iter().map(|p| p.load).fold(1.0, f64::max);
    let load_top = nice_ceiling(max_load);
    let (top, bottom) = root.split_vertically(300);
    let mut chart = ChartBuilder::on(&top)
        .margin_top(60)
        .margin_bottom(30)
        .margin_left(LEFT as u32)
        .margin_right(RIGHT as u32)
        .build_cartesian_2d(0f64..duration, 0f64..load_top)
        .map_err(failed)?;
    grid(&root, &mut chart, duration, load_top)?;
    chart
        .draw_series(LineSeries::new(
            weir.timeline.iter().map(|p| (f64::from(p.t), p.load)),
            LOAD.stroke_width(2),
        ))
        .map_err(failed)?;
    let (x, y) = chart.backend_coord(&(0.0, load_top));
    text(&root, x, y - 22, "LOAD: REQUESTS IN FLIGHT", 2, &TEXT)?;

    // Bottom panel: pods.
    let max_pods = [weir, hpa]
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| f64::from(p.replicas)))
        .chain(weir.timeline.iter().map(|p| p.load / target))
        .fold(1.0, f64::max);
    let pods_top = nice_ceiling(max_pods);
    let mut chart = ChartBuilder::on(&bottom)
        .margin_top(40)
        .margin_bottom(60)
        .margin_left(LEFT as u32)
        .margin_right(RIGHT as u32)
        .build_cartesian_2d(0f64..duration, 0f64..pods_top)
        .map_err(failed)?;
    grid(&root, &mut chart, duration, pods_top)?;
    chart
        .draw_series(LineSeries::new(
            weir.timeline
                .iter()
                .map(|p| (f64::from(p.t), p.load / target)),
            NEEDED.stroke_width(3),
        ))
        .map_err(failed)?;
    for (run, color) in [(hpa, HPA), (weir, WEIR)] {
        chart
            .draw_series(LineSeries::new(
                steps(run, |p| p.ready),
                color.stroke_width(1),
            ))
            .map_err(failed)?;
        chart
            .draw_series(LineSeries::new(
                steps(run, |p| p.replicas),
                color.stroke_width(3),
            ))
            .map_err(failed)?;
    }
    let (x, y) = chart.backend_coord(&(0.0, pods_top));
    text(&root, x, y - 22, "PODS", 2, &TEXT)?;
    // Legend, right of the panel title.
    let mut lx = x + 80;
    for (label, color) in [
        ("NEEDED (LOAD / TARGET)", NEEDED),
        ("WEIR", WEIR),
        ("HPA", HPA),
        ("THIN: READY", AXIS),
    ] {
        root.draw(&Rectangle::new(
            [(lx, y - 18), (lx + 24, y - 12)],
            color.filled(),
        ))
        .map_err(failed)?;
        text(&root, lx + 30, y - 22, label, 2, &TEXT)?;
        lx += 30 + font::width(label.len(), 2) + 30;
    }
    let (x, y) = chart.backend_coord(&(duration, 0.0));
    let label = "TIME (S)";
    text(
        &root,
        x - font::width(label.len(), 2),
        y + 34,
        label,
        2,
        &TEXT,
    )?;
    root.present().map_err(failed)?;
    Ok(())
}

/// A step line through a run's points (the count holds until the next second).
fn steps(run: &Run, value: impl Fn(&Point) -> i32) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(run.timeline.len() * 2);
    let mut last: Option<f64> = None;
    for p in &run.timeline {
        let v = f64::from(value(p));
        let t = f64::from(p.t);
        if let Some(previous) = last
            && previous != v
        {
            points.push((t, previous));
        }
        points.push((t, v));
        last = Some(v);
    }
    points
}

/// 1, 2 or 5 × a power of ten, at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.max(1.0).log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= value * 1.05 {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Grid lines, axes and tick labels (every 2 minutes; five steps up the y axis); labels go on
/// `root`, whose pixels are the chart's backend coordinates.
fn grid(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &mut Chart<'_, '_>,
    duration: f64,
    top: f64,
) -> anyhow::Result<()> {
    let mut t = 0.0;
    while t <= duration {
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, top)], GRID.stroke_width(1)))
            .map_err(failed)?;
        let (x, y) = chart.backend_coord(&(t, 0.0));
        let label = format!("{t:.0}");
        text(
            area,
            x - font::width(label.len(), 2) / 2,
            y + 8,
            &label,
            2,
            &AXIS,
        )?;
        t += 120.0;
    }
    for i in 0..=5 {
        let v = top * f64::from(i) / 5.0;
        chart
            .draw_series(LineSeries::new(
                [(0.0, v), (duration, v)],
                GRID.stroke_width(1),
            ))
            .map_err(failed)?;
        let (x, y) = chart.backend_coord(&(0.0, v));
        let label = if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        };
        text(
            area,
            x - 8 - font::width(label.len(), 2),
            y - 7,
            &label,
            2,
            &AXIS,
        )?;
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, top), (0.0, 0.0), (duration, 0.0)],
            AXIS.stroke_width(1),
        ))
        .map_err(failed)?;
    Ok(())
}

/// Draws `label` with its top left corner at (x, y) in `area`'s pixels (use the root area with
/// backend coordinates).
fn text(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    x: i32,
    y: i32,
    label: &str,
    scale: i32,
    color: &RGBColor,
) -> anyhow::Result<()> {
    for (i, c) in label.chars().enumerate() {
        let left = x + i as i32 * 6 * scale;
        for (row, bits) in font::glyph(c).iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    let px = left + col * scale;
                    let py = y + row as i32 * scale;
                    area.draw(&Rectangle::new(
                        [(px, py), (px + scale, py + scale)],
                        color.filled(),
                    ))
                    .map_err(failed)?;
                }
            }
        }
    }
    Ok(())
}
