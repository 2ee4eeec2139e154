//! Scale-out across processes: the work of grids, sweeps and dataset reductions split
//! over MPI ranks, with results that do not depend on the rank count.
//!
//! Everything MPI lives in this module. The rest of the code calls [`map_items`]:
//! "evaluate item `i` for `i in 0..n` on whichever rank, and give every rank the results
//! in index order". Without the `mpi` cargo feature, or when the process was not started
//! by an MPI launcher, there is one rank and [`map_items`] is a plain loop over the
//! items (no serialisation, no threads).
//!
//! With the feature, under `mpirun -np N` (or `srun`), [`init`] starts MPI and:
//! - rank 0 hands out item indices on request (dynamic balancing: a rank asks for the
//!   next item when it finishes one) and also computes items itself, on a second thread,
//!   while its main thread answers the requests;
//! - a finished item's value travels back to rank 0 with the next request, encoded
//!   with CBOR (`ciborium`), which round-trips every `f64` bit for bit (NaN payloads
//!   and infinities included);
//! - rank 0 sends the assembled, index-ordered results to every rank, so that every
//!   rank continues through the same code; only rank 0 writes files (see
//!   [`is_root`], used by the atomic writer) and only rank 0's standard output is kept.
//!
//! Determinism: an item's value must depend only on its index (never on the rank that
//! computed it or on the other items); the callers choose items whose boundaries are
//! fixed (grid rows, sweep configurations, blocks of samples of a fixed size), and any
//! sum over items is done by the caller, on the index-ordered results, in a fixed order.
//! MPI's own reductions are never used for floating-point values. Results are then
//! byte-identical for any rank count and to the build without MPI, for the same
//! number of threads per process.
//!
//! Failure: an item that fails on a rank prints `error: rank R of N: MESSAGE` and calls
//! `MPI_Abort`, which ends every rank at once with a non-zero exit status; so does an
//! error of the command on any rank ([`fail`]). A rank that dies is reported by the
//! launcher (Open MPI names the rank), which then ends the job.
//!
//! Point-to-point waits poll with short sleeps instead of MPI's blocking calls, which
//! spin a core: on a machine with fewer cores than ranks plus one dispatcher, a
//! spinning wait would take a core from the ranks that compute.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

#[cfg(feature = "mpi")]
mod mpi_comm;

/// The place of this process among the ranks of the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// This process's rank, `0..size`.
    pub rank: usize,
    /// Number of ranks (1 without MPI).
    pub size: usize,
}

static TOPOLOGY: OnceLock<Topology> = OnceLock::new();

/// The topology set by [`init`]; one rank (rank 0 of 1) when [`init`] was not called
/// (library use, unit tests).
pub fn topology() -> Topology {
    *TOPOLOGY.get_or_init(|| Topology { rank: 0, size: 1 })
}

/// This process's rank (0 without MPI).
pub fn rank() -> usize {
    topology().rank
}

/// Number of ranks (1 without MPI).
pub fn size() -> usize {
    topology().size
}

/// Whether this process is rank 0, the one that writes every output.
pub fn is_root() -> bool {
    rank() == 0
}

/// Keeps MPI initialised; dropping it finalises MPI (at the end of `main`).
pub struct Guard {
    #[cfg(feature = "mpi")]
    _mpi: Option<mpi_comm::Session>,
}

/// The number of processes a launcher says it started, with the variable that says so:
/// Open MPI's `mpirun` (`OMPI_COMM_WORLD_SIZE`), the PMI launchers of MPICH, Intel MPI
/// and `srun --mpi=pmi2` (`PMI_SIZE`), and a Slurm job step (`SLURM_STEP_NUM_TASKS`,
/// only inside a step started by `srun`, not in the batch script itself).
pub fn launcher_size() -> Option<(usize, &'static str)> {
    let get = |k: &'static str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|n| (n, k))
    };
    if let Some(x) = get("OMPI_COMM_WORLD_SIZE").or_else(|| get("PMI_SIZE")) {
        return Some(x);
    }
    // Slurm's batch and extern steps have the reserved ids 0xFFFFFFF0 and above.
    let in_step = std::env::var("SLURM_STEP_ID")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|id| id < 0xFFFF_FFF0);
    if in_step {
        return get("SLURM_STEP_NUM_TASKS");
    }
    None
}

