//! `landscape sample-size`: the seed's sample-size experiment, reproduced and extended
//! with exact Hessians (see `landscape::experiments::sample_size`).

use super::{progress, write_results};
use clap::Args;
use landscape::data::{self, DataOptions, Normalize};
use landscape::experiments::sample_size::{
    architecture, ema, increment_curves, loglog_slope, subspace_sin, SampleSizeConfig,
};
use landscape::hessian::directional::directional_derivatives;
use landscape::hessian::{HessianOperator, Part};
use landscape::io::checkpoint::{test_point, CheckpointError, Decoder, Encoder, Session};
use landscape::io::model_file::{load_mlp_f64, save_mlp, ImportOptions};
use landscape::io::provenance::Provenance;
use landscape::linalg::{lanczos, LanczosOptions, Which};
use landscape::nn::{Init, Mlp, MlpConfig};
use landscape::plot::{line_plot, LineFigure, Series};
use landscape::rng::Rng;
use landscape::theory::lemma2::{hessian_increments, log_grid};
use landscape::train::{train, Optimizer, TrainConfig};
use landscape::Matrix;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct SampleSizeArgs {
    /// The whole experiment as a JSON file (fields of the defaults printed by
    /// `--print-config`); flags given beside it override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub hidden_sizes: Option<Vec<usize>>,
    #[arg(long, value_delimiter = ',')]
    pub extra_layers: Option<Vec<usize>>,
    #[arg(long)]
    pub fixed_depth: Option<usize>,
    #[arg(long)]
    pub fixed_width: Option<usize>,
    #[arg(long)]
    pub orderings: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Use the first N training samples (default: all).
    #[arg(long)]
    pub train_size: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub ema: Option<f64>,
    /// Radii of the perturbed points (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub radii: Option<Vec<f64>>,
    #[arg(long)]
    pub draws: Option<usize>,
    /// Skip the Hessian side (increments, eigenspaces).
    #[arg(long)]
    pub no_hessian: bool,
    #[arg(long)]
    pub top_q: Option<usize>,
    /// Trained models are cached here, keyed by a hash of everything that defines them.
    #[arg(long, default_value = "sample-size-cache")]
    pub cache_dir: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Figure prefix: writes PREFIX_width, _width_loglog, _depth, _depth_loglog, _radii,
    /// _decomposition, _hessian, _eigenspace (.png and .svg).
    #[arg(long)]
    pub fig: Option<PathBuf>,
    /// Checkpoints after finished configurations (see `--resume`).
    #[command(flatten)]
    pub ckpt: super::CheckpointArgs,
}

/// The state of a sample-size run: finished configurations (their JSON row, CSV lines
/// and figure curve), the models this run trained (cache key and seconds, so that a
/// resumed run reports them as trained, not cached) and the model being trained.
#[derive(Default)]
struct RunState {
    rows: Vec<serde_json::Value>,
    csv: Vec<String>,
    curves: Vec<Curve>,
    trained: Vec<(String, f64)>,
    training: Option<String>,
}

impl RunState {
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.usize(self.rows.len());
        for ((r, c), cv) in self.rows.iter().zip(&self.csv).zip(&self.curves) {
            e.str(&r.to_string())
                .str(c)
                .usize(cv.arch.0)
                .usize(cv.arch.1)
                .f64s(&cv.ema)
                .f64(cv.slope)
                .f64s(&cv.band.0)
                .f64s(&cv.band.1);
        }
        e.usize(self.trained.len());
        for (k, s) in &self.trained {
            e.str(k).f64(*s);
        }
        e.str(self.training.as_deref().unwrap_or(""));
        e.finish()
    }

    fn decode(payload: &[u8], dir: &Path, total: usize) -> Result<Self, String> {
        let path = landscape::io::checkpoint::path_in(dir);
        let mut d = Decoder::new(payload, &path);
        let read = |d: &mut Decoder| -> Result<Self, CheckpointError> {
            let mut st = RunState::default();
            let n = d.usize()?;
            if n > total {
                return Err(d.error(format!("{n} finished configurations of {total}")));
            }
            for _ in 0..n {
                let row = d.string()?;
                st.rows.push(
                    serde_json::from_str(&row)
                        .map_err(|e| d.error(format!("a finished configuration: {e}")))?,
                );
                st.csv.push(d.string()?);
                st.curves.push(Curve {
                    arch: (d.usize()?, d.usize()?),
                    ema: d.f64s()?,
                    slope: d.f64()?,
                    band: (d.f64s()?, d.f64s()?),
                });
            }
            for _ in 0..d.usize()? {
                st.trained.push((d.string()?, d.f64()?));
            }
            let t = d.string()?;
            st.training = (!t.is_empty()).then_some(t);
            d.end()?;
            Ok(st)
        };
        read(&mut d).map_err(|e| e.to_string())
    }
}

