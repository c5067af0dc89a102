//! The VM library through the `vivarium` command line, exactly as a user or a script drives it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use vivarium_e2e::vivarium::TempLibrary;

const NOT_FOUND: i32 = 3;
const EXISTS: i32 = 4;
const INVALID: i32 = 5;
const BUSY: i32 = 6;
const BROKEN: i32 = 7;

fn kernel(lib: &TempLibrary) -> String {
    let path = lib.scratch().join("vmlinuz");
    fs::write(
        &path,
        b"not really a kernel, but the library only needs a file",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (Debian package qemu-utils; cargo xtask test installs it)")
}

fn assert_qemu_img_ok(args: &[&str]) {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn disk_of(lib: &TempLibrary, name: &str) -> String {
    let info = lib.json(&["info", name]);
    let file = info["config"]["disks"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    lib.bundle(name).join(file).to_string_lossy().into_owned()
}

#[test]
fn create_list_info_rename_set_delete() {
    let lib = TempLibrary::new();
    assert!(lib.list().is_empty());
    let k = kernel(&lib);
    let created = lib.json(&[
        "create",
        "web",
        "--kernel",
        &k,
        "--cmdline",
        "console=ttyS0",
        "--cpus",
        "4",
        "--memory",
        "3G",
        "--disk-size",
        "8G",
        "--forward",
        "tcp:8080:80",
        "--display",
        "1280x800",
        "--notes",
        "first VM",
    ]);
    let config = &created["created"];
    assert_eq!(config["cpus"], 4);
    assert_eq!(config["memory_mib"], 3072);
    assert_eq!(config["disks"][0]["size"], 8u64 << 30);
    assert_eq!(config["network"]["forwards"][0]["host"], 8080);
    assert_eq!(config["format"], 1);

    // The bundle holds what the design says, and the disk is sparse.
    let bundle = lib.bundle("web");
    for part in ["vm.toml", "disks", "state", "logs"] {
        assert!(bundle.join(part).exists(), "{part} missing");
    }
    let disk = disk_of(&lib, "web");
    assert_eq!(fs::metadata(&disk).unwrap().len(), 8 << 30);
    assert_eq!(lib.list(), vec![("web".to_string(), "stopped".to_string())]);
    let text = lib.ok(&["info", "web"]);
    assert!(
        text.contains("CPUs:      4") && text.contains("first VM"),
        "{text}"
    );

    lib.ok(&["rename", "web", "www"]);
    assert_eq!(lib.list(), vec![("www".to_string(), "stopped".to_string())]);
    let toml = fs::read_to_string(lib.bundle("www").join("vm.toml")).unwrap();
    assert!(toml.contains("name = \"www\""), "{toml}");

    let set = lib.json(&[
        "set",
        "www",
        "--cpus",
        "1",
        "--memory",
        "512",
        "--notes",
        "edited",
        "--forward",
        "udp:5353:53",
        "--display",
        "none",
    ]);
    assert_eq!(set["vm"]["cpus"], 1);
    assert_eq!(set["vm"]["memory_mib"], 512);
    assert_eq!(
        set["vm"]["network"]["forwards"].as_array().unwrap().len(),
        2
    );
    assert_eq!(set["vm"]["display"]["kind"], "none");
    let set = lib.json(&["set", "www", "--network", "none"]);
    assert_eq!(set["vm"]["network"]["mode"], "none");

    lib.ok(&["delete", "www"]);
    assert!(lib.list().is_empty());
    assert!(!lib.bundle("www").exists());
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    lib.ok(&["create", "a", "--kernel", &k, "--disk-size", "1G"]);
    let before = fs::read(lib.bundle("a").join("vm.toml")).unwrap();

    let err = lib.fails(EXISTS, &["create", "a", "--kernel", &k]);
    assert!(err.contains("already exists"), "{err}");
    let err = lib.fails(EXISTS, &["create", "A", "--kernel", &k]);
    assert!(err.contains("already exists"), "case-insensitive: {err}");
    for bad in ["", ".hidden", "a/b", " pad"] {
        let err = lib.fails(INVALID, &["create", bad, "--kernel", &k]);
        assert!(err.contains("cannot be a VM name"), "{bad:?}: {err}");
    }
    let err = lib.fails(
        INVALID,
        &["create", "b", "--kernel", "/nonexistent/vmlinuz"],
    );
    assert!(err.contains("does not exist"), "{err}");
    let err = lib.fails(INVALID, &["create", "b", "--kernel", &k, "--cpus", "0"]);
    assert!(err.contains("CPUs"), "{err}");
    let err = lib.fails(INVALID, &["create", "b", "--kernel", &k, "--cpus", "1000"]);
    assert!(err.contains("CPUs"), "{err}");
    let err = lib.fails(INVALID, &["create", "b", "--kernel", &k, "--memory", "1M"]);
    assert!(err.contains("memory"), "{err}");
    let err = lib.fails(INVALID, &["create", "b", "--kernel", &k, "--memory", "5T"]);
    assert!(err.contains("memory"), "{err}");
    let err = lib.fails(
        INVALID,
        &["create", "b", "--kernel", &k, "--disk-size", "lots"],
    );
    assert!(err.contains("bad size"), "{err}");
    let err = lib.fails(
        INVALID,
        &["create", "b", "--kernel", &k, "--forward", "tcp:0:22"],
    );
    assert!(err.contains("port forward"), "{err}");
    let err = lib.fails(NOT_FOUND, &["info", "nobody"]);
    assert!(err.contains("no VM named"), "{err}");
    lib.fails(NOT_FOUND, &["delete", "nobody"]);
    lib.fails(NOT_FOUND, &["clone", "nobody", "x"]);
    lib.ok(&["create", "b", "--kernel", &k, "--disk-size", "1G"]);
    lib.fails(EXISTS, &["rename", "a", "b"]);
    lib.fails(EXISTS, &["clone", "a", "b"]);
    lib.fails(EXISTS, &["clone", "a", "b", "--linked"]);
    lib.fails(INVALID, &["set", "a", "--memory", "0"]);
    lib.fails(INVALID, &["set", "a", "--mac", "01:00:00:00:00:00"]);

    // Nothing changed, and nothing was left behind.
    assert_eq!(fs::read(lib.bundle("a").join("vm.toml")).unwrap(), before);
    let names: Vec<String> = lib.list().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        fs::read_dir(lib.home().join(".staging")).unwrap().count(),
        0
    );
}

/// What a user typed reaches the terminal as text: an OS name with a line break and an escape
/// sequence keeps the `list` table one line per VM and colours nothing; notes keep their
/// lines but not their escape sequences; a name with a right-to-left override is refused.
#[test]
fn user_text_never_acts_on_the_terminal() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    lib.ok(&[
        "create",
        "plain",
        "--kernel",
        &k,
        "--no-disk",
        "--os-name",
        "two\nlines \u{1b}[31mred",
        "--notes",
        "first\nsecond \u{1b}]0;title\u{7}",
    ]);
    let list = lib.ok(&["list"]);
    assert_eq!(list.lines().count(), 2, "a header and one row:\n{list}");
    assert!(!list.contains('\u{1b}'), "{list:?}");
    assert!(list.contains("two\\x0alines \\x1b[31mred"), "{list}");
    let info = lib.ok(&["info", "plain"]);
    assert!(
        !info.contains('\u{1b}') && !info.contains('\u{7}'),
        "{info:?}"
    );
    assert!(info.contains("first\n"), "notes keep their lines: {info}");
    // CPU counts out of range name the range.
    for cpus in ["0", "-1", "256", "4294967296"] {
        let err = lib.fails(
            5,
            &["create", "c", "--kernel", &k, "--no-disk", "--cpus", cpus],
        );
        assert!(err.contains("choose 1 to 255"), "{cpus}: {err}");
    }
    let created = lib.ok(&["create", "one", "--kernel", &k, "--no-disk", "--cpus", "1"]);
    assert!(created.contains(": 1 CPU, "), "{created}");
    let err = lib.fails(
        5,
        &["create", "web\u{202e}gpj", "--kernel", &k, "--no-disk"],
    );
    assert!(err.contains("invisible character U+202E"), "{err}");
}

#[test]
fn a_disk_larger_than_the_free_space_is_allowed_with_a_warning() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    // ext4 allows sparse files up to 16 TiB; no test machine has 15 TiB free.
    let out = lib.run(&["create", "huge", "--kernel", &k, "--disk-size", "15T"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("free"),
        "{stderr}"
    );
}

#[test]
fn damaged_and_future_configs_are_listed_flagged_and_left_untouched() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    for name in ["good", "damaged", "future"] {
        lib.ok(&["create", name, "--kernel", &k, "--disk-size", "1G"]);
    }
    let damaged = lib.bundle("damaged").join("vm.toml");
    fs::write(&damaged, "format = 1\ncpus = [unclosed\n").unwrap();
    let future = lib.bundle("future").join("vm.toml");
    let future_text = fs::read_to_string(&future)
        .unwrap()
        .replace("format = 1", "format = 9\nhologram = true");
    fs::write(&future, &future_text).unwrap();

    let list = lib.json(&["list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 3, "every VM is listed: {list}");
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(row("good")["state"], "stopped");
    assert_eq!(row("damaged")["state"], "broken");
    assert!(
        row("damaged")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("damaged")
    );
    assert_eq!(row("damaged")["error"]["kind"], "broken");
    assert_eq!(row("future")["state"], "broken");
    assert!(
        row("future")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("format 9")
    );
    let text = lib.ok(&["list"]);
    assert!(text.contains("broken"), "{text}");

    for args in [
        vec!["clone", "future", "copy"],
        vec!["set", "future", "--cpus", "1"],
        vec!["rename", "future", "renamed"],
    ] {
        let err = lib.fails(BROKEN, &args);
        assert!(err.contains("format 9"), "{err}");
    }
    lib.fails(BROKEN, &["set", "damaged", "--cpus", "1"]);
    assert_eq!(
        fs::read_to_string(&future).unwrap(),
        future_text,
        "never rewritten"
    );
    // A broken VM can still be removed.
    lib.ok(&["delete", "damaged"]);
    assert_eq!(lib.list().len(), 2);
}

/// Holds the bundle lock and writes the run record the way a VM process does while it
/// starts (before it serves its control socket).
fn hold_running_lock(lib: &TempLibrary, name: &str) -> File {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lib.bundle(name).join(".lock"))
        .unwrap();
    file.lock().unwrap();
    let state = lib.bundle(name).join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("run.toml"),
        format!("pid = {}\nstarted_at_unix = 1\n", std::process::id()),
    )
    .unwrap();
    file
}

