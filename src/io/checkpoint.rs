//! Checkpoints of long runs, `--resume`, stop signals and exit statuses.
//!
//! A long command (`train`, `bounds-sweep`, `sample-size`, `surface`, `connect`) given
//! `--checkpoint-dir DIR` saves its state to `DIR/resume.ckpt` at safe points (after a
//! training step, a sweep configuration, a chunk of grid points), at most every
//! `--checkpoint-interval` seconds, and always at the end of a training epoch and when
//! a stop signal arrives.
//! `--resume DIR` continues from that file; the finished outputs are byte-identical to
//! those of an uninterrupted run with the same configuration and thread count, because
//! everything the remaining work depends on is in the file, bit for bit: parameters,
//! BatchNorm running statistics, optimiser moments and step count, RNG states, the
//! position in the epoch, accumulated metrics and history, finished grid points and
//! finished runs (each `f64` as its IEEE bits).
//!
//! # File format (version 1)
//!
//! ```text
//! magic        8 bytes   "LSCKPT\r\n"
//! version      u32 LE    FORMAT_VERSION
//! header_len   u64 LE    then header_len bytes of JSON:
//!                        {"tool_version", "kind", "config"}
//! payload_len  u64 LE    then payload_len bytes (the command's state, see [`Encoder`])
//! checksum     32 bytes  SHA-256 of every byte before it
//! ```
//!
//! On load the file is refused, with a one-line [`CheckpointError`], when it is shorter
//! than its lengths say (truncated), its checksum does not match (corrupted), its magic
//! or format version is wrong, it was written by another version of the tool, by another
//! command, or for another configuration; the last names the differing settings
//! (`config.train.optimizer.lr: 0.001 in the checkpoint, 0.01 now`). The configuration
//! holds everything the results depend on, the thread count included.
//!
//! Checkpoints are written through a temporary file and a rename, like every output, so
//! a run killed while writing one keeps the previous checkpoint. When a run finishes
//! and its outputs are written, the checkpoint is removed (and `DIR` too when empty).
//!
//! # Signals and exit statuses
//!
//! With checkpointing on, [`install_stop_handlers`] makes SIGINT and SIGTERM request a
//! stop: the run finishes its current step, writes a checkpoint and returns
//! [`crate::Error::Interrupted`]; the binary exits with [`EXIT_SIGINT`] (130) or
//! [`EXIT_SIGTERM`] (143). A second signal ends the process at once. Without
//! checkpointing the signals keep their default action. Other statuses: 0 success,
//! 1 error (one line on stderr), 2 command-line usage error.
//!
//! # Test-only fault injection
//!
//! `LANDSCAPE_TEST_PAUSE_AT=POINT:N` (for the fault-injection tests only) pauses the
//! process the `N`-th time (1-based) it reaches the named [`test_point`]: it prints
//! `landscape-test: paused at POINT N` on stderr and sleeps until a stop signal arrives
//! (then continues), so a test can kill it there with SIGKILL or SIGINT. Points: `step`
//! (after a training step, before any checkpoint of it), `checkpoint-write` (half of a
//! checkpoint's bytes in its temporary file), `output-write` (the same for any output
//! file), `point` (after a sweep configuration or a chunk of surface grid points, before
//! any checkpoint of it). `LANDSCAPE_TEST_LOG_WRITES=1` (test-only) reports every file
//! the atomic writer put in place ([`test_log_write`]).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// First bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"LSCKPT\r\n";
/// Version of the file layout (not of the tool).
pub const FORMAT_VERSION: u32 = 1;
/// The checkpoint's file name in its folder.
pub const FILE_NAME: &str = "resume.ckpt";
/// Exit status after SIGINT once the checkpoint is written (128 + 2).
pub const EXIT_SIGINT: u8 = 130;
/// Exit status after SIGTERM once the checkpoint is written (128 + 15).
pub const EXIT_SIGTERM: u8 = 143;

/// Why a checkpoint cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no checkpoint to resume from ({FILE_NAME} is missing)")]
    Missing { dir: PathBuf },
    #[error("{dir} already holds a checkpoint: continue it with --resume {dir}, or remove it")]
    Exists { dir: PathBuf },
    #[error("checkpoint {path}: not a landscape checkpoint (wrong magic bytes)")]
    NotACheckpoint { path: PathBuf },
    #[error("checkpoint {path}: truncated ({len} bytes, {what}); resume from an intact checkpoint or start again")]
    Truncated {
        path: PathBuf,
        len: usize,
        what: String,
    },
    #[error("checkpoint {path}: corrupted (SHA-256 checksum mismatch); resume from an intact checkpoint or start again")]
    Corrupted { path: PathBuf },
    #[error("checkpoint {path}: file format version {found}, this build reads version {expected}")]
    FormatVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("checkpoint {path}: written by landscape {found}, this is landscape {expected}; resume with the version that wrote it")]
    ToolVersion {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path}: written by `{found}`, not `{expected}`")]
    Kind {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path}: another configuration: {diff}")]
    ConfigMismatch { path: PathBuf, diff: String },
    #[error("checkpoint {path}: malformed state: {what}")]
    Payload { path: PathBuf, what: String },
}

