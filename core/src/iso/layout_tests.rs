//! Recognition on small ISOs laid out like real distributions' media, built with `xorriso`.
//!
//! The ISOs hold fake kernels (a header that says x86_64 or arm64) and fake boot images: what
//! is recognised is the layout, not the code. Without `xorriso` these tests say so loudly and
//! pass, unless `VIVARIUM_REQUIRE_RIG=1` (CI installs it through `cargo xtask test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A fake x86_64 bzImage: the setup header's magic, protocol 2.15 and `XLF_KERNEL_64`.
fn bzimage() -> Vec<u8> {
    let mut k = vec![0u8; 8192];
    k[0x1fe] = 0x55;
    k[0x1ff] = 0xaa;
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x236] = 1;
    k
}

/// A fake arm64 `Image`.
fn arm64_image() -> Vec<u8> {
    let mut k = vec![0u8; 8192];
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    k
}

/// How the ISO's names are recorded.
#[derive(Clone, Copy)]
enum Names {
    RockRidgeAndJoliet,
    JolietOnly,
    Plain,
}

struct Layout<'a> {
    volume_id: &'a str,
    files: Vec<(&'a str, Vec<u8>)>,
    /// BIOS boot image (no emulation), if bootable.
    bios_boot: Option<&'a str>,
    /// UEFI boot image, if any.
    efi_boot: Option<&'a str>,
    names: Names,
}

impl<'a> Layout<'a> {
    fn new(volume_id: &'a str) -> Self {
        Layout {
            volume_id,
            files: Vec::new(),
            bios_boot: None,
            efi_boot: None,
            names: Names::RockRidgeAndJoliet,
        }
    }
    fn file(mut self, path: &'a str, data: impl Into<Vec<u8>>) -> Self {
        self.files.push((path, data.into()));
        self
    }
    fn bios(mut self, path: &'a str) -> Self {
        self.bios_boot = Some(path);
        self.files.push((path, vec![0xfa; 2048]));
        self
    }
    fn efi(mut self, path: &'a str) -> Self {
        self.efi_boot = Some(path);
        self.files.push((path, vec![0xeb; 4096]));
        self
    }
    fn names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// Builds the ISO in `dir`; `None` when xorriso is missing (and that is allowed).
    fn build(&self, dir: &Path) -> Option<PathBuf> {
        if !xorriso_available() {
            return None;
        }
        let tree = dir.join("tree");
        for (path, data) in &self.files {
            let target = tree.join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, data).unwrap();
        }
        std::fs::create_dir_all(&tree).unwrap();
        let iso = dir.join("test.iso");
        let mut cmd = Command::new("xorriso");
        cmd.args(["-as", "mkisofs", "-quiet", "-V", self.volume_id, "-o"])
            .arg(&iso);
        match self.names {
            Names::RockRidgeAndJoliet => {
                cmd.args(["-R", "-J"]);
            }
            // xorriso writes Rock Ridge unless told not to.
            Names::JolietOnly => {
                cmd.args(["--norock", "-J"]);
            }
            Names::Plain => {
                cmd.arg("--norock");
            }
        }
        if let Some(boot) = self.bios_boot {
            cmd.args(["-c", "boot.cat", "-b", boot]).args([
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
            ]);
        }
        if let Some(efi) = self.efi_boot {
            if self.bios_boot.is_none() {
                cmd.args(["-c", "boot.cat"]);
            } else {
                cmd.arg("-eltorito-alt-boot");
            }
            cmd.args(["-e", efi, "-no-emul-boot"]);
        }
        cmd.arg(&tree);
        let out = cmd.output().expect("xorriso runs");
        assert!(
            out.status.success(),
            "xorriso failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(iso)
    }
}

fn xorriso_available() -> bool {
    let found = Command::new("xorriso")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert_ne!(
            std::env::var("VIVARIUM_REQUIRE_RIG").as_deref(),
            Ok("1"),
            "xorriso is missing and VIVARIUM_REQUIRE_RIG=1: install it (cargo xtask test does)"
        );
        eprintln!(
            "\n*** SKIPPED: the ISO layout tests need `xorriso` (apt-get install xorriso) ***\n"
        );
    }
    found
}

fn inspect_layout(layout: &Layout<'_>) -> Option<IsoInspection> {
    let dir = tempfile::tempdir().unwrap();
    let iso = layout.build(dir.path())?;
    Some(inspect_for(&iso, Some(Arch::X86_64)).expect("inspects"))
}