#[test]
fn a_running_vm_cannot_be_deleted_renamed_cloned_or_reconfigured() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    lib.ok(&["create", "busy", "--kernel", &k, "--disk-size", "1G"]);
    let lock = hold_running_lock(&lib, "busy");
    assert_eq!(
        lib.list(),
        vec![("busy".to_string(), "starting".to_string())]
    );
    for args in [
        vec!["delete", "busy"],
        vec!["rename", "busy", "other"],
        vec!["clone", "busy", "copy"],
        vec!["clone", "busy", "copy", "--linked"],
        vec!["set", "busy", "--cpus", "1"],
    ] {
        let err = lib.fails(BUSY, &args);
        assert!(
            err.contains("running") && err.contains("shut it down"),
            "{err}"
        );
    }
    // Notes may change while it runs.
    lib.ok(&["set", "busy", "--notes", "running happily"]);
    drop(lock);
    assert_eq!(
        lib.list(),
        vec![("busy".to_string(), "stopped".to_string())]
    );
    lib.ok(&["delete", "busy"]);
}

fn write_pattern(path: &str, offset: u64, byte: u8, len: usize) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![byte; len], offset).unwrap();
}

#[test]
fn full_and_linked_clones_match_their_source_and_diverge_independently() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    lib.ok(&["create", "parent", "--kernel", &k, "--disk-size", "2G"]);
    let parent_raw = disk_of(&lib, "parent");
    write_pattern(&parent_raw, 0, 0x11, 1 << 20);
    write_pattern(&parent_raw, 1 << 30, 0x22, 4 << 20);
    let reference = lib.scratch().join("reference.raw");
    fs::copy(&parent_raw, &reference).unwrap();
    let reference = reference.to_string_lossy().into_owned();

    // Full clone: an independent sparse copy with a new id and MAC.
    let full = lib.json(&["clone", "parent", "full"]);
    let parent_info = lib.json(&["info", "parent"]);
    assert_ne!(full["vm"]["id"], parent_info["config"]["id"]);
    assert_ne!(
        full["vm"]["network"]["mac"],
        parent_info["config"]["network"]["mac"]
    );
    let full_disk = disk_of(&lib, "full");
    assert_qemu_img_ok(&["compare", "-f", "raw", "-F", "raw", &full_disk, &reference]);
    let allocated = fs::metadata(&full_disk).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(
        allocated.unwrap() < 64 << 20,
        "the full clone stayed sparse"
    );

    // Linked clone: both continue on qcow2 overlays over one base.
    lib.ok(&["clone", "parent", "linked", "--linked"]);
    let parent_overlay = disk_of(&lib, "parent");
    let linked_overlay = disk_of(&lib, "linked");
    for overlay in [&parent_overlay, &linked_overlay] {
        assert!(overlay.ends_with(".qcow2"), "{overlay}");
        assert_qemu_img_ok(&["check", overlay]);
        assert_qemu_img_ok(&["compare", "-F", "raw", overlay, &reference]);
    }
    let info = lib.json(&["info", "linked"]);
    assert!(info["config"]["disks"][0]["base"].is_string());

    // Writing to the parent leaves the clone as it was.
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x77 0 65536",
            &parent_overlay,
        ])
        .output()
        .expect("qemu-io (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !qemu_img(&["compare", "-F", "raw", &parent_overlay, &reference])
            .status
            .success()
    );
    assert_qemu_img_ok(&["compare", "-F", "raw", &linked_overlay, &reference]);

    let bases = || fs::read_dir(lib.home().join("bases")).unwrap().count();
    // A linked clone of the changed parent takes a new base (the changed overlay); one of
    // the unchanged `linked` reuses the base `linked` reads (its overlay stays empty).
    lib.ok(&["clone", "parent", "changed", "--linked"]);
    let changed = disk_of(&lib, "changed");
    assert_qemu_img_ok(&["check", &changed]);
    assert_qemu_img_ok(&["compare", &disk_of(&lib, "parent"), &changed]);
    lib.ok(&["clone", "linked", "grandchild", "--linked"]);
    assert_qemu_img_ok(&["check", &disk_of(&lib, "grandchild")]);
    assert_eq!(
        bases(),
        2,
        "the original disk, and the parent's changed one"
    );
    assert_eq!(
        lib.json(&["info", "grandchild"])["config"]["disks"][0]["base"],
        info["config"]["disks"][0]["base"],
        "the grandchild shares the base of its unchanged parent"
    );
    // Then the middle generations go away.
    lib.ok(&["delete", "linked"]);
    lib.ok(&["delete", "parent"]);
    lib.ok(&["delete", "changed"]);
    let grandchild = disk_of(&lib, "grandchild");
    assert_qemu_img_ok(&["compare", "-F", "raw", &grandchild, &reference]);

    // A full clone of a linked VM is independent of every base.
    lib.ok(&["clone", "grandchild", "independent"]);
    let independent = disk_of(&lib, "independent");
    assert!(independent.ends_with(".raw"));
    assert_qemu_img_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &independent,
        &reference,
    ]);

    // Bases live exactly as long as a VM uses them.
    assert_eq!(bases(), 1, "grandchild still uses the original base");
    lib.ok(&["delete", "grandchild"]);
    assert_eq!(bases(), 0);
    assert_qemu_img_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &independent,
        &reference,
    ]);
}

