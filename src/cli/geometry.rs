//! `landscape line`, `landscape surface`, `landscape connect`: loss-landscape geometry
//! (see `landscape::experiments::geometry`).

use super::hessian::{bn_mode_of, BnModeArg};
use super::{progress, write_results, DataArgs, ModelArgs};
use clap::Args;
use landscape::experiments::geometry::{
    curve_point, parse_grid, parse_range, pca_directions, plane_basis, point, train_bend_geo,
    BendTraining, CurveKind, GeoModel, Normalization,
};
use landscape::io::model_file::{write_safetensors, RawTensor};
use landscape::io::network_file::{load_network, save_network, NetworkImport};
use landscape::io::provenance::Provenance;
use landscape::nn::Network;
use landscape::plot::{
    heatmap, heatmap_with_overlay, line_plot, surface3d, LineFigure, Overlay, Series,
};
use landscape::Matrix;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn suffixed(prefix: &Path, s: &str) -> PathBuf {
    let mut p = prefix.as_os_str().to_owned();
    p.push(format!("_{s}"));
    PathBuf::from(p)
}

fn files_of(r: landscape::Result<Vec<PathBuf>>) -> Result<Vec<String>, String> {
    Ok(r.map_err(|e| e.to_string())?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect())
}

/// Train rows (first `samples`, default all) and the test split when present.
#[allow(clippy::type_complexity)]
fn splits(
    data: &DataArgs,
    model: &Network<f64>,
    samples: Option<usize>,
) -> Result<(landscape::data::DataBundle, Matrix<f64>, Vec<usize>), String> {
    let bundle = data.load()?;
    super::check_network_fits(model, &bundle)?;
    let n = bundle.train.y.len();
    let m = samples.unwrap_or(n);
    if m == 0 || m > n {
        return Err(format!("--samples {m}: the training split has {n} samples"));
    }
    let x = bundle.train.x.rows_view(0, m).to_owned();
    let y = bundle.train.y[..m].to_vec();
    Ok((bundle, x, y))
}

/// A direction named on the command line.
#[allow(clippy::too_many_arguments)]
fn direction(
    spec: &str,
    model: &GeoModel,
    x: &Matrix<f64>,
    y: &[usize],
    norm: Normalization,
    keep_bias: bool,
    seed: u64,
    trajectory: &Option<Vec<Vec<f64>>>,
    pca_index: usize,
) -> Result<(Vec<f64>, serde_json::Value), String> {
    let e = |e: landscape::Error| e.to_string();
    let unit = |mut v: Vec<f64>| {
        let n = v.iter().map(|t| t * t).sum::<f64>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|t| *t /= n);
        }
        v
    };
    if spec == "random" {
        let d = model.random_direction(norm, keep_bias, seed).map_err(e)?;
        return Ok((
            d,
            json!({"kind": "random", "normalization": norm, "keep_bias": keep_bias, "seed": seed}),
        ));
    }
    if spec == "gradient" {
        let g = model.gradient(x, y).map_err(e)?;
        let flat: Vec<f64> = g.iter().map(|v| -v).collect();
        return Ok((unit(flat), json!({"kind": "negative gradient (unit norm)"})));
    }
    if let Some(k) = spec.strip_prefix("eigen:") {
        let k: usize = k
            .parse()
            .ok()
            .filter(|&k| k >= 1)
            .ok_or_else(|| format!("direction '{spec}': eigen:K needs K >= 1"))?;
        let p = model.num_params();
        if k > p {
            return Err(format!(
                "direction '{spec}': the model has only {p} parameters"
            ));
        }
        let r = model.top_eigenpairs(x, y, k, seed).map_err(e)?;
        return Ok((
            r.vectors[k - 1].clone(),
            json!({"kind": "hessian eigenvector (unit norm)", "k": k, "eigenvalue": r.values[k - 1], "residual": r.residuals[k - 1]}),
        ));
    }
    if spec == "pca" {
        let traj = trajectory.as_ref().ok_or(
            "direction 'pca' needs --trajectory DIR (checkpoints from train --checkpoint-dir)",
        )?;
        let (dirs, explained) = pca_directions(traj, &model.theta0(), pca_index + 1).map_err(e)?;
        return Ok((
            dirs[pca_index].clone(),
            json!({"kind": "pca of the trajectory (unit norm)", "component": pca_index + 1, "explained_variance_ratio": explained[pca_index], "checkpoints": traj.len()}),
        ));
    }
    if let Some(path) = spec.strip_prefix("model:") {
        let (other, _) =
            load_network::<f64>(Path::new(path), &NetworkImport::default()).map_err(e)?;
        if !same_architecture(&other, &model.net) {
            return Err(format!("{path}: a different architecture than the model"));
        }
        let d: Vec<f64> = other
            .param_vector()
            .iter()
            .zip(model.theta0())
            .map(|(a, b)| a - b)
            .collect();
        return Ok((
            d,
            json!({"kind": "model difference (coordinate 1 reaches it)", "model": path}),
        ));
    }
    Err(format!(
        "unknown direction '{spec}': use random, gradient, eigen:K, pca or model:PATH"
    ))
}

