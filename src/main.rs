//! The `landscape` command-line tool.

// mimalloc: the tape and the per-block buffers allocate large short-lived
// matrices; glibc's malloc returns them to the OS and page-faults them back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
