//! Booting through SeaBIOS (Debian's `seabios` package) on the host's KVM: the firmware
//! runs from the reset vector, shadows itself through the i440FX's PAM registers, reads
//! fw_cfg, finds the virtio disks and the virtio-scsi CD-ROM, and runs what their boot
//! sectors hold. SeaBIOS runs on any /dev/kvm, including software-only ones such as
//! `kvm_pvm`, so these run on the host; the boot sectors are assembled here.
//!
//! Each boot sector prints a line naming where it was loaded from on COM1 and powers the
//! machine off through the ACPI PM block (S5), so each test waits for a power-off and then
//! reads what was printed, bounded in time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vivarium_backend_kvm::Kvm;
use vivarium_core::backend::{
    Backend, BootDevice, BootSpec, CdromSpec, DiskSpec, FirmwareSpec, MachineExit, MachineSpec,
    RunningMachine,
};
use vivarium_core::config::DiskFormat;
use vivarium_e2e::gate;
use vivarium_vmm::Vmm;

/// Debian's SeaBIOS image.
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The backend and the BIOS image, or `None` after saying loudly why test `test` cannot run
/// here (or failing it, where every test must run: the suite's one rule,
/// `vivarium_e2e::gate`).
#[track_caller]
fn setup(test: &str) -> Option<(Vmm, PathBuf)> {
    let test = format!("firmware_boot::{test}");
    let backend = Vmm::new(Kvm::new());
    let support = backend.probe();
    let unusable = (!support.can_run()).then(|| support.explain());
    if !gate::kvm(&test, unusable) || !gate::runs(&test, gate::file_missing(SEABIOS, "seabios")) {
        return None;
    }
    Some((backend, PathBuf::from(SEABIOS)))
}

/// A 512-byte boot sector that prints `message` and a newline on COM1, then powers off
/// through the ACPI PM block (SLP_TYP 5 | SLP_EN at port 0x604). It runs at 0x7c00
/// whatever CS:IP the firmware jumps with (0:7c00 from a disk, 7c0:0 from a CD). It turns
/// interrupts off first: without a display SeaBIOS mirrors its console on COM1 and flushes
/// it from the timer interrupt, which would interleave its last characters with ours.
fn boot_sector(message: &str) -> Vec<u8> {
    // 0: cli | 1: xor ax, ax | 3: mov ds, ax | 5: mov dx, 0x3f8 | 8: mov si, msg | 11: cld
    // 12: lodsb | 13: test al, al | 15: jz +3 (20) | 17: out dx, al | 18: jmp -8 (12)
    // 20: mov dx, 0x604 | 23: mov ax, 0x3400 | 26: out dx, ax | 27: hlt | 28: jmp -3 (27)
    let mut code = vec![
        0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0xba, 0xf8, 0x03, 0xbe, 0, 0, 0xfc, 0xac, 0x84, 0xc0, 0x74,
        0x03, 0xee, 0xeb, 0xf8, 0xba, 0x04, 0x06, 0xb8, 0x00, 0x34, 0xef, 0xf4, 0xeb, 0xfd,
    ];
    let msg = 0x7c00 + code.len();
    code[9] = msg as u8;
    code[10] = (msg >> 8) as u8;
    code.extend_from_slice(message.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    assert!(code.len() <= 510);
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code
}

/// A raw disk of 8 MiB whose first sector is `sector` (or all zeros: not bootable).
fn raw_disk(dir: &Path, name: &str, sector: Option<&[u8]>) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(8 << 20).unwrap();
    if let Some(sector) = sector {
        std::os::unix::fs::FileExt::write_all_at(&file, sector, 0).unwrap();
    }
    path
}