/// Whether two networks have the same layers and parameter shapes (an MLP
/// imported without an input image shape matches the same MLP with one).
fn same_architecture(a: &Network<f64>, b: &Network<f64>) -> bool {
    match (&a.arch.mlp, &b.arch.mlp) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.arch.layers == b.arch.layers && a.arch.input_shape == b.arch.input_shape,
        _ => false,
    }
}

fn load_trajectory(dir: &Option<PathBuf>) -> Result<Option<Vec<Vec<f64>>>, String> {
    let Some(dir) = dir else { return Ok(None) };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .safetensors checkpoints", dir.display()));
    }
    files
        .iter()
        .map(|f| {
            load_network::<f64>(f, &NetworkImport::default())
                .map(|m| m.0.param_vector())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[derive(Args)]
pub struct LineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Interpolate towards this model (direction = B - A).
    #[arg(long, conflicts_with = "direction")]
    pub to: Option<PathBuf>,
    /// random | gradient | eigen:K | pca | model:PATH.
    #[arg(long, default_value = "random")]
    pub direction: String,
    #[arg(long, default_value = "-1:1:51", allow_hyphen_values = true)]
    pub range: String,
    #[arg(long, value_enum, default_value = "filter")]
    pub norm: Normalization,
    /// Keep (and normalise) the bias part of random directions instead of zeroing it.
    #[arg(long)]
    pub keep_bias: bool,
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    /// Use the first N training samples (default all).
    #[arg(long)]
    pub samples: Option<usize>,
    /// BatchNorm statistics at every point: running (eval) or per fixed batch (train).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn cmd_line(a: LineArgs, command_line: &str) -> Result<(), String> {
    let net = a.model.load_network(&a.data.load()?)?;
    let (bundle, x, y) = splits(&a.data, &net, a.samples)?;
    let bn_mode = bn_mode_of(a.bn_mode, a.bn_batch_size);
    let model = GeoModel::new(net, bn_mode).map_err(|e| e.to_string())?;
    let alphas = parse_range(&a.range).map_err(|e| e.to_string())?;
    let traj = load_trajectory(&a.trajectory)?;
    let spec = match &a.to {
        Some(p) => format!("model:{}", p.display()),
        None => a.direction.clone(),
    };
    let (d, dinfo) = direction(&spec, &model, &x, &y, a.norm, a.keep_bias, a.seed, &traj, 0)?;
    direction_norm("line", &d)?;
    let pts: Vec<Vec<f64>> = alphas.iter().map(|&t| vec![t]).collect();
    let t0 = Instant::now();
    let train_ev = model
        .evaluator(vec![d.clone()], &x, &y)
        .map_err(|e| e.to_string())?;
    let pb = progress(pts.len() as u64 * 2, "line");
    let train = train_ev
        .eval_many(&pts, || pb.inc(1))
        .map_err(|e| e.to_string())?;
    let test = match &bundle.test {
        Some(t) => {
            let ev = model
                .evaluator(vec![d.clone()], &t.x, &t.y)
                .map_err(|e| e.to_string())?;
            Some(
                ev.eval_many(&pts, || pb.inc(1))
                    .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    pb.finish_and_clear();
    let mut csv = String::from("alpha,train_loss,train_error,test_loss,test_error\n");
    for (i, t) in alphas.iter().enumerate() {
        let (tl, te) = test.as_ref().map_or((String::new(), String::new()), |v| {
            (format!("{:e}", v[i].0), format!("{}", v[i].1))
        });
        csv.push_str(&format!("{t},{:e},{},{tl},{te}\n", train[i].0, train[i].1));
    }
    if let Some(p) = &a.csv {
        std::fs::write(p, &csv).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let mut files = Vec::new();
    if let Some(prefix) = &a.fig {
        for (what, idx) in [("loss", 0), ("error", 1)] {
            let pick = |v: &[(f64, f64)]| -> Vec<f64> {
                v.iter().map(|r| if idx == 0 { r.0 } else { r.1 }).collect()
            };
            let mut series = vec![Series::new("train", alphas.clone(), pick(&train))];
            if let Some(t) = &test {
                series.push(Series::new("test", alphas.clone(), pick(t)));
            }
            let fig = LineFigure {
                title: format!(
                    "{what} along {}",
                    dinfo["kind"].as_str().unwrap_or("the direction")
                ),
                x_label: "alpha".into(),
                y_label: what.into(),
                log_x: false,
                log_y: false,
                series,
                markers: vec![],
            };
            files.extend(files_of(line_plot(&fig, &suffixed(prefix, what)))?);
        }
    }
    let results = json!({
        "direction": dinfo, "alpha": alphas,
        "train_loss": train.iter().map(|r| r.0).collect::<Vec<_>>(),
        "train_error": train.iter().map(|r| r.1).collect::<Vec<_>>(),
        "test_loss": test.as_ref().map(|v| v.iter().map(|r| r.0).collect::<Vec<_>>()),
        "test_error": test.as_ref().map(|v| v.iter().map(|r| r.1).collect::<Vec<_>>()),
        "seconds": t0.elapsed().as_secs_f64(), "figures": files,
    });
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        json!({"model_file": a.model.model.display().to_string(), "model": super::model_json(&model.net), "bn_mode": bn_mode, "direction": spec, "range": a.range, "samples": y.len()}),
    );
    write_results(a.json.as_deref(), "line", results, &prov)
}

/// How many samples the curvature maps used.
struct CurvatureCounts {
    samples: usize,
}

#[derive(Args)]
pub struct ReplotArgs {
    /// A surface file written by `landscape surface --out`.
    pub surface: PathBuf,
    /// Figure prefix.
    #[arg(long)]
    pub fig: PathBuf,
}

#[derive(Args)]
pub struct SurfaceArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// x direction: random | gradient | eigen:K | pca | model:PATH.
    #[arg(long, default_value = "random")]
    pub x: String,
    /// y direction (random uses seed + 1; pca takes the second component).
    #[arg(long, default_value = "random")]
    pub y: String,
    #[arg(long, default_value = "-1:1:51x-1:1:51", allow_hyphen_values = true)]
    pub grid: String,
    #[arg(long, value_enum, default_value = "filter")]
    pub norm: Normalization,
    #[arg(long)]
    pub keep_bias: bool,
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    #[arg(long)]
    pub samples: Option<usize>,
    /// Curvature maps (lambda_max, lambda_min, |lambda_min/lambda_max|, trace) on this grid
    /// (e.g. -1:1:11x-1:1:11).
    #[arg(long, allow_hyphen_values = true)]
    pub curvature_grid: Option<String>,
    /// Training samples for the curvature maps (default: those of the surface).
    #[arg(long)]
    pub curvature_samples: Option<usize>,
    /// Dense eigendecomposition at or below this many parameters, Lanczos above.
    #[arg(long, default_value_t = 2000)]
    pub dense_limit: usize,
    /// BatchNorm statistics at every point: running (eval) or per fixed batch (train).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The surface, its directions and provenance (safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn read_f64(st: &safetensors::SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<f64>), String> {
    let t = st.tensor(name).map_err(|e| format!("tensor {name}: {e}"))?;
    if t.dtype() != safetensors::Dtype::F64 {
        return Err(format!("tensor {name} is not f64"));
    }
    let v = t
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok((t.shape().to_vec(), v))
}

/// Named maps over a grid.
type Maps = [(String, Matrix<f64>)];

/// The figures of a surface: loss/error heat maps with contours, the 3-D render,
/// and the curvature maps when present.
fn surface_figures(
    prefix: &Path,
    gx: &[f64],
    gy: &[f64],
    maps: &Maps,
    curv: Option<(&[f64], &[f64], &Maps)>,
    trajectory: Option<&[(f64, f64)]>,
) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    // The training trajectory, projected on the plane, over the loss maps (Li et al. fig. 9).
    let overlay = trajectory.map(|xy| Overlay {
        points: vec![(0.0, 0.0, "model".into())],
        paths: vec![xy.to_vec()],
    });
    for (name, m) in maps {
        let levels = if name.contains("loss") { 10 } else { 6 };
        let path = suffixed(prefix, name);
        files.extend(files_of(match (&overlay, name.contains("loss")) {
            (Some(o), true) => heatmap_with_overlay(gx, gy, m, name, &path, levels, o),
            _ => heatmap(gx, gy, m, name, &path, levels),
        })?);
        if name == "train_loss" {
            files.extend(files_of(surface3d(
                gx,
                gy,
                m,
                "train loss surface",
                "loss",
                &suffixed(prefix, "train_loss_3d"),
            ))?);
        }
    }
    if let Some((cx, cy, cm)) = curv {
        for (name, m) in cm {
            files.extend(files_of(heatmap(
                cx,
                cy,
                m,
                name,
                &suffixed(prefix, name),
                6,
            ))?);
        }
    }
    Ok(files)
}

/// Refuses a degenerate plane: a zero direction (e.g. `model:` the model itself, a zero
/// gradient) or two parallel ones would give a surface that only varies along a line.
fn check_plane(dx: &[f64], dy: &[f64]) -> Result<(), String> {
    use landscape::tensor::dot;
    let (nx, ny) = (direction_norm("x", dx)?, direction_norm("y", dy)?);
    if (dot(dx, dy) / (nx * ny)).abs() > 1.0 - 1e-12 {
        return Err("the x and y directions are parallel: the plane is degenerate".into());
    }
    Ok(())
}

/// The norm of a direction, refusing a zero or non-finite one (nothing to move along).
fn direction_norm(name: &str, d: &[f64]) -> Result<f64, String> {
    let n = landscape::tensor::dot(d, d).sqrt();
    if n.is_finite() && n > 0.0 {
        Ok(n)
    } else {
        Err(format!(
            "the {name} direction is {}: nothing to move along",
            if n == 0.0 { "zero" } else { "not finite" }
        ))
    }
}

/// Checkpoints projected on the plane `theta0 + a dx + b dy`.
struct PlaneProjection {
    /// Least-squares coordinates `(a, b)` of `theta_i - theta0` in the span of `dx, dy`.
    coords: Vec<(f64, f64)>,
    /// `||theta_i - theta0 - a dx - b dy||`: how far each checkpoint is from the plane.
    off_plane: Vec<f64>,
    /// `off_plane / ||theta_i - theta0||` (0 for the centre itself).
    relative_off_plane: Vec<f64>,
}

/// Projects `thetas` on the plane through `theta0` spanned by `dx` and `dy` (least
/// squares through the 2 x 2 Gram matrix, so non-orthogonal directions work too).
/// The directions must have passed [`check_plane`] (nonzero, not parallel).
fn project_on_plane(
    thetas: &[Vec<f64>],
    theta0: &[f64],
    dx: &[f64],
    dy: &[f64],
) -> Result<PlaneProjection, String> {
    use landscape::tensor::dot;
    let (gxx, gxy, gyy) = (dot(dx, dx), dot(dx, dy), dot(dy, dy));
    let det = gxx * gyy - gxy * gxy;
    let mut out = PlaneProjection {
        coords: Vec::new(),
        off_plane: Vec::new(),
        relative_off_plane: Vec::new(),
    };
    for t in thetas {
        if t.len() != theta0.len() {
            return Err("trajectory checkpoints of another architecture than the model".into());
        }
        let d: Vec<f64> = t.iter().zip(theta0).map(|(a, b)| a - b).collect();
        let (bx, by) = (dot(&d, dx), dot(&d, dy));
        let a = (gyy * bx - gxy * by) / det;
        let b = (gxx * by - gxy * bx) / det;
        let r: f64 = d
            .iter()
            .zip(dx.iter().zip(dy))
            .map(|(v, (x, y))| (v - a * x - b * y).powi(2))
            .sum::<f64>()
            .sqrt();
        let nd = dot(&d, &d).sqrt();
        out.coords.push((a, b));
        out.off_plane.push(r);
        out.relative_off_plane
            .push(if nd > 0.0 { r / nd } else { 0.0 });
    }
    Ok(out)
}

/// Re-draws a saved surface's figures from its file alone.
pub fn cmd_replot(a: ReplotArgs) -> Result<(), String> {
    {
        let (path, prefix) = (&a.surface, &a.fig);
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("{}: not a safetensors file: {e}", path.display()))?;
        let (_, gx) = read_f64(&st, "grid_x")?;
        let (_, gy) = read_f64(&st, "grid_y")?;
        let mut maps = Vec::new();
        for name in ["train_loss", "train_error", "test_loss", "test_error"] {
            if let Ok((shape, v)) = read_f64(&st, name) {
                maps.push((name.to_string(), Matrix::from_vec(shape[0], shape[1], v)));
            }
        }
        let curv = match (
            read_f64(&st, "curvature_grid_x"),
            read_f64(&st, "curvature_grid_y"),
        ) {
            (Ok((_, cx)), Ok((_, cy))) => {
                let mut cm = Vec::new();
                for name in ["lambda_max", "lambda_min", "abs_ratio_min_max", "trace"] {
                    let (shape, v) = read_f64(&st, name)?;
                    cm.push((name.to_string(), Matrix::from_vec(shape[0], shape[1], v)));
                }
                Some((cx, cy, cm))
            }
            _ => None,
        };
        let traj_xy: Option<Vec<(f64, f64)>> = read_f64(&st, "trajectory_xy")
            .ok()
            .filter(|(shape, v)| shape.len() == 2 && shape[1] == 2 && v.len() == 2 * shape[0])
            .map(|(_, v)| v.chunks(2).map(|c| (c[0], c[1])).collect());
        let files = surface_figures(
            prefix,
            &gx,
            &gy,
            &maps,
            curv.as_ref()
                .map(|(x, y, m)| (x.as_slice(), y.as_slice(), m.as_slice())),
            traj_xy.as_deref(),
        )?;
        eprintln!("re-plotted {} figures from {}", files.len(), path.display());
        Ok(())
    }
}

pub fn cmd_surface(a: SurfaceArgs, command_line: &str) -> Result<(), String> {
    let model_path = &a.model;
    let data = &a.data;
    let (net, _) =
        load_network::<f64>(model_path, &NetworkImport::default()).map_err(|e| e.to_string())?;
    let (bundle, x, y) = splits(data, &net, a.samples)?;
    let bn_mode = bn_mode_of(a.bn_mode, a.bn_batch_size);
    let model = GeoModel::new(net, bn_mode).map_err(|e| e.to_string())?;
    let (gx, gy) = parse_grid(&a.grid).map_err(|e| e.to_string())?;
    let traj = load_trajectory(&a.trajectory)?;
    let (dx, ix) = direction(&a.x, &model, &x, &y, a.norm, a.keep_bias, a.seed, &traj, 0)?;
    let (dy, iy) = direction(
        &a.y,
        &model,
        &x,
        &y,
        a.norm,
        a.keep_bias,
        a.seed + 1,
        &traj,
        usize::from(a.y == "pca"),
    )?;
    check_plane(&dx, &dy)?;
    let trajectory_xy = traj
        .as_ref()
        .map(|t| project_on_plane(t, &model.theta0(), &dx, &dy))
        .transpose()?;
    let t0 = Instant::now();
    let pts: Vec<Vec<f64>> = gy
        .iter()
        .flat_map(|&b| gx.iter().map(move |&a| vec![a, b]))
        .collect();
    let mut maps = Vec::new();
    let sets: Vec<(&str, &Matrix<f64>, &[usize])> = std::iter::once(("train", &x, y.as_slice()))
        .chain(bundle.test.as_ref().map(|t| ("test", &t.x, t.y.as_slice())))
        .collect();
    let pb = progress((pts.len() * sets.len()) as u64, "surface");
    for (name, xs, ys) in &sets {
        let ev = model
            .evaluator(vec![dx.clone(), dy.clone()], xs, ys)
            .map_err(|e| e.to_string())?;
        let r = ev
            .eval_many(&pts, || pb.inc(1))
            .map_err(|e| e.to_string())?;
        maps.push((
            format!("{name}_loss"),
            Matrix::from_vec(gy.len(), gx.len(), r.iter().map(|v| v.0).collect()),
        ));
        maps.push((
            format!("{name}_error"),
            Matrix::from_vec(gy.len(), gx.len(), r.iter().map(|v| v.1).collect()),
        ));
    }
    pb.finish_and_clear();
    let surface_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "surface: {} points x {} samples in {surface_s:.1} s",
        pts.len(),
        y.len()
    );
    // Curvature maps.
    let mut curv = None;
    let mut curv_points = Vec::new();
    if let Some(spec) = &a.curvature_grid {
        let (cx, cy) = parse_grid(spec).map_err(|e| e.to_string())?;
        let cm = a.curvature_samples.unwrap_or(y.len()).min(y.len());
        let (xc, yc) = (x.rows_view(0, cm).to_owned(), &y[..cm]);
        let theta0 = model.theta0();
        let dirs = vec![dx.clone(), dy.clone()];
        let pb = progress((cx.len() * cy.len()) as u64, "curvature");
        let mut fields = [
            Vec::with_capacity(cx.len() * cy.len()),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ];
        for &b in &cy {
            for &aa in &cx {
                let theta = point(&theta0, &dirs, &[aa, b]);
                let c = model
                    .curvature_at(&theta, &xc, yc, a.dense_limit, 1e-8, 30, a.seed)
                    .map_err(|e| e.to_string())?;
                fields[0].push(c.lambda_max);
                fields[1].push(c.lambda_min);
                fields[2].push(c.ratio);
                fields[3].push(c.trace);
                curv_points.push(json!({"x": aa, "y": b, "curvature": c}));
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
        let names = ["lambda_max", "lambda_min", "abs_ratio_min_max", "trace"];
        let cmaps: Vec<(String, Matrix<f64>)> = names
            .iter()
            .zip(fields)
            .map(|(n, f)| (n.to_string(), Matrix::from_vec(cy.len(), cx.len(), f)))
            .collect();
        curv = Some((cx, cy, cmaps, CurvatureCounts { samples: cm }));
    }
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        json!({"model_file": model_path.display().to_string(), "model": super::model_json(&model.net), "bn_mode": bn_mode, "x": a.x, "y": a.y, "grid": a.grid,
               "normalization": a.norm, "keep_bias": a.keep_bias, "samples": y.len(),
               "curvature_grid": a.curvature_grid, "curvature_samples": curv.as_ref().map(|c| c.3.samples)}),
    );
    if let Some(out) = &a.out {
        let mut tensors = vec![
            RawTensor::f64("grid_x", vec![gx.len()], &gx),
            RawTensor::f64("grid_y", vec![gy.len()], &gy),
            RawTensor::f64("direction_x", vec![dx.len()], &dx),
            RawTensor::f64("direction_y", vec![dy.len()], &dy),
            RawTensor::f64("theta0", vec![dx.len()], &model.theta0()),
        ];
        for (n, m) in &maps {
            tensors.push(RawTensor::f64(
                n.clone(),
                vec![m.rows(), m.cols()],
                m.as_slice(),
            ));
        }
        if let Some(p) = &trajectory_xy {
            let flat: Vec<f64> = p.coords.iter().flat_map(|&(a, b)| [a, b]).collect();
            tensors.push(RawTensor::f64(
                "trajectory_xy",
                vec![p.coords.len(), 2],
                &flat,
            ));
        }
        if let Some((cx, cy, cm, _)) = &curv {
            tensors.push(RawTensor::f64("curvature_grid_x", vec![cx.len()], cx));
            tensors.push(RawTensor::f64("curvature_grid_y", vec![cy.len()], cy));
            for (n, m) in cm {
                tensors.push(RawTensor::f64(
                    n.clone(),
                    vec![m.rows(), m.cols()],
                    m.as_slice(),
                ));
            }
        }
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "landscape-surface".to_string());
        meta.insert(
            "layout".into(),
            "value[i, j] at theta0 + grid_x[j] direction_x + grid_y[i] direction_y; parameter order [vec(W0), b0, ...], vec = row-major".to_string(),
        );
        meta.insert("direction_x".into(), ix.to_string());
        meta.insert("direction_y".into(), iy.to_string());
        meta.insert("model".into(), super::model_json(&model.net).to_string());
        meta.insert(
            "provenance".into(),
            serde_json::to_string(&prov).unwrap_or_default(),
        );
        write_safetensors(out, &tensors, &meta).map_err(|e| e.to_string())?;
    }
    let mut files = Vec::new();
    if let Some(prefix) = &a.fig {
        files = surface_figures(
            prefix,
            &gx,
            &gy,
            &maps,
            curv.as_ref()
                .map(|(x, y, m, _)| (x.as_slice(), y.as_slice(), m.as_slice())),
            trajectory_xy.as_ref().map(|p| p.coords.as_slice()),
        )?;
    }
    let train_loss = &maps[0].1;
    let (imin, vmin) =
        train_loss
            .as_slice()
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |b, (i, v)| if v < b.1 { (i, v) } else { b },
            );
    let results = json!({
        "direction_x": ix, "direction_y": iy, "grid_x": gx, "grid_y": gy,
        "train_loss_min": vmin, "train_loss_argmin": [gx[imin % gx.len()], gy[imin / gx.len()]],
        "surface_seconds": surface_s, "points": pts.len(), "samples": y.len(),
        "curvature": curv_points, "file": a.out.as_ref().map(|p| p.display().to_string()), "figures": files,
        "trajectory": trajectory_xy.as_ref().map(|p| json!({
            "coords": p.coords.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>(),
            "off_plane_distance": p.off_plane, "relative_off_plane": p.relative_off_plane})),
    });
    write_results(a.json.as_deref(), "surface", results, &prov)
}

