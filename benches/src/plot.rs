//! The plot of a run: throughput against operation size, one panel per direction, one line per
//! backend and mode, the baselines on the same axes (dashed), and one legend for all panels
//! on the right; as SVG (plotters' SVG backend; no fonts or bitmaps needed).
//!
//! ```text
//!  ┌──────────── title ─────────────┬─────────────────┐
//!  │ reads          │ writes        │ ● tcp, one proc │
//!  │ GB/s (log)     │               │ ▲ tcp, two proc │
//!  │      4 KiB … 1 GiB (log₂)      │ ‒ ‒ memcpy      │
//!  └────────────────────────────────┴─────────────────┘
//! ```

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::units::format_size;
use crate::Result;

/// One line of the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name in the legend; lines of the same name in several panels share a colour.
    pub name: String,
    /// (bytes per operation, bytes per second), in any order.
    pub points: Vec<(usize, f64)>,
    /// A baseline (drawn dashed, without markers).
    pub baseline: bool,
}

/// Colours that stay apart on white, in the order names get them (Tableau 10, then darker
/// ones, so up to 16 lines keep their own colour).
const PALETTE: [RGBColor; 16] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(127, 127, 127),
    RGBColor(0, 0, 0),
    RGBColor(0, 90, 50),
    RGBColor(120, 0, 120),
    RGBColor(150, 80, 0),
    RGBColor(0, 60, 140),
    RGBColor(160, 0, 60),
];

/// The whole picture, pixels.
const SIZE: (u32, u32) = (1500, 700);

/// The legend's width, pixels.
const LEGEND_WIDTH: u32 = 360;

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Look {
    /// Solid, filled circles: a row of one process.
    OneProcess,
    /// Solid, filled triangles: a row across two processes.
    TwoProcesses,
    /// Dashed, no markers: a baseline.
    Baseline,
}

impl Look {
    fn of(series: &Series) -> Look {
        if series.baseline {
            Look::Baseline
        } else if series.name.contains("one process") {
            Look::OneProcess
        } else {
            Look::TwoProcesses
        }
    }
}

/// A rate tick's text: GB/s with at most three decimals, trailing zeros dropped (0.01, 0.5,
/// 10).
pub fn rate_label(gigabytes: f64) -> String {
    let text = format!("{gigabytes:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

/// A size tick's text at log₂ `x`: the size at every second power of two from 4 KiB (4 KiB,
/// 16 KiB, …, 1 GiB), nothing between them.
pub fn size_label(x: f64) -> String {
    let rounded = x.round();
    let even = (rounded as i64) % 2 == 0;
    if (x - rounded).abs() < 1e-6 && (0.0..63.0).contains(&rounded) && even {
        format_size(1usize << rounded as u32)
    } else {
        String::new()
    }
}

/// The usable points of `series` as (log₂ bytes, GB/s), sorted by size: positive and finite.
fn points(series: &Series) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = series
        .points
        .iter()
        .filter(|&&(size, rate)| size > 0 && rate.is_finite() && rate > 0.0)
        .map(|&(size, rate)| ((size as f64).log2(), rate / 1e9))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Draws `panels` (a title and its lines each) side by side on shared log₂ size and log₁₀
/// GB/s axes, titled `title`, with one legend, as an SVG document. Points that are not
/// positive and finite are left out; an error if none is left.
pub fn throughput_svg(title: &str, panels: &[(&str, Vec<Series>)]) -> Result<String> {
    let all: Vec<(f64, f64)> = panels
        .iter()
        .flat_map(|(_, lines)| lines.iter().flat_map(points))
        .collect();
    if all.is_empty() {
        return Err("nothing to plot: no positive throughput".into());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let axes = ((x0.floor() - 0.5, x1.ceil() + 0.5), (y0 / 2.0, y1 * 2.0));
    // Every name once, in order of first appearance: its colour and its look.
    let mut names: Vec<(String, Look)> = Vec::new();
    for line in panels.iter().flat_map(|(_, lines)| lines) {
        if !names.iter().any(|(n, _)| *n == line.name) {
            names.push((line.name.clone(), Look::of(line)));
        }
    }
    let colour = |name: &str| {
        let index = names.iter().position(|(n, _)| n == name).unwrap_or(0);
        PALETTE[index % PALETTE.len()]
    };
    let failed = |e: &dyn std::fmt::Debug| format!("plotting failed: {e:?}");

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let root = root
            .titled(title, ("sans-serif", 26))
            .map_err(|e| failed(&e))?;
        let (charts, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let areas = charts.split_evenly((1, panels.len().max(1)));
        for ((name, lines), area) in panels.iter().zip(&areas) {
            draw_panel(area, name, lines, axes, &colour).map_err(|e| failed(&e))?;
        }
        draw_legend(&legend, &names, &colour).map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    Ok(svg)
}

/// The error of a drawing step on the SVG backend.
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// One panel: its axes, grid and lines.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    name: &str,
    lines: &[Series],
    ((x0, x1), (y0, y1)): ((f64, f64), (f64, f64)),
    colour: &dyn Fn(&str) -> RGBColor,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 22))
        .margin(10)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("bytes per operation (log scale)")
        .y_desc("GB/s (10⁹ B/s, log scale)")
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 15))
        .x_labels((x1 - x0) as usize + 1)
        .x_label_formatter(&|x| size_label(*x))
        .y_label_formatter(&|y| rate_label(*y))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;
    for line in lines {
        let mine = points(line);
        if mine.is_empty() {
            continue;
        }
        let colour = colour(&line.name);
        let style = colour.stroke_width(3);
        match Look::of(line) {
            Look::Baseline => {
                chart.draw_series(DashedLineSeries::new(mine, 10, 6, style))?;
            }
            look => {
                chart.draw_series(LineSeries::new(mine.clone(), style))?;
                if look == Look::OneProcess {
                    let dots = mine.iter().map(|&p| Circle::new(p, 5, colour.filled()));
                    chart.draw_series(dots)?;
                } else {
                    let marks = mine
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 7, colour.filled()));
                    chart.draw_series(marks)?;
                }
            }
        }
    }
    Ok(())
}

