//! Figures: every plot writes a decodable PNG of the stated size that is not
//! blank, and a well-formed SVG with the title and legend text; bad input is an
//! error, never a panic.

use std::io::Read;
use std::path::{Path, PathBuf};

use landscape::plot::{self, LineFigure, Series, HEATMAP_SIZE, LINE_SIZE};
use landscape::{Error, Matrix};

/// A fresh directory under the system temp dir for one test, removed when the
/// test passes (kept when it fails, or when `LANDSCAPE_KEEP_PLOTS` is set, to
/// look at the figures).
struct OutDir(PathBuf);

impl OutDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("LANDSCAPE_KEEP_PLOTS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn out_dir(name: &str) -> OutDir {
    let d = std::env::temp_dir().join(format!("landscape-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    OutDir(d)
}

struct Png {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Png {
    fn pixel(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }
    fn pixels(&self) -> impl Iterator<Item = (u8, u8, u8)> + '_ {
        self.rgb.chunks_exact(3).map(|p| (p[0], p[1], p[2]))
    }
    fn count(&self, f: impl Fn((u8, u8, u8)) -> bool) -> usize {
        self.pixels().filter(|&p| f(p)).count()
    }
    fn distinct_colors(&self) -> usize {
        let mut v: Vec<(u8, u8, u8)> = self.pixels().collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    }
    /// Pixels within `tol` of `c` in every channel.
    fn count_near(&self, c: (u8, u8, u8), tol: u8) -> usize {
        self.count(|p| {
            p.0.abs_diff(c.0) <= tol && p.1.abs_diff(c.1) <= tol && p.2.abs_diff(c.2) <= tol
        })
    }
}

/// Decodes an 8-bit RGB, non-interlaced PNG (what the plot module writes):
/// signature, IHDR, zlib-inflated IDAT, the five row filters.
fn decode_png(path: &Path) -> Png {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "PNG signature of {}",
        path.display()
    );
    let mut pos = 8;
    let (mut width, mut height) = (0u32, 0u32);
    let mut idat = Vec::new();
    let mut first = true;
    loop {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        if first {
            assert_eq!(kind, b"IHDR", "first chunk");
            first = false;
        }
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap());
                height = u32::from_be_bytes(data[4..8].try_into().unwrap());
                assert_eq!(&data[8..13], &[8, 2, 0, 0, 0], "8-bit RGB, no interlace");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = width as usize * 3;
    assert_eq!(raw.len(), (stride + 1) * height as usize, "inflated size");
    let mut rgb = vec![0u8; stride * height as usize];
    for y in 0..height as usize {
        let filter = raw[y * (stride + 1)];
        let src = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for i in 0..stride {
            let a = if i >= 3 {
                rgb[y * stride + i - 3] as i32
            } else {
                0
            };
            let b = if y > 0 {
                rgb[(y - 1) * stride + i] as i32
            } else {
                0
            };
            let c = if y > 0 && i >= 3 {
                rgb[(y - 1) * stride + i - 3] as i32
            } else {
                0
            };
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("bad filter type {f}"),
            };
            rgb[y * stride + i] = (src[i] as i32 + pred) as u8;
        }
    }
    Png { width, height, rgb }
}

/// The checks every PNG must pass: expected size, mostly white background but
/// clearly not blank, and dark text in the title band at the top.
fn check_png(path: &Path, size: (u32, u32)) -> Png {
    let png = decode_png(path);
    assert_eq!((png.width, png.height), size, "{}", path.display());
    let total = (png.width * png.height) as usize;
    let white = png.count(|p| p == (255, 255, 255));
    assert!(
        white > total / 5,
        "background mostly white: {white}/{total}"
    );
    let inked = total - white;
    assert!(
        inked > total / 50,
        "not blank: {inked}/{total} non-white pixels"
    );
    // Title: dark anti-aliased glyph pixels in the top band, around the centre.
    let mut dark = 0;
    for y in 0..45 {
        for x in png.width / 4..3 * png.width / 4 {
            let (r, g, b) = png.pixel(x, y);
            if r < 90 && g < 90 && b < 90 {
                dark += 1;
            }
        }
    }
    assert!(dark > 100, "title text rendered ({dark} dark pixels)");
    png
}