/// An ISO whose El Torito entry (no emulation) is `sector`, made with xorriso.
fn boot_iso(dir: &Path, sector: &[u8]) -> PathBuf {
    let tree = dir.join("iso-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("boot.img"), sector).unwrap();
    let iso = dir.join("boot.iso");
    let status = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args(["-b", "boot.img", "-no-emul-boot", "-boot-load-size", "1"])
        .arg(&tree)
        .status()
        .expect("xorriso runs (install the `xorriso` package)");
    assert!(status.success(), "xorriso made the ISO");
    iso
}

fn disk(path: PathBuf, format: DiskFormat) -> DiskSpec {
    DiskSpec {
        path,
        format,
        read_only: false,
    }
}

/// Boots `disks` and `cdrom` through SeaBIOS in `order`; returns what COM1 got once the
/// machine powered off (or fails after a minute, with what it got).
fn boot(
    backend: &Vmm,
    bios: &Path,
    disks: Vec<DiskSpec>,
    cdrom: Option<PathBuf>,
    order: Vec<BootDevice>,
) -> String {
    let out = Capture::default();
    let spec = MachineSpec {
        cpus: 1,
        memory_mib: 128,
        boot: BootSpec::Firmware {
            firmware: FirmwareSpec::Bios {
                image: bios.to_path_buf(),
                vga_rom: None,
            },
            order,
            menu: false,
        },
        disks,
        network: None,
        cdrom: cdrom.map(|image| CdromSpec { image: Some(image) }),
        display: None,
        serial_output: Box::new(out.clone()),
    };
    run_to_power_off(backend, spec, &out)
}

/// Starts `spec` (whose serial output goes to `out`) and waits, at most a minute, for the
/// guest to power the machine off; returns what COM1 got.
fn run_to_power_off(backend: &Vmm, spec: MachineSpec, out: &Capture) -> String {
    let machine: Arc<dyn RunningMachine> = backend.start(spec).expect("the machine starts");
    let waiter = {
        let machine = machine.clone();
        std::thread::spawn(move || machine.wait())
    };
    let started = Instant::now();
    while !waiter.is_finished() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = machine.request(vivarium_core::backend::ControlRequest::PowerOff);
            panic!(
                "the machine did not power off within 60 s; COM1 got {:?}",
                out.text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(waiter.join().unwrap(), MachineExit::PoweredOff);
    out.text()
}

#[test]
fn seabios_boots_the_first_disk() {
    let Some((backend, bios)) = setup("seabios_boots_the_first_disk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let system = raw_disk(
        dir.path(),
        "system.raw",
        Some(&boot_sector("booted from disk 0")),
    );
    let out = boot(
        &backend,
        &bios,
        vec![disk(system, DiskFormat::Raw)],
        None,
        vec![BootDevice::Disk(0)],
    );
    assert!(out.contains("booted from disk 0"), "COM1 got {out:?}");
}

#[test]
fn an_empty_disk_falls_through_to_the_cd_and_a_bootable_one_wins() {
    let Some((backend, bios)) =
        setup("an_empty_disk_falls_through_to_the_cd_and_a_bootable_one_wins")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let iso = boot_iso(dir.path(), &boot_sector("booted from the CD"));
    let order = vec![BootDevice::Disk(0), BootDevice::Cdrom];
    // A new VM: its disk holds nothing yet, so the firmware goes on to the installer CD.
    let empty = raw_disk(dir.path(), "empty.raw", None);
    let out = boot(
        &backend,
        &bios,
        vec![disk(empty.clone(), DiskFormat::Raw)],
        Some(iso.clone()),
        order.clone(),
    );
    assert!(out.contains("booted from the CD"), "COM1 got {out:?}");
    assert!(!out.contains("installed system"), "COM1 got {out:?}");
    // The "installer" writes a boot sector: the next start boots the disk, same settings.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&empty)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &boot_sector("installed system"), 0).unwrap();
    drop(file);
    let out = boot(
        &backend,
        &bios,
        vec![disk(empty, DiskFormat::Raw)],
        Some(iso),
        order,
    );
    assert!(out.contains("installed system"), "COM1 got {out:?}");
}

#[test]
fn boot_from_cd_once_puts_the_cd_first() {
    let Some((backend, bios)) = setup("boot_from_cd_once_puts_the_cd_first") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let iso = boot_iso(dir.path(), &boot_sector("booted from the CD"));
    let system = raw_disk(
        dir.path(),
        "system.raw",
        Some(&boot_sector("booted from disk")),
    );
    let out = boot(
        &backend,
        &bios,
        vec![disk(system, DiskFormat::Raw)],
        Some(iso),
        vec![BootDevice::Cdrom, BootDevice::Disk(0)],
    );
    assert!(out.contains("booted from the CD"), "COM1 got {out:?}");
}

#[test]
fn a_linked_clone_boots_through_firmware_like_its_parent() {
    let Some((backend, bios)) = setup("a_linked_clone_boots_through_firmware_like_its_parent")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = raw_disk(
        dir.path(),
        "base.raw",
        Some(&boot_sector("booted a qcow2 overlay")),
    );
    let overlay = dir.path().join("clone.qcow2");
    vivarium_core::disk::create_overlay(&overlay, "base.raw", DiskFormat::Raw, 8 << 20).unwrap();
    let out = boot(
        &backend,
        &bios,
        vec![disk(overlay, DiskFormat::Qcow2)],
        None,
        vec![BootDevice::Disk(0)],
    );
    assert!(out.contains("booted a qcow2 overlay"), "COM1 got {out:?}");
    // The base was only read.
    let sector = std::fs::read(&base).unwrap();
    assert_eq!(&sector[..512], &boot_sector("booted a qcow2 overlay")[..]);
}

#[test]
fn the_second_disk_boots_when_the_order_names_it() {
    let Some((backend, bios)) = setup("the_second_disk_boots_when_the_order_names_it") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = raw_disk(dir.path(), "data.raw", None);
    let system = raw_disk(
        dir.path(),
        "system.raw",
        Some(&boot_sector("booted from disk 1")),
    );
    let out = boot(
        &backend,
        &bios,
        vec![disk(data, DiskFormat::Raw), disk(system, DiskFormat::Raw)],
        None,
        vec![BootDevice::Disk(1), BootDevice::Disk(0)],
    );
    assert!(out.contains("booted from disk 1"), "COM1 got {out:?}");
}

/// The body of a hand-made UEFI code image (assembled once with GNU as, `as --32`, from the
/// program described here; it sits at offset 0xfd00 of the 64 KiB block that ends at 4 GiB and
/// the reset vector at 0xfff0 is `jmp 0xfd00`, e9 0d fd). In real mode it copies its 32-bit
/// part and a flat GDT from the ROM (through CS) to RAM at 0x10000, as SeaBIOS runs from its
/// RAM copy, switches to protected mode there, checks what OVMF relies on and prints one
/// letter per check on COM1 (upper case: as expected):
///
/// ```text
/// F  the variable store (0xfffd0000, right below the 128 KiB code) is a flash: at +0x10,
///    0x50 leaves it reading its byte, 0x70 then reads the cleared status 0x00; then 0xff
/// U  0x10 then 'U' at +0x100 programs it; 0xff; reading +0x100 gives it back ('U' printed)
/// E  0x20, 0xd0 at +0x1000 erases that 4 KiB block (the test fills it with zeros) to 0xff
/// P  00:01.3 is the PIIX4 power management function (8086:7113), through 0xcf8/0xcfc
/// M  00:01.0 is multi-function (header type bit 7)
/// T  the ACPI PM timer at 0xb008 (OVMF's PM block) ticks: read until it changes, bounded
/// ```
///
/// then a newline, and S5 through PM1a_CNT at 0xb004 (SLP_TYP 5 | SLP_EN: 0x3400).
const UEFI_CHECKS_BODY: &[&str] = &[
    "fab800108ec031ffbe29fdb9e700fc2ef3a42e660f011610fe0f20c00c010f22c066ea00000100080066b810008ed88e",
    "c08ed0bf1000fdff8a1fc607508a0fc607708a2fc607ffb06638d9750684ed7502b04666baf803eebf0001fdffc60710",
    "c60755c607ff8a07eebf0010fdffc60720c607d0c607ffb06580bfff0f0000ff7502b045ee66baf80cb8000b0080ef66",
    "bafc0cedb3703d868013717502b35066baf80cb80c080080ef66bafc0cedc1e810b76d3c807502b74d66baf80388d8ee",
    "88f8ee66ba08b0ed89c3b9400d0300ed39c37506e2f9b074eb02b05466baf803eeb00aee66ba04b066b8003466eff4eb",
    "fd8db400008d74000000000000000000ffff0000009acf00ffff00000092cf001700cf0001",
];

/// A 128 KiB "UEFI code" image holding [`UEFI_CHECKS_BODY`] and its reset vector.
fn uefi_checks_image() -> Vec<u8> {
    let hex: String = UEFI_CHECKS_BODY.concat();
    let body: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut image = vec![0u8; 128 << 10];
    let top = 64 << 10;
    image[top + 0xfd00..top + 0xfd00 + body.len()].copy_from_slice(&body);
    image[top + 0xfff0..top + 0xfff3].copy_from_slice(&[0xe9, 0x0d, 0xfd]);
    image
}

/// A UEFI machine on the host's KVM, with a hand-made code image instead of OVMF (which
/// needs a KVM that runs any guest code; `kvm_pvm` does not): the variable store is a CFI
/// flash that OVMF's probe detects, programs and erases, and what the guest wrote is in the
/// VM's file once the machine is off; the PIIX functions are at 00:01 and the ACPI PM block
/// with its timer where OVMF puts it.
#[test]
fn a_uefi_machine_has_its_flash_variable_store_and_the_chipset_ovmf_expects() {
    let test =
        "firmware_boot::a_uefi_machine_has_its_flash_variable_store_and_the_chipset_ovmf_expects";
    let backend = Vmm::new(Kvm::new());
    let support = backend.probe();
    if !gate::kvm(test, (!support.can_run()).then(|| support.explain())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code.fd");
    std::fs::write(&code, uefi_checks_image()).unwrap();
    let vars = dir.path().join("vars.fd");
    let mut store = vec![0xffu8; 64 << 10];
    store[0x10] = 0x5a;
    store[0x1000..0x2000].fill(0);
    std::fs::write(&vars, &store).unwrap();
    let out = Capture::default();
    let spec = MachineSpec {
        cpus: 1,
        memory_mib: 64,
        boot: BootSpec::Firmware {
            firmware: FirmwareSpec::Uefi {
                code,
                vars: vars.clone(),
            },
            order: vec![],
            menu: false,
        },
        disks: vec![],
        network: None,
        cdrom: None,
        display: None,
        serial_output: Box::new(out.clone()),
    };
    let com1 = run_to_power_off(&backend, spec, &out);
    assert_eq!(com1, "FUEPMT\n", "COM1 (lower case: a check failed)");
    let after = std::fs::read(&vars).unwrap();
    assert_eq!(
        after[0x100], b'U',
        "the programmed byte is in the VM's file"
    );
    assert!(
        after[0x1000..0x2000].iter().all(|&b| b == 0xff),
        "the erased block"
    );
    assert_eq!(after[0x10], 0x5a, "the probed byte is untouched");
    assert_eq!(after.len(), store.len());
}

#[test]
fn a_missing_or_odd_sized_uefi_file_is_refused_clearly() {
    let test = "firmware_boot::a_missing_or_odd_sized_uefi_file_is_refused_clearly";
    let backend = Vmm::new(Kvm::new());
    let support = backend.probe();
    if !gate::kvm(test, (!support.can_run()).then(|| support.explain())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code.fd");
    std::fs::write(&code, uefi_checks_image()).unwrap();
    let spec = |code: PathBuf, vars: PathBuf| MachineSpec {
        cpus: 1,
        memory_mib: 64,
        boot: BootSpec::Firmware {
            firmware: FirmwareSpec::Uefi { code, vars },
            order: vec![],
            menu: false,
        },
        disks: vec![],
        network: None,
        cdrom: None,
        display: None,
        serial_output: Box::new(std::io::sink()),
    };
    let missing = backend
        .start(spec(dir.path().join("none.fd"), dir.path().join("vars.fd")))
        .err()
        .expect("a missing code file is refused");
    assert!(
        missing.to_string().contains("apt install ovmf"),
        "{missing}"
    );
    let odd = dir.path().join("odd.fd");
    std::fs::write(&odd, vec![0u8; 5000]).unwrap();
    let e = backend
        .start(spec(code.clone(), odd.clone()))
        .err()
        .expect("a variable store of 5000 bytes is refused");
    assert!(e.to_string().contains("4 KiB blocks"), "{e}");
    assert_eq!(
        std::fs::read(&odd).unwrap(),
        vec![0u8; 5000],
        "and left as it was"
    );
}