fn debian_netinst<'a>() -> Layout<'a> {
    Layout::new("Debian 12.5.0 amd64 n")
        .file(
            ".disk/info",
            "Debian GNU/Linux 12.5.0 \"Bookworm\" - Official amd64 NETINST with firmware 20240210-11:27",
        )
        .file("install.amd/vmlinuz", bzimage())
        .file("install.amd/initrd.gz", vec![1u8; 3000])
        .file("install.amd/gtk/initrd.gz", vec![2u8; 5000])
        .file(
            "isolinux/isolinux.cfg",
            "path \ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n",
        )
        .file(
            "isolinux/menu.cfg",
            "menu hshift 4\nmenu width 70\nmenu title Debian GNU/Linux installer menu (BIOS mode)\n\
             include stdmenu.cfg\ninclude gtk.cfg\nmenu begin install\n menu label ^Advanced options\n\
             include txt.cfg\nmenu end\n",
        )
        .file("isolinux/stdmenu.cfg", "menu background splash.png\n")
        .file(
            "isolinux/gtk.cfg",
            "default installgui\nlabel installgui\n\tmenu label ^Graphical install\n\tmenu default\n\
             \tkernel /install.amd/vmlinuz\n\tappend vga=788 initrd=/install.amd/gtk/initrd.gz --- quiet \n",
        )
        .file(
            "isolinux/txt.cfg",
            "label install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\
             \tappend vga=788 initrd=/install.amd/initrd.gz --- quiet \n",
        )
        .bios("isolinux/isolinux.bin")
        .efi("boot/grub/efi.img")
        .file("EFI/boot/bootx64.efi", vec![0u8; 1024])
}

#[test]
fn debian_netinst_boots_the_graphical_installer_directly() {
    let Some(found) = inspect_layout(&debian_netinst()) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Debian);
    assert_eq!(found.os.id, "debian12");
    assert_eq!(found.os.name, "Debian 12");
    assert_eq!(found.os.version.as_deref(), Some("12.5.0"));
    assert_eq!(found.os.arch, Some(Arch::X86_64));
    assert_eq!(found.names, "rock-ridge");
    assert!(found.bios_bootable && found.uefi_bootable);
    assert_eq!(found.recommended.icon, "debian");
    assert_eq!(found.suggested_name(), "Debian 12");
    let BootPlan::DirectLinux {
        kernel_path,
        initrd_paths,
        cmdline,
        serial_cmdline,
        config_file,
        ..
    } = &found.plan
    else {
        panic!("expected a direct boot, got {:?}", found.plan);
    };
    assert_eq!(kernel_path, "/install.amd/vmlinuz");
    assert_eq!(initrd_paths, &["/install.amd/gtk/initrd.gz"]);
    assert_eq!(cmdline, "vga=788 --- quiet");
    assert_eq!(serial_cmdline, "vga=788 console=ttyS0,115200n8 --- quiet");
    assert_eq!(config_file, "/isolinux/gtk.cfg");
}

#[test]
fn ubuntu_live_boots_casper_from_grub() {
    let layout = Layout::new("Ubuntu 24.04.1 LTS amd64")
        .file(
            ".disk/info",
            "Ubuntu 24.04.1 LTS \"Noble Numbat\" - Release amd64 (20240827.1)",
        )
        .file("casper/vmlinuz", bzimage())
        .file("casper/initrd", vec![3u8; 4000])
        .file(
            "boot/grub/grub.cfg",
            "set timeout=30\n\nloadfont unicode\n\nset menu_color_normal=white/black\n\
             menuentry \"Try or Install Ubuntu\" {\n\tset gfxpayload=keep\n\tlinux\t/casper/vmlinuz  --- quiet splash\n\
             \tinitrd\t/casper/initrd\n}\nmenuentry \"Ubuntu (safe graphics)\" {\n\
             \tlinux\t/casper/vmlinuz  nomodeset  --- quiet splash\n\tinitrd\t/casper/initrd\n}\n",
        )
        .bios("boot/grub/i386-pc/eltorito.img")
        .efi("EFI/boot/efi.img")
        .file("EFI/boot/bootx64.efi", vec![0u8; 1024]);
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Ubuntu);
    assert_eq!(found.os.name, "Ubuntu 24.04 LTS");
    assert_eq!(found.os.id, "ubuntu24.04");
    assert_eq!(found.recommended.memory_mib, 4096);
    let BootPlan::DirectLinux {
        kernel_path,
        initrd_paths,
        cmdline,
        entry,
        ..
    } = &found.plan
    else {
        panic!("expected a direct boot, got {:?}", found.plan);
    };
    assert_eq!(kernel_path, "/casper/vmlinuz");
    assert_eq!(initrd_paths, &["/casper/initrd"]);
    assert_eq!(cmdline, "--- quiet splash");
    assert_eq!(entry, "Try or Install Ubuntu");
}

