//! `vivarium`: the desktop app and its command line, one binary.

use std::process::ExitCode;

use clap::Parser;

mod backend;
mod cli;
mod console;
mod lifecycle;
mod runner;
mod vmprocess;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    ExitCode::from(cli::run(cli))
}
