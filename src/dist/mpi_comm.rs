//! The MPI side of [`super`]: start-up, the dynamic work queue, abort.

use super::Topology;
use mpi::environment::{Threading, Universe};
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Worker to rank 0: a request for work carrying the previous item's result; rank 0 to
/// worker: the next item index (`u64::MAX`: no more items).
const TAG_WORK: i32 = 17;
/// Rank 0 to worker: every item's result, in index order.
const TAG_ALL: i32 = 18;
/// "No item" in the 8-byte headers.
const NONE: u64 = u64::MAX;

static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Bytes sent and received by this rank so far.
pub fn traffic() -> (u64, u64) {
    (
        SENT.load(Ordering::Relaxed),
        RECEIVED.load(Ordering::Relaxed),
    )
}

/// An initialised MPI environment; finalised on drop.
pub struct Session {
    _universe: Universe,
    topo: Topology,
}

impl Session {
    /// `MPI_Init_thread` (funnelled: only the main thread calls MPI), checked against
    /// the launcher's process count.
    pub fn start(launched: (usize, &'static str)) -> Result<Self, String> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or("MPI was already initialised")?;
        let world = universe.world();
        let topo = Topology {
            rank: world.rank() as usize,
            size: world.size() as usize,
        };
        let library = || {
            mpi::environment::library_version()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        if topo.size != launched.0 {
            return Err(format!(
                "the launcher started {n} processes ({var}={n}) but MPI sees {s}: the launcher does not match the MPI library this landscape was built with ({lib}); start it with that library's mpirun/mpiexec, or with srun --mpi=pmix (or pmi2) where Slurm was built for it",
                n = launched.0,
                var = launched.1,
                s = topo.size,
                lib = library()
            ));
        }
        if topo.size > 1 && provided < Threading::Funneled {
            return Err(format!(
                "the MPI library ({}) offers no thread support (MPI_THREAD_FUNNELED), which the work queue of rank 0 needs",
                library()
            ));
        }
        Ok(Self {
            _universe: universe,
            topo,
        })
    }

    pub fn topology(&self) -> Topology {
        self.topo
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::env::var_os("LANDSCAPE_MPI_STATS").is_some() {
            let (s, r) = traffic();
            super::report(&format!(
                "landscape-mpi: rank {} of {}: sent {s} bytes, received {r} bytes",
                self.topo.rank, self.topo.size
            ));
        }
    }
}

fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

/// Prints `error: rank R of N: MSG` and ends every rank with exit status 1.
pub fn abort(msg: &str) -> ! {
    let t = super::topology();
    super::report(&format!("error: rank {} of {}: {msg}", t.rank, t.size));
    world().abort(1)
}

/// Waits (polling, with sleeps of at most 2 ms) for a message with `tag` from `source`
/// (`None`: any rank); returns its bytes and sender.
fn poll_receive(source: Option<i32>, tag: i32) -> (Vec<u8>, i32) {
    let w = world();
    let mut pause = Duration::from_micros(20);
    loop {
        let probe = match source {
            Some(r) => w.process_at_rank(r).immediate_matched_probe_with_tag(tag),
            None => w.any_process().immediate_matched_probe_with_tag(tag),
        };
        if let Some(found) = probe {
            let (bytes, status) = found.matched_receive_vec::<u8>();
            RECEIVED.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return (bytes, status.source_rank());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

fn send(to: i32, tag: i32, bytes: &[u8]) {
    SENT.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    world().process_at_rank(to).send_with_tag(bytes, tag);
}

fn header(i: u64) -> Vec<u8> {
    i.to_le_bytes().to_vec()
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The items' encoded results in index order, on every rank (see the module docs of
/// [`super`]). An error of `f` on any rank aborts the job.
pub fn map_bytes(
    n: usize,
    f: &(dyn Fn(usize) -> Result<Vec<u8>, String> + Sync),
    tick: &(dyn Fn() + Sync),
) -> Vec<Vec<u8>> {
    match gather(n, f, tick) {
        Some(results) => {
            // Every result, length-prefixed, to every worker.
            let mut all = Vec::new();
            for r in &results {
                all.extend_from_slice(&(r.len() as u64).to_le_bytes());
                all.extend_from_slice(r);
            }
            share(Some(all));
            results
        }
        None => {
            let all = share(None);
            let mut out = Vec::with_capacity(n);
            let mut at = 0;
            while at < all.len() {
                let len = read_u64(&all[at..]) as usize;
                out.push(all[at + 8..at + 8 + len].to_vec());
                at += 8 + len;
            }
            if out.len() != n {
                abort(&format!(
                    "received {} results from rank 0, expected {n}",
                    out.len()
                ));
            }
            out
        }
    }
}

/// The items' encoded results in index order on rank 0 (`Some`); on the other ranks,
/// which compute the items rank 0 hands them, `None`. Every rank must call it (with the
/// same `n`) and then [`share`]. An error of `f` on any rank aborts the job.
pub fn gather(
    n: usize,
    f: &(dyn Fn(usize) -> Result<Vec<u8>, String> + Sync),
    tick: &(dyn Fn() + Sync),
) -> Option<Vec<Vec<u8>>> {
    let topo = super::topology();
    if topo.rank == 0 {
        return Some(root(n, topo.size, f, tick));
    }
    if let Err(e) = super::fault_point() {
        abort(&e);
    }
    let mut msg = header(NONE);
    loop {
        send(0, TAG_WORK, &msg);
        let (reply, _) = poll_receive(Some(0), TAG_WORK);
        let i = read_u64(&reply);
        if i == NONE {
            break;
        }
        match f(i as usize) {
            Ok(bytes) => {
                msg = header(i);
                msg.extend_from_slice(&bytes);
            }
            Err(e) => abort(&e),
        }
    }
    None
}

/// Rank 0's `payload` on every rank: rank 0 passes `Some` and sends it to every other
/// rank, which pass `None` and receive it.
pub fn share(payload: Option<Vec<u8>>) -> Vec<u8> {
    let topo = super::topology();
    match payload {
        Some(bytes) if topo.rank == 0 => {
            for w in 1..topo.size {
                send(w as i32, TAG_ALL, &bytes);
            }
            bytes
        }
        _ => poll_receive(Some(0), TAG_ALL).0,
    }
}

/// Rank 0: a second thread computes items while this (main) thread deals out item
/// indices to the workers and collects their results.
fn root(
    n: usize,
    size: usize,
    f: &(dyn Fn(usize) -> Result<Vec<u8>, String> + Sync),
    tick: &(dyn Fn() + Sync),
) -> Vec<Vec<u8>> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Vec<u8>>>> = Mutex::new(vec![None; n]);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let store = |i: usize, b: Vec<u8>| {
        slots.lock().expect("results lock")[i] = Some(b);
        tick();
    };
    std::thread::scope(|s| {
        let local = s.spawn(|| loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= n {
                break;
            }
            match f(i) {
                Ok(b) => store(i, b),
                Err(e) => {
                    *failed.lock().expect("error lock") = Some(e);
                    break;
                }
            }
        });
        let w = world();
        let mut active = size - 1;
        let mut pause = Duration::from_micros(20);
        while active > 0 || !local.is_finished() {
            if let Some(e) = failed.lock().expect("error lock").take() {
                abort(&e);
            }
            if active == 0 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let Some(found) = w.any_process().immediate_matched_probe_with_tag(TAG_WORK) else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
                continue;
            };
            pause = Duration::from_micros(20);
            let (bytes, status) = found.matched_receive_vec::<u8>();
            RECEIVED.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let from = status.source_rank();
            let done = read_u64(&bytes);
            if done != NONE {
                store(done as usize, bytes[8..].to_vec());
            }
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i < n {
                send(from, TAG_WORK, &header(i as u64));
            } else {
                send(from, TAG_WORK, &header(NONE));
                active -= 1;
            }
        }
        if let Some(e) = failed.lock().expect("error lock").take() {
            abort(&e);
        }
    });
    let slots = slots.into_inner().expect("results lock");
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| abort(&format!("no result for item {i}"))))
        .collect()
}
