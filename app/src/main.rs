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
    // A command line ends quietly when its reader goes (`vivarium list | head`), as other
    // Unix tools do, instead of panicking on the failed print. (Its sockets never raise
    // SIGPIPE: the control client sends with MSG_NOSIGNAL.)
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
