//! A real Debian 12 installer ISO, assembled from Debian's packages the way Debian's netboot
//! `mini.iso` is laid out: the installer's kernel and initrds from
//! `debian-installer-12-netboot-amd64` (the `text` ones at the root, the `gtk` ones in `gtk/`),
//! isolinux for BIOS (`isolinux/` with `isolinux.cfg` including `menu.cfg`, `txt.cfg` and
//! `gtk.cfg`; one entry runs the installer on the serial console), GRUB for UEFI (Debian's
//! monolithic CD image `gcdx64.efi` from `grub-efi-amd64-bin` in a FAT image that is the El
//! Torito UEFI entry, reading `boot/grub/grub.cfg`), and `.disk/info`. Both initrds gain the
//! CD-ROM modules Debian's netinst CD has and netboot lacks
//! ([`crate::installer_cd_modules`]), so the installer finds the disc it booted from.
//!
//! It is its own cache entry, `installer-iso-N/` (N its format version) inside the fixture cache
//! ([`crate::fixtures::default_dir`]), keyed by its own inputs, so the tests that do not use it
//! never pay for its 130 MB download: `cargo xtask fixtures --installer-iso` (and `cargo xtask
//! test`) builds it, tests only [`InstallerIso::locate`] it. Needs `apt-get`, `dpkg`,
//! `xorriso`, `mtools` (`mformat`, `mmd`, `mcopy`) and `kmod` (`depmod`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{
    Package, apt_update, candidate_version, copy, download, file_name, fnv1a, lock_dir, run, write,
};

/// Bumped when the layout changes without a change of the packages or the configurations.
/// The installer kernel's own package (for the CD-ROM modules) is not in the key: it is named by
/// the kernel release inside the installer package, whose version is.
const FORMAT_VERSION: u32 = 3;

/// The folder of the cache entry inside the fixture cache. It ends with the format version, so
/// that checkouts of different formats sharing one cache do not rebuild each other's ISO.
const ENTRY: &str = "installer-iso-3";

/// The ISO's file name in the cache entry.
const ISO_FILE: &str = "debian-12-installer-amd64.iso";

/// The package with the installer's kernels and initrds.
const INSTALLER_PACKAGE: &str = "debian-installer-12-netboot-amd64";

/// Where that package keeps its images.
const INSTALLER_IMAGES: &str = "usr/lib/debian-installer/images/12/amd64";

/// Every package the ISO is made of, the installer first.
const PACKAGES: &[&str] = &[
    INSTALLER_PACKAGE,
    "isolinux",
    "syslinux-common",
    "grub-efi-amd64-bin",
];

/// The ISO's volume id.
pub const VOLUME_ID: &str = "Debian 12 amd64 n";

/// The label of the boot entry that runs the installer on the serial console.
pub const SERIAL_ENTRY: &str = "serial";

/// The command line of the serial entry.
pub const SERIAL_CMDLINE: &str = "console=ttyS0,115200n8 --- quiet";

/// The command line of the default (text) entry.
pub const DEFAULT_CMDLINE: &str = "vga=788 --- quiet";

/// `isolinux/isolinux.cfg`, as on Debian's images (the menu, no timeout), and isolinux's
/// console on the first serial port too, so the menu (and the serial entry's hotkey `s`) can
/// be used without a screen.
const ISOLINUX_CFG: &str = "\
# D-I config version 2.0
serial 0 115200
path 
include menu.cfg
default vesamenu.c32
prompt 0
timeout 0
";

/// `isolinux/menu.cfg`: the text installer first (the default), then the graphical one.
const MENU_CFG: &str = "\
menu hshift 4
menu width 70

menu title Debian GNU/Linux installer menu (BIOS mode)
include stdmenu.cfg
include txt.cfg
include gtk.cfg
";

/// `isolinux/txt.cfg`: the text installer, on the screen and on the serial console.
const TXT_CFG: &str = "\
label install
	menu label ^Install
	menu default
	kernel /linux
	append vga=788 initrd=/initrd.gz --- quiet 
label serial
	menu label Install on the ^serial console
	kernel /linux
	append initrd=/initrd.gz console=ttyS0,115200n8 --- quiet 
";

