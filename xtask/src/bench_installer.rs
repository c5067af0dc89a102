//! `cargo xtask bench installer`: from the Debian installer ISO to the installer's first screen
//! ("Select a language") on the display, Vivarium against QEMU, inside the nested rig.
//!
//! Both boot the installer ISO fixture's default entry (the text installer on the screen),
//! 1 vCPU, 1 GiB, no network, no disk. Vivarium: `vivarium create --iso ISO` (recognises the
//! ISO, extracts the installer's kernel and initrd) and `vivarium start` (direct kernel boot,
//! the ISO on virtio-scsi). QEMU: `-M pc -enable-kvm -cpu host -cdrom ISO -vga std`, SeaBIOS
//! and isolinux; the script presses Enter (HMP `sendkey ret` through `-monitor pipe:`) as soon
//! as a `screendump` shows isolinux's menu (a 640x480 picture that is not blank), as a
//! person would. The clock runs from the first command to the first picture of the
//! installer's first screen, by the rig's clock; both sides are watched the same way: a
//! picture every second (`vivarium screenshot`, QEMU's `screendump`) named by
//! `vivarium-screen-check`, the first screen being the first picture of newt's grey dialog on
//! blue that the next picture repeats (but for a blinking cursor). Each round is one rig run that boots both, in an order
//! that alternates.
//!
//! Under QEMU the installer does not stay in the mode `vga=788` asks for (800x600, 16 bits):
//! its initrd loads the `bochs` DRM driver for QEMU's standard VGA, which sets the preferred
//! mode of the EDID QEMU gives it, 1280x800 at 32 bits. Vivarium's VM therefore gets a
//! 1280x800 display, and the two first screens are compared pixel by pixel
//! ([`vivarium_e2e::screen::compare`]); the pictures are kept in
//! `target/bench-installer/` to be looked at.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use vivarium_e2e::rig::{self, Rig};
use vivarium_e2e::screen::{self, Comparison, Depth, Picture};

use crate::bench::update_benchmarks_md;
use crate::util::{self, workspace_root};

const RUNS: usize = 3;
const GUEST_MIB: u64 = 1024;
/// The screen both VMs show the installer on: QEMU's standard VGA's preferred mode.
const SCREEN: (u32, u32) = (1280, 800);
const VMMS: [&str; 2] = ["vivarium", "qemu-pc"];
const HEADING: &str = "## Installer ISO to its first screen (nested rig)";