/// Sets up the ranks. Without the `mpi` feature: one rank, and an error when an MPI
/// launcher started several copies (each would redo the whole job). With it: MPI is
/// started when a launcher started this process (else one rank, no MPI), and it is an
/// error when the launcher's process count differs from MPI's (a launcher of another
/// MPI library than the one this binary was built with). Ranks other than 0 have their
/// standard output and standard error sent to `/dev/null` (errors still show, see
/// [`report`]).
pub fn init() -> Result<Guard, String> {
    let launched = launcher_size();
    #[cfg(not(feature = "mpi"))]
    {
        if let Some((n, var)) = launched.filter(|l| l.0 > 1) {
            return Err(format!(
                "this landscape was built without MPI, but a launcher started it as one of {n} processes ({var}={n}), which would each run the whole job; build it with `cargo build --release --features mpi` to split the work, or run it without mpirun/srun"
            ));
        }
        let _ = TOPOLOGY.set(Topology { rank: 0, size: 1 });
        Ok(Guard {})
    }
    #[cfg(feature = "mpi")]
    {
        let Some(launched) = launched else {
            let _ = TOPOLOGY.set(Topology { rank: 0, size: 1 });
            return Ok(Guard { _mpi: None });
        };
        let session = mpi_comm::Session::start(launched)?;
        let topo = session.topology();
        let _ = TOPOLOGY.set(topo);
        if topo.rank != 0 {
            silence_output();
        }
        Ok(Guard {
            _mpi: Some(session),
        })
    }
}

/// The original standard error of a rank other than 0 (see [`silence_output`]).
#[cfg(feature = "mpi")]
static SAVED_STDERR: OnceLock<i32> = OnceLock::new();

/// Ranks other than 0 run the same code as rank 0: their standard output and the
/// progress and notes on their standard error would repeat rank 0's. Both go to
/// `/dev/null`; errors and panics still reach the original standard error through
/// [`report`] (with the rank number).
#[cfg(feature = "mpi")]
fn silence_output() {
    use std::os::fd::AsRawFd;
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    // SAFETY: dup/dup2 on open descriptors; each standard stream is replaced atomically.
    unsafe {
        let saved = libc::dup(libc::STDERR_FILENO);
        if saved >= 0 {
            let _ = SAVED_STDERR.set(saved);
        }
        libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        if saved >= 0 {
            libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO);
        }
    }
    std::panic::set_hook(Box::new(|info| {
        let t = topology();
        report(&format!("rank {} of {}: {info}", t.rank, t.size));
    }));
}

/// Writes one line to this rank's original standard error (also on ranks whose
/// standard error was silenced).
pub fn report(line: &str) {
    #[cfg(feature = "mpi")]
    if let Some(&fd) = SAVED_STDERR.get() {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        // SAFETY: `fd` is the descriptor saved by `silence_output`, never closed; the
        // `ManuallyDrop` keeps it open.
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        // One write, so that the lines of ranks sharing a file do not interleave.
        let _ = f.write_all(format!("{line}\n").as_bytes());
        return;
    }
    eprintln!("{line}");
}

/// Ends the job because of `msg` on this rank. With several ranks: prints
/// `error: rank R of N: MSG` and aborts every rank (`MPI_Abort`, exit status 1), so
/// that no rank waits forever for this one. With one rank it returns, and the caller
/// reports the error as usual.
pub fn fail(msg: &str) {
    #[cfg(feature = "mpi")]
    if size() > 1 {
        mpi_comm::abort(msg);
    }
    let _ = msg;
}

/// Test-only fault injection: `LANDSCAPE_TEST_RANK_FAULT=R:fail` makes rank `R` fail
/// with an error, `R:kill` makes it kill itself (SIGKILL): a worker (`R > 0`) before
/// its first request for work, so the fault fires however fast rank 0 is (rank 0
/// cannot finish a map before every worker has asked once); rank 0 at its first item.
/// Costs one lookup of a cached value when unset.
#[cfg(feature = "mpi")]
fn injected_fault() -> Option<&'static str> {
    static FAULT: OnceLock<Option<(usize, String)>> = OnceLock::new();
    let f = FAULT.get_or_init(|| {
        let v = std::env::var("LANDSCAPE_TEST_RANK_FAULT").ok()?;
        let (r, what) = v.split_once(':')?;
        Some((r.parse().ok()?, what.to_string()))
    });
    match f {
        Some((r, what)) if *r == rank() => Some(what.as_str()),
        _ => None,
    }
}

