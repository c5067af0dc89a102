//! `cargo xtask bench memtest`: Memtest86+ (Debian's `memtest86+x64.iso`) from the start of the
//! VMM to its ready screen, Vivarium + SeaBIOS against QEMU `-M pc` with the same SeaBIOS,
//! inside the nested rig.
//!
//! Both boot the ISO's El Torito floppy image through SeaBIOS (Debian's `bios-256k.bin`, and
//! its `vgabios-stdvga.bin` as the standard VGA's BIOS), 1 vCPU, 256 MiB, the CD on
//! virtio-scsi, a virtio-rng (Vivarium always has one), no disk, no network. Vivarium:
//! `vivarium create --iso` (a BIOS VM booting its CD) then `vivarium start`, its screen taken
//! with `vivarium screenshot`. QEMU: `-M pc -enable-kvm -cpu host -bios bios-256k.bin -vga std
//! -display none`, its screen taken with the monitor's `screendump` (through `-monitor pipe:`).
//! Both screens are watched the same way: a picture as often as the emulated machine allows
//! (at most every 250 ms), read against the VGA BIOS's font by `vivarium-screen-check --text`,
//! until it shows memtest's header and its "<Enter> to start testing" prompt. The time is from
//! the VMM's start command to the moment the first picture showing it was asked for, by the
//! rig's clock. One rig run holds every round, each booting both in an alternating order.
//! Only the ratio means anything in the rig. The last round's two pictures are kept in
//! `target/bench-memtest/` and their text compared row by row (the rows that differ are
//! named in the section).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use vivarium_e2e::memtest::Flavour;
use vivarium_e2e::rig::{self, Rig};
use vivarium_e2e::screen::Picture;
use vivarium_e2e::vga_text::{TextScreen, VgaFont};

use crate::bench::update_benchmarks_md;
use crate::util::{self, workspace_root};

const ROUNDS: usize = 5;
const GUEST_MIB: u64 = 256;
const VMMS: [&str; 2] = ["vivarium-seabios", "qemu-pc-seabios"];
const SEABIOS_DIR: &str = "/usr/share/seabios";
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
const VGA_BIOS: &str = "/usr/share/seabios/vgabios-stdvga.bin";
/// The section's heading in docs/BENCHMARKS.md.
const HEADING: &str = "## Memtest86+ to its test screen through the BIOS (nested rig)";

