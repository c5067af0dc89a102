//! The real Debian 12 installer ISO (assembled from Debian's packages by
//! `vivarium_e2e::installer_iso`): what `iso::inspect` recognises on it.
//!
//! Needs the installer ISO (`cargo xtask fixtures --installer-iso`); without it the test says
//! so loudly and passes, unless `VIVARIUM_REQUIRE_RIG=1`, where it fails.

use vivarium_core::iso::{self, Arch, BootPlan, OsFamily};
use vivarium_e2e::installer_iso::{self, DEFAULT_CMDLINE, SERIAL_CMDLINE, SERIAL_ENTRY};

#[test]
fn inspect_recognises_the_debian_12_installer() {
    let Some(fixture) =
        installer_iso::installer_iso_or_skip("inspect_recognises_the_debian_12_installer")
    else {
        return;
    };
    let inspection = iso::inspect_for(&fixture.path(), Some(Arch::X86_64)).unwrap();
    assert_eq!(inspection.os.family, OsFamily::Debian, "{inspection:#?}");
    assert_eq!(inspection.os.name, "Debian 12", "{inspection:#?}");
    assert_eq!(
        inspection.os.version.as_deref(),
        Some("12"),
        "{inspection:#?}"
    );
    assert_eq!(inspection.os.arch, Some(Arch::X86_64), "{inspection:#?}");
    assert_eq!(inspection.volume_id, installer_iso::VOLUME_ID);
    assert_eq!(inspection.names, "rock-ridge");
    assert!(
        inspection.bios_bootable && inspection.uefi_bootable,
        "{inspection:#?}"
    );
    assert!(
        inspection
            .os
            .evidence
            .iter()
            .any(|e| e.contains(".disk/info")),
        "{:?}",
        inspection.os.evidence
    );
    // The default entry of isolinux.cfg, found through menu.cfg -> txt.cfg.
    match &inspection.plan {
        BootPlan::DirectLinux {
            kernel_path,
            initrd_paths,
            cmdline,
            serial_cmdline,
            entry,
            config_file,
        } => {
            assert_eq!(kernel_path, "/linux");
            assert_eq!(initrd_paths, &["/initrd.gz"]);
            assert_eq!(cmdline, DEFAULT_CMDLINE);
            assert_eq!(serial_cmdline, "vga=788 console=ttyS0,115200n8 --- quiet");
            assert_eq!(entry, "install");
            assert_eq!(config_file, "/isolinux/txt.cfg");
        }
        other => panic!("the installer should boot directly, not {other:?}"),
    }
    let recommended = inspection.recommended;
    assert_eq!(
        (
            recommended.cpus,
            recommended.memory_mib,
            recommended.disk_bytes
        ),
        (2, 2048, 20 << 30),
        "Debian's row of the OS table"
    );
    assert_eq!(recommended.icon, "debian");

    // The kernel and initrd come out of the ISO as they went in: the installer's own.
    let dir = tempfile::tempdir().unwrap();
    let extracted = iso::extract_boot_files(
        &inspection.path,
        &inspection.plan,
        dir.path(),
        &vivarium_core::disk::NoProgress,
    )
    .unwrap();
    assert!(extracted, "the entry has an initrd");
    let kernel = std::fs::read(dir.path().join(iso::KERNEL_FILE)).unwrap();
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "a bzImage");
    let initrd = std::fs::read(dir.path().join(iso::INITRD_FILE)).unwrap();
    assert_eq!(&initrd[..2], &[0x1f, 0x8b], "a gzip-compressed initrd");
    assert!(
        initrd.len() > 20 << 20,
        "the text installer's initrd ({} bytes)",
        initrd.len()
    );

    // The serial-console entry, chosen by its label.
    let serial =
        iso::inspect_entry(&fixture.path(), Some(Arch::X86_64), Some(SERIAL_ENTRY)).unwrap();
    match &serial.plan {
        BootPlan::DirectLinux {
            cmdline,
            serial_cmdline,
            entry,
            initrd_paths,
            ..
        } => {
            assert_eq!(entry, SERIAL_ENTRY);
            assert_eq!(cmdline, SERIAL_CMDLINE);
            assert_eq!(serial_cmdline, SERIAL_CMDLINE, "it has its console already");
            assert_eq!(initrd_paths, &["/initrd.gz"]);
        }
        other => panic!("the serial entry should boot directly, not {other:?}"),
    }
}
