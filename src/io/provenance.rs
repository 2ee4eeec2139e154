//! Provenance records: what produced an output, so that it can be reproduced.
//!
//! Every results file and model file written by the CLI carries a [`Provenance`]:
//! the tool name and version, the git commit of the source it was built from, the
//! command line, the seed, a description of the dataset (the caller's JSON, typically
//! name, path, sample count and SHA-256), the effective configuration, the number of
//! rayon threads (results are bit-reproducible for a given seed *and* thread count), the
//! number of MPI ranks (which results do not depend on) and the creation time.
//!
//! The git commit is, in order of preference: the run-time environment variable
//! `LANDSCAPE_GIT_COMMIT`, then the value `build.rs` recorded at compile time from
//! `git rev-parse HEAD` (or from `LANDSCAPE_GIT_COMMIT` in the build environment);
//! `null` when neither is known. The creation time honours `SOURCE_DATE_EPOCH`
//! (reproducible-builds convention) so that test outputs can be byte-identical.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use super::results::write_json;

/// Where an output came from. Serialised as a JSON object with these field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Always `"landscape"`.
    pub tool: String,
    /// The crate version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Git commit of the source tree, when known (see the module docs).
    pub git_commit: Option<String>,
    /// The command line, arguments joined by spaces (shell-quoted where needed).
    pub command: String,
    pub seed: Option<u64>,
    /// Description of the data (caller-defined JSON).
    pub dataset: Option<serde_json::Value>,
    /// The effective configuration of the command (caller-defined JSON).
    pub config: serde_json::Value,
    /// `rayon::current_num_threads()` when the record was made (threads per rank).
    pub threads: usize,
    /// MPI ranks the work was split over (1 without MPI; see `crate::dist`). Results
    /// do not depend on it. Records written before this field read as 1.
    #[serde(default = "one_rank")]
    pub ranks: usize,
    /// The GEMM kernels of the dense products (`tensor::gemm_kernels_description`):
    /// results agree bit for bit only between runs with the same kernels. Records
    /// written before this field read as `None`.
    #[serde(default)]
    pub gemm: Option<String>,
    /// The widest SIMD the kernels used (`backend::cpu::simd_in_use`: `avx512`, `avx2`
    /// or `portable`); kernels of different widths differ in the last bits. Records
    /// written before this field read as `None`.
    #[serde(default)]
    pub simd: Option<String>,
    /// Seconds since the Unix epoch (`SOURCE_DATE_EPOCH` when set).
    pub created_unix: u64,
}

impl Provenance {
    /// A record for the running process with the given command line: version, git
    /// commit, thread count and current time filled in.
    pub fn new(
        command: impl Into<String>,
        seed: Option<u64>,
        dataset: Option<serde_json::Value>,
        config: serde_json::Value,
    ) -> Self {
        Self {
            tool: "landscape".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_commit: git_commit(),
            command: command.into(),
            seed,
            dataset,
            config,
            threads: rayon::current_num_threads(),
            ranks: crate::dist::size(),
            gemm: Some(crate::tensor::gemm_kernels_description()),
            simd: Some(crate::backend::cpu::simd_in_use().to_string()),
            created_unix: unix_time(),
        }
    }

    /// [`Provenance::new`] with the command line of this process ([`command_line`]).
    pub fn capture(
        seed: Option<u64>,
        dataset: Option<serde_json::Value>,
        config: serde_json::Value,
    ) -> Self {
        Self::new(command_line(), seed, dataset, config)
    }

    /// Compact JSON text of the record.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).expect("provenance serialises")
    }

    /// `{"provenance": <compact JSON>}`: the extra metadata to pass to
    /// [`save_mlp`](super::model_file::save_mlp).
    pub fn model_metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("provenance".to_string(), self.to_json_string())])
    }
}

fn one_rank() -> usize {
    1
}

/// The git commit this binary was built from: run-time `LANDSCAPE_GIT_COMMIT` if set
/// and non-empty, else the compile-time value recorded by `build.rs`, else `None`.
pub fn git_commit() -> Option<String> {
    std::env::var("LANDSCAPE_GIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| option_env!("LANDSCAPE_GIT_COMMIT").map(str::to_string))
}

/// The process's arguments joined by spaces; an argument with characters a shell would
/// interpret is single-quoted, so the string can be pasted back into a shell.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    join_args(&args)
}

/// Joins arguments as [`command_line`] does.
pub fn join_args(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(a: &str) -> String {
    let safe = !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Seconds since the Unix epoch, or `SOURCE_DATE_EPOCH` when that is set to an integer.
pub fn unix_time() -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let args: Vec<String> = ["landscape", "train", "--out", "my dir/x", "it's", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            join_args(&args),
            "landscape train --out 'my dir/x' 'it'\\''s' ''"
        );
    }

    #[test]
    fn record_fields() {
        let p = Provenance::capture(Some(7), None, serde_json::json!({"lr": 0.1}));
        assert!(!p.command.is_empty());
        assert_eq!(p.tool, "landscape");
        assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
        assert!(p.threads >= 1);
        let v: serde_json::Value = serde_json::from_str(&p.to_json_string()).unwrap();
        assert_eq!(v["seed"], 7);
        assert_eq!(v["config"]["lr"], 0.1);
        assert!(v.get("git_commit").is_some());
        let back: Provenance = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
        // Built from a git checkout, the commit is known (a hex hash).
        if let Some(c) = option_env!("LANDSCAPE_GIT_COMMIT") {
            assert!(!c.is_empty() && c.chars().all(|ch| ch.is_ascii_hexdigit()));
        }
    }
}
