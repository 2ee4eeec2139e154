//! The `landscape` command-line tool.

// mimalloc: the tape and the per-block buffers allocate large short-lived
// matrices; glibc's malloc returns them to the OS and page-faults them back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use std::process::ExitCode;

/// Allocator settings read by mimalloc when the process starts.
const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_EAGER_COMMIT", "1"),
    ("MIMALLOC_PURGE_DELAY", "-1"),
];

/// The tape allocates tens of MiB per layer per step. With mimalloc's defaults
/// freed memory is purged after 10 ms and faulted back (zeroed by the kernel) on
/// the next step: 45% of a ConvNet training step was kernel page clearing. These
/// options are read at allocator start-up, before `main`, so the process
/// re-executes itself once with them set (unless the user set them).
fn configure_allocator() {
    use std::os::unix::process::CommandExt;
    if ALLOCATOR_ENV
        .iter()
        .any(|(k, _)| std::env::var_os(k).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in ALLOCATOR_ENV {
        cmd.env(k, v);
    }
    // `exec` only returns on failure; then run with the defaults.
    let _ = cmd.exec();
}

fn main() -> ExitCode {
    configure_allocator();
    // MPI ranks (a no-op without the `mpi` feature or a launcher); finalised on drop.
    let _ranks = match landscape::dist::init() {
        Ok(g) => g,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        // With several ranks: prints the error with the rank and ends every rank.
        Err(msg) if landscape::dist::size() > 1 => {
            landscape::dist::fail(&msg);
            ExitCode::FAILURE
        }
        Err(msg) => match landscape::io::checkpoint::interrupted_exit_status() {
            // Stopped by SIGINT/SIGTERM after writing a checkpoint: 130/143.
            Some(code) => {
                eprintln!("{msg}");
                ExitCode::from(code)
            }
            None => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