#[test]
fn import_copies_raw_and_qcow2_images_and_refuses_what_is_not_a_disk() {
    let lib = TempLibrary::new();
    let scratch = lib.scratch();
    let raw = scratch.join("disk.raw");
    File::create(&raw).unwrap().set_len(64 << 20).unwrap();
    write_pattern(raw.to_str().unwrap(), 4096, 0x5a, 8192);
    let imported = lib.json(&["import", "from-raw", raw.to_str().unwrap()]);
    assert_eq!(imported["created"]["disks"][0]["format"], "raw");
    assert_eq!(imported["created"]["boot"]["kind"], "disk");
    let disk = disk_of(&lib, "from-raw");
    assert_qemu_img_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &disk,
        raw.to_str().unwrap(),
    ]);
    assert!(raw.exists(), "the original stays");

    let qcow = scratch.join("disk.qcow2");
    assert_qemu_img_ok(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    let imported = lib.json(&["import", "from-qcow2", qcow.to_str().unwrap()]);
    assert_eq!(imported["created"]["disks"][0]["format"], "qcow2");
    assert_eq!(imported["created"]["disks"][0]["size"], 64u64 << 20);
    assert_qemu_img_ok(&[
        "compare",
        &disk_of(&lib, "from-qcow2"),
        raw.to_str().unwrap(),
    ]);

    // The same qcow2 cut short (an interrupted download): refused, nothing created.
    let whole = fs::read(&qcow).unwrap();
    let cut = scratch.join("cut.qcow2");
    fs::write(&cut, &whole[..whole.len() - 4096]).unwrap();
    let err = lib.fails(INVALID, &["import", "from-cut", cut.to_str().unwrap()]);
    assert!(err.contains("cut short"), "{err}");
    assert!(!lib.bundle("from-cut").exists());

    // An overlay is flattened into one independent disk.
    let overlay = scratch.join("overlay.qcow2");
    assert_qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        raw.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    let out = lib.run(&["import", "from-overlay", overlay.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("flattened"));
    assert_qemu_img_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &disk_of(&lib, "from-overlay"),
        raw.to_str().unwrap(),
    ]);

    let check = |name: &str, contents: Option<&[u8]>, expect: &str| {
        let path = scratch.join(name);
        if let Some(contents) = contents {
            fs::write(&path, contents).unwrap();
        }
        let err = lib.fails(INVALID, &["import", "x", path.to_str().unwrap()]);
        assert!(err.contains(expect), "{name}: {err}");
    };
    check("empty.img", Some(b""), "empty");
    check("notes.txt", Some(b"hello, I am text"), "multiple of 512");
    let mut iso = vec![0u8; 0x9000];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    check("installer.iso", Some(&iso), "--iso");
    let mut truncated = fs::read(&qcow).unwrap();
    truncated.truncate(100);
    check("truncated.qcow2", Some(&truncated), "qcow2");
    check("missing.raw", None, "does not exist");
    fs::create_dir_all(scratch.join("folder")).unwrap();
    check("folder", None, "folder");
    let names: Vec<String> = lib.list().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["from-overlay", "from-qcow2", "from-raw"]);
}