#[test]
fn fedora_treeinfo_and_pxeboot_images() {
    let layout = Layout::new("Fedora-E-dvd-x86_64-39")
        .file(
            ".treeinfo",
            "[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[release]\nname = Fedora\n\
             short = Fedora\nversion = 39\n\n[tree]\narch = x86_64\nbuild_timestamp = 1699000000\n\n\
             [images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n",
        )
        .file("images/pxeboot/vmlinuz", bzimage())
        .file("images/pxeboot/initrd.img", vec![4u8; 4000])
        .file(
            "boot/grub2/grub.cfg",
            "set default=\"1\"\nfunction load_video {\n  insmod all_video\n}\n\
             set timeout=60\nsearch --no-floppy --set=root -l 'Fedora-E-dvd-x86_64-39'\n\
             menuentry 'Install Fedora 39' --class fedora --class gnu-linux --class gnu --class os {\n\
             \tlinux /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=Fedora-E-dvd-x86_64-39 quiet\n\
             \tinitrd /images/pxeboot/initrd.img\n}\n\
             menuentry 'Test this media & install Fedora 39' --class fedora --class gnu-linux --class gnu --class os {\n\
             \tlinux /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=Fedora-E-dvd-x86_64-39 rd.live.check quiet\n\
             \tinitrd /images/pxeboot/initrd.img\n}\n",
        )
        .bios("images/eltorito.img")
        .efi("images/efiboot.img");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Fedora);
    assert_eq!(found.os.name, "Fedora 39");
    assert_eq!(found.os.arch, Some(Arch::X86_64));
    assert_eq!(found.recommended.icon, "fedora");
    let BootPlan::DirectLinux {
        cmdline,
        kernel_path,
        ..
    } = &found.plan
    else {
        panic!("expected a direct boot, got {:?}", found.plan);
    };
    assert_eq!(kernel_path, "/images/pxeboot/vmlinuz");
    // GRUB's `set default="1"`: the second entry, as GRUB itself would boot.
    assert!(cmdline.contains("rd.live.check"), "{cmdline}");
}

#[test]
fn arch_linux_from_its_layout_and_volume_id() {
    let layout = Layout::new("ARCH_202401")
        .file("arch/boot/x86_64/vmlinuz-linux", bzimage())
        .file("arch/boot/x86_64/initramfs-linux.img", vec![5u8; 3000])
        .file("arch/boot/intel-ucode.img", vec![6u8; 100])
        .file(
            "boot/syslinux/syslinux.cfg",
            "DEFAULT arch\nLABEL arch\nLINUX /arch/boot/x86_64/vmlinuz-linux\n\
             INITRD /arch/boot/intel-ucode.img,/arch/boot/x86_64/initramfs-linux.img\n\
             APPEND archisobasedir=arch archisolabel=ARCH_202401\n",
        )
        .bios("boot/syslinux/isolinux.bin");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Arch);
    assert_eq!(found.os.id, "archlinux");
    assert_eq!(found.os.version.as_deref(), Some("2024.01"));
    assert_eq!(found.recommended.icon, "arch");
    let BootPlan::DirectLinux {
        initrd_paths,
        cmdline,
        ..
    } = &found.plan
    else {
        panic!("expected a direct boot, got {:?}", found.plan);
    };
    assert_eq!(
        initrd_paths,
        &[
            "/arch/boot/intel-ucode.img",
            "/arch/boot/x86_64/initramfs-linux.img"
        ]
    );
    assert_eq!(cmdline, "archisobasedir=arch archisolabel=ARCH_202401");
}

