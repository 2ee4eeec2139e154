//! JSON results files.
//!
//! Every command that produces numbers writes one pretty-printed JSON object:
//!
//! ```json
//! {
//!   "command": "hessian",
//!   "results": { ... command-specific ... },
//!   "provenance": { "tool": "landscape", "version": ..., "git_commit": ..., ... }
//! }
//! ```
//!
//! (see [`Provenance`] for the provenance fields). Non-finite numbers cannot be
//! represented in JSON; `serde_json` turns them into `null`. Files are written through a
//! temporary file and a rename, with a trailing newline; parent directories are created.

use super::provenance::Provenance;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The layout of a results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    pub command: String,
    pub results: serde_json::Value,
    pub provenance: Provenance,
}

/// Pretty-printed JSON text of a results file (with a trailing newline).
pub fn to_json_string(command_name: &str, results: serde_json::Value, prov: &Provenance) -> String {
    let file = ResultsFile {
        command: command_name.to_string(),
        results,
        provenance: prov.clone(),
    };
    let mut s = serde_json::to_string_pretty(&file).expect("results serialise");
    s.push('\n');
    s
}

/// Writes `{ "command", "results", "provenance" }` to `path`.
pub fn write_json(
    path: &Path,
    command_name: &str,
    results: serde_json::Value,
    prov: &Provenance,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let text = to_json_string(command_name, results, prov);
    super::write_atomic(path, text.as_bytes())
}

/// Reads a results file written by [`write_json`].
pub fn read_json(path: &Path) -> Result<ResultsFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::malformed(
            path,
            format!("not a landscape results file: {e}"),
            format!("line {}, column {}", e.line(), e.column()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let prov = Provenance::new("landscape x", None, None, serde_json::json!({}));
        let s = to_json_string("x", serde_json::json!({"a": [1.0, f64::NAN]}), &prov);
        assert!(s.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["command"], "x");
        assert_eq!(v["results"]["a"][1], serde_json::Value::Null);
        assert_eq!(v["provenance"]["command"], "landscape x");
        let first = s.find("\"command\"").unwrap();
        assert!(first < s.find("\"results\"").unwrap());
        assert!(s.find("\"results\"").unwrap() < s.find("\"provenance\"").unwrap());
    }
}
