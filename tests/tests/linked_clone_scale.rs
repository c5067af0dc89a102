//! Linked clones scale (issue 16): a thousand linked clones of one VM, then the parent and the
//! last clone start (on the host's `/dev/kvm`, with the hand-made guest) and clone again.
//!
//! Before bases were reused, every linked clone turned the parent's disk into a new base, so
//! the parent's chain grew one level per clone until opening it passed `PATH_MAX` ("File name
//! too long" at the 62nd clone). Here the chains stay two files deep (the overlay and the one
//! shared base) and every backing path written into a qcow2 header stays short.
//!
//! The first clones go through the `vivarium` command line exactly as the loop did;
//! the bulk goes through `vivarium_core::Library` directly in this process: each CLI run opens
//! the library, which checks every bundle (recovery, unused bases), so a thousand CLI runs
//! cost time quadratic in the number of VMs, minutes on CI's two cores, without testing
//! anything more. The final starts and clones are CLI runs again.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vivarium_core::disk::{self, NoProgress, Qcow2Disk};
use vivarium_core::library::CloneMode;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{PowerOffOnDrop, kvm_usable, process_alive, wait_until};

/// Linked clones of the parent, in all.
const CLONES: usize = 1000;
/// Of which the first go through the command line.
const CLI_CLONES: usize = 20;
/// What the parent's guest wrote at the start of its disk before it was cloned.
const MARK: &[u8] = b"written by the parent before its clones";
/// The longest backing path a header may name: `../../../bases/<uuid>.vivbase/disks/<file>`.
const MAX_BACKING_LEN: usize = 100;

/// The first disk file of VM `name`.
fn disk_of(lib: &TempLibrary, name: &str) -> PathBuf {
    let info = lib.json(&["info", name]);
    let file = info["config"]["disks"][0]["file"]
        .as_str()
        .expect("the VM has a disk");
    lib.bundle(name).join(file)
}

/// Checks the chain of `disk`: at most `depth` files, short normalised backing paths, and the
/// guest reads the parent's mark through it.
fn assert_chain(disk: &Path, depth: usize) {
    let chain = disk::backing_chain(disk).expect("the chain opens");
    assert!(
        chain.len() <= depth,
        "`{}` is {} files deep: {chain:?}",
        disk.display(),
        chain.len()
    );
    for file in &chain {
        if let Some(backing) = disk::backing_file(file).unwrap() {
            assert!(
                backing.starts_with("../../../bases/") && backing.len() <= MAX_BACKING_LEN,
                "`{}` names the backing path `{backing}`",
                file.display()
            );
        }
    }
    let mut buf = vec![0u8; MARK.len()];
    Qcow2Disk::open(disk, true)
        .unwrap()
        .read_at(&mut buf, 0)
        .unwrap();
    assert_eq!(buf, MARK, "the guest of `{}` reads", disk.display());
}