/// Applies an injected fault ([`injected_fault`]) on this rank.
#[cfg(feature = "mpi")]
pub(crate) fn fault_point() -> Result<(), String> {
    match injected_fault() {
        Some("kill") => {
            // SAFETY: a signal to this very process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        }
        Some("fail") => Err(format!(
            "injected failure (LANDSCAPE_TEST_RANK_FAULT) on rank {}",
            rank()
        )),
        _ => Ok(()),
    }
}

/// Set while this process evaluates the items of a distributed [`map_items`] (a nested
/// map runs locally) and, for good, by [`run_locally`].
static LOCAL: AtomicBool = AtomicBool::new(false);

/// From now on [`map_items`] runs every item on this rank: for the commands that run
/// on rank 0 alone while the other ranks have exited.
pub fn run_locally() {
    LOCAL.store(true, Ordering::SeqCst);
}

/// `f(i)` for `i in 0..n`, returned in index order on every rank.
///
/// One rank: a plain loop (items one after another; `f` may use rayon inside), and the
/// first error is returned. Several ranks: the items are dealt out dynamically (see the
/// module docs); an error of `f` on any rank ends the job through [`fail`], naming the
/// rank. `tick` is called on rank 0 once per finished item (progress bars).
///
/// `f(i)` must depend on `i` only, so that the results do not depend on the rank count.
pub fn map_items<T, E, F>(n: usize, f: F, tick: impl Fn() + Sync) -> Result<Vec<T>, E>
where
    T: Serialize + DeserializeOwned + Send,
    E: Display,
    F: Fn(usize) -> Result<T, E> + Sync,
{
    // One rank, a map inside a work item (e.g. the trace estimate of one curvature
    // point), or a command that runs on rank 0 alone: a plain loop.
    if size() <= 1 || LOCAL.load(Ordering::SeqCst) {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(f(i)?);
            tick();
        }
        return Ok(out);
    }
    #[cfg(feature = "mpi")]
    {
        LOCAL.store(true, Ordering::SeqCst);
        let enc = |i: usize| -> Result<Vec<u8>, String> {
            fault_point()?;
            let v = f(i).map_err(|e| e.to_string())?;
            let mut bytes = Vec::new();
            ciborium::into_writer(&v, &mut bytes)
                .map_err(|e| format!("cannot encode a result for rank 0: {e}"))?;
            Ok(bytes)
        };
        let raw = mpi_comm::map_bytes(n, &enc, &tick);
        let mut out = Vec::with_capacity(n);
        for (i, b) in raw.iter().enumerate() {
            match ciborium::from_reader::<T, _>(b.as_slice()) {
                Ok(v) => out.push(v),
                Err(e) => {
                    let msg = format!("cannot decode the result of item {i}: {e}");
                    fail(&msg);
                }
            }
        }
        LOCAL.store(false, Ordering::SeqCst);
        Ok(out)
    }
    #[cfg(not(feature = "mpi"))]
    unreachable!("several ranks without the mpi feature")
}

/// Whether a [`map_items`] or [`map_reduce`] called now would deal its items out over
/// several ranks (several ranks, and not inside a work item or a rank-0-only command).
/// Callers use it to choose work items whose results they combine on rank 0 (see
/// [`map_reduce`]); without it they keep their own in-process parallel loop.
pub fn distributed() -> bool {
    size() > 1 && !LOCAL.load(Ordering::SeqCst)
}