fn staging_is_empty(home: &Path) -> bool {
    fs::read_dir(home.join(".staging")).unwrap().count() == 0
}

#[test]
fn killing_a_full_clone_midway_leaves_the_library_consistent() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    lib.ok(&["create", "big", "--kernel", &k, "--disk-size", "6G"]);
    let disk = disk_of(&lib, "big");
    // 1.5 GiB of data spread over a 6 GiB sparse disk, so the copy takes a while.
    for i in 0..6u64 {
        write_pattern(&disk, i << 30, 0x40 + i as u8, 256 << 20);
    }
    let mut child = lib.command(&["clone", "big", "copy"]).spawn().unwrap();
    // Wait until the copy is under way (data in the staging folder), then kill -9.
    let staging = lib.home().join(".staging");
    let started = std::time::Instant::now();
    loop {
        let copied: u64 = walk_allocated(&staging);
        if copied > 64 << 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the clone finished before it could be interrupted; make the disk bigger"
        );
        assert!(
            started.elapsed().as_secs() < 60,
            "the clone never started copying"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The next command sees the library as before the clone, and cleans the leftovers.
    assert_eq!(lib.list(), vec![("big".to_string(), "stopped".to_string())]);
    assert!(staging_is_empty(lib.home()), "leftovers were cleaned");
    assert!(!lib.bundle("copy").exists());
    // The name is free again and the clone works.
    lib.ok(&["clone", "big", "copy"]);
    assert_qemu_img_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &disk_of(&lib, "copy"),
        &disk,
    ]);
}