#[derive(Args)]
pub struct ConnectArgs {
    /// One end (t = 0).
    #[arg(long)]
    pub a: PathBuf,
    /// The other end (t = 1).
    #[arg(long)]
    pub b: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value = "bezier")]
    pub curve: CurveKind,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Points in t along each path.
    #[arg(long, default_value_t = 41)]
    pub points: usize,
    /// Points in t where the top Hessian eigenvalue is computed.
    #[arg(long, default_value_t = 11)]
    pub eigen_points: usize,
    /// Training samples for the eigenvalues.
    #[arg(long, default_value_t = 1000)]
    pub eigen_samples: usize,
    /// Points per side of the plane through the ends and the bend.
    #[arg(long, default_value_t = 31)]
    pub plane_grid: usize,
    /// The trained bend, as a model file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// BatchNorm statistics at every point: running (eval) or per fixed batch (train).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn cmd_connect(a: ConnectArgs, command_line: &str) -> Result<(), String> {
    let e = |e: landscape::Error| e.to_string();
    let (ma, _) = load_network::<f64>(&a.a, &NetworkImport::default()).map_err(e)?;
    let (mb, _) = load_network::<f64>(&a.b, &NetworkImport::default()).map_err(e)?;
    if !same_architecture(&ma, &mb) || ma.arch.mlp != mb.arch.mlp {
        return Err(format!(
            "{} and {} have different architectures or settings",
            a.a.display(),
            a.b.display()
        ));
    }
    if a.curve == CurveKind::Linear {
        return Err(
            "--curve must be bezier or polychain (the linear path is always reported)".into(),
        );
    }
    if a.points < 2 || a.eigen_points < 2 || a.plane_grid < 2 {
        return Err("--points, --eigen-points and --plane-grid must be at least 2".into());
    }
    let (bundle, x, y) = splits(&a.data, &ma, None)?;
    let (ta, tb) = (ma.param_vector(), mb.param_vector());
    let bn_mode = bn_mode_of(a.bn_mode, a.bn_batch_size);
    let geo = GeoModel::new(ma, bn_mode).map_err(e)?;
    let t0 = Instant::now();
    let cfg = BendTraining {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
    };
    let pb = progress(
        (a.epochs * y.len().div_ceil(a.batch_size.max(1))) as u64,
        "bend",
    );
    let (bend, history) =
        train_bend_geo(&geo, a.curve, &ta, &tb, &x, &y, &cfg, || pb.inc(1)).map_err(e)?;
    pb.finish_and_clear();
    let train_s = t0.elapsed().as_secs_f64();
    let ts: Vec<f64> = (0..a.points)
        .map(|i| i as f64 / (a.points - 1) as f64)
        .collect();
    // Loss and error along both paths: a path is the plane theta = a + s1 (b - a) + s2 (bend - a).
    let d1: Vec<f64> = tb.iter().zip(&ta).map(|(p, q)| p - q).collect();
    let d2: Vec<f64> = bend.iter().zip(&ta).map(|(p, q)| p - q).collect();
    let coords = |kind: CurveKind, t: f64| -> Vec<f64> {
        let (_, wm, wb) = landscape::experiments::geometry::curve_weights(kind, t);
        vec![wb, wm]
    };
    let sets: Vec<(&str, &Matrix<f64>, &[usize])> = std::iter::once(("train", &x, y.as_slice()))
        .chain(bundle.test.as_ref().map(|t| ("test", &t.x, t.y.as_slice())))
        .collect();
    let mut paths = serde_json::Map::new();
    let mut csv = String::from("path,split,t,loss,error\n");
    let mut loss_series = Vec::new();
    let mut err_series = Vec::new();
    let mut summary = serde_json::Map::new();
    for (name, xs, ys) in &sets {
        let ev = geo
            .evaluator(vec![d1.clone(), d2.clone()], xs, ys)
            .map_err(e)?;
        for kind in [CurveKind::Linear, a.curve] {
            let pts: Vec<Vec<f64>> = ts.iter().map(|&t| coords(kind, t)).collect();
            let r = ev.eval_many(&pts, || {}).map_err(e)?;
            let kname = serde_json::to_value(kind).unwrap_or_default();
            let kname = kname.as_str().unwrap_or("curve").to_string();
            for (t, v) in ts.iter().zip(&r) {
                csv.push_str(&format!("{kname},{name},{t},{:e},{}\n", v.0, v.1));
            }
            let losses: Vec<f64> = r.iter().map(|v| v.0).collect();
            let errors: Vec<f64> = r.iter().map(|v| v.1).collect();
            let ends = losses[0].max(losses[losses.len() - 1]);
            let max = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            summary.insert(
                format!("{kname}_{name}"),
                json!({"max_loss": max, "barrier_over_higher_end": max - ends, "max_error": errors.iter().copied().fold(0.0, f64::max)}),
            );
            loss_series.push(Series::new(
                format!("{kname} ({name})"),
                ts.clone(),
                losses.clone(),
            ));
            err_series.push(Series::new(
                format!("{kname} ({name})"),
                ts.clone(),
                errors.clone(),
            ));
            paths.insert(
                format!("{kname}_{name}"),
                json!({"t": ts, "loss": losses, "error": errors}),
            );
        }
    }
    // Top Hessian eigenvalue along both paths (first eigen_samples training samples).
    let em = a.eigen_samples.min(y.len());
    let (xe, ye) = (x.rows_view(0, em).to_owned(), &y[..em]);
    let te: Vec<f64> = (0..a.eigen_points)
        .map(|i| i as f64 / (a.eigen_points - 1) as f64)
        .collect();
    let mut eig_series = Vec::new();
    let mut eig_json = serde_json::Map::new();
    let pb = progress(2 * te.len() as u64, "eigen");
    for kind in [CurveKind::Linear, a.curve] {
        let mut vals = Vec::new();
        let mut res = Vec::new();
        for &t in &te {
            let mut m = geo.net.clone();
            m.set_param_vector(&curve_point(kind, &ta, &bend, &tb, t))
                .map_err(e)?;
            let r = GeoModel::new(m, bn_mode)
                .and_then(|g| g.top_eigenpairs(&xe, ye, 1, a.seed))
                .map_err(e)?;
            vals.push(r.values[0]);
            res.push(r.residuals[0]);
            pb.inc(1);
        }
        let kname = serde_json::to_value(kind).unwrap_or_default();
        let kname = kname.as_str().unwrap_or("curve").to_string();
        eig_series.push(Series::new(kname.clone(), te.clone(), vals.clone()));
        eig_json.insert(kname, json!({"t": te, "lambda_max": vals, "residual": res}));
    }
    pb.finish_and_clear();
    let mut files = Vec::new();
    let (u, v, pts3) = plane_basis(&ta, &tb, &bend).map_err(e)?;
    if let Some(prefix) = &a.fig {
        for (what, s) in [("loss", loss_series), ("error", err_series)] {
            let fig = LineFigure {
                title: format!("{what} along the linear path and the trained curve"),
                x_label: "t".into(),
                y_label: what.into(),
                log_x: false,
                log_y: what == "loss",
                series: s,
                markers: vec![],
            };
            files.extend(files_of(line_plot(&fig, &suffixed(prefix, what)))?);
        }
        let fig = LineFigure {
            title: format!("top Hessian eigenvalue along the paths ({em} samples)"),
            x_label: "t".into(),
            y_label: "lambda_max".into(),
            log_x: false,
            log_y: false,
            series: eig_series,
            markers: vec![],
        };
        files.extend(files_of(line_plot(&fig, &suffixed(prefix, "eigen")))?);
        // The plane through a, b and the bend (u along b - a, v towards the bend).
        let xs: Vec<f64> = pts3.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = pts3.iter().map(|p| p.1).collect();
        let (xmin, xmax) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let (ymin, ymax) = (
            ys.iter().copied().fold(f64::INFINITY, f64::min),
            ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let (mx, my) = (
            0.25 * (xmax - xmin).max(1e-9),
            0.35 * (ymax - ymin).max(0.25 * (xmax - xmin)),
        );
        let n = a.plane_grid;
        let gx: Vec<f64> = (0..n)
            .map(|i| xmin - mx + (xmax - xmin + 2.0 * mx) * i as f64 / (n - 1) as f64)
            .collect();
        let gy: Vec<f64> = (0..n)
            .map(|i| ymin - my + (ymax - ymin + 2.0 * my) * i as f64 / (n - 1) as f64)
            .collect();
        let ev = geo
            .evaluator(vec![u.clone(), v.clone()], &x, &y)
            .map_err(e)?;
        let grid_pts: Vec<Vec<f64>> = gy
            .iter()
            .flat_map(|&b| gx.iter().map(move |&a| vec![a, b]))
            .collect();
        let pb = progress(grid_pts.len() as u64, "plane");
        let r = ev.eval_many(&grid_pts, || pb.inc(1)).map_err(e)?;
        pb.finish_and_clear();
        let lossmap = Matrix::from_vec(n, n, r.iter().map(|v| v.0.ln()).collect());
        let proj = |t: f64| {
            let p = curve_point(a.curve, &ta, &bend, &tb, t);
            let d: Vec<f64> = p.iter().zip(&ta).map(|(x, y)| x - y).collect();
            (
                landscape::tensor::dot(&d, &u),
                landscape::tensor::dot(&d, &v),
            )
        };
        let overlay = Overlay {
            points: vec![
                (pts3[0].0, pts3[0].1, "A".into()),
                (pts3[1].0, pts3[1].1, "B".into()),
                (pts3[2].0, pts3[2].1, "bend".into()),
            ],
            paths: vec![(0..=40).map(|i| proj(i as f64 / 40.0)).collect()],
        };
        files.extend(files_of(heatmap_with_overlay(
            &gx,
            &gy,
            &lossmap,
            "ln(train loss) on the plane through A, B and the bend",
            &suffixed(prefix, "plane"),
            10,
            &overlay,
        ))?);
    }
    if let Some(p) = &a.csv {
        std::fs::write(p, &csv).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(out) = &a.out {
        let mut m = geo.net.clone();
        m.set_param_vector(&bend).map_err(e)?;
        let mut meta = BTreeMap::new();
        meta.insert(
            "curve_bend_of".to_string(),
            format!("{} -> {}", a.a.display(), a.b.display()),
        );
        save_network(&m, out, &meta).map_err(e)?;
    }
    let results = json!({
        "curve": a.curve, "bend_training": {"config": cfg, "epoch_mean_batch_loss": history, "seconds": train_s},
        "summary": summary, "paths": paths, "top_eigenvalue": eig_json,
        "plane_coordinates": {"a": pts3[0], "b": pts3[1], "bend": pts3[2]},
        "distance_a_b": pts3[1].0, "figures": files,
    });
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        json!({"a": a.a.display().to_string(), "b": a.b.display().to_string(), "model": super::model_json(&geo.net), "bn_mode": bn_mode, "curve": a.curve, "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size}),
    );
    write_results(a.json.as_deref(), "connect", results, &prov)
}