/// `isolinux/gtk.cfg`: the graphical installer.
const GTK_CFG: &str = "\
label installgui
	menu label ^Graphical install
	kernel /gtk/linux
	append vga=788 initrd=/gtk/initrd.gz --- quiet 
";

/// `boot/grub/grub.cfg`, read by the UEFI boot loader (the same entries as isolinux).
const GRUB_CFG: &str = "\
if loadfont $prefix/font.pf2 ; then
  set gfxmode=800x600
  set gfxpayload=keep
  insmod efi_gop
  insmod efi_uga
  insmod video_bochs
  insmod video_cirrus
  insmod gfxterm
  insmod png
  terminal_output gfxterm
fi

menuentry 'Install' {
    set background_color=black
    linux    /linux vga=788 --- quiet
    initrd   /initrd.gz
}
menuentry 'Install on the serial console' {
    linux    /linux console=ttyS0,115200n8 --- quiet
    initrd   /initrd.gz
}
menuentry 'Graphical install' {
    set background_color=black
    linux    /gtk/linux vga=788 --- quiet
    initrd   /gtk/initrd.gz
}
";

/// The installer ISO in the cache, as [`build`] left it.
#[derive(Debug, Clone)]
pub struct InstallerIso {
    dir: PathBuf,
}

impl InstallerIso {
    /// The ISO in the default fixture cache, if [`build`] completed there; the error says how
    /// to build it.
    pub fn locate() -> Result<InstallerIso, String> {
        InstallerIso::open(&crate::fixtures::default_dir()?)
    }

    /// The ISO in the fixture cache `fixtures_dir`, if [`build`] completed there.
    pub fn open(fixtures_dir: &Path) -> Result<InstallerIso, String> {
        let iso = InstallerIso {
            dir: fixtures_dir.join(ENTRY),
        };
        if iso.dir.join("stamp").is_file() && iso.path().is_file() {
            Ok(iso)
        } else {
            Err(format!(
                "the Debian installer ISO is missing in {}: build it with `cargo xtask fixtures \
                 --installer-iso`",
                iso.dir.display()
            ))
        }
    }

    /// The ISO.
    pub fn path(&self) -> PathBuf {
        self.dir.join(ISO_FILE)
    }