#[test]
fn ctrl_c_sigterm_and_sighup_cancel_a_full_clone_cleanly() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    lib.ok(&["create", "big", "--kernel", &k, "--disk-size", "6G"]);
    let disk = disk_of(&lib, "big");
    for i in 0..6u64 {
        write_pattern(&disk, i << 30, 0x40 + i as u8, 256 << 20);
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let child = lib
            .command(&["clone", "big", "copy"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let staging = lib.home().join(".staging");
        let started = std::time::Instant::now();
        while walk_allocated(&staging) < 64 << 20 {
            assert!(
                started.elapsed().as_secs() < 60,
                "the clone never started copying"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if signal == libc::SIGINT {
            // While it is copied, the source is busy (not "stopped", which `start` would
            // contradict), in `status` and in `list`.
            assert_eq!(lib.json(&["status", "big"])["state"], "busy");
            let start = lib.fails(6, &["start", "big"]);
            assert!(start.contains("another operation"), "{start}");
            assert!(
                lib.list()
                    .contains(&("big".to_string(), "busy".to_string()))
            );
        }
        // SAFETY: kill(2) with a valid pid and signal number touches no memory.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(8),
            "signal {signal}: cancelled exit code: {stderr}"
        );
        assert!(stderr.contains("cancelled"), "{stderr}");
        assert!(
            staging_is_empty(lib.home()),
            "signal {signal}: the cancelled clone removed its files"
        );
        assert_eq!(lib.list(), vec![("big".to_string(), "stopped".to_string())]);
    }
}

/// `vivarium list | head` and the like: the command ends quietly when its reader goes, as
/// Unix tools do (SIGPIPE), never with a panic message.
#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    for i in 0..40 {
        lib.ok(&["create", &format!("vm{i}"), "--kernel", &k, "--no-disk"]);
    }
    let mut child = lib
        .command(&["list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// What a new user runs into with sizes, look-alike names, scripts and overlays.
#[test]
fn sizes_names_usage_errors_and_missing_backing_files_get_clear_answers() {
    let lib = TempLibrary::new();
    let k = kernel(&lib);
    // A raw disk larger than the file system's largest file (ext4: 16 TiB - 4 KiB; other
    // file systems allow it, and then the VM is simply made).
    let out = lib.run(&["create", "huge", "--kernel", &k, "--disk-size", "16T"]);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{stderr}");
        assert!(stderr.contains("--disk-format qcow2"), "{stderr}");
        assert!(!stderr.contains(".staging"), "{stderr}");
        assert!(staging_is_empty(lib.home()));
    } else {
        lib.ok(&["delete", "huge"]);
    }
    let unit = lib.fails(5, &["create", "x", "--kernel", &k, "--disk-size", "3X"]);
    assert!(unit.contains("`x` is not a unit"), "{unit}");
    lib.ok(&[
        "create",
        "peta",
        "--kernel",
        &k,
        "--disk-size",
        "1P",
        "--disk-format",
        "qcow2",
    ]);
    assert_eq!(
        lib.json(&["info", "peta"])["config"]["disks"][0]["size"],
        1u64 << 50
    );

    // é composed, and as e + a combining accent: one name.
    lib.ok(&["create", "caf\u{e9}", "--kernel", &k, "--no-disk"]);
    let taken = lib.fails(4, &["create", "cafe\u{301}", "--kernel", &k, "--no-disk"]);
    assert!(taken.contains("already exists"), "{taken}");
    assert_eq!(lib.json(&["info", "cafe\u{301}"])["name"], "caf\u{e9}");
    lib.ok(&["rename", "peta", "P\u{e9}ta"]);
    let bundles: Vec<String> = fs::read_dir(lib.home().join("vms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        bundles.contains(&"P\u{e9}ta.vivm".to_string()),
        "{bundles:?}"
    );

    // A script reading --json gets JSON for a command line it got wrong.
    let out = lib.run(&["--json", "create", "y", "--kernel", &k, "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["error"]["kind"], "usage", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--bogus")
    );

    // An overlay whose backing file is gone: the user's file is named, nothing is made.
    let base = lib.scratch().join("base.raw");
    let overlay = lib.scratch().join("overlay.qcow2");
    assert_qemu_img_ok(&["create", "-f", "raw", base.to_str().unwrap(), "64M"]);
    assert_qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]);
    fs::remove_file(&base).unwrap();
    let missing = lib.fails(5, &["import", "ov", overlay.to_str().unwrap()]);
    assert!(missing.contains(base.to_str().unwrap()), "{missing}");
    assert!(!missing.contains(".staging"), "{missing}");
    assert!(staging_is_empty(lib.home()));
    assert!(lib.list().iter().all(|(name, _)| name != "ov"));
}

fn walk_allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk_allocated(&path)
            } else {
                fs::metadata(&path).map(|m| m.blocks() * 512).unwrap_or(0)
            }
        })
        .sum()
}

