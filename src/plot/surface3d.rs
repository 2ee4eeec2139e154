//! A 3-D-style render of a surface over a grid: an oblique projection of the grid's
//! quadrilaterals, filled with viridis by height and drawn back to front (painter's
//! algorithm), so a figure needs no 3-D engine.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::heatmap::viridis;
use super::labels::{humanize, FigureLabels};
use super::{de, fmt_num, render, DrawResult, FONT, HEATMAP_SIZE};
use crate::error::{Error, Result};
use crate::tensor::Matrix;

/// `(depth, projected corners, normalised height)` of one grid cell.
type Quad = (f64, [(f64, f64); 4], f64);

/// Writes `prefix.png` and `prefix.svg`: `values` (rows follow `grid_y`, columns
/// `grid_x`) as a shaded surface seen from azimuth 45 degrees and elevation 30 degrees.
/// Cells with a non-finite corner are skipped. Errors as [`super::heatmap`].
pub fn surface3d(
    grid_x: &[f64],
    grid_y: &[f64],
    values: &Matrix<f64>,
    title: &str,
    z_label: &str,
    prefix: &Path,
) -> Result<Vec<PathBuf>> {
    let labels = FigureLabels {
        title: title.to_string(),
        x_label: "x direction".into(),
        y_label: "y direction".into(),
        colorbar: z_label.to_string(),
        caption: String::new(),
    };
    surface3d_labelled(grid_x, grid_y, values, &labels, prefix)
}

/// [`surface3d`] with the words of `labels`: the title (through
/// [`super::humanize`]), the names of the two directions at the ends of the floor's
/// axes, the height's quantity (`colorbar`) with its range, and the caption under the
/// plot.
pub fn surface3d_labelled(
    grid_x: &[f64],
    grid_y: &[f64],
    values: &Matrix<f64>,
    labels: &FigureLabels,
    prefix: &Path,
) -> Result<Vec<PathBuf>> {
    let title = labels.title.as_str();
    if grid_x.len() < 2 || grid_y.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "surface '{title}': needs at least a 2 x 2 grid"
        )));
    }
    if values.shape() != (grid_y.len(), grid_x.len()) {
        return Err(Error::Shape(format!(
            "surface '{title}': values are {} x {} but the grids need {} x {}",
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
            "surface '{title}': no finite value"
        )));
    }
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (x0, x1) = (grid_x[0], grid_x[grid_x.len() - 1]);
    let (y0, y1) = (grid_y[0], grid_y[grid_y.len() - 1]);
    // Unit cube coordinates, then the oblique view.
    let (az, el) = (45f64.to_radians(), 30f64.to_radians());
    let project = move |x: f64, y: f64, z: f64| -> (f64, f64, f64) {
        let u = 2.0 * (x - x0) / (x1 - x0) - 1.0;
        let v = 2.0 * (y - y0) / (y1 - y0) - 1.0;
        let w = 1.2 * (z - lo) / span;
        let sx = u * az.cos() - v * az.sin();
        let depth = u * az.sin() + v * az.cos();
        let sy = depth * el.sin() + w * el.cos();
        (sx, sy, depth)
    };
    let mut quads: Vec<Quad> = Vec::new();
    for i in 0..grid_y.len() - 1 {
        for j in 0..grid_x.len() - 1 {
            let corners = [(i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j)];
            let zs: Vec<f64> = corners.iter().map(|&(a, b)| values.get(a, b)).collect();
            if zs.iter().any(|z| !z.is_finite()) {
                continue;
            }
            let pts: Vec<(f64, f64, f64)> = corners
                .iter()
                .zip(&zs)
                .map(|(&(a, b), &z)| project(grid_x[b], grid_y[a], z))
                .collect();
            let depth = pts.iter().map(|p| p.2).sum::<f64>() / 4.0;
            let zmean = zs.iter().sum::<f64>() / 4.0;
            quads.push((
                depth,
                [
                    (pts[0].0, pts[0].1),
                    (pts[1].0, pts[1].1),
                    (pts[2].0, pts[2].1),
                    (pts[3].0, pts[3].1),
                ],
                (zmean - lo) / span,
            ));
        }
    }
    // Far (large depth) first.
    quads.sort_by(|a, b| b.0.total_cmp(&a.0));
    let p = Prep {
        title: humanize(title),
        z_label: humanize(&labels.colorbar),
        x_name: labels.x_label.clone(),
        y_name: labels.y_label.clone(),
        caption: labels.caption.clone(),
        range: (fmt_num(lo), fmt_num(hi)),
        quads,
        x_tip: project(x1, y0, lo),
        y_tip: project(x0, y1, lo),
    };
    render(prefix, HEATMAP_SIZE, |r| draw(r, &p), |r| draw(r, &p))
}

struct Prep {
    title: String,
    z_label: String,
    x_name: String,
    y_name: String,
    caption: String,
    range: (String, String),
    quads: Vec<Quad>,
    x_tip: (f64, f64, f64),
    y_tip: (f64, f64, f64),
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, p: &Prep) -> DrawResult {
    let (title, z_label, range, quads) = (&p.title, &p.z_label, &p.range, &p.quads);
    let root = &if p.caption.is_empty() {
        root.clone()
    } else {
        let (_, h) = root.dim_in_pixel();
        let (top, bottom) = root.split_vertically(h.saturating_sub(26));
        bottom
            .draw(&Text::new(
                p.caption.clone(),
                (10, 4),
                TextStyle::from((FONT, 14)).color(&BLACK.mix(0.8)),
            ))
            .map_err(de)?;
        top
    };
    {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(20)
            .build_cartesian_2d(-1.5f64..1.5f64, -0.9f64..1.8f64)
            .map_err(de)?;
        let edge = BLACK.mix(0.25);
        for (_, q, t) in quads.iter() {
            let c = viridis(*t);
            chart
                .draw_series(std::iter::once(Polygon::new(q.to_vec(), c.filled())))
                .map_err(de)?;
            let mut outline = q.to_vec();
            outline.push(q[0]);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    outline,
                    edge.stroke_width(1),
                )))
                .map_err(de)?;
        }
        let style = TextStyle::from((FONT, 15)).color(&BLACK);
        let (bx, by, _) = p.x_tip;
        let (lx, ly, _) = p.y_tip;
        chart
            .draw_series([
                // Right-aligned at the x axis's far end, so that a long name stays inside.
                Text::new(
                    p.x_name.clone(),
                    (bx, by - 0.12),
                    style.clone().pos(Pos::new(HPos::Right, VPos::Top)),
                ),
                Text::new(p.y_name.clone(), (lx + 0.05, ly - 0.12), style.clone()),
                Text::new(
                    format!("{z_label}: {} .. {}", range.0, range.1),
                    (-1.45, 1.7),
                    style.clone(),
                ),
            ])
            .map_err(de)?;
        Ok(())
    }
}