#[test]
fn opensuse_loader_directory() {
    let layout = Layout::new("openSUSE-Leap-15.5-DVD-x86_64")
        .file("boot/x86_64/loader/linux", bzimage())
        .file("boot/x86_64/loader/initrd", vec![7u8; 3000])
        .file(
            "boot/x86_64/loader/isolinux.cfg",
            "default harddisk\nlabel harddisk\n  localboot 0x80\nlabel linux\n  kernel linux\n\
             append initrd=initrd splash=silent showopts\n",
        )
        .bios("boot/x86_64/loader/isolinux.bin");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::OpenSuse);
    assert_eq!(found.os.name, "openSUSE Leap 15.5");
    assert_eq!(found.os.arch, Some(Arch::X86_64));
    let BootPlan::DirectLinux {
        kernel_path,
        initrd_paths,
        ..
    } = &found.plan
    else {
        panic!("expected a direct boot, got {:?}", found.plan);
    };
    assert_eq!(kernel_path, "/boot/x86_64/loader/linux");
    assert_eq!(initrd_paths, &["/boot/x86_64/loader/initrd"]);
}

#[test]
fn windows_needs_firmware() {
    let layout = Layout::new("CCCOMA_X64FRE_EN-US_DV9")
        .file("sources/install.wim", vec![8u8; 10000])
        .file("sources/boot.wim", vec![9u8; 10000])
        .file("setup.exe", vec![0u8; 100])
        .file("efi/boot/bootx64.efi", vec![0u8; 1024])
        .bios("boot/etfsboot.com")
        .efi("efi/microsoft/boot/efisys.bin")
        .names(Names::JolietOnly);
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Windows);
    assert_eq!(found.os.arch, Some(Arch::X86_64));
    assert_eq!(found.recommended.icon, "windows");
    let BootPlan::NeedsFirmware { reason, firmware } = &found.plan else {
        panic!("expected firmware, got {:?}", found.plan);
    };
    assert!(reason.contains("through the VM's BIOS"), "{reason}");
    assert_eq!(*firmware, crate::config::Firmware::Bios);
}

#[test]
fn an_iso_that_boots_only_through_uefi_gets_a_uefi_vm() {
    let layout = Layout::new("UEFI_ONLY")
        .file("efi/boot/bootx64.efi", vec![0u8; 1024])
        .efi("efi/boot/efiboot.img");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    let BootPlan::NeedsFirmware { reason, firmware } = &found.plan else {
        panic!("expected firmware, got {:?}", found.plan);
    };
    assert_eq!(*firmware, crate::config::Firmware::Uefi);
    assert!(reason.contains("OVMF"), "{reason}");
}

/// An ISO's own words reach terminals and vm.toml: its escape sequences are shown, not run.
#[test]
fn an_iso_that_says_escape_sequences_gets_them_escaped() {
    let layout = Layout::new("EVIL\u{1b}[31m")
        .file(
            ".disk/info",
            "Debian GNU/Linux 12 \u{1b}]0;owned\u{7} amd64",
        )
        .file("efi/boot/bootx64.efi", vec![0u8; 1024])
        .efi("efi/boot/efiboot.img");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.volume_id, "EVIL\\x1b[31m");
    for text in std::iter::once(&found.os.name).chain(&found.os.evidence) {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
}

#[test]
fn freebsd_needs_firmware() {
    let layout = Layout::new("14_0_RELEASE_AMD64_CD")
        .file("boot/kernel/kernel", vec![0x7f, b'E', b'L', b'F'])
        .file("boot/loader.conf", "")
        .bios("boot/cdboot");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::FreeBsd);
    assert_eq!(found.os.name, "FreeBSD 14.0");
    assert_eq!(found.os.arch, Some(Arch::X86_64));
    assert_eq!(found.recommended.icon, "bsd");
    assert!(matches!(found.plan, BootPlan::NeedsFirmware { .. }));
}

/// A fake 32-bit x86 bzImage: the setup header's magic, no `XLF_KERNEL_64`.
fn bzimage_32() -> Vec<u8> {
    let mut k = bzimage();
    k[0x236] = 0;
    k
}