/// Minimal well-formedness: an `<svg>` root, and every opened tag closed in order.
fn check_svg(path: &Path, must_contain: &[&str]) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.trim_start().starts_with("<svg"), "starts with <svg");
    assert!(text.trim_end().ends_with("</svg>"), "ends with </svg>");
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('<') {
        let end = start + rest[start..].find('>').expect("unclosed tag");
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "stray '<' inside a tag: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "closing tag order"
            );
        } else if !(tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/')) {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    for s in must_contain {
        assert!(text.contains(s), "{} lacks {s:?}", path.display());
    }
    text
}

fn assert_written(paths: &[PathBuf], prefix: &Path) {
    let png = PathBuf::from(format!("{}.png", prefix.display()));
    let svg = PathBuf::from(format!("{}.svg", prefix.display()));
    assert_eq!(paths, &[png.clone(), svg.clone()]);
    assert!(png.is_file() && svg.is_file());
}

fn training_figure() -> LineFigure {
    let x: Vec<f64> = (0..200).map(|i| i as f64).collect();
    let loss: Vec<f64> = x.iter().map(|e| 2.3 * (-e / 40.0).exp() + 0.05).collect();
    let mut val: Vec<f64> = x.iter().map(|e| 2.3 * (-e / 50.0).exp() + 0.12).collect();
    val[90] = f64::NAN; // a gap, not a spike
    val[91] = f64::INFINITY;
    let lo = loss.iter().map(|v| v * 0.9).collect();
    let hi = loss.iter().map(|v| v * 1.1).collect();
    LineFigure {
        title: "Training loss".into(),
        x_label: "epoch".into(),
        y_label: "cross-entropy".into(),
        series: vec![
            Series::new("train", x.clone(), loss).with_band(lo, hi),
            Series::new("validation", x, val),
        ],
        markers: vec![(100.0, "lr drop".into())],
        ..Default::default()
    }
}

#[test]
fn line_plot_writes_png_and_svg() {
    let dir = out_dir("line");
    let prefix = dir.join("loss");
    let paths = plot::line_plot(&training_figure(), &prefix).unwrap();
    assert_written(&paths, &prefix);
    let png = check_png(&paths[0], LINE_SIZE);
    // Both series colours (tab:blue, tab:orange) are drawn.
    assert!(png.count_near((31, 119, 180), 10) > 300, "train line");
    assert!(png.count_near((255, 127, 14), 10) > 300, "validation line");
    let svg = check_svg(
        &paths[1],
        &[
            "Training loss",
            "train",
            "validation",
            "epoch",
            "cross-entropy",
            "lr drop",
        ],
    );
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "no garbage coordinates"
    );
}

