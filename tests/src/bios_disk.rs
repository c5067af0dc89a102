//! A disk a BIOS boots the way an installed Linux system boots: an MBR with GRUB's boot
//! sector, GRUB's core image in the gap before the first partition, and an ext2 root
//! partition holding `/boot/grub` (GRUB's modules and `grub.cfg`), the fixture kernel and the
//! guest initramfs. GRUB shows its menu on the serial console and the screen and boots the
//! kernel, whose `/init` runs the checks of `xtask/guest/init.sh` and powers off.
//!
//! Built from Debian's packages (`grub-pc-bin` for the i386-pc modules and boot sector,
//! `grub-common` for `grub-mkimage`, both unpacked with `dpkg -x`, never installed) and
//! `mke2fs -d` (e2fsprogs), without loop devices, mounts or root. It is its own cache entry,
//! `bios-disk-N/`, in the fixture cache, keyed by the packages, the kernel fixtures and this
//! file's configuration.
//!
//! `grub-bios-setup` would write the boot sector and core image, but it insists on probing a
//! block device; for a disk image the two patches it makes are written here instead (the
//! boot sector's pointer to the core image, and the core image's list of its own sectors).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{
    Fixtures, Package, apt_update, candidate_version, copy, download, fnv1a, lock_dir, run, write,
};

/// Bumped when the layout changes without a change of the inputs.
const FORMAT_VERSION: u32 = 2;
/// The cache entry's folder.
const ENTRY: &str = "bios-disk-2";
/// The disk image's file name.
const DISK_FILE: &str = "bios-disk.raw";
/// The packages the disk is made of.
const PACKAGES: &[&str] = &["grub-pc-bin", "grub-common"];
/// The first partition starts at 1 MiB, as partitioners place it; GRUB's core image lives in
/// the gap before it.
const PARTITION_START_SECTOR: u64 = 2048;
/// The root partition's size.
const PARTITION_BYTES: u64 = 48 << 20;

/// The marker `/init` prints when its checks are done (before it powers off).
pub const DONE_MARKER: &str = "VIVARIUM-GUEST-DONE";

/// GRUB's menu title, shown on the serial console.
pub const MENU_ENTRY: &str = "Vivarium test system";

/// GRUB's configuration: the menu on the serial console and the screen, one entry, booted at
/// once. (A countdown polls the keyboard through the BIOS in a loop, and every BIOS call of
/// GRUB's is a switch to real mode and back, which is slow on a KVM without unrestricted
/// real mode, or nested.)
const GRUB_CFG: &str = "\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'Vivarium test system' {
  linux /boot/vmlinuz console=ttyS0 vivarium.checks=cpus,mem,blk-size vivarium.blk_dev=vda vivarium.then=poweroff
  initrd /boot/initrd.img
}
";

/// The disk in a fixture cache.
#[derive(Debug, Clone)]
pub struct BiosDisk {
    dir: PathBuf,
}

impl BiosDisk {
    /// The disk in the fixture cache `fixtures_dir`, if [`build`] completed there.
    pub fn open(fixtures_dir: &Path) -> Result<BiosDisk, String> {
        let disk = BiosDisk {
            dir: fixtures_dir.join(ENTRY),
        };
        if disk.dir.join("stamp").is_file() && disk.path().is_file() {
            Ok(disk)
        } else {
            Err(format!(
                "the BIOS disk fixture is missing in {}: build it with `cargo xtask fixtures \
                 --bios-disk`",
                disk.dir.display()
            ))
        }
    }

    /// The raw disk image (copy it before a VM writes to it).
    pub fn path(&self) -> PathBuf {
        self.dir.join(DISK_FILE)
    }
}

/// The disk for test `test`, or `None` after saying loudly why it is skipped; fails instead
/// under `VIVARIUM_REQUIRE_RIG=1` ([`crate::gate`]).
#[track_caller]
pub fn bios_disk_or_skip(test: &str) -> Option<BiosDisk> {
    let found = crate::fixtures::default_dir().and_then(|d| BiosDisk::open(&d));
    match found {
        Ok(disk) => Some(disk),
        Err(reason) => {
            crate::gate::skip(test, &reason);
            None
        }
    }
}