/// A 32-bit PC's installer (Debian's i386 netinst) is a guest on an x86_64 host, not a
/// foreign ISO: its 32-bit kernel starts from the ISO's own isolinux, through the BIOS.
#[test]
fn a_32_bit_x86_installer_gets_a_bios_vm() {
    let layout = Layout::new("Debian 12.5.0 i386 n")
        .file(
            ".disk/info",
            "Debian GNU/Linux 12.5.0 \"Bookworm\" - Official i386 NETINST with firmware 20240210-11:27",
        )
        .file("install.386/vmlinuz", bzimage_32())
        .file("install.386/initrd.gz", vec![1u8; 3000])
        .file(
            "isolinux/isolinux.cfg",
            "default install\nlabel install\n\tkernel /install.386/vmlinuz\n\
             \tappend vga=788 initrd=/install.386/initrd.gz --- quiet\n",
        )
        .bios("isolinux/isolinux.bin");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Debian);
    assert_eq!(found.os.arch, Some(Arch::X86));
    assert!(found.bios_bootable && !found.uefi_bootable);
    let BootPlan::NeedsFirmware { reason, firmware } = &found.plan else {
        panic!("expected firmware, got {:?}", found.plan);
    };
    assert_eq!(*firmware, crate::config::Firmware::Bios);
    assert!(reason.contains("32-bit"), "{reason}");
}

/// GRUB's rescue CD (`grub-mkrescue` for BIOS PCs, as Debian's `grub-rescue-pc` ships it):
/// GRUB's El Torito image and modules, and a sample `grub.cfg` whose default entry names a
/// kernel that is not on the disc. Nothing to boot directly: a BIOS VM booting the CD.
#[test]
fn a_grub_rescue_cd_gets_a_bios_vm() {
    let layout = Layout::new("ISOIMAGE")
        .file(
            "boot/grub/grub.cfg",
            "set timeout=30\nset default=gnulinux\nset fallback=gnuhurd\n\
             menuentry \"GNU/Linux\" --id gnulinux {\n\tset root=(hd0,msdos1)\n\
             \tlinux /vmlinuz root=/dev/sda1\n\tinitrd /initrd.img\n}\n\
             menuentry \"GNU (aka GNU/Hurd)\" --id gnuhurd {\n\tset root=(hd0,msdos1)\n\
             \tmultiboot /boot/gnumach.gz root=device:hd0s1\n}\n\
             menuentry \"Memtest86+\" {\n\tset root=(hd0,1)\n\tlinux16 /memtest86+.bin\n}\n",
        )
        .file("boot/grub/i386-pc/normal.mod", vec![0x7f, b'E', b'L', b'F'])
        .file("boot/grub/fonts/unicode.pf2", vec![0u8; 100])
        .bios("boot/grub/i386-pc/eltorito.img");
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert!(found.bios_bootable && !found.uefi_bootable);
    let BootPlan::NeedsFirmware { reason, firmware } = &found.plan else {
        panic!("expected firmware, got {:?}", found.plan);
    };
    assert_eq!(*firmware, crate::config::Firmware::Bios);
    assert!(reason.contains("not on the ISO"), "{reason}");
    assert!(reason.contains("through the VM's BIOS"), "{reason}");
}

#[test]
fn a_data_disc_is_refused() {
    let layout = Layout::new("PHOTOS").file("holiday/beach.jpg", vec![0u8; 5000]);
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Other);
    assert!(!found.bios_bootable && !found.uefi_bootable);
    let BootPlan::Refused { reason } = &found.plan else {
        panic!("expected a refusal, got {:?}", found.plan);
    };
    assert!(reason.contains("not an installer"), "{reason}");
}

fn debian_arm64_netinst<'a>() -> Layout<'a> {
    Layout::new("Debian 12 arm64 n")
        .file("install.a64/vmlinuz", arm64_image())
        .file("install.a64/initrd.gz", vec![1u8; 100])
        .file(
            "boot/grub/grub.cfg",
            "menuentry 'Install' {\n linux /install.a64/vmlinuz --- quiet\n initrd /install.a64/initrd.gz\n}\n",
        )
        .efi("boot/grub/efi.img")
}

