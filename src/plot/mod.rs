//! Figures for reports: line plots (training curves, spectra), spectral
//! densities with outlier eigenvalues, and heat maps with contours (2-D loss
//! surfaces).
//!
//! Every figure is written twice from one drawing routine: `prefix.png`
//! (raster, for quick looks) and `prefix.svg` (vector, for papers). Nothing
//! is needed from the system at build or run time: text is rendered with the
//! bundled DejaVu Sans (`assets/fonts/DejaVuSans.ttf`, licence in
//! `assets/fonts/LICENSE-DejaVu.txt`) through plotters' `ab_glyph` support, the
//! PNG is encoded here with `flate2`, and the SVG is plotters' own text output.
//!
//! Input data are `f64`. Points that cannot be drawn (NaN, infinities, and
//! values `<= 0` on a logarithmic axis) are skipped: a line is broken at them
//! rather than drawn through garbage. A figure with nothing drawable at all is
//! an [`Error::InvalidArgument`].

mod heatmap;
pub mod labels;
mod line;
mod png;
mod scatter;
mod surface3d;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub use heatmap::{heatmap, heatmap_labelled, heatmap_with_overlay, Overlay};
pub use labels::{humanize, quantity_name, ContourSpacing, FigureLabels};
pub use line::{histogram_density, line_plot, line_plot_captioned};
pub use scatter::{scatter_plot, ScatterFigure};
pub use surface3d::{surface3d, surface3d_labelled};

/// Pixel size `(width, height)` of line plots and spectral densities.
pub const LINE_SIZE: (u32, u32) = (1000, 640);
/// Pixel size `(width, height)` of heat maps (plot plus colour bar).
pub const HEATMAP_SIZE: (u32, u32) = (920, 720);

/// One curve of a [`LineFigure`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend entry (an empty label leaves the series out of the legend).
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Optional shaded band `(lower, upper)`, same length as `x` (e.g. mean ± std
    /// over seeds).
    pub band: Option<(Vec<f64>, Vec<f64>)>,
}

impl Series {
    pub fn new(label: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Series {
            label: label.into(),
            x,
            y,
            band: None,
        }
    }

    /// The same series with a shaded band between `lower` and `upper`.
    pub fn with_band(mut self, lower: Vec<f64>, upper: Vec<f64>) -> Self {
        self.band = Some((lower, upper));
        self
    }
}

/// A line plot: one or more series, optional log axes, labelled vertical marker
/// lines (e.g. a learning-rate drop, or where a checkpoint was taken).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineFigure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Vertical marker lines `(x, label)`.
    pub markers: Vec<(f64, String)>,
}

/// Bytes of the bundled font (DejaVu Sans, Bitstream Vera licence).
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family name the bundled font is registered under; plotters' default.
pub(crate) const FONT: &str = "sans-serif";

/// Registers the bundled font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the bundled font assets/fonts/DejaVuSans.ttf cannot be parsed".into())
        })
        .clone()
        .map_err(Error::Unsupported)
}

/// `prefix` with `ext` appended (not replacing an extension: `out/fig.v2` ->
/// `out/fig.v2.png`).
fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s: OsString = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Drawing errors from plotters, as text.
pub(crate) type DrawResult = std::result::Result<(), String>;

pub(crate) fn de<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Runs one drawing routine on a bitmap and on an SVG canvas of `size`, then
/// writes `prefix.png` and `prefix.svg` (creating the parent directory).
/// The two closures are the same routine instantiated for the two backends.
pub(crate) fn render<F, G>(
    prefix: &Path,
    size: (u32, u32),
    draw_png: F,
    draw_svg: G,
) -> Result<Vec<PathBuf>>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
    G: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
{
    ensure_font()?;
    if prefix.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("empty output path prefix".into()));
    }
    let png_path = with_suffix(prefix, "png");
    let svg_path = with_suffix(prefix, "svg");
    let drawing_failed = |path: &Path, what: String| {
        Error::io(
            path,
            std::io::Error::other(format!("drawing failed: {what}")),
        )
    };

    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| drawing_failed(&png_path, de(e)))?;
        draw_png(&root).map_err(|e| drawing_failed(&png_path, e))?;
        root.present()
            .map_err(|e| drawing_failed(&png_path, de(e)))?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| drawing_failed(&svg_path, de(e)))?;
        draw_svg(&root).map_err(|e| drawing_failed(&svg_path, e))?;
        root.present()
            .map_err(|e| drawing_failed(&svg_path, de(e)))?;
    }

    if let Some(dir) = png_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let png_bytes = png::encode_rgb8(w, h, &rgb).map_err(|e| Error::io(&png_path, e))?;
    crate::io::write_atomic(&png_path, &png_bytes)?;
    crate::io::write_atomic(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

/// Tableau-10 colours, the cycle for series.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A number for a label: at most ~4 significant digits, scientific notation
/// outside [1e-3, 1e5), no trailing zeros.
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return fmt_sci(v, 2);
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    trim_zeros(format!("{v:.decimals$}"))
}

/// A tick label on a linear axis spanning `span`: enough decimals to tell
/// neighbouring ticks apart, scientific outside [1e-3, 1e5).
pub(crate) fn fmt_tick(v: f64, span: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let span = if span.is_finite() && span > 0.0 {
        span
    } else {
        v.abs().max(1.0)
    };
    if v.abs() <= span * 1e-9 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        // Digits needed to separate ticks ~span/10 apart at this magnitude.
        let digits = (a.log10().floor() - (span / 10.0).log10().floor()).clamp(0.0, 6.0) as usize;
        return fmt_sci(v, digits);
    }
    let decimals = (-(span / 10.0).log10().floor()).clamp(0.0, 8.0) as usize;
    trim_zeros(format!("{v:.decimals$}"))
}

