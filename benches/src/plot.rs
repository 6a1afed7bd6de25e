//! The plot of a run: throughput against operation size, one line per backend and mode, the
//! baselines on the same axes, as SVG (plotters' SVG backend; no fonts or bitmaps needed).

use plotters::prelude::*;

use crate::units::format_size;
use crate::Result;

/// One line of the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name in the legend.
    pub name: String,
    /// (bytes per operation, bytes per second), in any order.
    pub points: Vec<(usize, f64)>,
    /// A baseline (drawn thicker, without markers).
    pub baseline: bool,
}

/// Colours that stay apart on white, in the order series get them.
const PALETTE: [RGBColor; 10] = [
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
];

/// Draws `series` on log₂ size and log₁₀ GB/s axes, titled `title`, as an SVG document.
/// Points that are not positive and finite are left out; an error if none is left.
pub fn throughput_svg(title: &str, series: &[Series]) -> Result<String> {
    let usable = |&(size, rate): &(usize, f64)| size > 0 && rate.is_finite() && rate > 0.0;
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied().filter(usable))
        .map(|(size, rate)| ((size as f64).log2(), rate / 1e9))
        .collect();
    if points.is_empty() {
        return Err("nothing to plot: no positive throughput".into());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let (x0, x1) = (x0.floor() - 0.5, x1.ceil() + 0.5);
    let (y0, y1) = (y0 / 2.0, y1 * 2.0);
    let failed = |e: &dyn std::fmt::Debug| format!("plotting failed: {e:?}");

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("bytes per operation")
            .y_desc("GB/s (10⁹ B/s, log scale)")
            .x_labels((x1 - x0) as usize + 1)
            .x_label_formatter(&|x| {
                let rounded = x.round();
                if (x - rounded).abs() < 1e-6 && (0.0..63.0).contains(&rounded) {
                    format_size(1usize << rounded as u32)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(|e| failed(&e))?;
        for (index, line) in series.iter().enumerate() {
            let colour = PALETTE[index % PALETTE.len()];
            let mut mine: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(usable)
                .map(|(size, rate)| ((size as f64).log2(), rate / 1e9))
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by(|a, b| a.0.total_cmp(&b.0));
            let width = if line.baseline { 3 } else { 2 };
            let style = colour.stroke_width(width);
            chart
                .draw_series(LineSeries::new(mine.clone(), style))
                .map_err(|e| failed(&e))?
                .label(line.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            if !line.baseline {
                chart
                    .draw_series(mine.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| failed(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_svg_with_every_series_named() {
        let series = vec![
            Series {
                name: "tcp, one process, read".into(),
                points: vec![(4096, 1e8), (1 << 20, 2e9), (16 << 20, 3e9)],
                baseline: false,
            },
            Series {
                name: "memcpy".into(),
                points: vec![(4096, 2e10), (16 << 20, 1e10), (0, 5.0), (64, f64::NAN)],
                baseline: true,
            },
        ];
        let svg = throughput_svg("ferry bench", &series).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("tcp, one process, read"));
        assert!(svg.contains("memcpy"));
        assert!(svg.contains("16 MiB"));
        assert!(throughput_svg("empty", &[]).is_err());
    }
}