// ---------------------------------------------------------------------------------
// Stop signals

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static STOPPED_BY: AtomicI32 = AtomicI32::new(0);

const SIGINT: i32 = libc::SIGINT;
const SIGTERM: i32 = libc::SIGTERM;

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // Async-signal-safe: an atomic store and `signal`.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    // A second signal ends the process with the default action.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Makes SIGINT and SIGTERM request a stop at the next safe point (see the module docs).
pub fn install_stop_handlers() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and calls `signal`, both
    // async-signal-safe.
    unsafe {
        libc::signal(SIGINT, handler);
        libc::signal(SIGTERM, handler);
    }
}

/// Gives SIGINT and SIGTERM their default action back (when the work that follows has
/// no safe points, so that a signal ends it at once).
pub fn restore_default_signals() {
    // SAFETY: resetting a disposition to its default.
    unsafe {
        libc::signal(SIGINT, libc::SIG_DFL);
        libc::signal(SIGTERM, libc::SIG_DFL);
    }
}

/// The signal that requested a stop, if any.
pub fn stop_requested() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Name of a stop signal.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The exit status of a run that stopped for a signal after writing its checkpoint
/// (`None` when it did not).
pub fn interrupted_exit_status() -> Option<u8> {
    match STOPPED_BY.load(Ordering::SeqCst) {
        0 => None,
        SIGTERM => Some(EXIT_SIGTERM),
        _ => Some(EXIT_SIGINT),
    }
}

// ---------------------------------------------------------------------------------
// Test-only fault injection

/// A named point of a run where `LANDSCAPE_TEST_PAUSE_AT=POINT:N` pauses the process
/// (test-only; see the module docs). Costs one relaxed load when the variable is unset.
pub fn test_point(name: &str) {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("LANDSCAPE_TEST_PAUSE_AT").ok()?;
        let (p, n) = v.split_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    });
    let Some((point, n)) = target else { return };
    if point != name {
        return;
    }
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 != *n {
        return;
    }
    eprintln!("landscape-test: paused at {name} {n}");
    while stop_requested().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// With `LANDSCAPE_TEST_LOG_WRITES` set (test-only), reports every file the atomic
/// writer renamed into place as `landscape-test: wrote PATH` on stderr, so a test can
/// check that every output went through it.
pub fn test_log_write(path: &Path) {
    if std::env::var_os("LANDSCAPE_TEST_LOG_WRITES").is_some() {
        eprintln!("landscape-test: wrote {}", path.display());
    }
}

// ---------------------------------------------------------------------------------
// Files

