//! Heat maps with a colour bar and labelled contour lines (2-D loss surfaces).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::labels::{contour_levels as levels_between, ContourSpacing, FigureLabels};
use super::{de, fmt_num, fmt_tick, render, DrawResult, FONT, HEATMAP_SIZE};
use crate::error::{Error, Result};
use crate::tensor::Matrix;

/// Writes `prefix.png` and `prefix.svg`: `values` (rows follow `grid_y`,
/// columns follow `grid_x`) as a heat map (viridis) with a colour bar and
/// `contour_levels` labelled contour lines at evenly spaced values strictly
/// between the minimum and maximum (`0`: no contours). Returns the two paths.
///
/// Each value fills the cell around its grid point (cell edges halfway between
/// neighbouring grid points), so non-uniform grids are drawn to scale.
/// Non-finite values are drawn grey and left out of the colour range and the
/// contours. Errors: empty or non-increasing / non-finite grids
/// ([`Error::InvalidArgument`]), a `values` shape other than
/// `grid_y.len() x grid_x.len()` ([`Error::Shape`]), no finite value
/// ([`Error::InvalidArgument`]); write failures ([`Error::Io`]).
pub fn heatmap(
    grid_x: &[f64],
    grid_y: &[f64],
    values: &Matrix<f64>,
    title: &str,
    prefix: &Path,
    contour_levels: usize,
) -> Result<Vec<PathBuf>> {
    heatmap_with_overlay(
        grid_x,
        grid_y,
        values,
        title,
        prefix,
        contour_levels,
        &Overlay::default(),
    )
}

/// Points and paths drawn over a heat map (in data coordinates), in red.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// `(x, y, label)` marked with a dot and its label.
    pub points: Vec<(f64, f64, String)>,
    /// Polylines (e.g. a curve between two models).
    pub paths: Vec<Vec<(f64, f64)>>,
}

/// [`heatmap`] with `overlay` drawn on top of the contours. A quantity key as
/// `title` (`train_loss`, `abs_ratio_min_max`, ...) is shown in words
/// ([`FigureLabels::for_quantity`]).
#[allow(clippy::too_many_arguments)]
pub fn heatmap_with_overlay(
    grid_x: &[f64],
    grid_y: &[f64],
    values: &Matrix<f64>,
    title: &str,
    prefix: &Path,
    contour_levels: usize,
    overlay: &Overlay,
) -> Result<Vec<PathBuf>> {
    heatmap_labelled(
        grid_x,
        grid_y,
        values,
        &FigureLabels::for_quantity(title),
        prefix,
        contour_levels,
        ContourSpacing::Linear,
        overlay,
    )
}

/// [`heatmap_with_overlay`] with the figure's words given in full (title, axis
/// names, colour-bar quantity, caption under the plot) and the contour spacing
/// (linear or geometric, see [`ContourSpacing`]).
#[allow(clippy::too_many_arguments)]
pub fn heatmap_labelled(
    grid_x: &[f64],
    grid_y: &[f64],
    values: &Matrix<f64>,
    labels: &FigureLabels,
    prefix: &Path,
    contour_levels: usize,
    spacing: ContourSpacing,
    overlay: &Overlay,
) -> Result<Vec<PathBuf>> {
    let title = labels.title.as_str();
    for (name, g) in [("x", grid_x), ("y", grid_y)] {
        if g.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "heat map '{title}': empty {name} grid"
            )));
        }
        if g.iter().any(|v| !v.is_finite()) || g.windows(2).any(|w| w[1] <= w[0]) {
            return Err(Error::InvalidArgument(format!(
                "heat map '{title}': the {name} grid must be finite and strictly increasing"
            )));
        }
    }
    if values.shape() != (grid_y.len(), grid_x.len()) {
        return Err(Error::Shape(format!(
            "heat map '{title}': values are {} x {} but the grids need {} x {} (rows = y, cols = x)",
            values.rows(),
            values.cols(),
            grid_y.len(),
            grid_x.len()
        )));
    }
    let (lo, hi) = values
        .as_slice()
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return Err(Error::InvalidArgument(format!(
            "heat map '{title}': no finite value"
        )));
    }
    let levels = levels_between(lo, hi, contour_levels, spacing);
    let contours = levels
        .iter()
        .map(|&l| (l, contour_lines(grid_x, grid_y, values, l)))
        .filter(|(_, lines)| !lines.is_empty())
        .collect();
    // A constant surface still gets a colour bar with some extent.
    let (vmin, vmax) = if hi > lo {
        (lo, hi)
    } else {
        let w = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - w, hi + w)
    };
    let p = Prepared {
        labels: labels.clone(),
        x_edges: edges(grid_x),
        y_edges: edges(grid_y),
        values,
        vmin,
        vmax,
        contours,
        overlay: overlay.clone(),
    };
    render(
        prefix,
        HEATMAP_SIZE,
        |r| draw(r, &p, true),
        |r| draw(r, &p, false),
    )
}

