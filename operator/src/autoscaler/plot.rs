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

/// A series of the pods panel as the legend shows it: label, colour, stroke width.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series {
    pub label: &'static str,
    pub color: RGBColor,
    pub width: u32,
}

/// The pods panel's series, in drawing order (the legend lists them in this order too).
pub(crate) const PODS_SERIES: [Series; 5] = [
    Series {
        label: "NEEDED",
        color: NEEDED,
        width: 3,
    },
    Series {
        label: "HPA READY",
        color: HPA,
        width: 1,
    },
    Series {
        label: "HPA",
        color: HPA,
        width: 3,
    },
    Series {
        label: "WEIR READY",
        color: WEIR,
        width: 1,
    },
    Series {
        label: "WEIR",
        color: WEIR,
        width: 3,
    },
];

/// Where things landed on the image, in pixels (x from the left, y from the top; ranges end
/// exclusive): what the tests check the pixels against.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    /// The two plot rectangles (load, pods), axes included: series are clipped to them.
    pub plots: Vec<(std::ops::Range<i32>, std::ops::Range<i32>)>,
    /// Each legend swatch, with the series it stands for.
    pub swatches: Vec<(Series, std::ops::Range<i32>, std::ops::Range<i32>)>,
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
///
/// Order matters: grid lines, then the series, then everything outside the two plot rectangles
/// is painted white again — plotters does not clip a stroke to its chart, so a 3-pixel line
/// on an edge (0 pods needed, the last second) would spill over the axis labels — and only
/// then the axes, labels and legend.
pub(crate) fn render(comparison: &Comparison, buffer: &mut [u8]) -> anyhow::Result<Layout> {
    let root = BitMapBackend::with_buffer(buffer, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut layout = Layout::default();
    let duration = f64::from(comparison.scenario.duration);
    let target = comparison.scenario.target;
    let weir = &comparison.weir;
    let hpa = &comparison.hpa;
    let max_load = weir.timeline.iter().map(|p| p.load).fold(1.0, f64::max);
    let load_top = nice_ceiling(max_load);
    let max_pods = [weir, hpa]
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| f64::from(p.replicas)))
        .chain(weir.timeline.iter().map(|p| p.load / target))
        .fold(1.0, f64::max);
    let pods_top = nice_ceiling(max_pods);

    let (top, bottom) = root.split_vertically(300);
    // Both panels share the time axis and the side margins.
    let panel = |area, top: u32, bottom: u32, y_top: f64| {
        ChartBuilder::on(area)
            .margin_top(top)
            .margin_bottom(bottom)
            .margin_left(LEFT as u32)
            .margin_right(RIGHT as u32)
            .build_cartesian_2d(0f64..duration, 0f64..y_top)
            .map_err(failed)
    };
    let mut load_chart = panel(&top, 60, 30, load_top)?;
    let mut pods_chart = panel(&bottom, 40, 60, pods_top)?;
    for chart in [&load_chart, &pods_chart] {
        let (x, y) = chart.plotting_area().get_pixel_range();
        layout.plots.push((x, y));
    }

    grid_lines(&mut load_chart, duration, load_top)?;
    grid_lines(&mut pods_chart, duration, pods_top)?;
    load_chart
        .draw_series(LineSeries::new(
            weir.timeline.iter().map(|p| (f64::from(p.t), p.load)),
            LOAD.stroke_width(2),
        ))
        .map_err(failed)?;
    for series in PODS_SERIES {
        let points = match (series.label, series.width) {
            ("NEEDED", _) => weir
                .timeline
                .iter()
                .map(|p| (f64::from(p.t), p.load / target))
                .collect(),
            (_, 1) if series.color == HPA => steps(hpa, |p| p.ready),
            (_, _) if series.color == HPA => steps(hpa, |p| p.replicas),
            (_, 1) => steps(weir, |p| p.ready),
            _ => steps(weir, |p| p.replicas),
        };
        pods_chart
            .draw_series(LineSeries::new(
                points,
                series.color.stroke_width(series.width),
            ))
            .map_err(failed)?;
    }
    clip_outside(&root, &layout.plots)?;

    grid_labels(&root, &load_chart, duration, load_top)?;
    grid_labels(&root, &pods_chart, duration, pods_top)?;
    let title = format!(
        "{}: WEIR VS HPA, TARGET {} IN FLIGHT PER POD",
        comparison.curve.name(),
        target
    );
    text(&root, LEFT, 12, &title, 3, &TEXT)?;
    let (x, y) = load_chart.backend_coord(&(0.0, load_top));
    text(&root, x, y - 22, "LOAD: REQUESTS IN FLIGHT", 2, &TEXT)?;
    let (x, y) = pods_chart.backend_coord(&(0.0, pods_top));
    text(&root, x, y - 22, "PODS", 2, &TEXT)?;
    // Legend, right of the panel title: each swatch a short line of the series' own colour
    // and stroke width.
    let mut lx = x + 80;
    for series in PODS_SERIES {
        let height = series.width as i32 + 1;
        let top_y = y - 15 - height / 2;
        root.draw(&Rectangle::new(
            [(lx, top_y), (lx + 25, top_y + height)],
            series.color.filled(),
        ))
        .map_err(failed)?;
        layout
            .swatches
            .push((series, lx..lx + 25, top_y..top_y + height));
        text(&root, lx + 30, y - 22, series.label, 2, &TEXT)?;
        lx += 30 + font::width(series.label.len(), 2) + 26;
    }
    let (x, y) = pods_chart.backend_coord(&(duration, 0.0));
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
    Ok(layout)
}