/// The checkpoint file of a folder.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn io_err(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes of a checkpoint file.
pub fn encode_file(kind: &str, config: &serde_json::Value, payload: &[u8]) -> Vec<u8> {
    let header = serde_json::json!({
        "tool_version": env!("CARGO_PKG_VERSION"),
        "kind": kind,
        "config": config,
    })
    .to_string();
    let mut out = Vec::with_capacity(64 + header.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Checks a checkpoint file's bytes against the expected command and configuration and
/// returns its payload.
pub fn decode_file(
    path: &Path,
    bytes: &[u8],
    kind: &str,
    config: &serde_json::Value,
) -> Result<Vec<u8>, CheckpointError> {
    let p = || path.to_path_buf();
    let truncated = |what: &str| CheckpointError::Truncated {
        path: p(),
        len: bytes.len(),
        what: what.to_string(),
    };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            truncated("shorter than the magic bytes")
        } else {
            CheckpointError::NotACheckpoint { path: p() }
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(CheckpointError::NotACheckpoint { path: p() });
    }
    let u64_at = |at: usize| -> Option<u64> {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let version = bytes
        .get(8..12)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| truncated("no format version"))?;
    let header_len = u64_at(12).ok_or_else(|| truncated("no header length"))? as usize;
    let header_end = 20usize
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| truncated("the header is cut"))?;
    let payload_len = u64_at(header_end).ok_or_else(|| truncated("no state length"))? as usize;
    let payload_start = header_end + 8;
    let payload_end = payload_start
        .checked_add(payload_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| truncated("the state is cut"))?;
    if bytes.len() < payload_end + 32 {
        return Err(truncated("the checksum is cut"));
    }
    if bytes.len() > payload_end + 32 {
        return Err(CheckpointError::Corrupted { path: p() });
    }
    if Sha256::digest(&bytes[..payload_end]).as_slice() != &bytes[payload_end..] {
        return Err(CheckpointError::Corrupted { path: p() });
    }
    if version != FORMAT_VERSION {
        return Err(CheckpointError::FormatVersion {
            path: p(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[20..header_end]).map_err(|e| CheckpointError::Payload {
            path: p(),
            what: format!("header: {e}"),
        })?;
    let found_version = header["tool_version"].as_str().unwrap_or("?");
    if found_version != env!("CARGO_PKG_VERSION") {
        return Err(CheckpointError::ToolVersion {
            path: p(),
            found: found_version.to_string(),
            expected: env!("CARGO_PKG_VERSION").to_string(),
        });
    }
    let found_kind = header["kind"].as_str().unwrap_or("?");
    if found_kind != kind {
        return Err(CheckpointError::Kind {
            path: p(),
            found: found_kind.to_string(),
            expected: kind.to_string(),
        });
    }
    let mut diffs = Vec::new();
    config_diff("config", &header["config"], config, &mut diffs);
    if !diffs.is_empty() {
        let n = diffs.len();
        let mut diff = diffs.into_iter().take(3).collect::<Vec<_>>().join("; ");
        if n > 3 {
            diff.push_str(&format!("; and {} more", n - 3));
        }
        return Err(CheckpointError::ConfigMismatch { path: p(), diff });
    }
    Ok(bytes[payload_start..payload_end].to_vec())
}

/// Paths where two configurations differ, `path: A in the checkpoint, B now`.
fn config_diff(
    at: &str,
    saved: &serde_json::Value,
    now: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (saved, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                config_diff(&format!("{at}.{k}"), x, y, out);
            }
        }
        _ if saved == now => {}
        _ => {
            let short = |v: &Value| {
                let s = v.to_string();
                if s.chars().count() > 60 {
                    format!("{}...", s.chars().take(57).collect::<String>())
                } else {
                    s
                }
            };
            out.push(format!(
                "{at}: {} in the checkpoint, {} now",
                short(saved),
                short(now)
            ));
        }
    }
}

/// Writes `DIR/resume.ckpt` atomically (the `checkpoint-write` test point is half-way).
pub fn save(
    dir: &Path,
    kind: &str,
    config: &serde_json::Value,
    payload: &[u8],
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let path = path_in(dir);
    let bytes = encode_file(kind, config, payload);
    super::write_atomic_with(&path, &bytes, || test_point("checkpoint-write")).map_err(
        |e| match e {
            crate::Error::Io { source, .. } => io_err(&path, source),
            other => io_err(&path, std::io::Error::other(other.to_string())),
        },
    )
}

/// Reads and checks `DIR/resume.ckpt` (see [`decode_file`]).
pub fn load(
    dir: &Path,
    kind: &str,
    config: &serde_json::Value,
) -> Result<Vec<u8>, CheckpointError> {
    let path = path_in(dir);
    if !path.exists() {
        return Err(CheckpointError::Missing {
            dir: dir.to_path_buf(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    decode_file(&path, &bytes, kind, config)
}

/// Removes temporary checkpoint files of processes that no longer run (left by a run
/// killed while writing a checkpoint).
fn remove_stale_temps(dir: &Path) {
    super::remove_stale_temps(&path_in(dir));
}

/// Where and how often a run checkpoints.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Continue from the checkpoint in `dir` (it must exist); otherwise `dir` must not
    /// hold one.
    pub resume: bool,
    /// Seconds between checkpoints at safe points (0: at every safe point).
    pub interval: Duration,
}

/// A checkpointing run: saves its state at safe points and stops on a signal.
pub struct Session {
    dir: PathBuf,
    kind: String,
    config: serde_json::Value,
    interval: Duration,
    last: Instant,
    resume_payload: Option<Vec<u8>>,
}

impl Session {
    /// Starts checkpointing `kind` with `config` (everything the results depend on);
    /// with `resume`, loads and checks the checkpoint. Installs the stop handlers.
    pub fn start(
        spec: &Checkpointing,
        kind: &str,
        config: serde_json::Value,
    ) -> Result<Self, CheckpointError> {
        let config = serde_json::json!({
            "command": config,
            "threads": rayon::current_num_threads(),
        });
        std::fs::create_dir_all(&spec.dir).map_err(|e| io_err(&spec.dir, e))?;
        remove_stale_temps(&spec.dir);
        let resume_payload = if spec.resume {
            Some(load(&spec.dir, kind, &config)?)
        } else {
            if path_in(&spec.dir).exists() {
                return Err(CheckpointError::Exists {
                    dir: spec.dir.clone(),
                });
            }
            // Probe the folder before the long work starts.
            let probe = path_in(&spec.dir).with_file_name(format!(".{FILE_NAME}.probe"));
            std::fs::write(&probe, b"").map_err(|e| io_err(&spec.dir, e))?;
            let _ = std::fs::remove_file(&probe);
            None
        };
        install_stop_handlers();
        Ok(Self {
            dir: spec.dir.clone(),
            kind: kind.to_string(),
            config,
            interval: spec.interval,
            last: Instant::now(),
            resume_payload,
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state to resume from (once; `None` for a fresh run).
    pub fn take_resume(&mut self) -> Option<Vec<u8>> {
        self.resume_payload.take()
    }

    /// Writes a checkpoint now.
    pub fn save(&mut self, payload: &[u8]) -> Result<(), CheckpointError> {
        save(&self.dir, &self.kind, &self.config, payload)?;
        self.last = Instant::now();
        Ok(())
    }

    /// At a safe point: on a stop request writes a checkpoint and returns
    /// [`crate::Error::Interrupted`] (`position` says where, e.g. `epoch 2, step 17`);
    /// otherwise writes one when `force` or when the interval has passed.
    pub fn safe_point(
        &mut self,
        force: bool,
        position: impl FnOnce() -> String,
        payload: impl FnOnce() -> Vec<u8>,
    ) -> crate::Result<()> {
        if let Some(sig) = stop_requested() {
            self.save(&payload())?;
            STOPPED_BY.store(sig, Ordering::SeqCst);
            return Err(crate::Error::Interrupted {
                signal: signal_name(sig).to_string(),
                position: position(),
                dir: self.dir.clone(),
            });
        }
        if force || self.last.elapsed() >= self.interval {
            self.save(&payload())?;
        }
        Ok(())
    }
}

/// After a finished run's outputs are written: removes the checkpoint, and the folder
/// when nothing else is in it.
pub fn finish(dir: &Path) -> Result<(), CheckpointError> {
    let path = path_in(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path, e)),
    }
    remove_stale_temps(dir);
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

// ---------------------------------------------------------------------------------
// State encoding

/// Little-endian binary encoding of a checkpoint's state; `f64`s as their bits.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn usize(&mut self, v: usize) -> &mut Self {
        self.u64(v as u64)
    }
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u64(u64::from(v))
    }
    pub fn opt_f64(&mut self, v: Option<f64>) -> &mut Self {
        match v {
            Some(x) => self.bool(true).f64(x),
            None => self.bool(false),
        }
    }
    pub fn f64s(&mut self, v: &[f64]) -> &mut Self {
        self.usize(v.len());
        for &x in v {
            self.f64(x);
        }
        self
    }
    pub fn u64s(&mut self, v: &[u64]) -> &mut Self {
        self.usize(v.len());
        for &x in v {
            self.u64(x);
        }
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.usize(v.len());
        self.buf.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    /// A matrix as rows, cols and its values.
    pub fn matrix<T: crate::Scalar>(&mut self, m: &crate::Matrix<T>) -> &mut Self {
        self.usize(m.rows()).usize(m.cols());
        for &x in m.as_slice() {
            self.f64(x.to_f64());
        }
        self
    }
    /// A generator's full state.
    pub fn rng(&mut self, r: &crate::rng::Rng) -> &mut Self {
        let (s, spare) = r.state();
        for x in s {
            self.u64(x);
        }
        self.opt_f64(spare)
    }
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Reads what [`Encoder`] wrote; every read checks the remaining length.
pub struct Decoder<'a> {
    buf: &'a [u8],
    at: usize,
    path: PathBuf,
}

impl<'a> Decoder<'a> {
    /// `path` names the file in errors.
    pub fn new(buf: &'a [u8], path: &Path) -> Self {
        Self {
            buf,
            at: 0,
            path: path.to_path_buf(),
        }
    }
    /// A malformed-state error at the current position.
    pub fn error(&self, what: impl Into<String>) -> CheckpointError {
        CheckpointError::Payload {
            path: self.path.clone(),
            what: format!("{} (at byte {} of the state)", what.into(), self.at),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.error("ends early"))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn usize(&mut self) -> Result<usize, CheckpointError> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| self.error("a count out of range"))
    }
    /// A length of items of `item_bytes` each, checked against what is left.
    fn len(&mut self, item_bytes: usize) -> Result<usize, CheckpointError> {
        let n = self.usize()?;
        if n.saturating_mul(item_bytes.max(1)) > self.buf.len() - self.at {
            return Err(self.error("a length beyond the end"));
        }
        Ok(n)
    }
    pub fn f64(&mut self) -> Result<f64, CheckpointError> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn bool(&mut self) -> Result<bool, CheckpointError> {
        match self.u64()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error("a flag that is neither 0 nor 1")),
        }
    }
    pub fn opt_f64(&mut self) -> Result<Option<f64>, CheckpointError> {
        Ok(if self.bool()? {
            Some(self.f64()?)
        } else {
            None
        })
    }
    pub fn f64s(&mut self) -> Result<Vec<f64>, CheckpointError> {
        let n = self.len(8)?;
        (0..n).map(|_| self.f64()).collect()
    }
    pub fn u64s(&mut self) -> Result<Vec<u64>, CheckpointError> {
        let n = self.len(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], CheckpointError> {
        let n = self.len(1)?;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, CheckpointError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.error("text that is not UTF-8"))
    }
    pub fn matrix<T: crate::Scalar>(&mut self) -> Result<crate::Matrix<T>, CheckpointError> {
        let (r, c) = (self.usize()?, self.usize()?);
        let n = r
            .checked_mul(c)
            .filter(|&n| n.saturating_mul(8) <= self.buf.len() - self.at)
            .ok_or_else(|| self.error("a matrix beyond the end"))?;
        let v: Vec<T> = (0..n)
            .map(|_| self.f64().map(T::from_f64))
            .collect::<Result<_, _>>()?;
        Ok(crate::Matrix::from_vec(r, c, v))
    }
    /// A matrix that must have the shape of `like`.
    pub fn matrix_like<T: crate::Scalar>(
        &mut self,
        like: &crate::Matrix<T>,
        what: &str,
    ) -> Result<crate::Matrix<T>, CheckpointError> {
        let m = self.matrix::<T>()?;
        if (m.rows(), m.cols()) != (like.rows(), like.cols()) {
            return Err(self.error(format!(
                "{what} is {} x {}, the model's is {} x {}",
                m.rows(),
                m.cols(),
                like.rows(),
                like.cols()
            )));
        }
        Ok(m)
    }
    pub fn rng(&mut self) -> Result<crate::rng::Rng, CheckpointError> {
        let s = [self.u64()?, self.u64()?, self.u64()?, self.u64()?];
        let spare = self.opt_f64()?;
        Ok(crate::rng::Rng::from_state(s, spare))
    }
    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<(), CheckpointError> {
        if self.at != self.buf.len() {
            return Err(self.error("trailing bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_and_refusals() {
        let cfg = serde_json::json!({"a": 1, "b": {"lr": 0.1}});
        let mut e = Encoder::new();
        e.f64(0.1).u64(7).f64s(&[1.0, f64::NAN]).str("x");
        let payload = e.finish();
        let bytes = encode_file("train", &cfg, &payload);
        let p = Path::new("c.ckpt");
        assert_eq!(decode_file(p, &bytes, "train", &cfg).unwrap(), payload);
        for cut in [0, 5, 8, 15, 30, bytes.len() - 40, bytes.len() - 1] {
            let err = decode_file(p, &bytes[..cut], "train", &cfg).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Truncated { .. }),
                "{cut}: {err}"
            );
        }
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(matches!(
            decode_file(p, &bad, "train", &cfg),
            Err(CheckpointError::Corrupted { .. })
        ));
        let other = serde_json::json!({"a": 1, "b": {"lr": 0.2}});
        let err = decode_file(p, &bytes, "train", &other).unwrap_err();
        assert_eq!(
            err.to_string(),
            "checkpoint c.ckpt: another configuration: config.b.lr: 0.1 in the checkpoint, 0.2 now"
        );
        assert!(matches!(
            decode_file(p, &bytes, "surface", &cfg),
            Err(CheckpointError::Kind { .. })
        ));
        let mut d = Decoder::new(&payload, p);
        assert_eq!(d.f64().unwrap(), 0.1);
        assert_eq!(d.u64().unwrap(), 7);
        let v = d.f64s().unwrap();
        assert!(v[0] == 1.0 && v[1].is_nan());
        assert_eq!(d.string().unwrap(), "x");
        d.end().unwrap();
        assert!(d.u64().is_err());
    }
}
