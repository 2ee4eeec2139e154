//! Line plots and spectral-density plots.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    de, fmt_num, fmt_tick, log_ticks, padded_range, render, DrawResult, LineFigure, Series, FONT,
    LINE_SIZE, PALETTE,
};
use crate::error::{Error, Result};

/// Writes `prefix.png` and `prefix.svg`: the series of `fig` as lines (with
/// shaded bands where given), a legend, and the labelled vertical markers.
/// Returns the two paths written.
///
/// Points that are not finite, or not positive on a log axis, are skipped and
/// the line is broken there. Errors: no series, an empty series, mismatched
/// lengths ([`Error::Shape`]), or nothing drawable at all
/// ([`Error::InvalidArgument`]); write failures ([`Error::Io`]).
pub fn line_plot(fig: &LineFigure, prefix: &Path) -> Result<Vec<PathBuf>> {
    line_plot_captioned(fig, "", prefix)
}

/// [`line_plot`] with `caption` (model, data, sample count: see
/// [`super::FigureLabels::caption`]) drawn under the plot; an empty caption is left out.
/// The title goes through [`super::humanize`], so quantity keys read as words.
pub fn line_plot_captioned(fig: &LineFigure, caption: &str, prefix: &Path) -> Result<Vec<PathBuf>> {
    let mut p = prepare(fig, &Extras::default())?;
    p.caption = caption.to_string();
    render(prefix, LINE_SIZE, |r| draw_any(r, &p), |r| draw_any(r, &p))
}

/// Writes `prefix.png` and `prefix.svg`: a spectral density (e.g. from
/// stochastic Lanczos quadrature) `density` at the points `values_x`, on a
/// log-y axis and filled underneath, with the `outliers` (eigenvalues split
/// off from the bulk) marked by dashed vertical lines, triangles on the x axis
/// and their values.
///
/// The y axis reaches seven decades below the peak: the curve drops to that
/// floor where the density falls below it (zeros included) and is not drawn
/// along it. Points with a non-finite x or density are skipped, and so are
/// non-finite outliers.
pub fn histogram_density(
    values_x: &[f64],
    density: &[f64],
    outliers: &[f64],
    title: &str,
    x_label: &str,
    prefix: &Path,
) -> Result<Vec<PathBuf>> {
    if values_x.len() != density.len() {
        return Err(Error::Shape(format!(
            "spectral density '{title}': {} x values but {} densities",
            values_x.len(),
            density.len()
        )));
    }
    if values_x.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "spectral density '{title}': no points"
        )));
    }
    let mut pts: Vec<(f64, f64)> = values_x
        .iter()
        .zip(density)
        .map(|(&x, &d)| (x, d))
        .filter(|(x, _)| x.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let peak = pts
        .iter()
        .map(|p| p.1)
        .filter(|d| d.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    // `peak` folds finite values only: -inf when there are none.
    if peak <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "spectral density '{title}': no finite positive density value"
        )));
    }
    let min_pos = pts
        .iter()
        .map(|p| p.1)
        .filter(|d| d.is_finite() && *d > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = min_pos.max(peak * FLOOR);
    // Values at or below the floor are drawn on it only next to a point above
    // it (the curve drops to the axis), and left out elsewhere (no flat line
    // along the bottom).
    let low = |d: f64| d <= floor; // only asked of finite values
    let y: Vec<f64> = (0..pts.len())
        .map(|i| {
            let d = pts[i].1;
            if !d.is_finite() {
                return f64::NAN;
            }
            if !low(d) {
                return d;
            }
            let near = |j: usize| pts.get(j).is_some_and(|p| p.1.is_finite() && !low(p.1));
            if (i > 0 && near(i - 1)) || near(i + 1) {
                floor
            } else {
                f64::NAN
            }
        })
        .collect();
    let x: Vec<f64> = pts.iter().map(|p| p.0).collect();

    let mut outs: Vec<f64> = outliers.iter().copied().filter(|v| v.is_finite()).collect();
    outs.sort_by(|a, b| b.total_cmp(a));
    outs.dedup();
    let fig = LineFigure {
        title: title.to_string(),
        x_label: x_label.to_string(),
        y_label: "density".into(),
        log_x: false,
        log_y: true,
        series: vec![Series::new("spectral density", x, y)],
        markers: outs
            .iter()
            .map(|&v| (v, format!("λ = {}", fmt_num(v))))
            .collect(),
    };
    let extras = Extras {
        fill_under: true,
        outlier_markers: true,
        marker_legend: (!outs.is_empty()).then(|| format!("outlier eigenvalues ({})", outs.len())),
    };
    let p = prepare(&fig, &extras)?;
    render(prefix, LINE_SIZE, |r| draw_any(r, &p), |r| draw_any(r, &p))
}