#[test]
fn an_arm64_iso_makes_an_aarch64_vm_and_a_32_bit_x86_one_an_x86_64_vm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(iso) = debian_arm64_netinst().build(&dir.path().join("arm")) else {
        return;
    };
    let library = crate::Library::open(&dir.path().join("library")).unwrap();
    // Inspected for an aarch64 machine (an aarch64 host, or `create --arch aarch64`).
    let inspection = inspect_for(&iso, Some(Arch::Aarch64)).unwrap();
    assert!(
        !matches!(inspection.plan, BootPlan::Refused { .. }),
        "{inspection:?}"
    );
    let spec = crate::NewVm::with_defaults("arm", crate::config::BootSource::Disk);
    let config = library
        .create_from_iso(&spec, &inspection, &crate::disk::NoProgress)
        .unwrap()
        .config;
    assert_eq!(config.arch, Arch::Aarch64);
    let on_disk = library.get("arm").unwrap().config.unwrap();
    assert_eq!(on_disk.arch, Arch::Aarch64);
    // Asked for another machine than the ISO's: refused, nothing made.
    let mut spec = crate::NewVm::with_defaults("pc", crate::config::BootSource::Disk);
    spec.arch = Some(Arch::X86_64);
    let e = library
        .create_from_iso(&spec, &inspection, &crate::disk::NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("built for aarch64") && e.contains("x86_64"),
        "{e}"
    );
    assert!(library.get("pc").is_err());

    // A 32-bit x86 ISO runs on the x86_64 PC: an x86_64 VM.
    let layout = Layout::new("Debian 12 i386 n")
        .file(
            ".disk/info",
            "Debian GNU/Linux 12.5.0 \"Bookworm\" - Official i386 NETINST 20240210-11:27",
        )
        .bios("isolinux/isolinux.bin");
    let Some(iso) = layout.build(&dir.path().join("i386")) else {
        return;
    };
    let inspection = inspect_for(&iso, Some(Arch::X86_64)).unwrap();
    assert_eq!(inspection.os.arch, Some(Arch::X86));
    let spec = crate::NewVm::with_defaults("old", crate::config::BootSource::Disk);
    let config = library
        .create_from_iso(&spec, &inspection, &crate::disk::NoProgress)
        .unwrap()
        .config;
    assert_eq!(config.arch, Arch::X86_64);
}

#[test]
fn another_architecture_is_refused() {
    let layout = debian_arm64_netinst();
    let Some(found) = inspect_layout(&layout) else {
        return;
    };
    assert_eq!(found.os.family, OsFamily::Debian);
    assert_eq!(found.os.arch, Some(Arch::Aarch64));
    let BootPlan::Refused { reason } = &found.plan else {
        panic!("expected a refusal, got {:?}", found.plan);
    };
    assert!(
        reason.contains("aarch64") && reason.contains("x86_64"),
        "{reason}"
    );
}

#[test]
fn joliet_only_names_are_read() {
    let layout = Layout::new("JOLIET")
        .file(
            "Some Long Directory Name/Mixed Case File.txt",
            "hello joliet",
        )
        .names(Names::JolietOnly);
    let dir = tempfile::tempdir().unwrap();
    let Some(iso) = layout.build(dir.path()) else {
        return;
    };
    let image = open(&iso).unwrap();
    assert_eq!(image.scheme(), NameScheme::Joliet);
    let data = image
        .read_file("Some Long Directory Name/Mixed Case File.txt", 100)
        .unwrap()
        .unwrap();
    assert_eq!(data, b"hello joliet");
    // Case-insensitive fallback.
    assert!(image.is_file("some long directory name/MIXED CASE FILE.TXT"));
    assert!(image.find("nope/file").unwrap().is_none());
}

#[test]
fn rock_ridge_names_and_links_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new("ROCK").file(
        "a-very-long-directory-name-beyond-iso-limits/file.with.many.dots.tar.gz",
        "rock ridge",
    );
    if !xorriso_available() {
        return;
    }
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(
        "a-very-long-directory-name-beyond-iso-limits",
        tree.join("link"),
    )
    .unwrap();
    let iso = layout.build(dir.path()).unwrap();
    let image = open(&iso).unwrap();
    assert!(matches!(image.scheme(), NameScheme::RockRidge { .. }));
    let data = image
        .read_file(
            "a-very-long-directory-name-beyond-iso-limits/file.with.many.dots.tar.gz",
            100,
        )
        .unwrap()
        .unwrap();
    assert_eq!(data, b"rock ridge");
    let link = image.find("link").unwrap().unwrap();
    assert_eq!(
        link.symlink.as_deref(),
        Some("a-very-long-directory-name-beyond-iso-limits")
    );
}

