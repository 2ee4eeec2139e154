//! `landscape bounds`: the Hessian-norm bounds of "Unraveling the Hessian" against exact values.

use super::{write_results, DataArgs, ModelArgs};
use clap::Args;
use landscape::io::provenance::Provenance;
use landscape::theory::validate::evaluate_bounds;
use serde_json::json;
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
    /// Also run the Lemma 2 experiment (loss increments over orderings at t* and perturbed points).
    #[arg(long)]
    pub lemma2: bool,
    /// Radii ||t - t*|| for Lemma 2 (0 is the trained point).
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,1")]
    pub radii: Vec<f64>,
    /// Random directions per positive radius.
    #[arg(long, default_value_t = 3)]
    pub draws: usize,
    /// Random orderings of the samples.
    #[arg(long, default_value_t = 20)]
    pub orderings: usize,
    /// Figure prefix: PREFIX-lemma2.{png,svg} (with --lemma2) and PREFIX-norms.{png,svg}.
    #[arg(long)]
    pub fig: Option<PathBuf>,
    /// Write a plain-words report (Markdown) of what held and what failed.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn cmd_bounds(a: BoundsArgs, command_line: &str) -> Result<(), String> {
    let model = a.model.load_mlp_only("bounds")?;
    let bundle = a.data.load()?;
    super::check_model_fits(&model, &bundle)?;
    super::probe_outputs(&[a.csv.as_deref(), a.report.as_deref(), a.json.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
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
    if let Some(t) = &s.hterm_trace {
        println!(
            "structural: tr(H-term) over the {n_full} full-norm samples = {:.3e} ({}; tr(GN) = {:.3e}); consistent with 0: {}",
            t.value, t.method, t.gn_trace, t.consistent_with_zero
        );
    }
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
        super::write_file(csv, text.as_bytes())?;
    }
    let max_full = report.full_norms.iter().map(|f| f.norm).fold(0.0, f64::max);
    let thm1 = landscape::theory::theorem1_printed(c.layers, c.m_x, c.m_w);
    let lemma2 = if a.lemma2 {
        // M_H: the largest exact per-sample full-Hessian norm at t* (the lemma needs a bound
        // over the ball; at R > 0 this is an estimate, stated as such in the report).
        let m_h = if report.full_norms.is_empty() {
            report.gn_norms.iter().copied().fold(0.0, f64::max)
        } else {
            max_full
        };
        let pts = landscape::theory::lemma2::lemma2_experiment(
            &model,
            &x,
            &y,
            &a.radii,
            a.draws,
            a.orderings,
            c.m_l,
            thm1,
            m_h,
            a.seed,
        )
        .map_err(|e| e.to_string())?;
        for p in &pts {
            println!(
                "lemma 2, R = {}, draw {}: printed bound holds: {}, sharper bound holds: {} (max loss {:.4})",
                p.radius, p.draw, p.printed_holds, p.sharper_holds, p.max_loss
            );
        }
        // Exact ||H_{k+1} - H(k)||_2 along one ordering, k on a log grid (3 per decade).
        let ks = landscape::theory::lemma2::log_grid(n, 3);
        let pb = super::progress(1, "hessian increments");
        let incs = landscape::theory::lemma2::hessian_increments(
            &model,
            &x,
            &y,
            &ks,
            a.seed,
            a.tol.max(1e-10),
        )
        .map_err(|e| e.to_string())?;
        pb.finish_and_clear();
        for inc in &incs {
            println!(
                "||H_(k+1) - H(k)||_2 at k = {}: {:.6e} (residual {:.1e})",
                inc.k, inc.norm, inc.residual
            );
        }
        Some((pts, m_h, incs))
    } else {
        None
    };
    let mut figures = Vec::new();
    if let Some(prefix) = &a.fig {
        let stem = prefix.display().to_string();
        let mut series = vec![landscape::plot::Series::new(
            "per-sample ||GN_i||",
            (0..report.gn_norms.len()).map(|i| i as f64).collect(),
            report.gn_norms.clone(),
        )];
        if !report.full_norms.is_empty() {
            series.push(landscape::plot::Series::new(
                "per-sample ||H_i|| (Lanczos)",
                report.full_norms.iter().map(|f| f.sample as f64).collect(),
                report.full_norms.iter().map(|f| f.norm).collect(),
            ));
        }
        for ch in report.checks.iter().filter(|c| c.against == "gn") {
            let n = report.gn_norms.len() as f64;
            series.push(landscape::plot::Series::new(
                format!("{} = {:.3e}", ch.variant, ch.bound),
                vec![0.0, n],
                vec![ch.bound, ch.bound],
            ));
        }
        let fig = landscape::plot::LineFigure {
            title: "Exact per-sample Hessian norms and the bounds".into(),
            x_label: "sample".into(),
            y_label: "spectral norm".into(),
            log_y: true,
            series,
            ..Default::default()
        };
        figures.extend(
            landscape::plot::line_plot(&fig, std::path::Path::new(&format!("{stem}-norms")))
                .map_err(|e| e.to_string())?,
        );
        if let Some((pts, _, incs)) = &lemma2 {
            let mut series = vec![landscape::plot::Series::new(
                "||H_(k+1) - H(k)||_2 (exact, Lanczos)",
                incs.iter().map(|i| i.k as f64).collect(),
                incs.iter().map(|i| i.norm).collect(),
            )];
            for p in pts.iter().filter(|p| p.draw == 0) {
                let ks: Vec<f64> = p.ks.iter().map(|&k| k as f64).collect();
                series.push(landscape::plot::Series::new(
                    format!("mean |L(k+1)-L(k)|, R = {}", p.radius),
                    ks.clone(),
                    p.mean_abs_increment.clone(),
                ));
                series.push(landscape::plot::Series::new(
                    format!("sharper bound, R = {}", p.radius),
                    ks,
                    p.sharper_bound.clone(),
                ));
            }
            let fig = landscape::plot::LineFigure {
                title: "Lemma 2: loss increments over orderings".into(),
                x_label: "k".into(),
                y_label: "|L(k+1) - L(k)|".into(),
                log_x: true,
                log_y: true,
                series,
                ..Default::default()
            };
            figures.extend(
                landscape::plot::line_plot(&fig, std::path::Path::new(&format!("{stem}-lemma2")))
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    if let Some(path) = &a.report {
        let text = report_markdown(
            &report,
            &model,
            &x,
            &y,
            n,
            n_full,
            lemma2
                .as_ref()
                .map(|(p, m, i)| (p.as_slice(), *m, i.as_slice())),
        );
        super::write_file(path, text.as_bytes())?;
    }
    let results = json!({
        "lemma2": lemma2.as_ref().map(|(p, m_h, incs)| json!({"points": p, "m_h": m_h, "thm1": thm1, "hessian_increments": incs})),
        "figures": figures.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "constants": report.constants,
        "checks": report.checks,
        "structural": report.structural,
        "num_samples": n,
        "num_full_samples": n_full,
        "max_gn_norm": report.gn_norms.iter().copied().fold(0.0, f64::max),
        "max_full_norm": max_full,
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

/// The plain-words report: which statements held on this data, which failed, and the witnesses.
fn report_markdown(
    r: &landscape::theory::validate::BoundsReport,
    model: &landscape::nn::Mlp<f64>,
    x: &landscape::Matrix<f64>,
    y: &[usize],
    n: usize,
    n_full: usize,
    lemma2: Option<(
        &[landscape::theory::lemma2::Lemma2Point],
        f64,
        &[landscape::theory::lemma2::HessianIncrement],
    )>,
) -> String {
    let c = &r.constants;
    let mut s = String::from("# Hessian-norm bounds: report\n\n");
    s.push_str(&format!(
        "Model: L = {} weight matrices, K = {} classes, largest hidden width h = {}, biases: {}. \
         Constants: M_W = {:.6} (exact spectral norms {:?}), M_x = {:.6}, M_l = {:.6}, |w|max = {:.6}.\n\n",
        c.layers, c.classes, c.h, c.bias, c.m_w, c.weight_norms, c.m_x, c.m_l, c.w_abs_max
    ));
    s.push_str(&format!(
        "Exact Gauss-Newton norms were computed for {n} samples (K x K route) and exact full-Hessian norms for {n_full} (Lanczos, with residuals).\n\n"
    ));
    s.push_str("| statement | against | bound | largest actual / bound | witness sample | verdict |\n|---|---|---|---|---|---|\n");
    for ch in &r.checks {
        let verdict = match ch.certificate {
            Some(v) => format!(
                "**violated** ({} samples; certified: norm >= {v:.6e})",
                ch.violations
            ),
            None => "holds".to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {:.6e} | {:.4e} | {} | {verdict} |\n",
            ch.variant, ch.against, ch.bound, ch.worst_ratio, ch.witness
        ));
    }
    let failed: Vec<&landscape::theory::validate::VariantCheck> =
        r.checks.iter().filter(|c| !c.holds).collect();
    s.push('\n');
    if failed.is_empty() {
        s.push_str("Every bound variant held on this data.\n");
    } else {
        // One entry per statement, listing the norms it failed against.
        let mut names: Vec<(String, Vec<&str>)> = Vec::new();
        for c in &failed {
            match names.iter_mut().find(|(v, _)| *v == c.variant) {
                Some((_, against)) => against.push(&c.against),
                None => names.push((c.variant.clone(), vec![&c.against])),
            }
        }
        let listed: Vec<String> = names
            .iter()
            .map(|(v, against)| format!("{v} (against {})", against.join(" and ")))
            .collect();
        s.push_str(&format!("Failed on this data: {}. ", listed.join(", ")));
        if let Some(worst) = failed
            .iter()
            .max_by(|a, b| a.worst_ratio.total_cmp(&b.worst_ratio))
        {
            s.push_str(&format!(
                "The largest violation is {} against the {} norm at sample {}: actual {:.6e} vs bound {:.6e} (ratio {:.4e}).\n",
                worst.variant, worst.against, worst.witness, worst.witness_value, worst.bound, worst.worst_ratio
            ));
        }
        // The smallest counterexample here: this model with one witness sample; among the
        // witnesses, the one with the smallest input norm.
        let row_norm = |i: usize| x.row(i).iter().map(|v| v * v).sum::<f64>().sqrt();
        if let Some(c) = failed
            .iter()
            .min_by(|a, b| row_norm(a.witness).total_cmp(&row_norm(b.witness)))
        {
            let widths: Vec<String> = model
                .config
                .widths()
                .iter()
                .map(|w| w.to_string())
                .collect();
            s.push_str(&format!(
                "\nSmallest counterexample found: this model (widths {}, P = {} parameters, biases: {}) with the single sample {} (||x|| = {:.6e}, label {}), which violates {} against the {} norm: {:.6e} > {:.6e}{}.\n",
                widths.join("-"),
                model.num_params(),
                model.config.bias,
                c.witness,
                row_norm(c.witness),
                y[c.witness],
                c.variant,
                c.against,
                c.witness_value,
                c.bound,
                c.certificate.map_or(String::new(), |v| format!(" (certified: norm >= {v:.6e})"))
            ));
        }
    }
    let st = &r.structural;
    s.push_str(&format!(
        "\nStructural checks: max ||A_i|| = {:.6} (<= 1/2: {}); max rank(GN_i) = {} (<= K-1 for cross-entropy: {}).\n",
        st.max_a_norm, st.a_norm_at_most_half, st.max_gn_rank, st.gn_rank_at_most_k_minus_1
    ));
    if let Some(t) = &st.hterm_trace {
        s.push_str(&format!(
            "tr(H-term) of the mean Hessian over the full-norm samples: {:.3e} by {} (tr(GN) = {:.3e}){}; consistent with tr(H-term) = 0: {}.\n",
            t.value,
            t.method,
            t.gn_trace,
            t.ci95.map_or(String::new(), |(l, u)| format!(", 95% interval [{l:.3e}, {u:.3e}]")),
            t.consistent_with_zero
        ));
    }
    if let Some((pts, m_h, incs)) = lemma2 {
        s.push_str(&format!(
            "\n## Lemma 2\n\nM_H = {m_h:.6e} (largest exact per-sample Hessian norm at t*; at R > 0 it is an estimate, not a bound over the ball).\n\n| R | draw | printed bound holds | sharper bound holds | max loss |\n|---|---|---|---|---|\n"
        ));
        for p in pts {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} |\n",
                p.radius, p.draw, p.printed_holds, p.sharper_holds, p.max_loss
            ));
        }
        s.push_str("\nExact ||H_(k+1) - H(k)||_2 along one ordering (Lanczos; every value with its residual):\n\n| k | norm | residual |\n|---|---|---|\n");
        for i in incs {
            s.push_str(&format!(
                "| {} | {:.6e} | {:.1e} |\n",
                i.k, i.norm, i.residual
            ));
        }
    }
    s
}
