//! offheap: finds the memory a Node.js heap snapshot cannot see.
//!
//! This crate is the thin binary: argument parsing, launching and attaching,
//! collecting into the recording, the live status line, and wiring the
//! analysis to the reporters. It computes no verdict itself.

mod attach;
mod check;
mod cli;
mod collect;
mod demo;
mod elf;
mod heap;
mod load;
mod outdir;
mod reporting;
mod run;
mod serve;
mod session;
mod signals;
mod smaps;
mod status;

use clap::Parser;
use std::process::ExitCode;

/// An error that is the user's to fix: printed as one line, no backtrace.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub code: u8,
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Terminal-safe text of a string offheap did not write itself (a path, a
/// command, anything from a recording): see [`offheap_report::escape::terminal`].
pub fn terminal(s: &str) -> std::borrow::Cow<'_, str> {
    offheap_report::escape::terminal(s)
}

/// Shorthand for a one-line user error with exit code 2.
pub fn user_error(message: impl Into<String>) -> anyhow::Error {
    UserError {
        message: message.into(),
        code: 2,
    }
    .into()
}

/// The analysis builds and drops millions of small strings and vectors
/// (frames of every stack of every process): mimalloc does that at about
/// half of glibc's cost (docs/BENCHMARKS.md, `offheap check`). The target
/// never sees it: offheap's own process only.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    reporting::restore_sigpipe();
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<UserError>().map(|u| u.code).unwrap_or(1);
            // One line: the error and its causes, joined.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                msg.push_str(": ");
                msg.push_str(&cause.to_string());
            }
            // Paths and commands quoted in it are the user's or the target's:
            // no control character reaches the terminal, and it stays one line.
            eprintln!("offheap: error: {}", terminal(&msg));
            ExitCode::from(code)
        }
    }
}