const OTHER_ARCH: i32 = 13;

/// A small kernel image of the machine this computer does not run (an arm64 `Image` header
/// on an x86_64 host, an x86 bzImage header on an aarch64 one), that machine, and this
/// computer's.
fn other_machine_kernel(lib: &TempLibrary) -> (String, &'static str, &'static str) {
    let (image, other, here) = if cfg!(target_arch = "aarch64") {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x236] = 1; // XLF_KERNEL_64
        (bz, "x86_64", "aarch64")
    } else {
        // The arm64 boot header: its magic "ARM\x64" at byte 56.
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        (image, "aarch64", "x86_64")
    };
    let path = lib.scratch().join("Image");
    fs::write(&path, image).unwrap();
    (path.to_string_lossy().into_owned(), other, here)
}

#[test]
fn a_vm_of_another_machine_is_listed_as_such_refuses_to_start_and_can_be_copied_and_removed() {
    let lib = TempLibrary::new();
    let (image, other, here) = other_machine_kernel(&lib);
    let why = format!("this VM is an {other} machine; this computer runs {here} VMs");
    let created = lib.json(&["create", "far", "--kernel", &image, "--disk-size", "1G"]);
    assert_eq!(created["created"]["arch"], other, "{created}");
    assert!(
        created["warnings"][0].as_str().unwrap().contains(&why),
        "{created}"
    );
    let text = fs::read_to_string(lib.bundle("far").join("vm.toml")).unwrap();
    assert!(text.contains(&format!("\narch = \"{other}\"\n")), "{text}");

    // Listed, with the state and the reason.
    let list = lib.json(&["list"]);
    let row = &list[0];
    assert_eq!(row["state"], "other-arch", "{list}");
    assert_eq!(row["arch"], other);
    assert_eq!(row["cannot_start"]["kind"], "other-arch");
    assert_eq!(row["cannot_start"]["message"], why.as_str());
    let text = lib.ok(&["list"]);
    assert!(text.contains("other-arch") && text.contains(&why), "{text}");
    let info = lib.json(&["info", "far"]);
    assert_eq!(info["state"], "other-arch");
    assert_eq!(info["config"]["arch"], other);
    assert_eq!(info["cannot_start"]["message"], why.as_str());
    let text = lib.ok(&["info", "far"]);
    assert!(
        text.contains(&format!("Machine:   {other} (cannot start here: {why})")),
        "{text}"
    );

    // `start` and `run` refuse it with their own exit code, and record no run.
    for command in ["start", "run"] {
        let err = lib.fails(OTHER_ARCH, &[command, "far"]);
        assert!(
            err.contains("cannot start here") && err.contains(&why),
            "{err}"
        );
    }
    let out = lib.run(&["--json", "start", "far"]);
    assert_eq!(out.status.code(), Some(OTHER_ARCH));
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "other-arch", "{error}");
    assert!(!lib.bundle("far").join("state/last-run.toml").exists());
    assert!(!lib.bundle("far").join("logs/vm.log").exists());
    assert_eq!(
        lib.json(&["info", "far"])["last_run"],
        serde_json::Value::Null
    );

    // Everything but starting works on it, and its copies are of its machine too.
    lib.ok(&[
        "set",
        "far",
        "--cpus",
        "3",
        "--notes",
        "from another computer",
    ]);
    lib.ok(&["clone", "far", "near"]);
    lib.ok(&["clone", "far", "linked", "--linked"]);
    lib.ok(&["rename", "near", "copy"]);
    for name in ["far", "copy", "linked"] {
        let info = lib.json(&["info", name]);
        assert_eq!(info["config"]["arch"], other, "{name}: {info}");
        assert_eq!(info["state"], "other-arch", "{name}: {info}");
    }
    assert_eq!(lib.json(&["info", "copy"])["config"]["cpus"], 3);
    for name in ["linked", "copy", "far"] {
        lib.ok(&["delete", name]);
    }
    assert!(lib.list().is_empty());
}