/// The legend: a sample of each line's look and its name, one per row.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    names: &[(String, Look)],
    colour: &dyn Fn(&str) -> RGBColor,
) -> DrawResult {
    let font = ("sans-serif", 16).into_font().color(&BLACK);
    area.draw(&Text::new("legend", (10, 50), font.clone()))?;
    for (row, (name, look)) in names.iter().enumerate() {
        let y = 85 + 28 * row as i32;
        let colour = colour(name);
        let style = colour.stroke_width(3);
        match look {
            Look::Baseline => {
                for start in [8, 24, 40] {
                    area.draw(&PathElement::new(vec![(start, y), (start + 10, y)], style))?;
                }
            }
            look => {
                area.draw(&PathElement::new(vec![(8, y), (50, y)], style))?;
                if *look == Look::OneProcess {
                    area.draw(&Circle::new((29, y), 5, colour.filled()))?;
                } else {
                    area.draw(&TriangleMarker::new((29, y), 7, colour.filled()))?;
                }
            }
        }
        area.draw(&Text::new(name.clone(), (60, y - 9), font.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_svg_with_every_series_named() {
        let series = vec![
            Series {
                name: "tcp, one process".into(),
                points: vec![(4096, 1e8), (1 << 20, 2e9), (16 << 20, 3e9)],
                baseline: false,
            },
            Series {
                name: "tcp, two processes".into(),
                points: vec![(4096, 5e7), (16 << 20, 1e9)],
                baseline: false,
            },
            Series {
                name: "memcpy".into(),
                points: vec![(4096, 2e10), (16 << 20, 1e10), (0, 5.0), (64, f64::NAN)],
                baseline: true,
            },
        ];
        let panels = [("reads", series.clone()), ("writes", series[..1].to_vec())];
        let svg = throughput_svg("ferry bench", &panels).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "tcp, one process",
            "tcp, two processes",
            "memcpy",
            "reads",
            "writes",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(svg.contains("16 MiB") && svg.contains("4 KiB"));
        // Once in the legend, however many panels draw it.
        assert_eq!(svg.matches("memcpy").count(), 1);
        assert!(throughput_svg("empty", &[]).is_err());
        assert!(throughput_svg("empty", &[("reads", Vec::new())]).is_err());
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(rate_label(0.01), "0.01");
        assert_eq!(rate_label(10.0), "10");
        assert_eq!(rate_label(0.5), "0.5");
        assert_eq!(size_label(12.0), "4 KiB");
        assert_eq!(size_label(13.0), "");
        assert_eq!(size_label(30.0), "1 GiB");
        assert_eq!(size_label(12.5), "");
    }
}
