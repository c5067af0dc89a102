//! The desktop app driven through egui_kittest on a real library in a temporary folder:
//! what a person does (create through the dialog, drop an ISO, clone full and linked,
//! rename and change settings, edit notes, delete with confirmation), checked through the
//! accessibility tree and the library on disk, not pixels.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui::{self, Role};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use vivarium::gui::{AppEnv, VivariumApp};
use vivarium_core::config::{BootSource, NetworkConfig};
use vivarium_core::disk::NoProgress;
use vivarium_core::{Library, NewDisk, NewVm};
use vivarium_e2e::handmade::BANNER;
use vivarium_e2e::installer_iso;
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{PowerOffOnDrop, create_handmade_vm, kvm_usable};

/// A temporary library and the app's settings file beside it.
struct Fixture {
    dir: tempfile::TempDir,
    library: Library,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("vivarium-gui-")
            .tempdir()
            .unwrap();
        let library = Library::open(&dir.path().join("library")).unwrap();
        Fixture { dir, library }
    }

    fn file(&self, name: &str, len: u64) -> PathBuf {
        let path = self.dir.path().join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(len).unwrap();
        path
    }

    fn harness(&self) -> Harness<'static, VivariumApp> {
        app_harness(AppEnv {
            library: self.library.clone(),
            prefs_path: Some(self.dir.path().join("config/app.toml")),
            vm_exe: None,
        })
    }

    /// A VM made with the library directly (the app must show what others made).
    fn make_vm(&self, name: &str) {
        let kernel = self.file("vmlinuz", 4096);
        let mut spec = NewVm::with_defaults(
            name,
            BootSource::Linux {
                kernel,
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
        );
        spec.disk = NewDisk::Blank {
            size: 64 << 20,
            format: vivarium_core::config::DiskFormat::Raw,
        };
        self.library.create(&spec, &NoProgress).unwrap();
    }
}

fn app_harness(env: AppEnv) -> Harness<'static, VivariumApp> {
    let mut harness = Harness::builder()
        .with_size([1200.0, 800.0])
        .build_eframe(move |cc| VivariumApp::new(cc, env));
    harness.run_steps(2);
    harness
}

