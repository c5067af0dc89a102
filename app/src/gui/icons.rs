//! The app icon and the OS icons: PNGs rendered from the SVG sources in `icons/svg/`
//! (`icons/README.md` says how), embedded in the binary.

use std::collections::HashMap;

use eframe::egui;

/// The app icon (256 px).
pub const APP_ICON_PNG: &[u8] = include_bytes!("../../../icons/png/vivarium.png");

/// The families of guest OS that have an icon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsKind {
    /// Debian.
    Debian,
    /// Ubuntu and its flavours.
    Ubuntu,
    /// Fedora (and its relatives).
    Fedora,
    /// Arch Linux.
    Arch,
    /// Any other Linux.
    Linux,
    /// Microsoft Windows.
    Windows,
    /// FreeBSD, OpenBSD, NetBSD.
    Bsd,
    /// Anything else.
    Other,
}

impl OsKind {
    /// Every kind, for loading the icons.
    pub const ALL: [OsKind; 8] = [
        OsKind::Debian,
        OsKind::Ubuntu,
        OsKind::Fedora,
        OsKind::Arch,
        OsKind::Linux,
        OsKind::Windows,
        OsKind::Bsd,
        OsKind::Other,
    ];

    /// The family of an OS id from `vm.toml` (e.g. `debian12`, `ubuntu24.04`, `freebsd14`).
    pub fn from_os_id(id: &str) -> OsKind {
        let id = id.to_ascii_lowercase();
        let has = |prefix: &str| id.starts_with(prefix);
        if has("debian") {
            OsKind::Debian
        } else if has("ubuntu") || has("kubuntu") || has("xubuntu") {
            OsKind::Ubuntu
        } else if has("fedora") || has("rhel") || has("centos") || has("rocky") || has("alma") {
            OsKind::Fedora
        } else if has("arch") || has("manjaro") || has("endeavour") {
            OsKind::Arch
        } else if has("win") {
            OsKind::Windows
        } else if has("freebsd") || has("openbsd") || has("netbsd") || has("bsd") {
            OsKind::Bsd
        } else if has("linux") || has("alpine") || has("opensuse") || has("mint") || has("nixos") {
            OsKind::Linux
        } else {
            OsKind::Other
        }
    }

    fn png(self) -> &'static [u8] {
        match self {
            OsKind::Debian => include_bytes!("../../../icons/png/debian.png"),
            OsKind::Ubuntu => include_bytes!("../../../icons/png/ubuntu.png"),
            OsKind::Fedora => include_bytes!("../../../icons/png/fedora.png"),
            OsKind::Arch => include_bytes!("../../../icons/png/arch.png"),
            OsKind::Linux => include_bytes!("../../../icons/png/linux.png"),
            OsKind::Windows => include_bytes!("../../../icons/png/windows.png"),
            OsKind::Bsd => include_bytes!("../../../icons/png/bsd.png"),
            OsKind::Other => include_bytes!("../../../icons/png/other.png"),
        }
    }
}

/// The icons as textures, loaded once.
pub struct Icons {
    os: HashMap<OsKind, egui::TextureHandle>,
    app: Option<egui::TextureHandle>,
}

impl Icons {
    /// Decodes the embedded PNGs into textures.
    pub fn load(ctx: &egui::Context) -> Icons {
        let os = OsKind::ALL
            .iter()
            .filter_map(|kind| {
                let image = decode(kind.png())?;
                let name = format!("os-icon-{kind:?}");
                Some((*kind, ctx.load_texture(name, image, Default::default())))
            })
            .collect();
        let app = decode(APP_ICON_PNG)
            .map(|image| ctx.load_texture("app-icon", image, Default::default()));
        Icons { os, app }
    }

    /// The icon of an OS family.
    pub fn os(&self, kind: OsKind) -> Option<&egui::TextureHandle> {
        self.os.get(&kind).or_else(|| self.os.get(&OsKind::Other))
    }

    /// The app icon.
    pub fn app(&self) -> Option<&egui::TextureHandle> {
        self.app.as_ref()
    }
}

fn decode(png: &[u8]) -> Option<egui::ColorImage> {
    let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .ok()?
        .to_rgba8();
    let size = [image.width() as usize, image.height() as usize];
    Some(egui::ColorImage::from_rgba_unmultiplied(
        size,
        image.as_raw(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_ids_map_to_families_and_every_icon_decodes() {
        assert_eq!(OsKind::from_os_id("debian12"), OsKind::Debian);
        assert_eq!(OsKind::from_os_id("ubuntu24.04"), OsKind::Ubuntu);
        assert_eq!(OsKind::from_os_id("fedora41"), OsKind::Fedora);
        assert_eq!(OsKind::from_os_id("archlinux"), OsKind::Arch);
        assert_eq!(OsKind::from_os_id("linux"), OsKind::Linux);
        assert_eq!(OsKind::from_os_id("win11"), OsKind::Windows);
        assert_eq!(OsKind::from_os_id("freebsd14"), OsKind::Bsd);
        assert_eq!(OsKind::from_os_id("other"), OsKind::Other);
        for kind in OsKind::ALL {
            let image = decode(kind.png()).expect("the icon decodes");
            assert_eq!(image.size, [64, 64], "{kind:?}");
        }
        assert_eq!(decode(APP_ICON_PNG).unwrap().size, [256, 256]);
    }
}
