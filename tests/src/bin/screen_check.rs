//! `vivarium-screen-check FILE...`: what each picture of a screen (a binary PPM from QEMU's
//! `screendump`, or a PNG from `vivarium screenshot`) shows, one line each:
//! `FILE width=W height=H dominant=#rrggbb share=S newt=yes|no`.
//!
//! `dominant` is the colour most pixels have (8 bits a channel, as stored) and `share` their
//! part of the picture; `newt` says whether it is the Debian installer's text interface
//! ([`Picture::is_newt_screen`]). A test-support tool for scripts inside the nested rig, which
//! has only busybox: the installer benchmark waits on it for QEMU's screen and Vivarium's alike.
//! Exits 1 when a file cannot be read (after the lines of the others).

use std::path::Path;
use std::process::ExitCode;

use vivarium_e2e::screen::{Depth, Picture};

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: vivarium-screen-check FILE.ppm|FILE.png...");
        return ExitCode::from(2);
    }
    let mut code = ExitCode::SUCCESS;
    for file in files {
        match Picture::load(Path::new(&file)) {
            Ok(picture) => {
                let ([r, g, b], share) = picture.dominant(Depth::Rgb888);
                println!(
                    "{file} width={} height={} dominant=#{r:02x}{g:02x}{b:02x} share={share:.3} newt={}",
                    picture.width,
                    picture.height,
                    if picture.is_newt_screen() {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
            Err(e) => {
                eprintln!("vivarium-screen-check: {file}: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}
