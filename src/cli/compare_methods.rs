//! `landscape compare-methods`: the training-methods table and figures from committed
//! `train` / `sphere train` and `hessian` JSON records (see
//! `landscape::experiments::method_compare`).

use super::{probe_outputs, probe_prefix, write_file, write_results};
use clap::Args;
use landscape::experiments::method_compare::{figures, markdown_table, method_row};
use landscape::io::provenance::Provenance;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareMethodsArgs {
    /// One row: `LABEL=TRAIN_JSON,CURVATURE_JSON` (a `train` or `sphere train --json`
    /// record, and a `hessian --top 1 --trace --grad-norms B --json` record). Repeat.
    #[arg(long, required = true)]
    run: Vec<String>,
    /// Markdown table.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Figures PREFIX-test-error, PREFIX-vs-trace, PREFIX-vs-lambda (PNG and SVG).
    #[arg(long)]
    fig: Option<PathBuf>,
    /// The rows with provenance.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn read(path: &str) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: not JSON: {e}"))
}

pub fn cmd_compare_methods(a: CompareMethodsArgs, command_line: &str) -> Result<(), String> {
    probe_outputs(&[a.table.as_deref(), a.json.as_deref()])?;
    probe_prefix(a.fig.as_deref())?;
    let mut rows = Vec::new();
    let mut inputs = Vec::new();
    for spec in &a.run {
        let (label, files) = spec
            .split_once('=')
            .ok_or_else(|| format!("--run {spec}: expected LABEL=TRAIN_JSON,CURVATURE_JSON"))?;
        let (t, c) = files
            .split_once(',')
            .ok_or_else(|| format!("--run {spec}: expected LABEL=TRAIN_JSON,CURVATURE_JSON"))?;
        let row = method_row(label, &read(t)?, &read(c)?, spec).map_err(|e| e.to_string())?;
        inputs.push(json!({"label": label, "train": t, "curvature": c}));
        rows.push(row);
    }
    let table = markdown_table(&rows);
    print!("{table}");
    if let Some(p) = &a.table {
        write_file(p, table.as_bytes())?;
    }
    let files = match &a.fig {
        Some(prefix) => figures(&rows, prefix).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let prov = Provenance::new(command_line, None, None, json!({"runs": inputs}));
    write_results(
        a.json.as_deref(),
        "compare-methods",
        json!({"rows": rows, "figures": files}),
        &prov,
    )
}