/// `combine(f(0), ..., f(n - 1))` on every rank, with the items dealt out as in
/// [`map_items`] but only rank 0 holding every item's result: it runs `combine` (for
/// example a sum of the items' vectors in index order) and sends the combined value to
/// the other ranks. The traffic is then one result per item to rank 0 and one combined
/// value per rank, instead of every result to every rank.
///
/// One rank (or inside a work item): `combine` of a plain loop's results. An error of
/// `f` or of `combine` with several ranks ends the job through [`fail`].
pub fn map_reduce<T, R, E, F, C>(n: usize, f: F, combine: C) -> Result<R, E>
where
    T: Serialize + DeserializeOwned + Send,
    R: Serialize + DeserializeOwned,
    E: Display,
    F: Fn(usize) -> Result<T, E> + Sync,
    C: FnOnce(Vec<T>) -> Result<R, E>,
{
    if !distributed() {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(f(i)?);
        }
        return combine(out);
    }
    #[cfg(feature = "mpi")]
    {
        LOCAL.store(true, Ordering::SeqCst);
        let enc = |i: usize| -> Result<Vec<u8>, String> {
            fault_point()?;
            let v = f(i).map_err(|e| e.to_string())?;
            let mut bytes = Vec::new();
            ciborium::into_writer(&v, &mut bytes)
                .map_err(|e| format!("cannot encode a result for rank 0: {e}"))?;
            Ok(bytes)
        };
        let payload = mpi_comm::gather(n, &enc, &|| {}).map(|raw| {
            let mut items = Vec::with_capacity(n);
            for (i, b) in raw.iter().enumerate() {
                match ciborium::from_reader::<T, _>(b.as_slice()) {
                    Ok(v) => items.push(v),
                    Err(e) => {
                        mpi_comm::abort(&format!("cannot decode the result of item {i}: {e}"))
                    }
                }
            }
            let r = combine(items).unwrap_or_else(|e| mpi_comm::abort(&e.to_string()));
            let mut bytes = Vec::new();
            if let Err(e) = ciborium::into_writer(&r, &mut bytes) {
                mpi_comm::abort(&format!("cannot encode a combined result: {e}"));
            }
            bytes
        });
        let bytes = mpi_comm::share(payload);
        let r = ciborium::from_reader::<R, _>(bytes.as_slice()).unwrap_or_else(|e| {
            mpi_comm::abort(&format!("cannot decode rank 0's combined result: {e}"))
        });
        LOCAL.store(false, Ordering::SeqCst);
        Ok(r)
    }
    #[cfg(not(feature = "mpi"))]
    unreachable!("several ranks without the mpi feature")
}

/// Rank 0's `f()` on every rank: rank 0 computes it and sends it to the others (for
/// state read from rank 0's files, such as the finished models of a resumed study, so
/// that every rank deals out the same items even where the ranks do not share a file
/// system). One rank (or inside a work item): `f()`.
pub fn from_root<T, F>(f: F) -> T
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    if !distributed() {
        return f();
    }
    #[cfg(feature = "mpi")]
    {
        let payload = is_root().then(|| {
            let v = f();
            let mut bytes = Vec::new();
            if let Err(e) = ciborium::into_writer(&v, &mut bytes) {
                mpi_comm::abort(&format!("cannot encode rank 0's value: {e}"));
            }
            bytes
        });
        let bytes = mpi_comm::share(payload);
        ciborium::from_reader::<T, _>(bytes.as_slice())
            .unwrap_or_else(|e| mpi_comm::abort(&format!("cannot decode rank 0's value: {e}")))
    }
    #[cfg(not(feature = "mpi"))]
    unreachable!("several ranks without the mpi feature")
}

/// A 64-bit fingerprint (FNV-1a) of the bits of `v`: work items that depend on a vector
/// every rank holds (a Lanczos direction) return it with their result, and rank 0
/// checks it against its own, so that a rank whose copy drifted (another CPU's rounding)
/// stops the job instead of adding a product of another vector.
pub fn fingerprint<'a>(vs: impl IntoIterator<Item = &'a [f64]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in vs {
        for x in v {
            for b in x.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Bytes this rank sent and received in [`map_items`] (0 without MPI).
pub fn traffic() -> (u64, u64) {
    #[cfg(feature = "mpi")]
    {
        mpi_comm::traffic()
    }
    #[cfg(not(feature = "mpi"))]
    {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_map_is_a_loop_in_order() {
        let r: Result<Vec<usize>, String> = map_items(5, |i| Ok(i * i), || {});
        assert_eq!(r.unwrap(), vec![0, 1, 4, 9, 16]);
        let e: Result<Vec<usize>, String> = map_items(
            5,
            |i| if i == 3 { Err("bad 3".into()) } else { Ok(i) },
            || {},
        );
        assert_eq!(e.unwrap_err(), "bad 3");
    }
}