/// Paints white every pixel outside `plots` (rectangles that share their x range, one above
/// the other).
fn clip_outside(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    plots: &[(std::ops::Range<i32>, std::ops::Range<i32>)],
) -> anyhow::Result<()> {
    let (w, h) = (WIDTH as i32, HEIGHT as i32);
    let white = |x0: i32, y0: i32, x1: i32, y1: i32| {
        if x1 <= x0 || y1 <= y0 {
            return Ok(());
        }
        // A filled rectangle covers x0..x1 and y0..y1, ends excluded.
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], WHITE.filled()))
            .map_err(failed)
    };
    let mut y = 0;
    for (xs, ys) in plots {
        white(0, y, w, ys.start)?;
        white(0, ys.start, xs.start, ys.end)?;
        white(xs.end, ys.start, w, ys.end)?;
        y = ys.end;
    }
    white(0, y, w, h)
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

/// Grid lines and the axes, inside the plot (every 2 minutes; five steps up the y axis).
fn grid_lines(chart: &mut Chart<'_, '_>, duration: f64, top: f64) -> anyhow::Result<()> {
    let mut t = 0.0;
    while t <= duration {
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, top)], GRID.stroke_width(1)))
            .map_err(failed)?;
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
    }
    Ok(())
}

/// The axes (over the series' ends) and the tick labels, drawn on `area` (the root, whose pixels
/// are the chart's backend coordinates).
fn grid_labels(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &Chart<'_, '_>,
    duration: f64,
    top: f64,
) -> anyhow::Result<()> {
    let mut t = 0.0;
    while t <= duration {
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
    let corner = chart.backend_coord(&(0.0, top));
    let origin = chart.backend_coord(&(0.0, 0.0));
    let end = chart.backend_coord(&(duration, 0.0));
    area.draw(&PathElement::new(
        vec![corner, origin, end],
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

#[cfg(test)]
mod tests {
    use super::super::simulate::{Comparison, Curve, Scenario};
    use super::*;

    fn pixel(buffer: &[u8], x: i32, y: i32) -> RGBColor {
        let i = ((y as u32 * WIDTH + x as u32) * 3) as usize;
        RGBColor(buffer[i], buffer[i + 1], buffer[i + 2])
    }

    fn inside(ranges: &(std::ops::Range<i32>, std::ops::Range<i32>), x: i32, y: i32) -> bool {
        ranges.0.contains(&x) && ranges.1.contains(&y)
    }

    #[test]
    fn series_stay_in_their_plots_and_the_legend_matches_them() {
        let scenario = Scenario::default();
        for curve in Curve::ALL {
            let comparison = Comparison::run(curve, &scenario);
            let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
            let layout = render(&comparison, &mut buffer).unwrap();
            assert_eq!(layout.plots.len(), 2);
            assert_eq!(layout.swatches.len(), PODS_SERIES.len());
            let series_colors = [LOAD, NEEDED, WEIR, HPA];
            let mut outside = 0;
            let mut inside_count = [0usize; 4];
            for y in 0..HEIGHT as i32 {
                for x in 0..WIDTH as i32 {
                    let c = pixel(&buffer, x, y);
                    let Some(k) = series_colors.iter().position(|s| *s == c) else {
                        continue;
                    };
                    if layout.plots.iter().any(|p| inside(p, x, y)) {
                        inside_count[k] += 1;
                    } else if !layout
                        .swatches
                        .iter()
                        .any(|(_, xs, ys)| xs.contains(&x) && ys.contains(&y))
                    {
                        outside += 1;
                    }
                }
            }
            assert_eq!(
                outside,
                0,
                "{}: pixels of a series' colour outside the plots and the legend",
                curve.name()
            );
            assert!(
                inside_count.iter().all(|n| *n > 100),
                "{}: every series is drawn ({inside_count:?})",
                curve.name()
            );
            // Each swatch is filled with its series' colour, is as thick as its line, lies on
            // the image and left of the next one, and its series is drawn in that colour.
            let mut right = 0;
            for (series, xs, ys) in &layout.swatches {
                assert!(xs.start >= right && xs.end <= WIDTH as i32 && ys.start >= 0);
                right = xs.end;
                assert_eq!(ys.len() as u32, series.width + 1, "{}", series.label);
                for y in ys.clone() {
                    for x in xs.clone() {
                        assert_eq!(pixel(&buffer, x, y), series.color, "{}", series.label);
                    }
                }
            }
            let labels: Vec<&str> = layout.swatches.iter().map(|s| s.0.label).collect();
            assert_eq!(labels, ["NEEDED", "HPA READY", "HPA", "WEIR READY", "WEIR"]);
        }
    }

    #[test]
    fn a_series_out_of_range_is_clipped() {
        // Points past the end of the time axis, on the bottom edge (no load: 0 pods needed).
        let scenario = Scenario::default();
        let mut comparison = Comparison::run(Curve::Spike, &scenario);
        let last = *comparison.weir.timeline.last().unwrap();
        for extra in 1..200 {
            let mut p = last;
            p.t += extra;
            p.load = 0.0;
            comparison.weir.timeline.push(p);
        }
        let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        let layout = render(&comparison, &mut buffer).unwrap();
        for y in 0..HEIGHT as i32 {
            for x in 0..WIDTH as i32 {
                if pixel(&buffer, x, y) == WEIR
                    && !layout.plots.iter().any(|p| inside(p, x, y))
                    && !layout
                        .swatches
                        .iter()
                        .any(|(_, xs, ys)| xs.contains(&x) && ys.contains(&y))
                {
                    panic!("Weir's blue at ({x}, {y}), outside the plots");
                }
            }
        }
    }
}
