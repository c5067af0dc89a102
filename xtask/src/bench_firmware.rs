//! `cargo xtask bench firmware`: an installed system booting through the BIOS, Vivarium
//! against QEMU, inside the nested rig.
//!
//! The GRUB-on-BIOS disk fixture (`vivarium_e2e::bios_disk`: GRUB's boot sector and core
//! image, an ext2 root with the Debian kernel and the busybox initramfs) boots under
//! Vivarium (`vivarium run` of a VM imported from it: SeaBIOS on its i440FX machine) and QEMU
//! `-M pc` with the same SeaBIOS image (`-bios`), both `-enable-kvm`, 1 vCPU, 256 MiB, the
//! disk on virtio-blk, no display (SeaBIOS's console on the serial port for both: QEMU with
//! `graphics=off`, which is what Vivarium's machine without a screen tells SeaBIOS), and a
//! virtio-rng (Vivarium always has one). Each round is one rig run booting both once, the
//! order alternating; the time is from starting the VMM process to the guest's
//! `VIVARIUM-GUEST-READY` line by the rig's clock. Only the ratio means anything in the rig.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vivarium_e2e::rig::Rig;

use crate::bench::update_benchmarks_md;
use crate::util::{self, workspace_root};

const RUNS: usize = 3;
const GUEST_MIB: u64 = 256;
const VMMS: [&str; 2] = ["vivarium-seabios", "qemu-pc-seabios"];
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// Runs the benchmark and records it in docs/BENCHMARKS.md.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let vivarium = util::build_release_vivarium()?;
    let fixtures = crate::fixtures::ensure()?;
    let disk = crate::fixtures::ensure_bios_disk(&fixtures)?;
    let mut boot: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut transcripts = String::new();
    for round in 1..=RUNS {
        let run = Rig::new(&fixtures, &script(&vivarium, round))
            .qemu()?
            .binary(&vivarium)
            .file(disk.path(), "bios-disk.raw")
            .timeout(Duration::from_secs(900))
            .run()?;
        if !run.succeeded() {
            return Err(format!(
                "round {round} of the benchmark failed in the rig\n{}",
                run.transcript()
            ));
        }
        eprintln!(
            "bench firmware: round {round}/{RUNS} done ({:.0} s)",
            run.elapsed.as_secs_f64()
        );
        for (key, value) in run.results() {
            let Some((kind, rest)) = key.split_once('.') else {
                continue;
            };
            let Some(vmm) = VMMS.iter().find(|v| rest.starts_with(*v)) else {
                continue;
            };
            if let (Ok(ms), "boot_ms") = (value.parse::<f64>(), kind) {
                boot.entry(vmm).or_default().push(ms);
            }
        }
        transcripts.push_str(&run.transcript());
    }
    for vmm in VMMS {
        if boot.get(vmm).map_or(0, Vec::len) < RUNS {
            return Err(format!(
                "{vmm} did not complete {RUNS} boots\n{transcripts}"
            ));
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let viv = median(&boot["vivarium-seabios"]);
    let qemu = median(&boot["qemu-pc-seabios"]);
    let all = |vmm: &str| {
        boot[vmm]
            .iter()
            .map(|ms| format!("{:.1}", ms / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let section = format!(
        "## Installed system through the BIOS (nested rig)\n\n\
         Command: `cargo xtask bench firmware` (release build). The GRUB-on-BIOS disk fixture \
         (`cargo xtask fixtures --bios-disk`: GRUB 2.06's boot sector and core image from \
         Debian's `grub-pc-bin`, an ext2 root with the Debian 12 kernel and the busybox \
         initramfs, GRUB's menu without a countdown) booted by Vivarium (`vivarium run`, SeaBIOS \
         on its i440FX machine) and by QEMU `-M pc,graphics=off -bios {SEABIOS}`, the same \
         Debian SeaBIOS 1.16, both with KVM, 1 vCPU, {GUEST_MIB} MiB, the disk on virtio-blk, \
         a virtio-rng, no display; {RUNS} rounds, each a rig run booting both once in \
         alternating order. Time from starting the VMM process to the guest's \
         `VIVARIUM-GUEST-READY` line, by the rig's clock.\n\n\
         | VMM | median start to marker | each round | ratio to QEMU |\n|---|---:|---|---:|\n\
         | Vivarium + SeaBIOS | {:.2} s | {} | {:.2} |\n\
         | QEMU -M pc + SeaBIOS | {:.2} s | {} | 1.00 |\n\n\
         Measured {}.\n",
        viv / 1000.0,
        all("vivarium-seabios"),
        viv / qemu,
        qemu / 1000.0,
        all("qemu-pc-seabios"),
        util::today(),
    );
    println!("{section}");
    update_benchmarks_md(
        &root,
        "## Installed system through the BIOS (nested rig)",
        &section,
    )
}

/// The rig script of round `round`: one boot per VMM, the order alternating by round.
fn script(vivarium: &Path, round: usize) -> String {
    let v = vivarium.display();
    let qemu = format!(
        "qemu-system-x86_64 -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
         -no-user-config -M pc,graphics=off -bios {SEABIOS} -display none -serial stdio \
         -no-reboot -drive file=qemu-disk.raw,format=raw,if=none,id=disk \
         -device virtio-blk-pci,drive=disk -device virtio-rng-pci"
    );
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
cp "$VIVARIUM_RIG_FILES/bios-disk.raw" qemu-disk.raw
{v} import guest "$VIVARIUM_RIG_FILES/bios-disk.raw" --cpus 1 --memory {GUEST_MIB} \
    --network none --display none 2>/dev/null || exit 10
now_ms() {{ read up rest < /proc/uptime; echo "${{up%.*}}${{up#*.}}0"; }}
measure() {{ # NAME RUN COMMAND...
    name=$1; run=$2; shift 2
    log=out.$name.$run
    : > $log
    start=$(now_ms)
    "$@" > $log 2>&1 &
    pid=$!
    n=0
    while ! grep -q VIVARIUM-GUEST-READY $log && [ $n -lt 6000 ]; do
        usleep 20000; n=$((n+1))
    done
    if ! grep -q VIVARIUM-GUEST-READY $log; then
        echo "VIVARIUM-RIG-MARK $name did not boot"; tail -n 20 $log
    fi
    end=$(now_ms)
    echo "VIVARIUM-RESULT boot_ms.$name.$run=$((end-start))"
    if [ "$name" = vivarium-seabios ]; then kill -INT $pid; else kill -TERM $pid; fi
    wait $pid
}}
run={round}
for slot in 0 1; do
    case $(( (slot + run) % 2 )) in
    0) measure vivarium-seabios $run {v} run guest ;;
    1) measure qemu-pc-seabios $run {qemu} ;;
    esac
done
exit 0
"#
    )
}