#[test]
fn plain_iso9660_names_are_read() {
    let layout = Layout::new("PLAIN")
        .file("DIR/README.TXT", "plain")
        .names(Names::Plain);
    let dir = tempfile::tempdir().unwrap();
    let Some(iso) = layout.build(dir.path()) else {
        return;
    };
    let image = open(&iso).unwrap();
    assert_eq!(image.scheme(), NameScheme::Plain);
    assert_eq!(
        image.read_file("dir/readme.txt", 100).unwrap().unwrap(),
        b"plain"
    );
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.iso");
    std::fs::write(&empty, b"").unwrap();
    let err = inspect(&empty).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");

    let text = dir.path().join("notes.iso");
    std::fs::write(&text, vec![b'x'; 100_000]).unwrap();
    let err = inspect(&text).unwrap_err().to_string();
    assert!(err.contains("not an ISO 9660 image"), "{err}");

    let err = inspect(dir.path()).unwrap_err().to_string();
    assert!(err.contains("folder"), "{err}");

    let err = inspect(&dir.path().join("missing.iso"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(matches!(
        inspect(&empty).unwrap_err().kind(),
        crate::ErrorKind::InvalidInput
    ));
}

#[test]
fn truncated_and_corrupt_isos_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let Some(iso) = debian_netinst().build(dir.path()) else {
        return;
    };
    let bytes = std::fs::read(&iso).unwrap();

    let cut = dir.path().join("cut.iso");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = inspect(&cut).unwrap_err().to_string();
    assert!(
        err.contains("cut short") && err.contains("download it again"),
        "{err}"
    );

    // The root directory record of the primary descriptor points far past the end.
    let mut corrupt = bytes.clone();
    let root_extent = 16 * 2048 + 156 + 2;
    corrupt[root_extent..root_extent + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    let bad = dir.path().join("bad.iso");
    std::fs::write(&bad, &corrupt).unwrap();
    let err = inspect(&bad).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");

    // Every byte of the directory area flipped: no panic, an answer or an error.
    let mut scrambled = bytes.clone();
    for byte in scrambled.iter_mut().skip(17 * 2048).take(40 * 2048) {
        *byte ^= 0x5a;
    }
    let scrambled_path = dir.path().join("scrambled.iso");
    std::fs::write(&scrambled_path, &scrambled).unwrap();
    let _ = inspect(&scrambled_path);
}

#[test]
fn create_from_iso_extracts_the_installer_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let Some(iso) = debian_netinst().build(dir.path()) else {
        return;
    };
    let library = crate::Library::open(&dir.path().join("library")).unwrap();
    let inspection = inspect_for(&iso, Some(Arch::X86_64)).unwrap();
    let spec =
        crate::NewVm::with_defaults(inspection.suggested_name(), crate::config::BootSource::Disk);
    let outcome = library
        .create_from_iso(&spec, &inspection, &crate::disk::NoProgress)
        .unwrap();
    let config = outcome.config;
    assert_eq!(config.arch, Arch::X86_64);
    let crate::config::BootSource::Installer {
        kernel,
        initrd,
        cmdline,
    } = &config.boot
    else {
        panic!("expected an installer boot, got {:?}", config.boot);
    };
    assert_eq!(cmdline, "vga=788 --- quiet");
    let bundle = library.bundle_path("Debian 12");
    assert_eq!(std::fs::read(bundle.join(kernel)).unwrap(), bzimage());
    assert_eq!(
        std::fs::read(bundle.join(initrd.as_ref().unwrap())).unwrap(),
        vec![2u8; 5000]
    );
    assert_eq!(
        config.cdrom.as_ref().unwrap().image.as_deref(),
        Some(std::fs::canonicalize(&iso).unwrap().as_path())
    );
    // A clone carries the extracted files along.
    let clone = library
        .clone_vm(
            "Debian 12",
            "copy",
            crate::CloneMode::Full,
            &crate::disk::NoProgress,
        )
        .unwrap();
    assert!(library.bundle_path("copy").join(kernel).is_file());
    assert_eq!(clone.config.boot, config.boot);

    // The ISO vanishes between inspection and creation: an error, and no VM.
    let moved = dir.path().join("moved.iso");
    std::fs::rename(&iso, &moved).unwrap();
    let mut spec = spec.clone();
    spec.name = "second".into();
    assert!(
        library
            .create_from_iso(&spec, &inspection, &crate::disk::NoProgress)
            .is_err()
    );
    assert!(library.get("second").is_err());
    assert_eq!(
        std::fs::read_dir(dir.path().join("library/.staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}