#[test]
fn line_plot_log_axes_skip_bad_points() {
    let dir = out_dir("loglog");
    let x: Vec<f64> = (0..60).map(|i| 1.2f64.powi(i) - 2.0).collect(); // starts non-positive
    let y: Vec<f64> = x.iter().map(|v| 1.0 / (v * v)).collect();
    let mut y2: Vec<f64> = x.iter().map(|v| 3.0 / v).collect();
    y2[30] = -1.0;
    y2[31] = 0.0;
    let fig = LineFigure {
        title: "Power laws".into(),
        x_label: "k".into(),
        y_label: "value".into(),
        log_x: true,
        log_y: true,
        series: vec![Series::new("1/k²", x.clone(), y), Series::new("3/k", x, y2)],
        markers: vec![
            (-5.0, "not drawable on log x".into()),
            (10.0, "k = 10".into()),
        ],
    };
    let prefix = dir.join("loglog");
    let paths = plot::line_plot(&fig, &prefix).unwrap();
    check_png(&paths[0], LINE_SIZE);
    let svg = check_svg(&paths[1], &["Power laws", "1/k²", "3/k", "k = 10"]);
    assert!(!svg.contains("not drawable"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn narrow_log_axis_still_has_tick_labels() {
    // Plotters labels only powers of ten on a log axis; 2..3 contains none.
    let dir = out_dir("narrowlog");
    let x: Vec<f64> = (0..50).map(|i| i as f64).collect();
    let y: Vec<f64> = x.iter().map(|i| 2.0 + i / 50.0).collect();
    let fig = LineFigure {
        title: "Narrow".into(),
        log_y: true,
        series: vec![Series::new("s", x, y)],
        ..Default::default()
    };
    let paths = plot::line_plot(&fig, &dir.join("narrow")).unwrap();
    let texts = svg_texts(&std::fs::read_to_string(&paths[1]).unwrap());
    let y_ticks: Vec<f64> = texts
        .iter()
        .filter_map(|t| t.parse::<f64>().ok())
        .filter(|v| (1.9..=3.1).contains(v))
        .collect();
    assert!(y_ticks.len() >= 3, "y tick labels in {texts:?}");
}

#[test]
fn prefix_keeps_dots_and_parent_is_created() {
    let dir = out_dir("prefix");
    let prefix = dir.join("nested/deeper/fig.v2");
    let paths = plot::line_plot(&training_figure(), &prefix).unwrap();
    assert_written(&paths, &prefix);
}

fn slq_like_density() -> (Vec<f64>, Vec<f64>) {
    // A bulk near zero (two Gaussians), as stochastic Lanczos quadrature gives.
    let x: Vec<f64> = (0..800).map(|i| -2.0 + 14.0 * i as f64 / 799.0).collect();
    let g = |t: f64, m: f64, s: f64| {
        (-(t - m) * (t - m) / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
    };
    let d = x
        .iter()
        .map(|&t| 0.8 * g(t, 0.0, 0.15) + 0.2 * g(t, 0.6, 0.4))
        .collect();
    (x, d)
}

#[test]
fn histogram_density_marks_outliers() {
    let dir = out_dir("density");
    let (x, d) = slq_like_density();
    let prefix = dir.join("spectrum");
    let outliers = [9.5, 14.25, f64::NAN];
    let paths =
        plot::histogram_density(&x, &d, &outliers, "Hessian spectrum", "eigenvalue", &prefix)
            .unwrap();
    assert_written(&paths, &prefix);
    let png = check_png(&paths[0], LINE_SIZE);
    assert!(
        png.count_near((214, 39, 40), 40) > 200,
        "red outlier markers"
    );
    assert!(png.count_near((31, 119, 180), 10) > 200, "density curve");
    check_svg(
        &paths[1],
        &[
            "Hessian spectrum",
            "eigenvalue",
            "density",
            "spectral density",
            "outlier eigenvalues (2)",
            "λ = 14.25",
            "λ = 9.5",
        ],
    );
}

#[test]
fn histogram_density_zero_density_and_no_outliers() {
    let dir = out_dir("density0");
    let (x, mut d) = slq_like_density();
    d[0] = 0.0;
    d[1] = -1e-18;
    d[2] = f64::NAN;
    let paths = plot::histogram_density(&x, &d, &[], "Bulk only", "λ", &dir.join("bulk")).unwrap();
    check_png(&paths[0], LINE_SIZE);
    let svg = check_svg(&paths[1], &["Bulk only", "spectral density"]);
    assert!(!svg.contains("outlier"));
}

fn bowl() -> (Vec<f64>, Vec<f64>, Matrix<f64>) {
    let gx: Vec<f64> = (0..41).map(|i| -1.0 + 0.05 * i as f64).collect();
    let gy: Vec<f64> = (0..31).map(|i| -0.75 + 0.05 * i as f64).collect();
    let v = Matrix::from_fn(gy.len(), gx.len(), |i, j| {
        let (a, b) = (gx[j], gy[i]);
        0.3 + a * a + 3.0 * b * b + 0.5 * a * b
    });
    (gx, gy, v)
}

#[test]
fn heatmap_with_colour_bar_and_contours() {
    let dir = out_dir("heat");
    let (gx, gy, mut v) = bowl();
    v.set(0, 0, f64::NAN); // drawn grey, not fatal
    let prefix = dir.join("surface");
    let paths = plot::heatmap(&gx, &gy, &v, "Loss surface", &prefix, 6).unwrap();
    assert_written(&paths, &prefix);
    let png = check_png(&paths[0], HEATMAP_SIZE);
    assert!(
        png.distinct_colors() > 200,
        "a colour map, not a few flat colours"
    );
    // Both ends of viridis appear (the minimum cell and the colour bar).
    assert!(png.count_near((0x44, 0x01, 0x54), 6) > 50, "dark end");
    assert!(png.count_near((0xfd, 0xe7, 0x25), 6) > 50, "bright end");
    let svg = check_svg(&paths[1], &["Loss surface"]);
    // Contour labels: six levels evenly spaced inside (min, max), each labelled.
    let finite = || v.as_slice().iter().copied().filter(|x| x.is_finite());
    let (lo, hi) = (
        finite().fold(f64::INFINITY, f64::min),
        finite().fold(f64::NEG_INFINITY, f64::max),
    );
    let texts = svg_texts(&svg);
    for k in 1..=6 {
        let level = lo + (hi - lo) * k as f64 / 7.0;
        assert!(
            texts.iter().any(|t| t
                .parse::<f64>()
                .is_ok_and(|x| (x - level).abs() < 1e-3 * level)),
            "contour label for {level} in {texts:?}"
        );
    }
}

/// The contents of the SVG's `<text>` elements, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim().to_string()))
        .collect()
}

#[test]
fn heatmap_constant_and_tiny_grids() {
    let dir = out_dir("heat-const");
    let v = Matrix::filled(3, 4, 2.0);
    let paths = plot::heatmap(
        &[0.0, 1.0, 2.0, 4.0],
        &[0.0, 0.5, 1.0],
        &v,
        "Flat",
        &dir.join("flat"),
        5,
    )
    .unwrap();
    check_png(&paths[0], HEATMAP_SIZE);
    check_svg(&paths[1], &["Flat"]);
    let one = Matrix::filled(1, 1, 1.0);
    plot::heatmap(&[0.0], &[0.0], &one, "Single", &dir.join("single"), 3).unwrap();
}

#[test]
fn bad_input_is_an_error() {
    let dir = out_dir("bad");
    let p = dir.join("bad");
    let invalid = |r: landscape::Result<Vec<PathBuf>>| matches!(r, Err(Error::InvalidArgument(_)));
    let shape = |r: landscape::Result<Vec<PathBuf>>| matches!(r, Err(Error::Shape(_)));

    let no_series = LineFigure {
        title: "t".into(),
        ..Default::default()
    };
    assert!(invalid(plot::line_plot(&no_series, &p)));
    let empty = LineFigure {
        series: vec![Series::new("e", vec![], vec![])],
        ..Default::default()
    };
    assert!(invalid(plot::line_plot(&empty, &p)));
    let nan = LineFigure {
        series: vec![Series::new("nan", vec![1.0, 2.0], vec![f64::NAN, f64::NAN])],
        ..Default::default()
    };
    assert!(invalid(plot::line_plot(&nan, &p)));
    let negative_on_log = LineFigure {
        log_y: true,
        series: vec![Series::new("neg", vec![1.0, 2.0], vec![-1.0, 0.0])],
        ..Default::default()
    };
    assert!(invalid(plot::line_plot(&negative_on_log, &p)));
    let mismatch = LineFigure {
        series: vec![Series::new("m", vec![1.0, 2.0], vec![1.0])],
        ..Default::default()
    };
    assert!(shape(plot::line_plot(&mismatch, &p)));
    let bad_band = LineFigure {
        series: vec![
            Series::new("b", vec![1.0, 2.0], vec![1.0, 2.0]).with_band(vec![0.0], vec![3.0, 3.0])
        ],
        ..Default::default()
    };
    assert!(shape(plot::line_plot(&bad_band, &p)));

    assert!(invalid(plot::histogram_density(
        &[],
        &[],
        &[],
        "t",
        "x",
        &p
    )));
    assert!(shape(plot::histogram_density(
        &[1.0],
        &[],
        &[],
        "t",
        "x",
        &p
    )));
    assert!(invalid(plot::histogram_density(
        &[1.0, 2.0],
        &[0.0, 0.0],
        &[1.5],
        "t",
        "x",
        &p
    )));
    assert!(invalid(plot::histogram_density(
        &[1.0, 2.0],
        &[f64::NAN; 2],
        &[],
        "t",
        "x",
        &p
    )));

    let nan_grid = Matrix::filled(2, 2, f64::NAN);
    assert!(invalid(plot::heatmap(
        &[0.0, 1.0],
        &[0.0, 1.0],
        &nan_grid,
        "t",
        &p,
        3
    )));
    let ok = Matrix::filled(2, 3, 1.0);
    assert!(shape(plot::heatmap(
        &[0.0, 1.0],
        &[0.0, 1.0, 2.0],
        &ok,
        "t",
        &p,
        3
    )));
    assert!(invalid(plot::heatmap(
        &[0.0, 0.0, 1.0],
        &[0.0, 1.0],
        &ok,
        "t",
        &p,
        3
    )));
    assert!(invalid(plot::heatmap(
        &[0.0, f64::NAN, 1.0],
        &[0.0, 1.0],
        &ok,
        "t",
        &p,
        3
    )));
    assert!(invalid(plot::heatmap(
        &[],
        &[],
        &Matrix::zeros(0, 0),
        "t",
        &p,
        3
    )));

    // Nothing was written for any of them.
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}

#[test]
fn unwritable_path_is_an_io_error() {
    let dir = out_dir("io");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A path "under" a regular file cannot be created.
    let r = plot::line_plot(&training_figure(), &file.join("fig"));
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
}