/// Steps the app (with real time passing, for its background threads) until `done` holds.
fn wait_until(
    harness: &mut Harness<'_, VivariumApp>,
    what: &str,
    mut done: impl FnMut(&Harness<'_, VivariumApp>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        harness.run_steps(1);
        if done(harness) {
            harness.run_steps(2);
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has_label(harness: &Harness<'_, VivariumApp>, label: &str) -> bool {
    harness.query_by_label(label).is_some()
}

/// Replaces the text of the text field labelled `label`.
fn set_text(harness: &mut Harness<'_, VivariumApp>, label: &str, text: &str) {
    harness
        .get_by_role_and_label(Role::TextInput, label)
        .focus();
    harness.run_steps(1);
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness.run_steps(1);
    harness
        .get_by_role_and_label(Role::TextInput, label)
        .type_text(text);
    harness.run_steps(2);
}

/// Types a number into the spin box labelled `label` (as a keyboard user does).
fn set_number(harness: &mut Harness<'_, VivariumApp>, label: &str, value: u64) {
    harness
        .get_by_role_and_label(Role::SpinButton, label)
        .focus();
    harness.run_steps(2);
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness.run_steps(1);
    harness.get_by_label(label).type_text(&value.to_string());
    harness.run_steps(1);
    harness.key_press(egui::Key::Enter);
    harness.run_steps(2);
}

fn click(harness: &mut Harness<'_, VivariumApp>, label: &str) {
    harness.get_by_label(label).click();
    harness.run_steps(2);
}

fn click_button(harness: &mut Harness<'_, VivariumApp>, label: &str) {
    harness.get_by_role_and_label(Role::Button, label).click();
    harness.run_steps(2);
}

fn select_vm(harness: &mut Harness<'_, VivariumApp>, name: &str) {
    select_vm_in_state(harness, name, "Stopped");
}

fn select_vm_in_state(harness: &mut Harness<'_, VivariumApp>, name: &str, state: &str) {
    let row = format!("{name}, {state}");
    wait_until(harness, &format!("{name} in the sidebar"), |h| {
        has_label(h, &row)
    });
    click(harness, &row);
}

#[test]
fn create_through_the_dialog_then_edit_notes() {
    let fx = Fixture::new();
    let kernel = fx.file("bzImage", 8192);
    let initrd = fx.file("initrd.img", 4096);
    let mut harness = fx.harness();
    wait_until(&mut harness, "the empty library's welcome", |h| {
        has_label(h, "No virtual machines yet")
    });
    click_button(&mut harness, "New VM…");
    assert!(has_label(&harness, "New virtual machine"));
    click(&mut harness, "Linux kernel");
    // Nothing chosen yet: the dialog says what is missing and Create stays off.
    assert!(has_label(&harness, "Choose a kernel."));
    set_text(&mut harness, "Kernel", kernel.to_str().unwrap());
    set_text(&mut harness, "Initrd", initrd.to_str().unwrap());
    set_text(&mut harness, "Name", "bad/name");
    assert!(
        harness
            .query_by_label_contains("contains the character '/'")
            .is_some()
    );
    set_text(&mut harness, "Name", "kernel vm");
    set_number(&mut harness, "CPUs", 3);
    click_button(&mut harness, "Create");
    wait_until(&mut harness, "the new VM selected", |h| {
        has_label(h, "kernel vm, Stopped") && h.state().selected() == Some("kernel vm")
    });
    let entry = fx.library.get("kernel vm").unwrap();
    let config = entry.config().unwrap();
    assert_eq!(
        config.boot,
        BootSource::Linux {
            kernel: kernel.clone(),
            initrd: Some(initrd.clone()),
            cmdline: "console=ttyS0".into()
        }
    );
    assert_eq!((config.cpus, config.memory_mib), (3, 2048));
    assert_eq!(config.disks[0].size, 20 << 30);
    assert!(
        !has_label(&harness, "New virtual machine"),
        "the dialog closed"
    );

    // Notes: typed in the details pane, saved atomically through the library.
    harness
        .get_by_role_and_label(Role::MultilineTextInput, "Notes")
        .focus();
    harness.run_steps(1);
    harness
        .get_by_role_and_label(Role::MultilineTextInput, "Notes")
        .type_text("test box for the kernel team");
    harness.run_steps(2);
    click_button(&mut harness, "Save notes");
    wait_until(&mut harness, "the notes on disk", |_| {
        fx.library.get("kernel vm").unwrap().config().unwrap().notes
            == "test box for the kernel team"
    });
    // The new-VM defaults the dialog used were saved in the app's settings file.
    let settings = std::fs::read_to_string(fx.dir.path().join("config/app.toml"));
    assert!(settings.is_ok_and(|text| text.contains("new_vm_cpus = 3")));
}

/// A VM of another machine than this computer runs: the sidebar and the details say why it
/// cannot start, and the Start button is off with the reason as its tooltip; cloning and
/// deleting stay on.
#[test]
fn a_vm_of_another_machine_says_why_it_cannot_start() {
    use egui_kittest::kittest::NodeT;
    use vivarium_core::Arch;
    let fx = Fixture::new();
    let here = Arch::host_machine().expect("a host Vivarium has a machine for");
    let other = if here == Arch::X86_64 {
        Arch::Aarch64
    } else {
        Arch::X86_64
    };
    let mut spec = NewVm::with_defaults(
        "far",
        BootSource::Linux {
            kernel: fx.file("Image", 4096),
            initrd: None,
            cmdline: String::new(),
        },
    );
    spec.arch = Some(other);
    spec.disk = NewDisk::None;
    fx.library.create(&spec, &NoProgress).unwrap();
    let why = other.cannot_start_on(Some(here)).unwrap();
    let mut harness = fx.harness();
    select_vm_in_state(&mut harness, "far", "Stopped, cannot start here");
    assert!(has_label(&harness, &format!("It cannot start here: {why}")));
    let start = harness.get_by_role_and_label(Role::Button, "Start");
    assert!(start.accesskit_node().is_disabled(), "{start:?}");
    assert!(
        !has_label(&harness, &why),
        "no tooltip before the pointer is there"
    );
    let start = harness.get_by_role_and_label(Role::Button, "Start");
    start.hover();
    wait_until(&mut harness, "the Start button's tooltip", |h| {
        has_label(h, &why)
    });
    for button in ["Clone…", "Delete…", "Settings"] {
        let node = harness.get_by_role_and_label(Role::Button, button);
        assert!(!node.accesskit_node().is_disabled(), "{button}: {node:?}");
    }
}

/// A file dropped on the window, as egui-winit reports one.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn drop_file(harness: &mut Harness<'_, VivariumApp>, path: &Path) {
    harness
        .input_mut()
        .dropped_files
        .push(Arc::new(Dropped(path.to_path_buf())));
    harness.run_steps(3);
}

#[test]
fn dropping_an_installer_iso_creates_a_vm_for_what_it_holds() {
    let Some(installer) = installer_iso::installer_iso_or_skip(
        "dropping_an_installer_iso_creates_a_vm_for_what_it_holds",
    ) else {
        return;
    };
    let fx = Fixture::new();
    fx.make_vm("existing");
    let iso = installer.path();
    let mut harness = fx.harness();
    select_vm(&mut harness, "existing");

    harness.input_mut().hovered_files.push(egui::HoveredFile {
        path: Some(iso.clone()),
        mime: String::new(),
    });
    harness.run_steps(3);
    let hint = format!(
        "Drop to create a VM from {}",
        iso.file_name().unwrap().to_string_lossy()
    );
    assert!(has_label(&harness, &hint));
    harness.input_mut().hovered_files.clear();
    harness.run_steps(2);
    assert!(
        harness
            .query_by_label_contains("Drop to create a VM")
            .is_none(),
        "the hint goes when the file leaves"
    );

    // A truncated copy of the ISO: nothing is created, and the reason is shown.
    let truncated = fx.dir.path().join("debian-cut.iso");
    let head = std::fs::read(&iso).unwrap()[..4 << 20].to_vec();
    std::fs::write(&truncated, head).unwrap();
    drop_file(&mut harness, &truncated);
    wait_until(&mut harness, "the truncated ISO's error", |h| {
        h.query_by_label_contains("cut short").is_some()
    });
    assert_eq!(fx.library.list().unwrap().len(), 1, "nothing was created");

    // The real installer ISO: a VM named and configured for Debian 12, booting the kernel,
    // initrd and command line worked out from the ISO, with the ISO in its CD-ROM drive.
    drop_file(&mut harness, &iso);
    wait_until(&mut harness, "the VM from the ISO selected", |h| {
        has_label(h, "Debian 12, Stopped") && h.state().selected() == Some("Debian 12")
    });
    assert!(
        harness
            .query_by_label_contains("Recognised Debian 12 (x86_64)")
            .is_some(),
        "the toast says what was recognised"
    );
    let entry = fx.library.get("Debian 12").unwrap();
    let config = entry.config().unwrap();
    assert_eq!(config.os.id, "debian12");
    assert_eq!((config.cpus, config.memory_mib), (2, 2048));
    assert_eq!(config.disks[0].size, 20 << 30);
    assert_eq!(
        config.cdrom.as_ref().and_then(|c| c.image.clone()),
        Some(std::fs::canonicalize(&iso).unwrap())
    );
    let BootSource::Installer {
        kernel,
        initrd,
        cmdline,
    } = &config.boot
    else {
        panic!("the installer boots directly, not {:?}", config.boot);
    };
    assert_eq!(cmdline, installer_iso::DEFAULT_CMDLINE);
    let bundle = &entry.path;
    let kernel_bytes = std::fs::read(bundle.join(kernel)).unwrap();
    assert_eq!(
        &kernel_bytes[0x202..0x206],
        b"HdrS",
        "the installer's bzImage"
    );
    let initrd_len = std::fs::metadata(bundle.join(initrd.as_ref().unwrap()))
        .unwrap()
        .len();
    assert!(initrd_len > 20 << 20, "the text installer's initrd");

    // Dropped again: another VM, under a free name.
    drop_file(&mut harness, &iso);
    wait_until(&mut harness, "the second VM from the ISO", |h| {
        has_label(h, "Debian 12 (2), Stopped")
    });

    // The New VM dialog's ISO source inspects the ISO too, keeping the dialog's name and
    // hardware.
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::N);
    harness.run_steps(2);
    assert!(has_label(&harness, "New virtual machine"));
    set_text(&mut harness, "ISO image", iso.to_str().unwrap());
    set_text(&mut harness, "Name", "installer from the dialog");
    set_number(&mut harness, "CPUs", 1);
    click_button(&mut harness, "Create");
    wait_until(&mut harness, "the VM from the dialog", |h| {
        has_label(h, "installer from the dialog, Stopped")
    });
    let config = fx
        .library
        .get("installer from the dialog")
        .unwrap()
        .config()
        .unwrap()
        .clone();
    assert_eq!((config.os.id.as_str(), config.cpus), ("debian12", 1));
    assert!(
        matches!(&config.boot, BootSource::Installer { cmdline, .. } if cmdline == installer_iso::DEFAULT_CMDLINE),
        "{:?}",
        config.boot
    );

    // A file that is neither an ISO nor a disk image is refused with the reason.
    let text = fx.file("readme.txt", 10);
    drop_file(&mut harness, &text);
    assert!(
        harness
            .query_by_label_contains("is neither an ISO")
            .is_some()
    );
}

#[test]
fn clone_full_and_linked_rename_settings_and_delete() {
    let fx = Fixture::new();
    fx.make_vm("base");
    std::fs::create_dir_all(fx.library.bundle_path("broken")).unwrap();
    std::fs::write(fx.library.bundle_path("broken").join("vm.toml"), "cpus = ").unwrap();
    let mut harness = fx.harness();
    // A VM whose vm.toml is damaged is listed as broken with the reason.
    wait_until(&mut harness, "the broken VM", |h| {
        has_label(h, "broken, Broken")
    });
    click(&mut harness, "broken, Broken");
    assert!(harness.query_by_label_contains("cannot be read").is_some());

    // Full clone.
    select_vm(&mut harness, "base");
    click_button(&mut harness, "Clone…");
    assert!(has_label(&harness, "Clone base"));
    set_text(&mut harness, "Name", "full copy");
    click(&mut harness, "Full clone");
    click_button(&mut harness, "Clone");
    wait_until(&mut harness, "the full clone", |h| {
        has_label(h, "full copy, Stopped") && h.state().selected() == Some("full copy")
    });
    let full = fx.library.get("full copy").unwrap();
    assert!(
        full.config()
            .unwrap()
            .disks
            .iter()
            .all(|d| d.base.is_none())
    );

    // Linked clone (the default).
    select_vm(&mut harness, "base");
    click_button(&mut harness, "Clone…");
    set_text(&mut harness, "Name", "linked copy");
    click_button(&mut harness, "Clone");
    wait_until(&mut harness, "the linked clone", |h| {
        has_label(h, "linked copy, Stopped")
    });
    let linked = fx.library.get("linked copy").unwrap();
    assert!(
        linked
            .config()
            .unwrap()
            .disks
            .iter()
            .all(|d| d.base.is_some())
    );

    // Settings: rename, more CPUs, no network.
    select_vm(&mut harness, "linked copy");
    click_button(&mut harness, "Settings");
    assert!(has_label(&harness, "Settings of linked copy"));
    set_text(&mut harness, "Name", "renamed");
    set_number(&mut harness, "CPUs", 3);
    click(&mut harness, "User-mode network (no root needed)");
    click_button(&mut harness, "Save");
    wait_until(&mut harness, "the renamed VM", |h| {
        has_label(h, "renamed, Stopped")
    });
    assert!(fx.library.get("linked copy").is_err());
    let renamed = fx.library.get("renamed").unwrap();
    let config = renamed.config().unwrap();
    assert_eq!(config.cpus, 3);
    assert_eq!(config.network, NetworkConfig::None);

    // Delete, with a confirmation that says the shared base stays.
    select_vm(&mut harness, "renamed");
    click_button(&mut harness, "Delete…");
    assert!(has_label(&harness, "Delete renamed?"));
    assert!(
        harness
            .query_by_label_contains("the base stays as long as other VMs use it")
            .is_some()
    );
    // Cancel keeps it.
    click_button(&mut harness, "Cancel");
    assert!(fx.library.get("renamed").is_ok());
    click_button(&mut harness, "Delete…");
    click_button(&mut harness, "Delete");
    wait_until(&mut harness, "the VM gone", |h| {
        h.query_by_label_contains("renamed, ").is_none()
    });
    assert!(fx.library.get("renamed").is_err());
    // `base` still uses the shared base image, so it stays.
    assert!(!fx.library.bases().unwrap().is_empty());
    assert!(fx.library.get("base").unwrap().config().is_ok());
}

fn console_text(harness: &Harness<'_, VivariumApp>, name: &str) -> String {
    harness
        .query_by_role_and_label(Role::Terminal, &format!("Console of {name}"))
        .and_then(|node| node.value())
        .unwrap_or_default()
}

/// Start → running → the console shows the guest's output and takes input → power off →
/// stopped, through a real VM process on this host's /dev/kvm (the hand-made guest, which
/// prints a banner and echoes what it reads). Quitting the app leaves the VM running, and a
/// new app window finds it running and attaches to its console again.
#[test]
fn start_console_and_power_off_through_a_real_vm_process() {
    if !kvm_usable("app_gui::start_console_and_power_off_through_a_real_vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "hm");
    // A CD-ROM drive with a disc in it (the hand-made guest ignores it; the drive is the
    // VM's all the same, and eject and insert work on it).
    let disc = |name: &str| {
        let path = library.scratch().join(name);
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (disc_a, disc_b) = (disc("disc-a.iso"), disc("disc-b.iso"));
    library.ok(&["set", "hm", "--iso", &disc_a]);
    let _guard = PowerOffOnDrop::new(&library, "hm");
    let env = AppEnv {
        library: Library::open(library.home()).unwrap(),
        prefs_path: None,
        vm_exe: Some(vivarium_e2e::vivarium::vm_binary()),
    };
    let mut harness = app_harness(env.clone());
    select_vm(&mut harness, "hm");
    click_button(&mut harness, "Start");
    wait_until(&mut harness, "the VM running", |h| {
        has_label(h, "hm, Running")
    });
    // A VM without a display has no Screen tab; starting it from the app opens the console,
    // which shows the guest's banner.
    wait_until(&mut harness, "the Console tab", |h| has_label(h, "Console"));
    assert!(
        harness.query_by_label("Screen").is_none(),
        "no Screen tab without a display"
    );
    let banner = BANNER.trim();
    wait_until(&mut harness, "the guest's banner in the console", |h| {
        console_text(h, "hm").contains(banner)
    });
    // Keyboard input goes to the guest, which echoes it.
    harness
        .get_by_role_and_label(Role::Terminal, "Console of hm")
        .click();
    harness.run_steps(2);
    harness
        .get_by_role_and_label(Role::Terminal, "Console of hm")
        .type_text("echo-me");
    wait_until(&mut harness, "the guest's echo", |h| {
        console_text(h, "hm").contains("echo-me")
    });

    // Closing the app leaves the VM running; a new window finds it and reattaches.
    drop(harness);
    assert!(matches!(
        vivarium_core::control::live_state(&env.library, "hm"),
        vivarium_core::control::LiveState::Running(_)
    ));
    let mut harness = app_harness(env.clone());
    select_vm_in_state(&mut harness, "hm", "Running");
    click(&mut harness, "Console");
    wait_until(&mut harness, "the backlog in the reattached console", |h| {
        let text = console_text(h, "hm");
        text.contains(banner) && text.contains("echo-me")
    });

    // The CD/DVD row of the running VM shows the disc in the drive now: Eject empties it,
    // and a disc inserted by anyone (here the CLI) shows up.
    click(&mut harness, "Overview");
    wait_until(&mut harness, "the disc in the drive shown", |h| {
        has_label(h, "disc-a.iso")
    });
    click_button(&mut harness, "Eject");
    wait_until(&mut harness, "the drive empty", |h| has_label(h, "Empty"));
    assert!(!has_label(&harness, "disc-a.iso"));
    library.ok(&["insert", "hm", &disc_b]);
    wait_until(&mut harness, "the inserted disc shown", |h| {
        has_label(h, "disc-b.iso")
    });
    assert!(
        harness
            .query_by_role_and_label(Role::Button, "Insert…")
            .is_some(),
        "a running VM's drive takes another disc"
    );

    click_button(&mut harness, "Power off");
    wait_until(&mut harness, "the VM powered off", |h| {
        has_label(h, "hm, Powered off")
    });
    match vivarium_core::control::live_state(&env.library, "hm") {
        vivarium_core::control::LiveState::Stopped { last_run } => assert_eq!(
            last_run.map(|run| run.exit),
            Some(vivarium_core::control::LastExit::PoweredOff)
        ),
        other => panic!("expected stopped, got {other:?}"),
    }
    wait_until(&mut harness, "the last run's end shown", |h| {
        h.query_by_label_contains("Ended just now, powered off")
            .is_some()
    });
}