/// Runs the benchmark and records it in docs/BENCHMARKS.md.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let vivarium = util::build_release_vivarium()?;
    let check = util::build_release_bin("vivarium-e2e", "vivarium-screen-check")?;
    let fixtures = crate::fixtures::ensure()?;
    let isos = crate::fixtures::ensure_memtest()?;
    let iso = Flavour::X64;
    let keep = util::target_dir().join("bench-memtest");
    std::fs::create_dir_all(&keep).map_err(|e| format!("{}: {e}", keep.display()))?;
    let run = Rig::new(&fixtures, &script(&vivarium, &check, iso.iso_name()))
        .qemu()?
        .binary(&vivarium)
        .binary(&check)
        .data(SEABIOS_DIR)
        .file(isos.path(iso), iso.iso_name())
        .memory_mib(2048)
        .timeout(Duration::from_secs(2400))
        .run()?;
    if !run.succeeded() {
        return Err(format!(
            "the benchmark failed in the rig\n{}",
            run.transcript()
        ));
    }
    eprintln!(
        "bench memtest: {ROUNDS} rounds in one rig run ({:.0} s)",
        run.elapsed.as_secs_f64()
    );
    let mut ready: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut looks: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (key, value) in run.results() {
        let Some((kind, rest)) = key.split_once('.') else {
            continue;
        };
        let Some(vmm) = VMMS.iter().find(|v| rest.starts_with(*v)) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match kind {
            "ready_ms" => ready.entry(vmm).or_default().push(value),
            "look_ms" => looks.entry(vmm).or_default().push(value),
            _ => {}
        }
    }
    for vmm in VMMS {
        if ready.get(vmm).map_or(0, Vec::len) < ROUNDS {
            return Err(format!(
                "{vmm} did not reach memtest's screen {ROUNDS} times\n{}",
                run.transcript()
            ));
        }
    }
    let differing = compare_last_pictures(&run, &keep)?;
    let rows = match differing.as_slice() {
        [] => "all 25 rows".to_string(),
        rows => format!(
            "{} of 25 rows; row{} {} differ{}",
            25 - rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            rows.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if rows.len() == 1 { "s" } else { "" },
        ),
    };
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let viv = median(&ready["vivarium-seabios"]);
    let qemu = median(&ready["qemu-pc-seabios"]);
    let all = |vmm: &str| {
        ready[vmm]
            .iter()
            .map(|ms| format!("{:.1}", ms / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let look = |vmm: &str| looks.get(vmm).map_or(0.0, |v| median(v)) / 1000.0;
    let section = format!(
        "{HEADING}\n\n\
         Command: `cargo xtask bench memtest` (release build). Memtest86+ {version} \
         (`memtest86+x64.iso` of Debian's `memtest86+`, `cargo xtask fixtures --memtest`), its \
         El Torito floppy image booted through Debian's SeaBIOS 1.16 (`bios-256k.bin`, and its \
         `vgabios-stdvga.bin` for the standard VGA) by Vivarium (`vivarium create --iso ISO \
         --cpus 1 --memory 256M --network none --display 1024x768`, then `vivarium start`) and \
         by QEMU (`qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} \
         -nodefaults -bios {SEABIOS} -vga std -display none`, the ISO as a `scsi-cd` on \
         `virtio-scsi-pci` as in Vivarium, a `virtio-rng-pci`), both with KVM, no disk, no \
         network. Time from the VMM's start command to the first picture of memtest's ready \
         screen (its `Memtest86+ v` header and `<Enter> to start testing`), by the rig's \
         clock. Both screens are watched the same way: a picture as often as the emulated \
         machine allows (at most every 250 ms) — `vivarium screenshot` for Vivarium, the \
         monitor's `screendump` (through `-monitor pipe:`, complete once the monitor has \
         answered the next command) for QEMU — read against the VGA BIOS's font by \
         `vivarium-screen-check --text`; the time is taken when the picture is asked for. A \
         look took a median {:.2} s (Vivarium) and {:.2} s (QEMU) of the emulated machine, \
         which bounds the resolution. {ROUNDS} rounds in one rig run, each booting both in \
         alternating order. The rig is a software-emulated machine with nested KVM, so only \
         the ratio means anything.\n\n\
         | VMM | median start to ready screen | each round | ratio to QEMU |\n|---|---:|---|---:|\n\
         | Vivarium + SeaBIOS | {:.2} s | {} | {:.2} |\n\
         | QEMU -M pc + SeaBIOS | {:.2} s | {} | 1.00 |\n\n\
         The last round's two ready screens (kept in `target/bench-memtest/`), read as text, \
         agree in {rows} (counted from 0). Measured {}.\n",
        look("vivarium-seabios"),
        look("qemu-pc-seabios"),
        viv / 1000.0,
        all("vivarium-seabios"),
        viv / qemu,
        qemu / 1000.0,
        all("qemu-pc-seabios"),
        util::today(),
        version = isos.version(),
    );
    println!("{section}");
    update_benchmarks_md(&root, HEADING, &section)
}

/// Keeps the last round's two ready screens in `keep`; the rows whose text differs.
fn compare_last_pictures(run: &rig::RigRun, keep: &Path) -> Result<Vec<usize>, String> {
    let carried = run.carried();
    let png = carried
        .get("vivarium")
        .ok_or("Vivarium's ready screen did not come out")?;
    let gz = carried
        .get("qemu")
        .ok_or("QEMU's ready screen did not come out")?;
    let mut ppm = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut ppm)
        .map_err(|e| format!("QEMU's screendump did not unpack: {e}"))?;
    let font = VgaFont::load(Path::new(VGA_BIOS))?;
    let mut screens = Vec::new();
    for (name, picture) in [
        (
            "vivarium",
            Picture::from_png(png).map_err(|e| e.to_string())?,
        ),
        ("qemu", Picture::from_ppm(&ppm).map_err(|e| e.to_string())?),
    ] {
        let path = keep.join(format!("ready-{name}.png"));
        std::fs::write(&path, picture.to_png().map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let screen = TextScreen::read(&picture, &font, 9)
            .map_err(|e| format!("{name}'s ready screen: {e} (see {})", path.display()))?;
        screens.push(screen);
    }
    let (a, b) = (&screens[0], &screens[1]);
    if a.rows != b.rows {
        return Err(format!("{} rows against {}", a.rows, b.rows));
    }
    let differing: Vec<usize> = (0..a.rows).filter(|&r| a.line(r) != b.line(r)).collect();
    for &r in &differing {
        eprintln!(
            "bench memtest: row {r} differs:\n  vivarium: {}\n  qemu:     {}",
            a.line(r),
            b.line(r)
        );
    }
    Ok(differing)
}

/// The rig script: `ROUNDS` rounds, each booting both VMMs, the order alternating.
fn script(vivarium: &Path, check: &Path, iso_name: &str) -> String {
    let v = vivarium.display();
    let c = check.display();
    let carry = rig::CARRY_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
ISO="$VIVARIUM_RIG_FILES/{iso_name}"
{carry}
now_ms() {{ read up rest < /proc/uptime; echo "${{up%.*}}${{up#*.}}0"; }}
# ready NAME RUN START SHOT EXT: takes a picture with `SHOT FILE` as often as it can (at most
# every 250 ms) until one shows memtest's ready screen; reports the time since START at which
# that picture was asked for, and the median time a look took.
ready() {{
    name=$1; run=$2; start=$3; shot=$4; ext=$5
    n=0; : > looks
    while [ $n -lt 2000 ]; do
        n=$((n+1))
        at=$(now_ms)
        if $shot now.$ext && {c} --text {VGA_BIOS} now.$ext > now.txt 2>/dev/null \
            && grep -qF "Memtest86+ v" now.txt && grep -qF "to start testing" now.txt; then
            echo "VIVARIUM-RESULT ready_ms.$name.$run=$((at - start))"
            echo "VIVARIUM-RESULT look_ms.$name.$run=$(sort -n looks | sed -n "$(( ($(wc -l < looks) + 1) / 2 ))p")"
            cp now.$ext ready.$name.$ext
            return 0
        fi
        took=$(( $(now_ms) - at )); echo $took >> looks
        [ $took -lt 250 ] && usleep $(( (250 - took) * 1000 ))
    done
    echo "VIVARIUM-RIG-MARK $name never showed memtest's ready screen"
    cat now.txt
    return 1
}}
vivarium_shot() {{ {v} screenshot memtest "$1" > /dev/null 2>&1; }}
vivarium_side() {{
    start=$(now_ms)
    {v} start memtest > /dev/null || exit 11
    ready vivarium-seabios $1 $start vivarium_shot png || exit 12
    {v} stop --force memtest > /dev/null
}}
# qemu_shot FILE: a screendump, complete when the monitor has answered the next command.
qemu_shot() {{
    want=$(( $(grep -c "VM status" mon.log) + 1 ))
    rm -f "$1"
    printf 'screendump %s\ninfo status\n' "$1" >&3
    k=0
    while [ "$(grep -c "VM status" mon.log)" -lt $want ] && [ $k -lt 500 ]; do
        usleep 20000; k=$((k+1))
    done
    [ -s "$1" ]
}}
qemu_side() {{
    rm -f mon.in mon.out mon.log
    mkfifo mon.in mon.out
    start=$(now_ms)
    qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
        -no-user-config -bios {SEABIOS} -vga std -display none -no-reboot \
        -device virtio-scsi-pci,id=scsi \
        -drive file="$ISO",if=none,id=cd,media=cdrom,format=raw,readonly=on \
        -device scsi-cd,drive=cd,bootindex=1 -device virtio-rng-pci \
        -monitor pipe:mon > qemu.err 2>&1 &
    pid=$!
    cat mon.out > mon.log &
    reader=$!
    exec 3> mon.in
    ready qemu-pc-seabios $1 $start qemu_shot ppm || {{ cat qemu.err; exit 13; }}
    echo quit >&3
    exec 3>&-
    wait $pid; kill $reader 2>/dev/null
}}
{v} create memtest --iso "$ISO" --cpus 1 --memory {GUEST_MIB}M --network none \
    --display 1024x768 > create.out 2>&1 || {{ cat create.out; exit 10; }}
for run in $(seq 1 {ROUNDS}); do
    if [ $((run % 2)) -eq 0 ]; then vivarium_side $run; qemu_side $run
    else qemu_side $run; vivarium_side $run; fi
    echo "VIVARIUM-RIG-MARK round $run done"
done
carry vivarium ready.vivarium-seabios.png
gzip -c ready.qemu-pc-seabios.ppm > ready.qemu.ppm.gz
carry qemu ready.qemu.ppm.gz
exit 0
"#
    )
}
