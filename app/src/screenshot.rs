//! `vivarium screenshot NAME FILE.png`: the running VM's screen as a PNG, read from its display
//! file (the memory the guest draws in), so it works whether or not a window shows the VM.

use std::path::Path;

use serde_json::json;
use vivarium_core::config::DisplayConfig;
use vivarium_core::control::{ControlClient, ControlError};
use vivarium_core::library::Library;
use vivarium_core::{Error, ErrorKind};

/// What a screenshot captured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Captured {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The colour most pixels have (`[r, g, b]`): the background, on most screens.
    pub dominant_color: [u8; 3],
    /// The share of the pixels (0 to 1) that have the dominant colour; 1 is a blank screen.
    pub dominant_share: f64,
}

/// The colour most pixels of an RGBA picture have, and their share; scripts waiting for a
/// screen (an installer's blue background, a desktop) read it from `screenshot --json`.
pub fn dominant_color(rgba: &[u8]) -> ([u8; 3], f64) {
    let mut counts: std::collections::HashMap<[u8; 3], usize> = std::collections::HashMap::new();
    let pixels = rgba.len() / 4;
    for px in rgba.chunks_exact(4) {
        *counts.entry([px[0], px[1], px[2]]).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(color, count)| (count, color))
        .map(|(color, count)| (color, count as f64 / pixels.max(1) as f64))
        .unwrap_or(([0, 0, 0], 0.0))
}

/// Writes the screen of running VM `name` to `out` as a PNG (replacing it atomically). Fails
/// clearly when the VM does not exist, is stopped, has no display, or shows nothing.
pub fn screenshot(library: &Library, name: &str, out: &Path) -> Result<Captured, Error> {
    let entry = library.get(name)?;
    if entry.config()?.display == DisplayConfig::None {
        return Err(Error::InvalidInput(format!(
            "`{name}` has no display (its settings say `none`): give it one while it is stopped \
             (vivarium set {name} --display 1024x768)"
        )));
    }
    let mut client = match ControlClient::connect(library, name) {
        Ok(client) => client,
        Err(ControlError::NotRunning(_)) => {
            return Err(Error::Reported {
                kind: ErrorKind::NotRunning,
                message: format!(
                    "`{name}` is not running, so it has no screen to capture: start it first \
                     (vivarium start {name})"
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let display = client.open_display().map_err(|e| Error::Reported {
        kind: ErrorKind::Broken,
        message: format!(
            "`{name}` runs but its screen cannot be read ({e}); if it was started before its \
             display was set up, restart it"
        ),
    })?;
    let Some((mode, rgba)) = display.snapshot_rgba().map_err(|e| Error::Reported {
        kind: ErrorKind::Io,
        message: format!("could not read the screen of `{name}`: {e}"),
    })?
    else {
        return Err(Error::Reported {
            kind: ErrorKind::InvalidInput,
            message: format!(
                "the display of `{name}` is off (the guest has switched it off or not set a \
                 mode yet): nothing to capture; try again once it shows something"
            ),
        });
    };
    let png = encode_png(mode.width, mode.height, &rgba)?;
    vivarium_core::fsutil::atomic_write(out, &png)?;
    let (dominant_color, dominant_share) = dominant_color(&rgba);
    Ok(Captured {
        width: mode.width,
        height: mode.height,
        dominant_color,
        dominant_share,
    })
}

fn encode_png(width: u32, height: u32, rgba: &[u8]) -> Result<Vec<u8>, Error> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgba, width, height, image::ExtendedColorType::Rgba8)
        .map_err(|e| Error::io("could not encode the screenshot", std::io::Error::other(e)))?;
    Ok(png)
}

/// The `screenshot` command: captures and says what it wrote.
pub fn run(library: &Library, name: &str, out: &Path, json: bool) -> Result<(), Error> {
    let captured = screenshot(library, name, out)?;
    if json {
        println!(
            "{}",
            json!({
                "screenshot": out,
                "vm": name,
                "width": captured.width,
                "height": captured.height,
                "dominant_color": format!(
                    "#{:02x}{:02x}{:02x}",
                    captured.dominant_color[0], captured.dominant_color[1], captured.dominant_color[2]
                ),
                "dominant_share": (captured.dominant_share * 1000.0).round() / 1000.0,
            })
        );
    } else {
        println!(
            "Saved the screen of `{name}` ({}x{}) to `{}`.",
            captured.width,
            captured.height,
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dominant_colour_is_the_most_common_one() {
        let mut rgba = [0u8, 0, 170, 255].repeat(6);
        rgba.extend([200, 200, 200, 255].repeat(2));
        assert_eq!(dominant_color(&rgba), ([0, 0, 170], 0.75));
        assert_eq!(dominant_color(&[]), ([0, 0, 0], 0.0));
    }

    #[test]
    fn pixels_survive_the_png_round_trip() {
        let rgba: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 10) as u8).collect();
        let png = encode_png(3, 2, &rgba).unwrap();
        let decoded = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
            .unwrap()
            .to_rgba8();
        assert_eq!(decoded.dimensions(), (3, 2));
        assert_eq!(decoded.into_raw(), rgba);
    }
}