struct Prepared<'a> {
    labels: FigureLabels,
    x_edges: Vec<f64>,
    y_edges: Vec<f64>,
    values: &'a Matrix<f64>,
    vmin: f64,
    vmax: f64,
    /// `(level, polylines)` for each level that crosses the surface.
    contours: Vec<(f64, Vec<Polyline>)>,
    overlay: Overlay,
}

/// A contour line in data coordinates.
type Polyline = Vec<(f64, f64)>;

/// Cell edges around grid points: halfway between neighbours, and half a
/// spacing beyond the ends (a single point gets a cell of width 1).
fn edges(g: &[f64]) -> Vec<f64> {
    let n = g.len();
    if n == 1 {
        return vec![g[0] - 0.5, g[0] + 0.5];
    }
    let mut e = Vec::with_capacity(n + 1);
    e.push(g[0] - (g[1] - g[0]) / 2.0);
    e.extend(g.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    e.push(g[n - 1] + (g[n - 1] - g[n - 2]) / 2.0);
    e
}

/// Viridis, sampled at nine evenly spaced points (matplotlib's values).
const VIRIDIS: [(u8, u8, u8); 9] = [
    (0x44, 0x01, 0x54),
    (0x47, 0x2d, 0x7b),
    (0x3b, 0x52, 0x8b),
    (0x2c, 0x72, 0x8e),
    (0x21, 0x91, 0x8c),
    (0x28, 0xae, 0x80),
    (0x5e, 0xc9, 0x62),
    (0xad, 0xdc, 0x30),
    (0xfd, 0xe7, 0x25),
];

/// Colour of `t` in `[0, 1]`, piecewise linear between the viridis samples.
pub(crate) fn viridis(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let k = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - k as f64;
    let (a, b) = (VIRIDIS[k], VIRIDIS[k + 1]);
    let mix = |u: u8, v: u8| (u as f64 + (v as f64 - u as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Number of colours in the map (values are quantised, as in matplotlib).
const NCOLORS: usize = 256;
const MISSING: RGBColor = RGBColor(190, 190, 190);

fn color_index(v: f64, vmin: f64, vmax: f64) -> Option<usize> {
    v.is_finite().then(|| {
        (((v - vmin) / (vmax - vmin)) * (NCOLORS - 1) as f64)
            .round()
            .clamp(0.0, (NCOLORS - 1) as f64) as usize
    })
}

fn index_color(k: Option<usize>) -> RGBColor {
    match k {
        Some(k) => viridis(k as f64 / (NCOLORS - 1) as f64),
        None => MISSING,
    }
}

/// An edge of the grid: horizontal `(i, j)-(i, j+1)` or vertical `(i, j)-(i+1, j)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Edge {
    H(usize, usize),
    V(usize, usize),
}

/// Contour lines of `values` at `level` by marching squares, joined into
/// polylines in data coordinates. Cells with a non-finite corner are skipped;
/// saddles are resolved by the cell's mean value.
fn contour_lines(gx: &[f64], gy: &[f64], values: &Matrix<f64>, level: f64) -> Vec<Polyline> {
    let (ny, nx) = (gy.len(), gx.len());
    if nx < 2 || ny < 2 {
        return Vec::new();
    }
    let mut segs: Vec<(Edge, Edge)> = Vec::new();
    for i in 0..ny - 1 {
        for j in 0..nx - 1 {
            // Corners counter-clockwise from the lower left.
            let a = [
                values.get(i, j),
                values.get(i, j + 1),
                values.get(i + 1, j + 1),
                values.get(i + 1, j),
            ];
            if a.iter().any(|v| !v.is_finite()) {
                continue;
            }
            let up = a.map(|v| v >= level);
            // Edge k joins corners k and k+1.
            let e = [
                Edge::H(i, j),
                Edge::V(i, j + 1),
                Edge::H(i + 1, j),
                Edge::V(i, j),
            ];
            let cross: Vec<usize> = (0..4).filter(|&k| up[k] != up[(k + 1) % 4]).collect();
            match cross.len() {
                2 => segs.push((e[cross[0]], e[cross[1]])),
                4 => {
                    let centre_up = a.iter().sum::<f64>() / 4.0 >= level;
                    if centre_up == up[0] {
                        // Corners 0 and 2 joined through the centre: cut off 1 and 3.
                        segs.push((e[0], e[1]));
                        segs.push((e[2], e[3]));
                    } else {
                        segs.push((e[3], e[0]));
                        segs.push((e[1], e[2]));
                    }
                }
                _ => {}
            }
        }
    }

    let point = |edge: Edge| -> (f64, f64) {
        let ((i0, j0), (i1, j1)) = match edge {
            Edge::H(i, j) => ((i, j), (i, j + 1)),
            Edge::V(i, j) => ((i, j), (i + 1, j)),
        };
        let (a, b) = (values.get(i0, j0), values.get(i1, j1));
        let t = if b != a {
            ((level - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.5
        };
        (
            gx[j0] + t * (gx[j1] - gx[j0]),
            gy[i0] + t * (gy[i1] - gy[i0]),
        )
    };

    let mut at: HashMap<Edge, Vec<usize>> = HashMap::new();
    for (s, &(a, b)) in segs.iter().enumerate() {
        at.entry(a).or_default().push(s);
        at.entry(b).or_default().push(s);
    }
    let mut used = vec![false; segs.len()];
    let mut lines = Vec::new();
    for s0 in 0..segs.len() {
        if used[s0] {
            continue;
        }
        used[s0] = true;
        let mut chain = std::collections::VecDeque::from([segs[s0].0, segs[s0].1]);
        for forward in [true, false] {
            loop {
                let end = if forward {
                    *chain.back().unwrap()
                } else {
                    *chain.front().unwrap()
                };
                let next = at[&end].iter().copied().find(|&s| !used[s]);
                let Some(s) = next else { break };
                used[s] = true;
                let other = if segs[s].0 == end {
                    segs[s].1
                } else {
                    segs[s].0
                };
                if forward {
                    chain.push_back(other);
                } else {
                    chain.push_front(other);
                }
            }
        }
        lines.push(chain.into_iter().map(point).collect());
    }
    lines
}

/// `raster`: the target is a bitmap (see the contour lines).
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &Prepared<'_>,
    raster: bool,
) -> DrawResult {
    let area = root.titled(&p.labels.title, (FONT, 24)).map_err(de)?;
    let area = if p.labels.caption.is_empty() {
        area
    } else {
        let (_, h) = area.dim_in_pixel();
        let (top, bottom) = area.split_vertically(h.saturating_sub(26));
        bottom
            .draw(&Text::new(
                p.labels.caption.clone(),
                (10, 4),
                TextStyle::from((FONT, 14)).color(&BLACK.mix(0.8)),
            ))
            .map_err(de)?;
        top
    };
    let (w, _) = area.dim_in_pixel();
    let (main, bar) = area.split_horizontally(w.saturating_sub(130));
    let (x0, x1) = (p.x_edges[0], *p.x_edges.last().unwrap());
    let (y0, y1) = (p.y_edges[0], *p.y_edges.last().unwrap());
    let (vmin, vmax) = (p.vmin, p.vmax);

    let mut chart = ChartBuilder::on(&main)
        .margin(18)
        .margin_right(8)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(de)?;
    let xfmt = |v: &f64| fmt_tick(*v, x1 - x0);
    let yfmt = |v: &f64| fmt_tick(*v, y1 - y0);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .x_desc(p.labels.x_label.as_str())
        .y_desc(p.labels.y_label.as_str())
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 15))
        .draw()
        .map_err(de)?;

    // Cells, with runs of equal colour in a row merged into one rectangle.
    let mut rects = Vec::new();
    for i in 0..p.values.rows() {
        let row = p.values.row(i);
        let mut j0 = 0;
        while j0 < row.len() {
            let k = color_index(row[j0], vmin, vmax);
            let mut j1 = j0 + 1;
            while j1 < row.len() && color_index(row[j1], vmin, vmax) == k {
                j1 += 1;
            }
            rects.push(Rectangle::new(
                [
                    (p.x_edges[j0], p.y_edges[i]),
                    (p.x_edges[j1], p.y_edges[i + 1]),
                ],
                index_color(k).filled(),
            ));
            j0 = j1;
        }
    }
    chart.draw_series(rects).map_err(de)?;

    // Contours, then one label per level on its longest line.
    let line_style = WHITE.stroke_width(1);
    for (_, lines) in &p.contours {
        chart
            .draw_series(
                lines
                    .iter()
                    .map(|l| PathElement::new(l.clone(), line_style)),
            )
            .map_err(de)?;
        if raster {
            // plotters' 1-px rasteriser drops the last pixel of rising
            // segments, leaving gaps at the joins: fill in the vertices.
            chart
                .draw_series(lines.iter().flatten().map(|&v| Pixel::new(v, WHITE)))
                .map_err(de)?;
        }
    }
    // One label per level, on one of its longest lines: the first spot, from
    // the middle of the line outwards, where it is inside the plot and clear
    // of the labels already placed.
    let label_style = TextStyle::from((FONT, 13))
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    let (px_range, py_range) = chart.plotting_area().get_pixel_range();
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    for (level, lines) in &p.contours {
        let text = fmt_num(*level);
        let (tw, th) = root.estimate_text_size(&text, &label_style).map_err(de)?;
        let (hw, hh) = (tw as i32 / 2 + 3, th as i32 / 2 + 2);
        let mut by_len: Vec<&Polyline> = lines.iter().collect();
        by_len.sort_by_key(|l| std::cmp::Reverse(l.len()));
        let spot = by_len.iter().take(3).find_map(|line| {
            (0..=18).find_map(|j| {
                // 0.5, 0.45, 0.55, 0.4, ... out to 0.05 and 0.95.
                let f = 0.5 + if j % 2 == 1 { -1.0 } else { 1.0 } * ((j + 1) / 2) as f64 * 0.05;
                let at = line[((line.len() - 1) as f64 * f).round() as usize];
                let (cx, cy) = chart.backend_coord(&at);
                let b = (cx - hw, cy - hh, cx + hw, cy + hh);
                let inside = b.0 > px_range.start
                    && b.2 < px_range.end
                    && b.1 > py_range.start
                    && b.3 < py_range.end;
                let clear = placed
                    .iter()
                    .all(|q| b.2 + 2 < q.0 || q.2 + 2 < b.0 || b.3 + 2 < q.1 || q.3 + 2 < b.1);
                (inside && clear).then_some((at, b))
            })
        });
        let Some((at, b)) = spot else { continue };
        placed.push(b);
        chart
            .draw_series(std::iter::once(
                EmptyElement::at(at)
                    + Rectangle::new([(-hw, -hh), (hw, hh)], WHITE.mix(0.75).filled())
                    + Text::new(text, (0, 0), label_style.clone()),
            ))
            .map_err(de)?;
    }

    let red = RGBColor(220, 30, 30);
    // Overlays are clipped to the plotted range: a path is drawn as its runs of points
    // inside it, points outside are left out.
    let (x0, x1) = (p.x_edges[0], p.x_edges[p.x_edges.len() - 1]);
    let (y0, y1) = (p.y_edges[0], p.y_edges[p.y_edges.len() - 1]);
    let inside = |x: f64, y: f64| x >= x0 && x <= x1 && y >= y0 && y <= y1;
    for path in &p.overlay.paths {
        for run in path
            .split(|&(x, y)| !inside(x, y))
            .filter(|run| run.len() >= 2)
        {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    run.to_vec(),
                    red.stroke_width(2),
                )))
                .map_err(de)?;
        }
    }
    for (x, y, label) in p.overlay.points.iter().filter(|(x, y, _)| inside(*x, *y)) {
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 5, red.filled())
                    + Text::new(
                        label.clone(),
                        (8, -16),
                        TextStyle::from((FONT, 15)).color(&red),
                    ),
            ))
            .map_err(de)?;
    }

    // Colour bar, aligned with the plot area.
    let mut cb = ChartBuilder::on(&bar)
        .margin(18)
        .margin_left(10)
        .margin_right(4)
        .x_label_area_size(60)
        .right_y_label_area_size(80)
        .build_cartesian_2d(0.0..1.0, vmin..vmax)
        .map_err(de)?;
    let cfmt = |v: &f64| fmt_tick(*v, vmax - vmin);
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(p.labels.colorbar.as_str())
        .axis_desc_style((FONT, 14))
        .y_label_formatter(&cfmt)
        .label_style((FONT, 15))
        .draw()
        .map_err(de)?;
    let step = (vmax - vmin) / NCOLORS as f64;
    cb.draw_series((0..NCOLORS).map(|k| {
        let lo = vmin + step * k as f64;
        Rectangle::new([(0.0, lo), (1.0, lo + step)], index_color(Some(k)).filled())
    }))
    .map_err(de)?;
    cb.draw_series(
        p.contours
            .iter()
            .map(|(l, _)| PathElement::new(vec![(0.0, *l), (1.0, *l)], WHITE.stroke_width(1))),
    )
    .map_err(de)?;
    cb.draw_series(std::iter::once(Rectangle::new(
        [(0.0, vmin), (1.0, vmax)],
        BLACK.stroke_width(1),
    )))
    .map_err(de)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circle_contour_is_one_closed_line() {
        let g: Vec<f64> = (0..21).map(|i| -1.0 + 0.1 * i as f64).collect();
        let v = Matrix::from_fn(21, 21, |i, j| g[i] * g[i] + g[j] * g[j]);
        let lines = contour_lines(&g, &g, &v, 0.25);
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l.first(), l.last(), "closed");
        for &(x, y) in l {
            let r = (x * x + y * y).sqrt();
            assert!((r - 0.5).abs() < 0.02, "radius {r}");
        }
    }

    #[test]
    fn edges_halfway() {
        assert_eq!(edges(&[0.0, 1.0, 3.0]), vec![-0.5, 0.5, 2.0, 4.0]);
        assert_eq!(edges(&[2.0]), vec![1.5, 2.5]);
    }

    #[test]
    fn colormap_ends() {
        assert_eq!(viridis(0.0), RGBColor(0x44, 0x01, 0x54));
        assert_eq!(viridis(1.0), RGBColor(0xfd, 0xe7, 0x25));
    }
}