#[test]
fn the_machine_is_chosen_or_taken_from_the_kernel_and_old_bundles_are_x86_64() {
    let lib = TempLibrary::new();
    let (image, other, here) = other_machine_kernel(&lib);
    let plain = kernel(&lib);
    // A kernel that says nothing: this computer's machine, or the one asked for.
    let vm = lib.json(&["create", "plain", "--kernel", &plain, "--no-disk"]);
    assert_eq!(vm["created"]["arch"], here);
    let vm = lib.json(&[
        "create",
        "chosen",
        "--kernel",
        &plain,
        "--no-disk",
        "--arch",
        other,
    ]);
    assert_eq!(vm["created"]["arch"], other);
    // i686 systems run on the PC.
    let vm = lib.json(&[
        "create",
        "old-pc",
        "--kernel",
        &plain,
        "--no-disk",
        "--arch",
        "i686",
    ]);
    assert_eq!(vm["created"]["arch"], "x86_64");
    // A kernel of another machine than the one asked for; a machine Vivarium has not.
    let err = lib.fails(
        INVALID,
        &[
            "create",
            "mixed",
            "--kernel",
            &image,
            "--no-disk",
            "--arch",
            here,
        ],
    );
    assert!(err.contains(&format!("built for {other}")), "{err}");
    for arch in ["riscv64", "mips"] {
        let err = lib.fails(
            INVALID,
            &[
                "create",
                "odd",
                "--kernel",
                &plain,
                "--no-disk",
                "--arch",
                arch,
            ],
        );
        assert!(err.contains(arch), "{err}");
    }
    // An imported disk cannot say: this computer's machine, or the one asked for.
    let disk = lib.scratch().join("disk.raw");
    File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let disk = disk.to_string_lossy().into_owned();
    let vm = lib.json(&["import", "imported", &disk]);
    assert_eq!(vm["created"]["arch"], here);
    let vm = lib.json(&["import", "imported-far", &disk, "--arch", other]);
    assert_eq!(vm["created"]["arch"], other);
    assert_eq!(lib.json(&["info", "imported-far"])["state"], "other-arch");
    let names: Vec<String> = lib.list().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        ["chosen", "imported", "imported-far", "old-pc", "plain"]
    );

    // A bundle written before `arch` existed is an x86_64 machine, unchanged until a change
    // of its settings writes it out with the key.
    let toml = lib.bundle("plain").join("vm.toml");
    let text = fs::read_to_string(&toml)
        .unwrap()
        .replace(&format!("arch = \"{here}\"\n"), "");
    assert!(!text.contains("arch"), "{text}");
    fs::write(&toml, &text).unwrap();
    let info = lib.json(&["info", "plain"]);
    assert_eq!(info["config"]["arch"], "x86_64");
    let expected_state = if here == "x86_64" {
        "stopped"
    } else {
        "other-arch"
    };
    assert_eq!(info["state"], expected_state, "{info}");
    assert_eq!(
        fs::read_to_string(&toml).unwrap(),
        text,
        "listing leaves it as it was"
    );
    lib.ok(&["set", "plain", "--cpus", "1"]);
    assert!(
        fs::read_to_string(&toml)
            .unwrap()
            .contains("\narch = \"x86_64\"\n")
    );
}
