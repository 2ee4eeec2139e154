//! Scatter plots: point clouds per series on linear or logarithmic axes, with an
//! optional `y = x` diagonal (predicted against true values).

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{de, fmt_num, fmt_tick, render, DrawResult, FONT, LINE_SIZE, PALETTE};
use crate::error::{Error, Result};

/// A scatter plot; each [`super::Series`] is one cloud of points (its `band` is ignored).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScatterFigure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<super::Series>,
    /// Draw the diagonal `y = x` over the common range.
    pub diagonal: bool,
}

/// Writes `prefix.png` and `prefix.svg`. Points that are not finite (or not
/// positive on a log axis) are skipped; nothing drawable is an error.
pub fn scatter_plot(fig: &ScatterFigure, prefix: &Path) -> Result<Vec<PathBuf>> {
    let ok = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let mut clouds: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for s in &fig.series {
        if s.x.len() != s.y.len() {
            return Err(Error::Shape(format!(
                "scatter '{}': {} x values but {} y values",
                fig.title,
                s.x.len(),
                s.y.len()
            )));
        }
        let pts =
            s.x.iter()
                .zip(&s.y)
                .map(|(&x, &y)| (x, y))
                .filter(|&(x, y)| ok(x, fig.log_x) && ok(y, fig.log_y))
                .collect();
        clouds.push((s.label.clone(), pts));
    }
    let all: Vec<(f64, f64)> = clouds.iter().flat_map(|c| c.1.iter().copied()).collect();
    if all.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "scatter '{}': no drawable point",
            fig.title
        )));
    }
    let range = |vals: Vec<f64>, log: bool| {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if log {
            let (a, b) = (lo.ln(), hi.ln());
            let pad = ((b - a) * 0.05).max(0.05);
            ((a - pad).exp(), (b + pad).exp())
        } else {
            let pad = ((hi - lo) * 0.05).max(1e-12 * hi.abs().max(1.0));
            (lo - pad, hi + pad)
        }
    };
    let mut xr = range(all.iter().map(|p| p.0).collect(), fig.log_x);
    let mut yr = range(all.iter().map(|p| p.1).collect(), fig.log_y);
    if fig.diagonal && fig.log_x == fig.log_y {
        let lo = xr.0.min(yr.0);
        let hi = xr.1.max(yr.1);
        xr = (lo, hi);
        yr = (lo, hi);
    }
    let p = Prepared {
        fig,
        clouds,
        xr,
        yr,
    };
    render(prefix, LINE_SIZE, |r| draw_any(r, &p), |r| draw_any(r, &p))
}

struct Prepared<'a> {
    fig: &'a ScatterFigure,
    clouds: Vec<(String, Vec<(f64, f64)>)>,
    xr: (f64, f64),
    yr: (f64, f64),
}

fn draw_any<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, p: &Prepared) -> DrawResult {
    let ((x0, x1), (y0, y1)) = (p.xr, p.yr);
    match (p.fig.log_x, p.fig.log_y) {
        (false, false) => draw(root, p, x0..x1, y0..y1),
        (true, false) => draw(root, p, (x0..x1).log_scale(), y0..y1),
        (false, true) => draw(root, p, x0..x1, (y0..y1).log_scale()),
        (true, true) => draw(root, p, (x0..x1).log_scale(), (y0..y1).log_scale()),
    }
}

fn draw<DB, XS, YS>(root: &DrawingArea<DB, Shift>, p: &Prepared, xs: XS, ys: YS) -> DrawResult
where
    DB: DrawingBackend,
    XS: AsRangedCoord<Value = f64>,
    YS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: ValueFormatter<f64>,
    YS::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(super::labels::humanize(&p.fig.title), (FONT, 24))
        .margin(18)
        .x_label_area_size(58)
        .y_label_area_size(86)
        .build_cartesian_2d(xs, ys)
        .map_err(de)?;
    let (xspan, yspan) = (p.xr.1 - p.xr.0, p.yr.1 - p.yr.0);
    let (lx, ly) = (p.fig.log_x, p.fig.log_y);
    let xfmt = move |v: &f64| if lx { fmt_num(*v) } else { fmt_tick(*v, xspan) };
    let yfmt = move |v: &f64| if ly { fmt_num(*v) } else { fmt_tick(*v, yspan) };
    chart
        .configure_mesh()
        .x_desc(p.fig.x_label.as_str())
        .y_desc(p.fig.y_label.as_str())
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .x_labels(10)
        .y_labels(8)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 18))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(de)?;
    if p.fig.diagonal {
        let lo = p.xr.0.max(p.yr.0);
        let hi = p.xr.1.min(p.yr.1);
        if lo < hi {
            let style = RGBColor(80, 80, 80).mix(0.8).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(vec![(lo, lo), (hi, hi)], 7, 4, style))
                .map_err(de)?
                .label("y = x")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        }
    }
    let mut any_label = p.fig.diagonal;
    for (k, (label, pts)) in p.clouds.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let anno = chart
            .draw_series(
                pts.iter()
                    .map(|&pt| Circle::new(pt, 3, color.mix(0.7).filled())),
            )
            .map_err(de)?;
        if !label.is_empty() {
            anno.label(label.as_str())
                .legend(move |(x, y)| Circle::new((x + 11, y), 4, color.filled()));
            any_label = true;
        }
    }
    if any_label {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 15))
            .draw()
            .map_err(de)?;
    }
    Ok(())
}