/// Rows of marker labels along the top of a line plot.
const MAX_LABEL_ROWS: usize = 8;

/// Lowest density drawn, relative to the peak.
const FLOOR: f64 = 1e-7;

/// Drawing options that the public [`LineFigure`] does not expose.
#[derive(Default)]
struct Extras {
    /// Fill between each line and the bottom of the axes.
    fill_under: bool,
    /// Markers in red with a triangle on the x axis (outlier eigenvalues)
    /// instead of thin grey lines.
    outlier_markers: bool,
    /// Legend entry for the markers.
    marker_legend: Option<String>,
}

/// A figure reduced to what can be drawn.
struct Prepared {
    title: String,
    /// Drawn under the plot when not empty.
    caption: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    log_y: bool,
    x_range: (f64, f64),
    y_range: (f64, f64),
    series: Vec<PSeries>,
    markers: Vec<(f64, String)>,
    extras: Extras,
}

struct PSeries {
    label: String,
    color: RGBColor,
    /// Maximal runs of consecutive drawable points.
    runs: Vec<Vec<(f64, f64)>>,
    /// Maximal runs of drawable `(x, lower, upper)` band points.
    band_runs: Vec<Vec<(f64, f64, f64)>>,
}

/// Splits `items` into maximal runs of the `Some` values.
fn runs<T>(items: impl Iterator<Item = Option<T>>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for it in items {
        match it {
            Some(v) => cur.push(v),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn prepare(fig: &LineFigure, extras: &Extras) -> Result<Prepared> {
    let name = if fig.title.is_empty() {
        "line plot".to_string()
    } else {
        format!("'{}'", fig.title)
    };
    if fig.series.is_empty() {
        return Err(Error::InvalidArgument(format!("{name}: no series to plot")));
    }
    let ok_x = |v: f64| v.is_finite() && (!fig.log_x || v > 0.0);
    let ok_y = |v: f64| v.is_finite() && (!fig.log_y || v > 0.0);
    let mut xr = (f64::INFINITY, f64::NEG_INFINITY);
    let mut yr = (f64::INFINITY, f64::NEG_INFINITY);
    let grow = |r: &mut (f64, f64), v: f64| {
        r.0 = r.0.min(v);
        r.1 = r.1.max(v);
    };
    let mut series = Vec::with_capacity(fig.series.len());
    for (k, s) in fig.series.iter().enumerate() {
        if s.x.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{name}: series '{}' is empty",
                s.label
            )));
        }
        if s.x.len() != s.y.len() {
            return Err(Error::Shape(format!(
                "{name}: series '{}' has {} x values but {} y values",
                s.label,
                s.x.len(),
                s.y.len()
            )));
        }
        let line = runs(
            s.x.iter()
                .zip(&s.y)
                .map(|(&x, &y)| (ok_x(x) && ok_y(y)).then_some((x, y))),
        );
        let band = match &s.band {
            None => Vec::new(),
            Some((lo, hi)) => {
                if lo.len() != s.x.len() || hi.len() != s.x.len() {
                    return Err(Error::Shape(format!(
                        "{name}: band of series '{}' has {} / {} values for {} points",
                        s.label,
                        lo.len(),
                        hi.len(),
                        s.x.len()
                    )));
                }
                runs((0..s.x.len()).map(|i| {
                    (ok_x(s.x[i]) && ok_y(lo[i]) && ok_y(hi[i])).then_some((s.x[i], lo[i], hi[i]))
                }))
            }
        };
        for &(x, y) in line.iter().flatten() {
            grow(&mut xr, x);
            grow(&mut yr, y);
        }
        for &(x, lo, hi) in band.iter().flatten() {
            grow(&mut xr, x);
            grow(&mut yr, lo);
            grow(&mut yr, hi);
        }
        series.push(PSeries {
            label: s.label.clone(),
            color: PALETTE[k % PALETTE.len()],
            runs: line,
            band_runs: band,
        });
    }
    if !(xr.0 <= xr.1 && yr.0 <= yr.1) {
        return Err(Error::InvalidArgument(format!(
            "{name}: nothing to plot (every point is non-finite{})",
            if fig.log_x || fig.log_y {
                " or not positive on a log axis"
            } else {
                ""
            }
        )));
    }
    let markers: Vec<(f64, String)> = fig
        .markers
        .iter()
        .filter(|(x, _)| ok_x(*x))
        .cloned()
        .collect();
    for &(x, _) in &markers {
        grow(&mut xr, x);
    }
    Ok(Prepared {
        title: super::labels::humanize(&fig.title),
        caption: String::new(),
        x_label: fig.x_label.clone(),
        y_label: fig.y_label.clone(),
        log_x: fig.log_x,
        log_y: fig.log_y,
        x_range: padded_range(xr.0, xr.1, 0.03, fig.log_x),
        y_range: padded_range(
            yr.0,
            yr.1,
            if extras.fill_under { 0.02 } else { 0.06 },
            fig.log_y,
        ),
        series,
        markers,
        extras: Extras {
            fill_under: extras.fill_under,
            outlier_markers: extras.outlier_markers,
            marker_legend: extras.marker_legend.clone(),
        },
    })
}