/// Builds the disk in the cache entry inside `fixtures_dir` from `fixtures` (kernel and
/// initramfs), unless it is there for the same inputs.
pub fn build(fixtures_dir: &Path, fixtures: &Fixtures) -> Result<BiosDisk, String> {
    let dir = fixtures_dir.join(ENTRY);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = lock_dir(&dir)?;
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
    let packages = resolve().or_else(|first| {
        eprintln!("fixtures: {first}; updating the package lists once");
        apt_update()?;
        resolve()
    })?;
    let mut key = format!("bios-disk format {FORMAT_VERSION}\n");
    for p in &packages {
        key.push_str(&format!("package {} {}\n", p.name, p.version));
    }
    key.push_str(&format!(
        "kernel fixtures {:016x}\n",
        fnv1a(fixtures.stamp().as_bytes())
    ));
    key.push_str(&format!("grub.cfg {:016x}\n", fnv1a(GRUB_CFG.as_bytes())));
    if let Ok(disk) = BiosDisk::open(fixtures_dir)
        && fs::read_to_string(dir.join("stamp")).is_ok_and(|stamp| stamp == key)
    {
        drop(lock);
        return Ok(disk);
    }
    if crate::rig::find_program("mke2fs").is_none() {
        return Err("`mke2fs` is missing: install the Debian package e2fsprogs".into());
    }
    let work = dir.join(format!(".work-{}", std::process::id()));
    let result = build_in(&dir, &work, &packages, fixtures, &key);
    let _ = fs::remove_dir_all(&work);
    drop(lock);
    result?;
    BiosDisk::open(fixtures_dir)
}

fn build_in(
    dir: &Path,
    work: &Path,
    packages: &[Package],
    fixtures: &Fixtures,
    key: &str,
) -> Result<(), String> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let debs = download(work, packages)?;
    let root = work.join("root");
    for deb in &debs {
        run(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
    }
    let modules = root.join("usr/lib/grub/i386-pc");
    // The root file system: the kernel, the initramfs, GRUB's modules and configuration.
    let tree = work.join("tree");
    let grub_dir = tree.join("boot/grub");
    fs::create_dir_all(grub_dir.join("i386-pc"))
        .map_err(|e| format!("cannot create {}: {e}", grub_dir.display()))?;
    copy(&fixtures.vmlinuz(), &tree.join("boot/vmlinuz"))?;
    copy(&fixtures.guest_initramfs(), &tree.join("boot/initrd.img"))?;
    for entry in fs::read_dir(&modules).map_err(|e| format!("cannot read GRUB's modules: {e}"))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".mod") || name.ends_with(".lst") {
            copy(&entry.path(), &grub_dir.join("i386-pc").join(&*name))?;
        }
    }
    write(&grub_dir.join("grub.cfg"), GRUB_CFG.as_bytes())?;
    let partition = work.join("root.ext2");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-L", "vivroot", "-d"])
        .arg(&tree)
        .arg(&partition)
        .arg(format!("{}k", PARTITION_BYTES >> 10)))?;
    // GRUB's core image: enough to read the partition and find /boot/grub there (the rest
    // of GRUB's modules load from there).
    let core = work.join("core.img");
    run(Command::new(root.join("usr/bin/grub-mkimage"))
        .args(["-O", "i386-pc", "-d"])
        .arg(&modules)
        .arg("-o")
        .arg(&core)
        .args([
            "-p",
            "(hd0,msdos1)/boot/grub",
            "biosdisk",
            "part_msdos",
            "ext2",
        ]))?;
    let boot_sector = fs::read(modules.join("boot.img")).map_err(|e| e.to_string())?;
    let core = fs::read(&core).map_err(|e| e.to_string())?;
    let partition = fs::read(&partition).map_err(|e| e.to_string())?;
    let disk = assemble(&boot_sector, &core, &partition)?;
    let staged = work.join(DISK_FILE);
    write(&staged, &disk)?;
    // The stamp goes last, so an interrupted build is never taken for a complete one.
    let _ = fs::remove_file(dir.join("stamp"));
    fs::rename(&staged, dir.join(DISK_FILE))
        .map_err(|e| format!("cannot move the disk into {}: {e}", dir.display()))?;
    write(&dir.join("stamp"), key.as_bytes())?;
    eprintln!("fixtures: BIOS disk ready in {}", dir.display());
    Ok(())
}

