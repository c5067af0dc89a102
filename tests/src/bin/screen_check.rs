//! `vivarium-screen-check FILE...`: what each picture of a screen (a binary PPM from QEMU's
//! `screendump`, or a PNG from `vivarium screenshot`) shows, one line each:
//! `FILE width=W height=H dominant=#rrggbb share=S newt=yes|no`.
//!
//! `vivarium-screen-check --same A B`: whether two pictures show the same screen, allowing
//! for a blinking cursor: at most [`CURSOR_PIXELS`] pixels differ. Prints the comparison;
//! exits 0 when the same, 1 when not (or unreadable).
//!
//! `vivarium-screen-check --text ROM FILE`: the text of a VGA text-mode picture (9x16 cells),
//! read against the font of the VGA BIOS `ROM` ([`vivarium_e2e::vga_text`]), a line per row.
//! `vivarium-screen-check --has ROM FILE NEEDLE`: exits 0 when that text holds `NEEDLE`, 1
//! when not (or unreadable), so a rig script can wait for words on the screen.
//!
//! `dominant` is the colour most pixels have (8 bits a channel, as stored) and `share` their
//! part of the picture; `newt` says whether it is the Debian installer's text interface
//! ([`Picture::is_newt_screen`]). A test-support tool for scripts inside the nested rig, which
//! has only busybox: the installer benchmark waits on it for QEMU's screen and Vivarium's alike.
//! Exits 1 when a file cannot be read (after the lines of the others).

use std::path::Path;
use std::process::ExitCode;

use vivarium_e2e::screen::{self, Depth, Picture};

/// Pixels that may differ between two pictures of the same screen: a text cursor drawn or not
/// (a block of 8x16 at most) in a couple of places.
const CURSOR_PIXELS: u64 = 2 * 8 * 16;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: vivarium-screen-check FILE.ppm|FILE.png... | --same A B");
        return ExitCode::from(2);
    }
    if let [flag, a, b] = files.as_slice()
        && flag == "--same"
    {
        return same(a, b);
    }
    match files.as_slice() {
        [flag, rom, file] if flag == "--text" => return text(rom, file, None),
        [flag, rom, file, needle] if flag == "--has" => return text(rom, file, Some(needle)),
        _ => {}
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

/// `--same A B`.
fn same(a: &str, b: &str) -> ExitCode {
    let pictures =
        Picture::load(Path::new(a)).and_then(|pa| Ok((pa, Picture::load(Path::new(b))?)));
    match pictures.and_then(|(pa, pb)| screen::compare(&pa, &pb, Depth::Rgb888)) {
        Ok(c) => {
            println!("same={} {c}", c.pixels - c.identical <= CURSOR_PIXELS);
            if c.pixels - c.identical <= CURSOR_PIXELS {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("same=false {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--text ROM FILE` and `--has ROM FILE NEEDLE`.
fn text(rom: &str, file: &str, needle: Option<&str>) -> ExitCode {
    use vivarium_e2e::vga_text::{TextScreen, VgaFont};
    let screen = VgaFont::load(Path::new(rom)).and_then(|font| {
        let picture = Picture::load(Path::new(file)).map_err(|e| e.to_string())?;
        TextScreen::read(&picture, &font, 9)
    });
    match (screen, needle) {
        (Ok(screen), None) => {
            println!("{}", screen.text());
            ExitCode::SUCCESS
        }
        (Ok(screen), Some(needle)) if screen.find(needle).is_some() => ExitCode::SUCCESS,
        (Ok(_), Some(_)) => ExitCode::FAILURE,
        (Err(e), _) => {
            eprintln!("vivarium-screen-check: {file}: {e}");
            ExitCode::FAILURE
        }
    }
}
