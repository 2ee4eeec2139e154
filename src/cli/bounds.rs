//! `landscape bounds`: the Hessian-norm bounds of "Unraveling the Hessian" against exact values.

use super::{write_results, DataArgs, ModelArgs};
use clap::Args;
use landscape::io::provenance::Provenance;
use landscape::theory::validate::evaluate_bounds;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BoundsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Use the first N training samples (all by default).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Full-Hessian norms (Lanczos) for the first N of those samples
    /// (default: all of them when P <= 20,000, else 500).
    #[arg(long)]
    pub full_samples: Option<usize>,
    /// Lanczos relative tolerance.
    #[arg(long, default_value_t = 1e-10)]
    pub tol: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-sample table: sample, label, loss, GN norm, full-Hessian norm (when computed).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn cmd_bounds(a: BoundsArgs, command_line: &str) -> Result<(), String> {
    let model = a.model.load()?;
    let bundle = a.data.load()?;
    super::check_model_fits(&model, &bundle)?;
    if model.layers.iter().any(|l| l.bn.is_some()) {
        return Err(
            "bounds: the theorem covers plain MLPs; this model has BatchNorm layers".into(),
        );
    }
    let n_all = bundle.train.len();
    let n = a.samples.unwrap_or(n_all);
    if n == 0 {
        return Err("bounds: --samples 0 is an empty subset".into());
    }
    if n > n_all {
        return Err(format!(
            "bounds: --samples {n} but the training set has {n_all}"
        ));
    }
    let x = bundle.train.x.rows_view(0, n).to_owned();
    let y = bundle.train.y[..n].to_vec();
    let p = model.num_params();
    let n_full = a
        .full_samples
        .unwrap_or(if p <= 20_000 { n } else { 500.min(n) })
        .min(n);
    let full: Vec<usize> = (0..n_full).collect();
    let t = Instant::now();
    let report =
        evaluate_bounds(&model, &x, &y, &full, a.tol, a.seed).map_err(|e| e.to_string())?;
    let seconds = t.elapsed().as_secs_f64();
    let c = &report.constants;
    println!(
        "L = {}, K = {}, h = {}, M_W = {:.6}, M_x = {:.6}, M_l = {:.6}, |w|max = {:.6}, bias = {}",
        c.layers, c.classes, c.h, c.m_w, c.m_x, c.m_l, c.w_abs_max, c.bias
    );
    println!(
        "{:<18} {:>5} {:>14} {:>12} {:>9} {:>8}  certificate",
        "variant", "vs", "bound", "worst ratio", "witness", "holds"
    );
    for ch in &report.checks {
        println!(
            "{:<18} {:>5} {:>14.6e} {:>12.4e} {:>9} {:>8}  {}",
            ch.variant,
            ch.against,
            ch.bound,
            ch.worst_ratio,
            ch.witness,
            if ch.holds { "yes" } else { "VIOLATED" },
            ch.certificate
                .map_or(String::new(), |v| format!("||.|| >= {v:.6e}"))
        );
    }
    let s = &report.structural;
    println!(
        "structural: max ||A_i|| = {:.6} (<= 1/2: {}), max rank(GN_i) = {} (<= K-1: {}); {} GN norms, {} full norms in {:.1}s",
        s.max_a_norm, s.a_norm_at_most_half, s.max_gn_rank, s.gn_rank_at_most_k_minus_1, n, n_full, seconds
    );
    if let Some(csv) = &a.csv {
        let mut text = String::from("sample,label,gn_norm,full_norm,full_residual\n");
        for (i, g) in report.gn_norms.iter().enumerate() {
            match report.full_norms.get(i) {
                Some(f) => text.push_str(&format!(
                    "{i},{},{g:e},{:e},{:e}\n",
                    y[i], f.norm, f.residual
                )),
                None => text.push_str(&format!("{i},{},{g:e},,\n", y[i])),
            }
        }
        std::fs::File::create(csv)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
    }
    let results = json!({
        "constants": report.constants,
        "checks": report.checks,
        "structural": report.structural,
        "num_samples": n,
        "num_full_samples": n_full,
        "max_gn_norm": report.gn_norms.iter().copied().fold(0.0, f64::max),
        "max_full_norm": report.full_norms.iter().map(|f| f.norm).fold(0.0, f64::max),
        "full_norms_converged": report.full_norms.iter().all(|f| f.converged),
        "seconds": seconds,
    });
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        json!({"model_file": a.model.model.display().to_string(), "model": model.config, "samples": n, "full_samples": n_full, "tol": a.tol}),
    );
    write_results(a.json.as_deref(), "bounds", results, &prov)
}
