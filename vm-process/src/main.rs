//! `vivarium-vm NAME [--boot-from cdrom|disk|menu]`: runs VM `NAME` of the library in
//! `VIVARIUM_HOME` (or the default one) until it stops. `vivarium start` and the desktop app
//! start it (see `vivarium_vm::launch`); it is not meant to be run by hand.
//!
//! Its two arguments are parsed here by hand: a command-line parser's code has no business in
//! the process that faces the guest.

use std::process::ExitCode;

const USAGE: &str =
    "usage: vivarium-vm NAME [--boot-from cdrom|disk|menu] (started by `vivarium start`)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, boot_once) = match args.as_slice() {
        [name] => (name, None),
        [name, flag, value] if flag == "--boot-from" => match vivarium_vm::parse_boot_once(value) {
            Some(once) => (name, Some(once)),
            None => {
                eprintln!("vivarium-vm: unknown --boot-from `{value}`\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    vivarium_vm::session::limit_thread_stacks();
    ExitCode::from(vivarium_vm::session::run_vm_process(name, boot_once))
}
