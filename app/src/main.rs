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
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Under --json a script reads standard output: a usage error is JSON there too.
            let json = std::env::args().skip(1).any(|a| a == "--json");
            if json && e.use_stderr() {
                println!("{}", cli::usage_error_json(&e.to_string()));
            }
            e.exit()
        }
    };
    ExitCode::from(cli::run(cli))
}