fn effective_config(a: &SampleSizeArgs) -> Result<SampleSizeConfig, String> {
    let mut c = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            serde_json::from_str::<SampleSizeConfig>(&text)
                .map_err(|e| format!("{}: not a sample-size configuration: {e}", p.display()))?
        }
        None => SampleSizeConfig::default(),
    };
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = &a.$f {
                c.$f = v.clone();
            }
        };
    }
    set!(data);
    set!(hidden_sizes);
    set!(extra_layers);
    set!(fixed_depth);
    set!(fixed_width);
    set!(orderings);
    set!(epochs);
    set!(lr);
    set!(batch_size);
    set!(seed);
    set!(ema);
    set!(radii);
    set!(draws);
    set!(top_q);
    if a.train_size.is_some() {
        c.train_size = a.train_size;
    }
    if a.no_hessian {
        c.hessian = false;
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The model of `(h, extra)`: its configuration, training configuration, cache key
/// source and key, and cache file.
fn cache_entry(
    c: &SampleSizeConfig,
    arch: (usize, usize),
    x: &Matrix<f64>,
    classes: usize,
    data_hash: &str,
    cache: &Path,
) -> (MlpConfig, TrainConfig, String, String, PathBuf) {
    let cfg = architecture(x.cols(), classes, arch.0, arch.1);
    let tc = TrainConfig {
        epochs: c.epochs,
        batch_size: c.batch_size,
        optimizer: Optimizer::Adam {
            lr: c.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        seed: c.seed,
    };
    let key_src = json!({"model": cfg, "train": tc, "init": "torch", "init_seed": c.seed,
                         "data": data_hash, "n": x.rows(), "normalize": "symmetric",
                         "version": env!("CARGO_PKG_VERSION")})
    .to_string();
    let key = hex(&Sha256::digest(key_src.as_bytes()))[..16].to_string();
    let path = cache.join(format!("h{}_x{}_{key}.safetensors", arch.0, arch.1));
    (cfg, tc, key_src, key, path)
}

/// Writes a model trained on another MPI rank to the cache (rank 0 only; ranks other
/// than 0 write nothing), as [`train_or_load`] would have.
fn cache_model(
    c: &SampleSizeConfig,
    cfg: MlpConfig,
    params: &[f64],
    key_src: &str,
    path: &Path,
) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let mut model = Mlp::init(cfg, Init::Torch, 1.0, c.seed).map_err(|e| e.to_string())?;
    model.set_param_vector(params).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut meta = BTreeMap::new();
    meta.insert("sample_size_cache_key".to_string(), key_src.to_string());
    save_mlp(&model, path, &meta).map_err(|e| e.to_string())
}

/// Trains the model of `(h, extra)` as the seed did, or loads it from the cache.
#[allow(clippy::too_many_arguments)]
fn train_or_load(
    c: &SampleSizeConfig,
    arch: (usize, usize),
    x: &Matrix<f64>,
    y: &[usize],
    classes: usize,
    data_hash: &str,
    cache: &Path,
    mut session: Option<(&mut Session, &mut RunState)>,
) -> Result<(Mlp<f64>, bool, f64, String), String> {
    let (cfg, tc, key_src, key, path) = cache_entry(c, arch, x, classes, data_hash, cache);
    // A resumed run: a model whose training the interrupted run started but did not
    // record as finished is trained again (its cached file may be from that run); one it
    // finished is loaded and reported as trained, with its training time.
    let interrupted = session
        .as_ref()
        .is_some_and(|(_, st)| st.training.as_deref() == Some(key.as_str()));
    let trained_here = session
        .as_ref()
        .and_then(|(_, st)| st.trained.iter().find(|(k, _)| *k == key).map(|t| t.1));
    if path.exists() && !interrupted {
        let m = load_mlp_f64(&path, &ImportOptions::default()).map_err(|e| e.to_string())?;
        if m.config == cfg {
            return Ok(match trained_here {
                Some(s) => (m, false, s, key),
                None => (m, true, 0.0, key),
            });
        }
    }
    if let Some((s, st)) = session.as_mut() {
        st.training = Some(key.clone());
        s.save(&st.encode()).map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    let mut model = Mlp::init(cfg, Init::Torch, 1.0, c.seed).map_err(|e| e.to_string())?;
    let pb = progress((c.epochs * x.rows().div_ceil(c.batch_size)) as u64, "train");
    pb.set_message(format!("h={} extra={}", arch.0, arch.1));
    train(
        &mut model,
        x,
        y,
        None,
        &tc,
        |_, _, _| pb.inc(1),
        |_, _| Ok(()),
    )
    .map_err(|e| format!("h = {}, extra layers = {}: {e}", arch.0, arch.1))?;
    pb.finish_and_clear();
    if landscape::dist::is_root() {
        std::fs::create_dir_all(cache)
            .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    }
    let mut meta = BTreeMap::new();
    meta.insert("sample_size_cache_key".to_string(), key_src);
    save_mlp(&model, &path, &meta).map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    if let Some((s, st)) = session.as_mut() {
        st.training = None;
        st.trained.push((key.clone(), secs));
        s.save(&st.encode()).map_err(|e| e.to_string())?;
    }
    Ok((model, false, secs, key))
}

/// Per-sample losses of `model` (evaluation mode).
fn losses(model: &Mlp<f64>, x: &Matrix<f64>, y: &[usize]) -> Result<Vec<f64>, String> {
    let z = model.logits(x).map_err(|e| e.to_string())?;
    Ok(model.config.loss.per_sample(&z, y))
}

/// Values on the log grid (for JSON and figures); `v[j]` belongs to `k = j + 1`.
fn on_grid(v: &[f64], ks: &[usize]) -> Vec<f64> {
    ks.iter().map(|&k| v[k - 1]).collect()
}

pub fn cmd_sample_size(a: SampleSizeArgs, command_line: &str) -> Result<(), String> {
    let c = effective_config(&a)?;
    if a.print_config {
        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
        return Ok(());
    }
    super::probe_outputs(&[a.csv.as_deref(), a.json.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
    let t_all = Instant::now();
    let opts = DataOptions {
        normalize: Normalize::Symmetric,
        ..Default::default()
    };
    let bundle = data::load(&c.data, &opts).map_err(|e| e.to_string())?;
    let n_all = bundle.train.y.len();
    let m = c.train_size.unwrap_or(n_all);
    if m > n_all {
        return Err(format!(
            "--train-size {m} but {} has only {n_all} training samples",
            bundle.name
        ));
    }
    let x = bundle.train.x.rows_view(0, m).to_owned();
    let y = bundle.train.y[..m].to_vec();
    let ks_plot = log_grid(m, 20);
    let mut hessian_model = None;
    let configs = c.configurations();
    let mut session = a.ckpt.session(
        "sample-size",
        json!({"experiment": c, "train_samples": m, "data": bundle.summary_json()}),
    )?;
    let mut st = match session.as_mut().and_then(|s| s.take_resume()) {
        Some(p) => RunState::decode(
            &p,
            a.ckpt.dir().expect("a checkpoint folder"),
            configs.len(),
        )?,
        None => RunState::default(),
    };
    let pb = progress(configs.len() as u64, "configs");
    pb.set_position(st.rows.len() as u64);
    // One configuration: its JSON row, CSV lines, curve, model and whether it came from
    // the cache.
    let run_config = |arch: (usize, usize),
                      session: Option<(&mut Session, &mut RunState)>|
     -> Result<(serde_json::Value, String, Curve, Mlp<f64>, bool), String> {
        let mut csv = String::new();
        let (model, cached, train_s, key) = train_or_load(
            &c,
            arch,
            &x,
            &y,
            bundle.classes,
            &bundle.content_hash,
            &a.cache_dir,
            session,
        )?;
        let l = losses(&model, &x, &y)?;
        let cur = increment_curves(&l, c.orderings, c.seed).map_err(|e| e.to_string())?;
        // A collapsed model (every sample has the same loss, e.g. all ReLUs dead) has no
        // increments beyond rounding: its slope is undefined, not -1.
        let mean_l = l.iter().sum::<f64>() / m as f64;
        let sd_l = (l.iter().map(|v| (v - mean_l).powi(2)).sum::<f64>() / m as f64).sqrt();
        let collapsed = sd_l <= 1e-9 * mean_l.abs().max(1e-300);
        let slope = if collapsed {
            None
        } else {
            loglog_slope(&cur.mean, 10)
        };
        if collapsed {
            eprintln!(
                    "h = {}, {} extra layers: every training sample has loss {mean_l:.6} (collapsed model); slope undefined",
                    arch.0, arch.1
                );
        }
        let smooth = ema(&cur.mean, c.ema);
        for (j, v) in cur.mean.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},0,{},{:e},{:e},{:e},{:e}\n",
                arch.0,
                arch.1,
                j + 1,
                v,
                cur.p05[j],
                cur.p95[j],
                smooth[j]
            ));
        }
        // Perturbed points and the exact Taylor decomposition of the increment.
        let theta = model.param_vector();
        let mut radius_rows = Vec::new();
        for &r in &c.radii {
            let mut actual = vec![0.0; m - 1];
            let mut terms = [vec![0.0; m - 1], vec![0.0; m - 1], vec![0.0; m - 1]];
            for draw in 0..c.draws {
                let mut rng = Rng::derived(c.seed, 1000 + draw as u64);
                let g: Vec<f64> = theta.iter().map(|_| rng.normal()).collect();
                let gn = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                let d: Vec<f64> = g.iter().map(|v| r * v / gn).collect();
                let mut moved = model.clone();
                let t: Vec<f64> = theta.iter().zip(&d).map(|(a, b)| a + b).collect();
                moved.set_param_vector(&t).map_err(|e| e.to_string())?;
                let lt = losses(&moved, &x, &y)?;
                let dir = directional_derivatives(&model, &x, &y, &d).map_err(|e| e.to_string())?;
                let half_curv: Vec<f64> = dir.curvatures.iter().map(|v| 0.5 * v).collect();
                let e =
                    |v: &[f64]| increment_curves(v, c.orderings, c.seed).map_err(|e| e.to_string());
                let parts = [e(&l)?, e(&dir.slopes)?, e(&half_curv)?];
                let act = e(&lt)?;
                for j in 0..m - 1 {
                    actual[j] += act.mean[j] / c.draws as f64;
                    for (t, p) in terms.iter_mut().zip(&parts) {
                        t[j] += p.mean[j] / c.draws as f64;
                    }
                }
            }
            let smooth_r = ema(&actual, c.ema);
            for (j, v) in actual.iter().enumerate() {
                csv.push_str(&format!(
                    "{},{},{r},{},{:e},,,{:e}\n",
                    arch.0,
                    arch.1,
                    j + 1,
                    v,
                    smooth_r[j]
                ));
            }
            let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            radius_rows.push(json!({
                "radius": r, "draws": c.draws,
                "slope": loglog_slope(&actual, 10),
                "mean_abs_increment": on_grid(&actual, &ks_plot),
                "dispersion_term": on_grid(&terms[0], &ks_plot),
                "gradient_term": on_grid(&terms[1], &ks_plot),
                "curvature_term": on_grid(&terms[2], &ks_plot),
                "average_over_k": {"actual": avg(&actual), "dispersion": avg(&terms[0]),
                                   "gradient": avg(&terms[1]), "curvature": avg(&terms[2])},
            }));
        }
        let (train_loss, train_err) =
            landscape::train::evaluate(&model, &x, &y).map_err(|e| e.to_string())?;
        let test = match &bundle.test {
            Some(t) => {
                Some(landscape::train::evaluate(&model, &t.x, &t.y).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let row = json!({
            "width": arch.0, "extra_layers": arch.1, "weight_matrices": arch.1 + 2,
            "num_params": model.num_params(), "cache_key": key, "cached": cached, "train_seconds": train_s,
            "train_loss": train_loss, "train_error": train_err,
            "test_loss": test.map(|t| t.0), "test_error": test.map(|t| t.1),
            "loss_mean": mean_l, "loss_std": sd_l, "loss_max": l.iter().copied().fold(0.0, f64::max),
            "slope_loglog_k_ge_10": slope, "collapsed": collapsed,
            "ks": ks_plot, "mean_abs_increment": on_grid(&cur.mean, &ks_plot),
            "p05": on_grid(&cur.p05, &ks_plot), "p95": on_grid(&cur.p95, &ks_plot),
            "ema": on_grid(&smooth, &ks_plot), "radii": radius_rows,
        });
        let curve = Curve {
            arch,
            ema: smooth.clone(),
            slope: slope.unwrap_or(f64::NAN),
            band: (ema(&cur.p05, c.ema), ema(&cur.p95, c.ema)),
        };
        Ok((row, csv, curve, model, cached))
    };
    if landscape::dist::distributed() {
        // Several MPI ranks (no checkpoints then): one configuration per work item; the
        // models travel as parameter vectors, and rank 0 caches the ones other ranks
        // trained.
        let outs = landscape::dist::map_items(
            configs.len(),
            |i| {
                run_config(configs[i], None).map(|(row, csv, curve, model, cached)| ConfigOut {
                    row,
                    csv,
                    curve,
                    params: model.param_vector(),
                    cached,
                })
            },
            || pb.inc(1),
        )?;
        for (&arch, o) in configs.iter().zip(outs) {
            let (cfg, _, key_src, _, path) = cache_entry(
                &c,
                arch,
                &x,
                bundle.classes,
                &bundle.content_hash,
                &a.cache_dir,
            );
            if !o.cached && landscape::dist::is_root() {
                cache_model(&c, cfg.clone(), &o.params, &key_src, &path)?;
            }
            if c.hessian && arch == c.hessian_arch() {
                let mut model =
                    Mlp::init(cfg, Init::Torch, 1.0, c.seed).map_err(|e| e.to_string())?;
                model
                    .set_param_vector(&o.params)
                    .map_err(|e| e.to_string())?;
                hessian_model = Some(model);
            }
            st.rows.push(o.row);
            st.csv.push(o.csv);
            st.curves.push(o.curve);
        }
    }
    for (i, &arch) in configs.iter().enumerate().skip(st.rows.len()) {
        let (row, csv, curve, model, _) = run_config(arch, session.as_mut().map(|s| (s, &mut st)))?;
        st.rows.push(row);
        st.csv.push(csv);
        st.curves.push(curve);
        if c.hessian && arch == c.hessian_arch() {
            hessian_model = Some(model);
        }
        pb.inc(1);
        test_point("point");
        if let Some(s) = session.as_mut() {
            s.safe_point(
                i + 1 == configs.len(),
                || format!("configuration {} of {}", i + 1, configs.len()),
                || st.encode(),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    pb.finish_and_clear();
    if session.is_some() {
        // The Hessian side has no safe points: a signal ends it at once; a resumed run
        // starts from the finished configurations.
        landscape::io::checkpoint::restore_default_signals();
    }
    let rows = std::mem::take(&mut st.rows);
    let curves_at_t = std::mem::take(&mut st.curves);
    let mut csv = String::from("width,extra_layers,radius,k,mean_abs_increment,p05,p95,ema\n");
    for part in &st.csv {
        csv.push_str(part);
    }

    let mut results = serde_json::Map::new();
    results.insert("configurations".into(), json!(rows));
    if c.hessian {
        let model = match hessian_model {
            Some(mdl) => mdl,
            None => {
                let (mdl, _, _, _) = train_or_load(
                    &c,
                    c.hessian_arch(),
                    &x,
                    &y,
                    bundle.classes,
                    &bundle.content_hash,
                    &a.cache_dir,
                    None,
                )?;
                mdl
            }
        };
        let t = Instant::now();
        results.insert("hessian".into(), hessian_side(&c, &model, &x, &y)?);
        eprintln!("Hessian side: {:.1} s", t.elapsed().as_secs_f64());
    }
    if let Some(prefix) = &a.fig {
        let files = figures(&c, prefix, &curves_at_t, &rows, results.get("hessian"))?;
        results.insert("figures".into(), json!(files));
    }
    if let Some(p) = &a.csv {
        super::write_file(p, csv.as_bytes())?;
    }
    results.insert("seconds".into(), json!(t_all.elapsed().as_secs_f64()));
    eprintln!(
        "sample-size: {} configurations in {:.1} s",
        configs.len(),
        t_all.elapsed().as_secs_f64()
    );
    let prov = Provenance::new(
        command_line,
        Some(c.seed),
        Some(bundle.summary_json()),
        json!({"experiment": c, "train_samples": m}),
    );
    write_results(
        a.json.as_deref(),
        "sample-size",
        serde_json::Value::Object(results),
        &prov,
    )?;
    a.ckpt.finish()
}

/// Exact `||H_{k+1}(t*) - H(k)(t*)||_2` and `||H(k+1) - H(k)||_2 = that / (k+1)` on a log
/// grid of `k` (Lanczos, with residuals), and `sin` of the largest principal angle between
/// the top-`q` eigenspaces of `H(k)` and `H(m)`; `H(k)` over the first `k` samples of
/// ordering 0.
fn hessian_side(
    c: &SampleSizeConfig,
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    y: &[usize],
) -> Result<serde_json::Value, String> {
    let m = x.rows();
    let ks = log_grid(m, c.hessian_per_decade);
    let e = |e: landscape::Error| e.to_string();
    let pb = progress(2 * ks.len() as u64 + 1, "hessian");
    let inc = hessian_increments(model, x, y, &ks, c.seed, c.lanczos_tol).map_err(e)?;
    pb.inc(ks.len() as u64);
    let perm = Rng::derived(c.seed, 0).permutation(m);
    let opts = LanczosOptions {
        max_iter: model.num_params().min(400),
        tol: c.lanczos_tol,
        seed: c.seed,
        ..Default::default()
    };
    let top = |k: usize| -> Result<landscape::linalg::LanczosResult, String> {
        let xs = x.select_rows(&perm[..k]);
        let ys: Vec<usize> = perm[..k].iter().map(|&i| y[i]).collect();
        let op = HessianOperator::new(model, &xs, &ys, Part::Full).map_err(e)?;
        lanczos(&op, Which::Largest(c.top_q.min(model.num_params())), &opts).map_err(e)
    };
    let full = top(m)?;
    pb.inc(1);
    let mut spaces = Vec::new();
    for &k in &ks {
        let r = top(k)?;
        spaces.push(json!({"k": k, "sin_largest_angle": subspace_sin(&r.vectors, &full.vectors),
                           "top_values": r.values, "residuals": r.residuals, "converged": r.converged}));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(json!({
        "width": c.hessian_arch().0, "extra_layers": c.hessian_arch().1, "samples": m,
        "increments": inc.iter().map(|h| json!({
            "k": h.k,
            "norm_next_minus_mean": h.norm, "residual": h.residual, "converged": h.converged,
            "norm_mean_step": h.norm / (h.k as f64 + 1.0), "residual_mean_step": h.residual / (h.k as f64 + 1.0),
        })).collect::<Vec<_>>(),
        "top_q": c.top_q, "full_top_values": full.values, "full_residuals": full.residuals,
        "eigenspaces": spaces,
    }))
}

/// A configuration computed on any MPI rank (see `cmd_sample_size`).
#[derive(serde::Serialize, serde::Deserialize)]
struct ConfigOut {
    row: serde_json::Value,
    csv: String,
    curve: Curve,
    params: Vec<f64>,
    cached: bool,
}

/// One configuration's plotted curve at t*: EMA of the mean, slope, EMA of the 5%/95% band.
#[derive(serde::Serialize, serde::Deserialize)]
struct Curve {
    arch: (usize, usize),
    ema: Vec<f64>,
    slope: f64,
    band: (Vec<f64>, Vec<f64>),
}

fn figures(
    c: &SampleSizeConfig,
    prefix: &Path,
    curves: &[Curve],
    rows: &[serde_json::Value],
    hessian: Option<&serde_json::Value>,
) -> Result<Vec<String>, String> {
    let name = |suffix: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(format!("_{suffix}"));
        PathBuf::from(p)
    };
    let mut files = Vec::new();
    let mut push = |r: landscape::Result<Vec<PathBuf>>| -> Result<(), String> {
        files.extend(
            r.map_err(|e| e.to_string())?
                .into_iter()
                .map(|p| p.display().to_string()),
        );
        Ok(())
    };
    let m1 = curves.first().map_or(0, |c| c.ema.len());
    let ks: Vec<f64> = (1..=m1).map(|k| k as f64).collect();
    for (sweep, pick) in [("width", true), ("depth", false)] {
        let sel: Vec<&Curve> = curves
            .iter()
            .filter(|cv| {
                let a = &cv.arch;
                if pick {
                    a.1 == c.fixed_depth && c.hidden_sizes.contains(&a.0)
                } else {
                    a.0 == c.fixed_width && c.extra_layers.contains(&a.1)
                }
            })
            .collect();
        // Collapsed models (constant loss) have no curve worth a log axis: named in the title.
        let skipped: Vec<String> = sel
            .iter()
            .filter(|cv| !cv.slope.is_finite())
            .map(|cv| {
                if pick {
                    format!("h = {}", cv.arch.0)
                } else {
                    format!("{} extra", cv.arch.1)
                }
            })
            .collect();
        let sel: Vec<_> = sel.into_iter().filter(|cv| cv.slope.is_finite()).collect();
        if sel.is_empty() {
            continue;
        }
        let mut series: Vec<Series> = sel
            .iter()
            .map(|cv| {
                let (a, s) = (&cv.arch, cv.slope);
                let slope = if s.is_finite() {
                    format!("slope {s:.3}")
                } else {
                    "collapsed: constant loss".to_string()
                };
                let label = if pick {
                    format!("h = {} ({slope})", a.0)
                } else {
                    format!("{} extra layers ({slope})", a.1)
                };
                Series::new(label, ks.clone(), cv.ema.clone())
                    .with_band(cv.band.0.clone(), cv.band.1.clone())
            })
            .collect();
        // 1/k reference through the median curve at k = 100.
        let at = 100.min(m1).max(1);
        let mut vals: Vec<f64> = sel.iter().map(|cv| cv.ema[at - 1] * at as f64).collect();
        vals.sort_by(f64::total_cmp);
        let cst = vals[vals.len() / 2];
        series.push(Series::new(
            "c / k reference",
            ks.clone(),
            ks.iter().map(|k| cst / k).collect(),
        ));
        let base = if pick {
            format!("|L(k+1) - L(k)|, widths at {} extra layers", c.fixed_depth)
        } else {
            format!("|L(k+1) - L(k)|, depths at width {}", c.fixed_width)
        };
        let collapsed = if skipped.is_empty() {
            String::new()
        } else {
            format!("; {} collapsed", skipped.join(", "))
        };
        for loglog in [false, true] {
            // The seed-style log-y figure stays clean; the log-log one shows the 5%-95%
            // band of |L(k+1) - L(k)| over the orderings (EMA-smoothed like the mean).
            let (title, series) = if loglog {
                (
                    format!("{base} (EMA {}, 5-95% bands){collapsed}", c.ema),
                    series.clone(),
                )
            } else {
                let plain = series
                    .iter()
                    .map(|s| Series::new(s.label.clone(), s.x.clone(), s.y.clone()))
                    .collect();
                (format!("{base} (EMA {}){collapsed}", c.ema), plain)
            };
            let fig = LineFigure {
                title,
                x_label: "k (samples)".into(),
                y_label: "mean |L(k+1) - L(k)| over orderings".into(),
                log_x: loglog,
                log_y: true,
                series,
                markers: vec![],
            };
            let suffix = if loglog {
                format!("{sweep}_loglog")
            } else {
                sweep.to_string()
            };
            push(line_plot(&fig, &name(&suffix)))?;
        }
    }
    // Radii and decomposition for the Hessian configuration (or the first).
    let target = c.hessian_arch();
    let row = rows
        .iter()
        .find(|r| r["width"] == target.0 && r["extra_layers"] == target.1)
        .or(rows.first());
    if let Some(row) = row {
        let kg: Vec<f64> = row["ks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_f64())
            .collect();
        let arr = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_f64())
                .collect()
        };
        let mut series = vec![Series::new(
            "R = 0 (trained point)",
            kg.clone(),
            arr(&row["mean_abs_increment"]),
        )];
        let mut dec = Vec::new();
        for rr in row["radii"].as_array().into_iter().flatten() {
            let r = rr["radius"].as_f64().unwrap_or(0.0);
            series.push(Series::new(
                format!("R = {r}"),
                kg.clone(),
                arr(&rr["mean_abs_increment"]),
            ));
            dec.push(Series::new(
                format!("R = {r}: curvature term"),
                kg.clone(),
                arr(&rr["curvature_term"]),
            ));
            dec.push(Series::new(
                format!("R = {r}: gradient term"),
                kg.clone(),
                arr(&rr["gradient_term"]),
            ));
        }
        dec.insert(
            0,
            Series::new(
                "dispersion term (= increment at t*)",
                kg.clone(),
                arr(&row["mean_abs_increment"]),
            ),
        );
        let w = (
            row["width"].as_u64().unwrap_or(0),
            row["extra_layers"].as_u64().unwrap_or(0),
        );
        for (suffix, title, s) in [
            (
                "radii",
                format!(
                    "|L(k+1)(t) - L(k)(t)| at ||t - t*|| = R (width {}, {} extra layers)",
                    w.0, w.1
                ),
                series,
            ),
            (
                "decomposition",
                format!(
                    "Taylor terms of the increment (width {}, {} extra layers)",
                    w.0, w.1
                ),
                dec,
            ),
        ] {
            let fig = LineFigure {
                title,
                x_label: "k (samples)".into(),
                y_label: "mean absolute value over orderings".into(),
                log_x: true,
                log_y: true,
                series: s,
                markers: vec![],
            };
            push(line_plot(&fig, &name(suffix)))?;
        }
    }
    if let Some(h) = hessian {
        let inc = h["increments"].as_array().cloned().unwrap_or_default();
        let k: Vec<f64> = inc.iter().filter_map(|v| v["k"].as_f64()).collect();
        let col = |f: &str| -> Vec<f64> { inc.iter().filter_map(|v| v[f].as_f64()).collect() };
        let (a1, r1) = (col("norm_next_minus_mean"), col("residual"));
        let (a2, r2) = (col("norm_mean_step"), col("residual_mean_step"));
        let band = |a: &[f64], r: &[f64]| -> (Vec<f64>, Vec<f64>) {
            (
                a.iter()
                    .zip(r)
                    .map(|(x, y)| (x - y).max(x * 1e-3))
                    .collect(),
                a.iter().zip(r).map(|(x, y)| x + y).collect(),
            )
        };
        let (l1, u1) = band(&a1, &r1);
        let (l2, u2) = band(&a2, &r2);
        let fig = LineFigure {
            title: format!(
                "Exact Hessian increments (width {}, {} extra layers; band = Lanczos residual)",
                h["width"], h["extra_layers"]
            ),
            x_label: "k (samples)".into(),
            y_label: "spectral norm".into(),
            log_x: true,
            log_y: true,
            series: vec![
                Series::new("||H_(k+1) - H(k)||_2 (next sample vs mean)", k.clone(), a1)
                    .with_band(l1, u1),
                Series::new("||H(k+1) - H(k)||_2", k.clone(), a2).with_band(l2, u2),
            ],
            markers: vec![],
        };
        push(line_plot(&fig, &name("hessian")))?;
        let sp = h["eigenspaces"].as_array().cloned().unwrap_or_default();
        let fig = LineFigure {
            title: format!(
                "Top-{} eigenspace of H(k) vs H(m): sin of the largest principal angle",
                c.top_q
            ),
            x_label: "k (samples)".into(),
            y_label: "sin(theta_max)".into(),
            log_x: true,
            log_y: false,
            series: vec![Series::new(
                "sin theta_max",
                sp.iter().filter_map(|v| v["k"].as_f64()).collect(),
                sp.iter()
                    .filter_map(|v| v["sin_largest_angle"].as_f64())
                    .collect(),
            )],
            markers: vec![],
        };
        push(line_plot(&fig, &name("eigenspace")))?;
    }
    Ok(files)
}