/// Runs the benchmark and records it in docs/BENCHMARKS.md.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let vivarium = util::build_release_vivarium()?;
    let check = util::build_release_bin("vivarium-e2e", "vivarium-screen-check")?;
    let fixtures = crate::fixtures::ensure()?;
    let iso = crate::fixtures::ensure_installer_iso()?;
    let keep = util::target_dir().join("bench-installer");
    std::fs::create_dir_all(&keep).map_err(|e| format!("{}: {e}", keep.display()))?;

    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut menus = Vec::new();
    let mut comparisons = Vec::new();
    for round in 1..=RUNS {
        let run = Rig::new(&fixtures, &script(&vivarium, &check, round))
            .qemu()?
            .binary(&vivarium)
            .binary(&check)
            .file(iso.path(), "installer.iso")
            .memory_mib(3072)
            .timeout(Duration::from_secs(1800))
            .run()?;
        if !run.succeeded() {
            return Err(format!(
                "round {round} of the benchmark failed in the rig\n{}",
                run.transcript()
            ));
        }
        eprintln!(
            "bench installer: round {round}/{RUNS} done ({:.0} s)",
            run.elapsed.as_secs_f64()
        );
        for vmm in VMMS {
            let key = format!("first_screen_ms.{vmm}");
            let ms = run
                .result(&key)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("round {round}: no {key}\n{}", run.transcript()))?;
            times.entry(vmm).or_default().push(ms);
        }
        if let Some(ms) = run.result("menu_ms.qemu-pc").and_then(|v| v.parse().ok()) {
            menus.push(ms);
        }
        comparisons.push(compare_round(&run, round, &keep)?);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let viv = median(&times["vivarium"]);
    let qemu = median(&times["qemu-pc"]);
    let mut table = String::from(
        "| VMM | median ISO to \"Select a language\" | all runs | ratio to Vivarium |\n\
         |---|---:|---|---:|\n",
    );
    for vmm in VMMS {
        let all: Vec<String> = times[vmm]
            .iter()
            .map(|ms| format!("{:.1}", ms / 1000.0))
            .collect();
        table.push_str(&format!(
            "| {vmm} | {:.1} s | {} s | {:.2} |\n",
            median(&times[vmm]) / 1000.0,
            all.join(", "),
            median(&times[vmm]) / viv,
        ));
    }
    let shares: Vec<String> = comparisons
        .iter()
        .map(|c| format!("{:.2} %", c.identical_share() * 100.0))
        .collect();
    let (w, h) = SCREEN;
    let section = format!(
        "{HEADING}\n\n\
         Command: `cargo xtask bench installer` (release build). The Debian 12 installer ISO of \
         the fixtures (`cargo xtask fixtures --installer-iso`), its default entry (the text \
         installer on the screen), 1 vCPU, {GUEST_MIB} MiB, no network, no disk. Vivarium: \
         `vivarium create --iso ISO --cpus 1 --memory 1G --network none --no-disk --display \
         {w}x{h}` (recognises the ISO, extracts the installer's kernel and initrd) then \
         `vivarium start` (direct kernel boot, the ISO on virtio-scsi). QEMU: \
         `qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nic none \
         -display none -vga std -cdrom ISO -monitor pipe:mon` (SeaBIOS, isolinux's menu; the \
         script sends `sendkey ret` as soon as a `screendump` shows the menu, a median {:.1} s \
         after QEMU's start). Time from the first command to the first picture of \
         \"Select a language\", by the rig's clock, both screens watched the same way (a \
         picture a second, named by the e2e crate's `vivarium-screen-check`: newt's grey dialog \
         on blue, repeated by the next picture but for a blinking cursor). {RUNS} rounds, each a rig run booting both in \
         an alternating order. The rig is a software-emulated machine with nested KVM, so \
         only the ratio means anything.\n\n\
         {table}\n\
         Vivarium reaches the installer's first screen in {:.2}x the time of QEMU. Most of \
         QEMU's extra time is the firmware path: SeaBIOS reading the 8 MB kernel and 41 MB \
         initrd for isolinux through BIOS disk calls, which Vivarium skips by booting the \
         extracted kernel directly. Measured {}.\n\n\
         The two first screens, pixel by pixel (`vivarium_e2e::screen::compare`), \
         identical pixels in rounds 1 to {RUNS}: {}. {}. `vga=788` asks for 800x600 at 16 \
         bits, and SeaBIOS's VGA BIOS sets that mode, but the installer's initrd loads the \
         `bochs` DRM driver for QEMU's standard VGA, which switches to the preferred mode of \
         QEMU's EDID, {w}x{h} at 32 bits; so Vivarium runs with a {w}x{h} display here, and \
         both framebuffers hold the console palette's colours in 8 bits a channel. The \
         pictures are kept in `target/bench-installer/`.\n",
        median(&menus) / 1000.0,
        viv / qemu,
        util::today(),
        shares.join(", "),
        explain(&comparisons[0]),
    );
    println!("{section}");
    update_benchmarks_md(&root, HEADING, &section)
}