fn fmt_sci(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$e}");
    match s.split_once('e') {
        Some((m, e)) => format!("{}e{}", trim_zeros(m.to_string()), e),
        None => s,
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" {
            "0".into()
        } else {
            t.to_string()
        }
    } else {
        s
    }
}

/// Range `[lo, hi]` padded by `frac` of its span on each side; a degenerate
/// range is widened around its value. On a log axis the padding is in decades.
pub(crate) fn padded_range(lo: f64, hi: f64, frac: f64, log: bool) -> (f64, f64) {
    if log {
        let (l, h) = (lo.log10(), hi.log10());
        let (l, h) = if h - l < 1e-9 {
            (l - 0.5, h + 0.5)
        } else {
            (l, h)
        };
        let pad = (h - l) * frac;
        (10f64.powf(l - pad), 10f64.powf(h + pad))
    } else {
        let (lo, hi) = if hi - lo <= hi.abs().max(lo.abs()) * 1e-12 {
            let w = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
            (lo - w, hi + w)
        } else {
            (lo, hi)
        };
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    }
}

/// Tick positions for a logarithmic axis over `[lo, hi]`.
pub(crate) struct LogTicks {
    /// Labelled ticks (bold grid lines).
    pub bold: Vec<f64>,
    /// Light grid lines.
    pub light: Vec<f64>,
    /// `Some(span)` when the ticks are linearly spaced (an axis spanning less
    /// than a decade or so): format them with [`fmt_tick`] and this span.
    pub linear_span: Option<f64>,
}

/// Ticks for a log axis: powers of ten (every `k`-th when there are many
/// decades), else 1-2-5 or 1..9 times powers of ten, else evenly spaced.
/// Plotters' own log ticks are only powers of ten, so a narrow range gets none.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> LogTicks {
    const MAX_BOLD: usize = 9;
    let (llo, lhi) = (lo.log10(), hi.log10());
    let inside = |v: &f64| *v >= lo * (1.0 - 1e-12) && *v <= hi * (1.0 + 1e-12);
    let kmin = (llo - 1e-9).ceil() as i32;
    let kmax = (lhi + 1e-9).floor() as i32;
    let decades = (kmax - kmin + 1).max(0) as usize;
    let times = |mantissas: &[f64]| -> Vec<f64> {
        let mut v: Vec<f64> = ((llo.floor() as i32)..=(lhi.ceil() as i32))
            .flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)))
            .filter(inside)
            .collect();
        v.dedup();
        v
    };
    let all_mantissas = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    if decades >= 2 {
        let step = decades.div_ceil(MAX_BOLD) as i32;
        let bold: Vec<f64> = (kmin..=kmax)
            .filter(|k| k.rem_euclid(step) == 0)
            .map(|k| 10f64.powi(k))
            .collect();
        let light = if step == 1 {
            times(&all_mantissas)
        } else {
            (kmin..=kmax).map(|k| 10f64.powi(k)).collect()
        };
        return LogTicks {
            bold,
            light,
            linear_span: None,
        };
    }
    for mantissas in [&[1.0, 2.0, 5.0][..], &all_mantissas[..]] {
        let bold = times(mantissas);
        if (3..=MAX_BOLD + 3).contains(&bold.len()) {
            let light = times(&all_mantissas);
            return LogTicks {
                bold,
                light,
                linear_span: None,
            };
        }
    }
    // Less than a decade: evenly spaced "nice" ticks.
    let raw = (hi - lo) / 5.0;
    let e = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * e)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * e);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let bold: Vec<f64> = (first..=last)
        .map(|i| i as f64 * step)
        .filter(|v| *v > 0.0 && inside(v))
        .collect();
    LogTicks {
        light: bold.clone(),
        bold,
        linear_span: Some(step * 10.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1.0), "1");
        assert_eq!(fmt_num(12.3456), "12.35");
        assert_eq!(fmt_num(1e-5), "1e-5");
        assert_eq!(fmt_num(2.5e6), "2.5e6");
        assert_eq!(fmt_tick(0.2, 1.0), "0.2");
        assert_eq!(fmt_tick(1.0002, 0.001), "1.0002");
        assert_eq!(fmt_tick(-1e-18, 1.0), "0");
        assert_eq!(fmt_tick(3e5, 1e6), "3e5");
        assert_eq!(fmt_tick(3.26e5, 1e5), "3.3e5");
    }

    #[test]
    fn log_tick_choices() {
        let t = log_ticks(1e-3, 1e3);
        assert_eq!(t.bold.len(), 7);
        assert!(t.light.len() > 50 && t.linear_span.is_none());
        let t = log_ticks(1e-12, 1e12);
        assert!(t.bold.len() <= 9 && t.bold.len() >= 5, "{:?}", t.bold);
        let t = log_ticks(0.3, 4.0);
        assert_eq!(t.bold, vec![0.5, 1.0, 2.0]);
        let t = log_ticks(2.0, 3.0);
        assert!(t.bold.len() >= 3 && t.linear_span.is_some(), "{:?}", t.bold);
        assert!(t.bold.iter().all(|v| (2.0..=3.0).contains(v)));
    }

    #[test]
    fn suffix_keeps_dots() {
        assert_eq!(
            with_suffix(Path::new("out/fig.v2"), "png"),
            PathBuf::from("out/fig.v2.png")
        );
    }

    #[test]
    fn ranges() {
        let (a, b) = padded_range(1.0, 1.0, 0.05, false);
        assert!(a < 1.0 && b > 1.0);
        let (a, b) = padded_range(1e-3, 1e3, 0.0, true);
        assert!((a - 1e-3).abs() < 1e-12 && (b - 1e3).abs() < 1e-9);
    }
}