fn bases(lib: &TempLibrary) -> usize {
    std::fs::read_dir(lib.home().join("bases"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `vivarium start NAME`, then a forced power-off once it runs: the VMM opened the disk chain.
fn start_and_stop(lib: &TempLibrary, name: &str) {
    let _guard = PowerOffOnDrop::new(lib, name);
    let started = lib.json(&["start", name]);
    let pid = started["pid"].as_u64().expect("start reports the pid") as u32;
    assert_eq!(lib.json(&["status", name])["state"], "running");
    lib.ok(&["stop", "--force", name]);
    wait_until("the VM process to end", Duration::from_secs(20), || {
        !process_alive(pid)
    });
    assert_eq!(
        lib.json(&["status", name])["last_run"]["exit"],
        "powered-off"
    );
}

#[test]
fn a_thousand_linked_clones_of_one_vm_start_and_clone() {
    let lib = TempLibrary::new();
    let kernel = lib.scratch().join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).unwrap();
    lib.ok(&[
        "create",
        "p",
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk-size",
        "64M",
        "--network",
        "none",
        "--display",
        "none",
        "--memory",
        "32M",
        "--cpus",
        "1",
    ]);
    OpenOptions::new()
        .write(true)
        .open(disk_of(&lib, "p"))
        .unwrap()
        .write_all_at(MARK, 0)
        .unwrap();

    let started = Instant::now();
    for i in 1..=CLI_CLONES {
        lib.ok(&["clone", "--linked", "p", &format!("l{i}")]);
    }
    let cli_time = started.elapsed();
    let library = vivarium_core::Library::open(lib.home()).unwrap();
    let bulk = Instant::now();
    for i in CLI_CLONES + 1..=CLONES {
        library
            .clone_vm("p", &format!("l{i}"), CloneMode::Linked, &NoProgress)
            .unwrap_or_else(|e| panic!("linked clone {i}: {e}"));
    }
    let bulk_time = bulk.elapsed();
    loud(&format!(
        "linked_clone_scale: {CLI_CLONES} CLI clones in {:.2} s ({:.0} ms each), {} library \
         clones in {:.2} s ({:.1} ms each)",
        cli_time.as_secs_f64(),
        cli_time.as_secs_f64() * 1000.0 / CLI_CLONES as f64,
        CLONES - CLI_CLONES,
        bulk_time.as_secs_f64(),
        bulk_time.as_secs_f64() * 1000.0 / (CLONES - CLI_CLONES) as f64,
    ));

    // One base for all: the parent never changed its disk.
    assert_eq!(bases(&lib), 1);
    assert_eq!(lib.list().len(), CLONES + 1);
    let last = format!("l{CLONES}");
    for name in ["p", "l1", "l500", last.as_str()] {
        assert_chain(&disk_of(&lib, name), 2);
    }
    let parent_disk = disk_of(&lib, "p");
    assert!(
        disk::qcow2_is_empty(&parent_disk).unwrap(),
        "the parent keeps its empty overlay"
    );

    // The parent and the last clone start, then clone again (linked and full).
    if kvm_usable("linked_clone_scale") {
        start_and_stop(&lib, "p");
        start_and_stop(&lib, &last);
    }
    let cli_at_scale = Instant::now();
    lib.ok(&["clone", "--linked", "p", "p-again"]);
    lib.ok(&["clone", "--linked", &last, "last-again"]);
    let cli_at_scale = cli_at_scale.elapsed() / 2;
    lib.ok(&["clone", &last, "last-full"]);
    loud(&format!(
        "linked_clone_scale: a CLI linked clone among {} VMs takes {:.0} ms; the parent's \
         disk after it ran is {}",
        CLONES + 1,
        cli_at_scale.as_secs_f64() * 1000.0,
        if disk::qcow2_is_empty(&disk_of(&lib, "p")).unwrap() {
            "still empty"
        } else {
            "changed"
        }
    ));
    // A started VM may have written to its disk (then its next clone takes a new base, one
    // level deeper); nothing else adds a level.
    for name in ["p", "p-again", last.as_str(), "last-again"] {
        assert_chain(&disk_of(&lib, name), 3);
    }
    assert!(bases(&lib) <= 3, "{} bases", bases(&lib));
    let full = disk_of(&lib, "last-full");
    assert_eq!(disk::backing_file(&full).unwrap(), None);
    let mut buf = vec![0u8; MARK.len()];
    std::fs::File::open(&full)
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    assert_eq!(buf, MARK);
    if kvm_usable("linked_clone_scale") {
        start_and_stop(&lib, "last-again");
    }

    // Deleting every clone keeps exactly the bases the parent's chain still reaches.
    for i in 1..=CLONES {
        library.delete(&format!("l{i}")).unwrap();
    }
    for name in ["p-again", "last-again", "last-full"] {
        lib.ok(&["delete", name]);
    }
    let parent_chain = disk::backing_chain(&disk_of(&lib, "p")).unwrap();
    assert_eq!(bases(&lib), parent_chain.len() - 1);
    assert_chain(&disk_of(&lib, "p"), 3);
}

/// A full clone of a linked clone follows the chain's allocation maps (issue 16: a 4 GiB disk
/// with 512 KiB of data became 4.1 GiB in 4.3 s, an empty 2 TiB one did not finish in 60 s).
#[test]
fn a_full_clone_of_a_linked_clone_of_a_large_disk_is_sparse_and_fast() {
    let lib = TempLibrary::new();
    let kernel = lib.scratch().join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).unwrap();
    lib.ok(&[
        "create",
        "big",
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk-size",
        "2T",
        "--network",
        "none",
        "--display",
        "none",
    ]);
    // 512 KiB of data in the base, in two places.
    let raw = OpenOptions::new()
        .write(true)
        .open(disk_of(&lib, "big"))
        .unwrap();
    raw.write_all_at(&[b'a'; 256 << 10], 0).unwrap();
    raw.write_all_at(&[b'z'; 256 << 10], (2 << 40) - (256 << 10))
        .unwrap();
    drop(raw);
    lib.ok(&["clone", "--linked", "big", "linked"]);
    let started = Instant::now();
    lib.ok(&["clone", "linked", "full"]);
    let took = started.elapsed();
    let full = disk_of(&lib, "full");
    let allocated = vivarium_core::fsutil::allocated_bytes(&full).unwrap();
    loud(&format!(
        "linked_clone_scale: full clone of a linked clone of a 2 TiB disk with 512 KiB of \
         data: {:.2} s, {allocated} bytes allocated",
        took.as_secs_f64()
    ));
    assert!(
        took < Duration::from_secs(20),
        "the full clone took {took:?}"
    );
    assert!(
        (512 << 10..=2 << 20).contains(&allocated),
        "{allocated} bytes allocated for 512 KiB of data"
    );
    assert_eq!(std::fs::metadata(&full).unwrap().len(), 2 << 40);
    assert_eq!(disk::backing_file(&full).unwrap(), None);
    let mut buf = vec![0u8; 256 << 10];
    let file = std::fs::File::open(&full).unwrap();
    file.read_exact_at(&mut buf, (2 << 40) - (256 << 10))
        .unwrap();
    assert!(buf.iter().all(|&b| b == b'z'));
    file.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == b'a'));
}