/// Position of `v` in `[lo, hi]` as a fraction, linear or logarithmic.
fn frac(v: f64, (lo, hi): (f64, f64), log: bool) -> f64 {
    if log {
        (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
    } else {
        (v - lo) / (hi - lo)
    }
}

/// Approximate size of the plotting area of a line plot, in pixels.
const PLOT_PX: (f64, f64) = (880.0, 500.0);

/// The place for the legend (a corner, or the middle of the top or bottom
/// edge) that covers the fewest data points and no marker label.
fn legend_corner(p: &Prepared) -> SeriesLabelPosition {
    // Legend box in fractions of the axes, from its entries (15 px font).
    let labels = p
        .series
        .iter()
        .map(|s| &s.label)
        .chain(p.extras.marker_legend.iter());
    let (chars, entries) = labels
        .filter(|l| !l.is_empty())
        .fold((0, 0), |(c, n), l| (c.max(l.chars().count()), n + 1));
    let w = ((48.0 + 8.5 * chars as f64) / PLOT_PX.0).min(0.9);
    let h = ((14.0 + 20.0 * entries as f64) / PLOT_PX.1).min(0.9);
    let (mx, my) = (12.0 / PLOT_PX.0, 12.0 / PLOT_PX.1);
    let (left, mid, right) = (
        (0.0, w + 2.0 * mx),
        (0.5 - w / 2.0 - mx, 0.5 + w / 2.0 + mx),
        (1.0 - w - 2.0 * mx, 1.0),
    );
    let (top, bottom) = ((1.0 - h - 2.0 * my, 1.0), (0.0, h + 2.0 * my));
    // Candidates in order of preference: ((x from, x to), (y from, y to)), y upwards.
    let places = [
        (SeriesLabelPosition::UpperRight, right, top),
        (SeriesLabelPosition::UpperLeft, left, top),
        (SeriesLabelPosition::LowerRight, right, bottom),
        (SeriesLabelPosition::LowerLeft, left, bottom),
        (SeriesLabelPosition::UpperMiddle, mid, top),
        (SeriesLabelPosition::LowerMiddle, mid, bottom),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, (x0, x1), (y0, y1)) in places {
        let mut count = 0;
        let mut hit = |x: f64, y: f64| {
            let (fx, fy) = (frac(x, p.x_range, p.log_x), frac(y, p.y_range, p.log_y));
            if (x0..=x1).contains(&fx) && (y0..=y1).contains(&fy) {
                count += 1;
            }
        };
        for s in &p.series {
            // Sample long runs evenly: the count only ranks the places.
            for run in &s.runs {
                let step = (run.len() / 200).max(1);
                run.iter().step_by(step).for_each(|&(x, y)| hit(x, y));
            }
            for run in &s.band_runs {
                let step = (run.len() / 200).max(1);
                run.iter().step_by(step).for_each(|&(x, lo, hi)| {
                    hit(x, lo);
                    hit(x, hi);
                });
            }
        }
        // Marker lines cross every place; their labels sit along the top.
        for (x, label) in &p.markers {
            let fx = frac(*x, p.x_range, p.log_x);
            let lw = (10.0 + 8.0 * label.chars().count() as f64) / PLOT_PX.0;
            let (l0, l1) = if fx > 0.75 {
                (fx - lw, fx)
            } else {
                (fx, fx + lw)
            };
            if y1 >= 1.0 && l1 >= x0 && l0 <= x1 {
                count += 1000;
            } else if (x0..=x1).contains(&fx) {
                count += 5;
            }
        }
        if count < best.0 {
            best = (count, pos);
        }
    }
    best.1
}

fn draw_any<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, p: &Prepared) -> DrawResult {
    let root = &if p.caption.is_empty() {
        root.clone()
    } else {
        let (_, h) = root.dim_in_pixel();
        let (top, bottom) = root.split_vertically(h.saturating_sub(26));
        bottom
            .draw(&Text::new(
                p.caption.clone(),
                (12, 4),
                TextStyle::from((FONT, 14)).color(&BLACK.mix(0.8)),
            ))
            .map_err(de)?;
        top
    };
    let ((x0, x1), (y0, y1)) = (p.x_range, p.y_range);
    let log = |lo: f64, hi: f64| {
        let t = log_ticks(lo, hi);
        let fmt = t.linear_span;
        (
            (lo..hi)
                .log_scale()
                .with_key_points(t.bold)
                .with_light_points(t.light),
            fmt,
        )
    };
    let lin = |lo: f64, hi: f64| Some(hi - lo);
    match (p.log_x, p.log_y) {
        (false, false) => draw_chart(root, p, x0..x1, y0..y1, lin(x0, x1), lin(y0, y1)),
        (true, false) => {
            let (xs, xf) = log(x0, x1);
            draw_chart(root, p, xs, y0..y1, xf, lin(y0, y1))
        }
        (false, true) => {
            let (ys, yf) = log(y0, y1);
            draw_chart(root, p, x0..x1, ys, lin(x0, x1), yf)
        }
        (true, true) => {
            let ((xs, xf), (ys, yf)) = (log(x0, x1), log(y0, y1));
            draw_chart(root, p, xs, ys, xf, yf)
        }
    }
}

