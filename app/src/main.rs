//! `vivarium`: the desktop app and its command line, one binary.
//!
//! With no arguments it opens the desktop app; with arguments it is the command line.

use std::process::ExitCode;

use clap::Parser;
use vivarium::{cli, gui};

fn main() -> ExitCode {
    if std::env::args_os().len() <= 1 {
        return gui::run_app();
    }
    let cli = cli::Cli::parse();
    ExitCode::from(cli::run(cli))
}