/// The disk image: an MBR with GRUB's boot code and one active Linux partition at
/// [`PARTITION_START_SECTOR`], GRUB's core image from sector 1, then the partition.
pub fn assemble(boot_sector: &[u8], core: &[u8], partition: &[u8]) -> Result<Vec<u8>, String> {
    /// Where GRUB's boot sector keeps the sector number of the core image (u64).
    const KERNEL_SECTOR: usize = 0x5c;
    /// Where the core image's first sector (`diskboot.img`) keeps the block list of the rest:
    /// start sector (u64), sector count (u16), load segment (u16).
    const BLOCKLIST: usize = 512 - 12;
    if boot_sector.len() != 512 {
        return Err(format!(
            "GRUB's boot.img is {} bytes, not 512",
            boot_sector.len()
        ));
    }
    let core_sectors = core.len().div_ceil(512);
    if core_sectors < 2 || core_sectors as u64 >= PARTITION_START_SECTOR {
        return Err(format!(
            "GRUB's core image ({} bytes) does not fit before the partition",
            core.len()
        ));
    }
    if !partition.len().is_multiple_of(512) {
        return Err("the partition image is not a whole number of sectors".into());
    }
    let mut disk = vec![0u8; (PARTITION_START_SECTOR * 512) as usize];
    // The boot code, keeping the partition table's place free.
    disk[..440].copy_from_slice(&boot_sector[..440]);
    disk[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&1u64.to_le_bytes());
    let sectors = u32::try_from(partition.len() / 512).map_err(|_| "partition too large")?;
    let entry = &mut disk[446..462];
    entry[0] = 0x80; // active
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS: use LBA
    entry[4] = 0x83; // Linux
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&(PARTITION_START_SECTOR as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let core_at = 512;
    disk[core_at..core_at + core.len()].copy_from_slice(core);
    let list = core_at + BLOCKLIST;
    disk[list..list + 8].copy_from_slice(&2u64.to_le_bytes());
    disk[list + 8..list + 10].copy_from_slice(&((core_sectors - 1) as u16).to_le_bytes());
    disk[list + 10..list + 12].copy_from_slice(&0x820u16.to_le_bytes());
    disk.extend_from_slice(partition);
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_has_a_boot_sector_a_partition_and_the_core_image_list() {
        let mut boot = vec![0xeb; 512];
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let core = vec![0x11; 3 * 512 + 7];
        let partition = vec![0x22; 4096];
        let disk = assemble(&boot, &core, &partition).unwrap();
        assert_eq!(disk.len(), 1 << 20 | 4096);
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        assert_eq!(u64::from_le_bytes(disk[0x5c..0x64].try_into().unwrap()), 1);
        assert_eq!(disk[446], 0x80);
        assert_eq!(disk[450], 0x83);
        assert_eq!(u32::from_le_bytes(disk[454..458].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(disk[458..462].try_into().unwrap()), 8);
        assert_eq!(u64::from_le_bytes(disk[1012..1020].try_into().unwrap()), 2);
        assert_eq!(u16::from_le_bytes(disk[1020..1022].try_into().unwrap()), 3);
        assert_eq!(disk[1 << 20], 0x22);
        assert!(vivarium_core::firmware::is_bios_boot_sector(&disk[..512]));
        assert!(assemble(&boot[..100], &core, &partition).is_err());
        assert!(assemble(&boot, &vec![0; 2048 * 512], &partition).is_err());
    }
}