    /// The installer's build (the netboot package's version), e.g. `20230607+deb12u15`.
    pub fn installer_version(&self) -> String {
        fs::read_to_string(self.dir.join("installer-version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }
}

/// The installer ISO for the test `test`, or `None` after saying loudly why the test is
/// skipped. With `VIVARIUM_REQUIRE_RIG=1` (as `cargo xtask test` sets, after building it) a
/// missing ISO fails the test instead.
#[track_caller]
pub fn installer_iso_or_skip(test: &str) -> Option<InstallerIso> {
    match InstallerIso::locate() {
        Ok(iso) => Some(iso),
        Err(reason) => {
            crate::gate::skip(test, &reason);
            None
        }
    }
}

/// Builds the ISO in the cache entry inside `fixtures_dir`, unless it is there already for the
/// same package versions and configurations. Progress goes to stderr.
pub fn build(fixtures_dir: &Path) -> Result<InstallerIso, String> {
    let dir = fixtures_dir.join(ENTRY);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = lock_dir(&dir)?;
    let packages = resolve_packages()?;
    let key = cache_key(&packages);
    if let Ok(iso) = InstallerIso::open(fixtures_dir)
        && fs::read_to_string(dir.join("stamp")).is_ok_and(|stamp| stamp == key)
    {
        eprintln!(
            "fixtures: the installer ISO is up to date in {}",
            dir.display()
        );
        drop(lock);
        return Ok(iso);
    }
    for tool in ["xorriso", "mformat", "depmod"] {
        if crate::rig::find_program(tool).is_none() {
            return Err(format!(
                "`{tool}` is missing: install the Debian packages xorriso, mtools and kmod"
            ));
        }
    }
    let work = dir.join(format!(".work-{}", std::process::id()));
    let result = build_in(&dir, &work, &packages, &key);
    let _ = fs::remove_dir_all(&work);
    drop(lock);
    result?;
    InstallerIso::open(fixtures_dir)
}

fn resolve_packages() -> Result<Vec<Package>, String> {
    let resolve = || -> Result<Vec<Package>, String> {
        PACKAGES
            .iter()
            .map(|name| {
                Ok(Package {
                    name: name.to_string(),
                    version: candidate_version(name)?,
                })
            })
            .collect()
    };
    resolve().or_else(|first| {
        eprintln!("fixtures: {first}; updating the package lists once");
        apt_update()?;
        resolve()
    })
}

fn cache_key(packages: &[Package]) -> String {
    let mut key = format!("installer-iso format {FORMAT_VERSION}\n");
    for p in packages {
        key.push_str(&format!("package {} {}\n", p.name, p.version));
    }
    let configs = [
        ISOLINUX_CFG,
        MENU_CFG,
        TXT_CFG,
        GTK_CFG,
        GRUB_CFG,
        VOLUME_ID,
    ]
    .concat();
    key.push_str(&format!("configs {:016x}\n", fnv1a(configs.as_bytes())));
    key
}

fn build_in(dir: &Path, work: &Path, packages: &[Package], key: &str) -> Result<(), String> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let debs = download(work, packages)?;
    let root = work.join("root");
    for (deb, package) in debs.iter().zip(packages) {
        eprintln!("fixtures: unpacking {}", package.name);
        run(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
    }
    let tree = work.join("tree");
    let installer_version = &packages[0].version;
    stage_tree(&root, &tree, installer_version, work)?;
    let iso = work.join(ISO_FILE);
    eprintln!("fixtures: writing {ISO_FILE}");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-r", "-J", "-joliet-long"])
        .args(["-V", VOLUME_ID])
        .arg("-isohybrid-mbr")
        .arg(root.join("usr/lib/ISOLINUX/isohdpfx.bin"))
        .args(["-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .args(["-eltorito-alt-boot", "-e", "boot/grub/efi.img"])
        .args(["-no-emul-boot", "-isohybrid-gpt-basdat", "-o"])
        .arg(&iso)
        .arg(&tree))?;
    // The stamp goes last, so an interrupted build is never taken for a complete one.
    let _ = fs::remove_file(dir.join("stamp"));
    fs::rename(&iso, dir.join(ISO_FILE))
        .map_err(|e| format!("cannot move the ISO into {}: {e}", dir.display()))?;
    write(
        &dir.join("installer-version"),
        format!("{installer_version}\n").as_bytes(),
    )?;
    write(&dir.join("stamp"), key.as_bytes())?;
    eprintln!("fixtures: installer ISO ready in {}", dir.display());
    Ok(())
}

/// Lays out the ISO's files in `tree` from the unpacked packages in `root`.
fn stage_tree(
    root: &Path,
    tree: &Path,
    installer_version: &str,
    work: &Path,
) -> Result<(), String> {
    let images = root.join(INSTALLER_IMAGES);
    let mkdir = |path: &Path| {
        fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
    };
    for sub in [".disk", "gtk", "isolinux", "boot/grub", "EFI/boot"] {
        mkdir(&tree.join(sub))?;
    }
    write(
        &tree.join(".disk/info"),
        format!("Debian GNU/Linux 12 \"Bookworm\" - Official amd64 NETBOOT {installer_version}")
            .as_bytes(),
    )?;
    for (flavour, target) in [("text", ""), ("gtk", "gtk/")] {
        let from = images.join(flavour).join("debian-installer/amd64");
        // A hard link: the staging tree is thrown away, and the file is large.
        link_or_copy(&from.join("linux"), &tree.join(format!("{target}linux")))?;
        let scratch = work.join(format!("cd-modules-{flavour}"));
        let added = crate::installer_cd_modules::add_cd_modules(
            &from.join("initrd.gz"),
            &scratch,
            &work.join("kernel-debs"),
            &tree.join(format!("{target}initrd.gz")),
        )?;
        let _ = fs::remove_dir_all(&scratch);
        eprintln!(
            "fixtures: the {flavour} initrd gains the CD-ROM modules {}",
            added.join(", ")
        );
    }
    let isolinux = tree.join("isolinux");
    copy(
        &root.join("usr/lib/ISOLINUX/isolinux.bin"),
        &isolinux.join("isolinux.bin"),
    )?;
    let modules = root.join("usr/lib/syslinux/modules/bios");
    for module in ["ldlinux.c32", "vesamenu.c32", "libcom32.c32", "libutil.c32"] {
        copy(&modules.join(module), &isolinux.join(module))?;
    }
    let screens = images.join("text/debian-installer/amd64/boot-screens");
    copy(&screens.join("splash.png"), &isolinux.join("splash.png"))?;
    copy(&screens.join("stdmenu.cfg"), &isolinux.join("stdmenu.cfg"))?;
    // Debian's stdmenu.cfg names the splash by its netboot path; on the ISO it is beside it.
    let stdmenu = fs::read_to_string(isolinux.join("stdmenu.cfg"))
        .map_err(|e| format!("cannot read stdmenu.cfg: {e}"))?
        .replace(
            "debian-installer/amd64/boot-screens/splash.png",
            "splash.png",
        );
    write(&isolinux.join("stdmenu.cfg"), stdmenu.as_bytes())?;
    for (name, text) in [
        ("isolinux.cfg", ISOLINUX_CFG),
        ("menu.cfg", MENU_CFG),
        ("txt.cfg", TXT_CFG),
        ("gtk.cfg", GTK_CFG),
    ] {
        write(&isolinux.join(name), text.as_bytes())?;
    }
    let grub = tree.join("boot/grub");
    write(&grub.join("grub.cfg"), GRUB_CFG.as_bytes())?;
    copy(
        &images.join("text/debian-installer/amd64/grub/font.pf2"),
        &grub.join("font.pf2"),
    )?;
    // Debian's monolithic GRUB for CDs: it finds the disc by `.disk/info` and reads
    // `boot/grub/grub.cfg` there.
    let efi = root.join("usr/lib/grub/x86_64-efi/monolithic/gcdx64.efi");
    copy(&efi, &tree.join("EFI/boot/bootx64.efi"))?;
    efi_image(&efi, &grub.join("efi.img"))
}

/// A FAT image holding `EFI/boot/bootx64.efi`, the El Torito UEFI boot image (mtools: no
/// root, no loop device).
fn efi_image(bootx64: &Path, image: &Path) -> Result<(), String> {
    let size = fs::metadata(bootx64)
        .map_err(|e| format!("cannot read {}: {e}", bootx64.display()))?
        .len();
    // Room for the file and the FAT's own structures, in whole 32 KiB tracks (2 heads of
    // 32 sectors of 512 bytes).
    const TRACK: u64 = 32 << 10;
    let tracks = (size + (512 << 10)).div_ceil(TRACK);
    let file =
        fs::File::create(image).map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    file.set_len(tracks * TRACK)
        .map_err(|e| format!("cannot size {}: {e}", image.display()))?;
    drop(file);
    let sectors = (tracks * TRACK / 512).to_string();
    run(Command::new("mformat")
        .arg("-i")
        .arg(image)
        .args(["-T", &sectors, "-h", "2", "-s", "32", "-v", "EFIBOOT", "::"]))?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(image)
        .args(["::/EFI", "::/EFI/boot"]))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(image)
        .arg(bootx64)
        .arg("::/EFI/boot/bootx64.efi"))
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), String> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    copy(from, to).map_err(|e| format!("{e} (for {})", file_name(to)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_changes_with_versions() {
        let packages = |v: &str| {
            vec![Package {
                name: INSTALLER_PACKAGE.into(),
                version: v.into(),
            }]
        };
        assert_ne!(cache_key(&packages("1")), cache_key(&packages("2")));
        assert!(cache_key(&packages("1")).contains(INSTALLER_PACKAGE));
    }

    #[test]
    fn the_cache_folder_names_the_format() {
        assert!(ENTRY.ends_with(&format!("-{FORMAT_VERSION}")));
    }

    #[test]
    fn the_menus_have_a_serial_entry_with_the_serial_command_line() {
        assert!(TXT_CFG.contains(&format!("label {SERIAL_ENTRY}\n")));
        assert!(TXT_CFG.contains(&format!("initrd=/initrd.gz {SERIAL_CMDLINE}")));
        assert!(TXT_CFG.contains("vga=788 initrd=/initrd.gz --- quiet"));
    }
}