/// Tick label: linear spacing (`Some(span)`) or powers of ten and their
/// multiples (`None`).
fn tick_label(v: f64, span: Option<f64>) -> String {
    match span {
        Some(s) => fmt_tick(v, s),
        None => fmt_num(v),
    }
}

fn draw_chart<DB, XS, YS>(
    root: &DrawingArea<DB, Shift>,
    p: &Prepared,
    xs: XS,
    ys: YS,
    x_span: Option<f64>,
    y_span: Option<f64>,
) -> DrawResult
where
    DB: DrawingBackend,
    XS: AsRangedCoord<Value = f64>,
    YS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: ValueFormatter<f64>,
    YS::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(&p.title, (FONT, 26))
        .margin(18)
        .x_label_area_size(58)
        .y_label_area_size(86)
        .build_cartesian_2d(xs, ys)
        .map_err(de)?;

    let xfmt = |v: &f64| tick_label(*v, x_span);
    let yfmt = |v: &f64| tick_label(*v, y_span);
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
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

    let (ybot, ytop) = p.y_range;
    // Bands and fills first, lines on top.
    for s in &p.series {
        for run in &s.band_runs {
            let poly: Vec<(f64, f64)> = run
                .iter()
                .map(|&(x, lo, _)| (x, lo))
                .chain(run.iter().rev().map(|&(x, _, hi)| (x, hi)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    s.color.mix(0.2).filled(),
                )))
                .map_err(de)?;
        }
        if p.extras.fill_under {
            for run in s.runs.iter().filter(|r| r.len() > 1) {
                let mut poly = Vec::with_capacity(run.len() + 2);
                poly.push((run[0].0, ybot));
                poly.extend_from_slice(run);
                poly.push((run[run.len() - 1].0, ybot));
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        poly,
                        s.color.mix(0.25).filled(),
                    )))
                    .map_err(de)?;
            }
        }
    }

    // Marker lines under the data.
    let marker_color = if p.extras.outlier_markers {
        PALETTE[3]
    } else {
        RGBColor(80, 80, 80)
    };
    for (i, (x, _)) in p.markers.iter().enumerate() {
        let line_style = marker_color
            .mix(0.8)
            .stroke_width(if p.extras.outlier_markers { 2 } else { 1 });
        let anno = chart
            .draw_series(DashedLineSeries::new(
                vec![(*x, ybot), (*x, ytop)],
                7,
                4,
                line_style,
            ))
            .map_err(de)?;
        if i == 0 {
            if let Some(l) = &p.extras.marker_legend {
                anno.label(l.as_str()).legend(move |(lx, ly)| {
                    PathElement::new(vec![(lx, ly), (lx + 22, ly)], line_style)
                });
            }
        }
        if p.extras.outlier_markers {
            chart
                .draw_series(std::iter::once(TriangleMarker::new(
                    (*x, ybot),
                    8,
                    marker_color.filled(),
                )))
                .map_err(de)?;
        }
    }

    let mut any_label = p.extras.marker_legend.is_some();
    for s in &p.series {
        let style = s.color.stroke_width(2);
        let mut labelled = s.label.is_empty();
        for run in &s.runs {
            let anno = if run.len() == 1 {
                chart.draw_series(std::iter::once(Circle::new(run[0], 3, style.filled())))
            } else {
                chart.draw_series(LineSeries::new(run.iter().copied(), style))
            }
            .map_err(de)?;
            if !labelled {
                anno.label(s.label.as_str())
                    .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 22, ly)], style));
                labelled = true;
                any_label = true;
            }
        }
    }

    // Marker labels on top, each in the highest row where it overlaps no other.
    let mut rows: Vec<Vec<(i32, i32)>> = Vec::new();
    for (x, label) in &p.markers {
        if label.is_empty() {
            continue;
        }
        // Right of the line, or left of it near the right edge.
        let right_side = frac(*x, p.x_range, p.log_x) > 0.75;
        let (dx, h) = if right_side {
            (-5, HPos::Right)
        } else {
            (5, HPos::Left)
        };
        let style = TextStyle::from((FONT, 14))
            .color(&marker_color)
            .pos(Pos::new(h, VPos::Top));
        let (w, th) = root.estimate_text_size(label, &style).map_err(de)?;
        let px = chart.backend_coord(&(*x, ytop)).0 + dx;
        let span = if right_side {
            (px - w as i32, px)
        } else {
            (px, px + w as i32)
        };
        let free =
            |row: &Vec<(i32, i32)>| row.iter().all(|&(a, b)| span.1 + 8 < a || b + 8 < span.0);
        let row = match rows.iter().position(free) {
            Some(r) => r,
            None if rows.len() < MAX_LABEL_ROWS => {
                rows.push(Vec::new());
                rows.len() - 1
            }
            // Crowded: the row with the fewest labels.
            None => (0..rows.len()).min_by_key(|&r| rows[r].len()).unwrap_or(0),
        };
        rows[row].push(span);
        // On a translucent box, readable across lines.
        let dy = 6 + row as i32 * 19;
        let (l, r) = if right_side {
            (dx - w as i32, dx)
        } else {
            (dx, dx + w as i32)
        };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*x, ytop))
                    + Rectangle::new(
                        [(l - 2, dy - 1), (r + 2, dy + th as i32 + 2)],
                        WHITE.mix(0.8).filled(),
                    )
                    + Text::new(label.clone(), (dx, dy), style),
            ))
            .map_err(de)?;
    }

    if any_label {
        chart
            .configure_series_labels()
            .position(legend_corner(p))
            .margin(12)
            .legend_area_size(30)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.35))
            .draw()
            .map_err(de)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps() {
        let r = runs([Some(1), Some(2), None, None, Some(3), None].into_iter());
        assert_eq!(r, vec![vec![1, 2], vec![3]]);
    }

    #[test]
    fn log_axes_skip_non_positive() {
        let fig = LineFigure {
            log_y: true,
            series: vec![Series::new(
                "a",
                vec![1.0, 2.0, 3.0, 4.0],
                vec![1.0, -1.0, 0.0, 10.0],
            )],
            ..Default::default()
        };
        let p = prepare(&fig, &Extras::default()).unwrap();
        assert_eq!(p.series[0].runs, vec![vec![(1.0, 1.0)], vec![(4.0, 10.0)]]);
        assert!(p.y_range.0 > 0.0);
    }
}