/// The pixel comparison of a round's two first screens; both are kept in `keep` as PNGs.
fn compare_round(run: &rig::RigRun, round: usize, keep: &Path) -> Result<Comparison, String> {
    let carried = run.carried();
    let png = carried
        .get("vivarium")
        .ok_or_else(|| format!("round {round}: Vivarium's first screen did not come out"))?;
    let gz = carried
        .get("qemu")
        .ok_or_else(|| format!("round {round}: QEMU's first screen did not come out"))?;
    let mut ppm = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut ppm)
        .map_err(|e| format!("round {round}: QEMU's screendump did not unpack: {e}"))?;
    let vivarium = Picture::from_png(png).map_err(|e| format!("round {round}: {e}"))?;
    let qemu = Picture::from_ppm(&ppm).map_err(|e| format!("round {round}: {e}"))?;
    for (name, picture) in [("vivarium", &vivarium), ("qemu", &qemu)] {
        let path = keep.join(format!("round-{round}-{name}.png"));
        std::fs::write(&path, picture.to_png().map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let comparison = screen::compare(&vivarium, &qemu, Depth::Rgb888)
        .map_err(|e| format!("round {round}: {e}"))?;
    eprintln!("bench installer: round {round}: first screens: {comparison}");
    Ok(comparison)
}

/// What the differences of a comparison are, in words.
fn explain(comparison: &Comparison) -> String {
    match comparison.differing_box {
        None => "In round 1 the pictures are the same".into(),
        Some((l, t, r, b)) => format!(
            "In round 1 the {} differing pixels lie within ({l},{t})-({r},{b}), in {} text \
             cells of 8x16",
            comparison.pixels - comparison.identical,
            comparison.differing_cells.len()
        ),
    }
}

/// The rig script of round `round`: both VMMs, the order alternating by the round.
fn script(vivarium: &Path, check: &Path, round: usize) -> String {
    let v = vivarium.display();
    let check = check.display();
    let carry = rig::CARRY_SH;
    let (w, h) = SCREEN;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
ISO="$VIVARIUM_RIG_FILES/installer.iso"
{carry}
now_ms() {{ read up rest < /proc/uptime; echo "${{up%.*}}${{up#*.}}0"; }}
# first_screen NAME START SHOT EXT: takes a picture a second with `SHOT FILE` until one is the
# installer's first screen and the next is the same but for a blinking cursor; reports the time of the first one since
# START and keeps it as first.NAME.EXT.
first_screen() {{
    name=$1; start=$2; shot=$3; ext=$4; seen=
    n=0
    while [ $n -lt 900 ]; do
        n=$((n+1))
        at=$(now_ms)
        if $shot now.$ext && {check} now.$ext | grep -q "newt=yes"; then
            if [ -n "$seen" ] && {check} --same now.$ext first.$name.$ext > same.out; then
                echo "VIVARIUM-RESULT first_screen_ms.$name=$((seen - start))"
                echo "VIVARIUM-RIG-MARK $name: $(cat same.out)"
                return 0
            fi
            [ -n "$seen" ] && echo "VIVARIUM-RIG-MARK $name: not yet settled: $(cat same.out)"
            cp now.$ext first.$name.$ext; seen=$at
        else
            seen=
            # Now and then, what the screen shows (for a person reading a run that hangs).
            [ $((n % 30)) -eq 0 ] && echo "VIVARIUM-RIG-MARK $name after $(( ($(now_ms) - start) / 1000 )) s: $({check} now.$ext 2>&1)"
        fi
        next=$((at + 1000 - $(now_ms)))
        [ $next -gt 0 ] && usleep $((next * 1000))
    done
    echo "VIVARIUM-RIG-MARK $name never showed the installer's first screen"
    {check} now.$ext
    return 1
}}
vivarium_shot() {{ {v} screenshot installer "$1" > /dev/null 2>&1; }}
vivarium_side() {{
    rm -rf "$VIVARIUM_HOME"
    start=$(now_ms)
    {v} create installer --iso "$ISO" --cpus 1 --memory {GUEST_MIB}M --network none --no-disk \
        --display {w}x{h} > create.out 2>&1 || {{ cat create.out; exit 10; }}
    {v} start installer > /dev/null || exit 11
    first_screen vivarium $start vivarium_shot png || exit 12
    {v} stop --force installer > /dev/null
    carry vivarium first.vivarium.png
}}
# qemu_shot FILE: a screendump, complete when the monitor has answered the next command.
qemu_shot() {{
    want=$(( $(grep -c "VM status" mon.log) + 1 ))
    rm -f "$1"
    printf 'screendump %s\ninfo status\n' "$1" >&3
    k=0
    while [ "$(grep -c "VM status" mon.log)" -lt $want ] && [ $k -lt 200 ]; do
        usleep 20000; k=$((k+1))
    done
    [ -s "$1" ]
}}
qemu_side() {{
    rm -f mon.in mon.out mon.log
    mkfifo mon.in mon.out
    start=$(now_ms)
    qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nic none \
        -display none -vga std -cdrom "$ISO" -monitor pipe:mon > qemu.err 2>&1 &
    pid=$!
    cat mon.out > mon.log &
    reader=$!
    exec 3> mon.in
    # isolinux's menu: vesamenu's 640x480 picture, not blank (QEMU starts with a blank
    # 640x480 screen before SeaBIOS's text mode).
    n=0
    until qemu_shot menu.ppm && {check} menu.ppm | grep -q "width=640 height=480 .*share=0\.[0-8]"; do
        n=$((n+1))
        [ $n -ge 300 ] && {{ echo "VIVARIUM-RIG-MARK isolinux's menu never came"; cat qemu.err; exit 13; }}
        usleep 200000
    done
    echo "VIVARIUM-RESULT menu_ms.qemu-pc=$(( $(now_ms) - start ))"
    echo "sendkey ret" >&3
    first_screen qemu-pc $start qemu_shot ppm || {{ cat qemu.err; exit 14; }}
    exec 3>&-
    kill -TERM $pid; wait $pid; kill $reader 2>/dev/null
    gzip -c first.qemu-pc.ppm > first.qemu-pc.ppm.gz
    carry qemu first.qemu-pc.ppm.gz
}}
if [ $(( {round} % 2 )) -eq 0 ]; then vivarium_side; qemu_side; else qemu_side; vivarium_side; fi
exit 0
"#
    )
}
