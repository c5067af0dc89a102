//! `cargo xtask bench boot`: Vivarium against QEMU booting the same guest, inside the nested
//! rig (the only real KVM on machines whose /dev/kvm is `kvm_pvm`).
//!
//! The same Debian kernel, busybox initramfs and 2 MiB raw virtio-blk disk boot under
//! Vivarium (`vivarium run`), QEMU `-M microvm` and QEMU `-M q35` (both `-enable-kvm`, direct
//! kernel boot, serial console), side by side: each round is one rig run that boots the three
//! once, in an order that rotates from round to round. For each boot the rig
//! measures, with its own clock, the time from starting the VMM process to the guest's
//! `VIVARIUM-GUEST-READY` line, and, at that moment, the VMM's peak RSS (VmHWM) and the
//! resident size of its guest-RAM mapping (the mapping whose size is the guest's memory): the
//! difference is what the VMM itself costs. Inside an emulated machine absolute times mean
//! little; the ratios are the result.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vivarium_e2e::rig::Rig;

use crate::bench::update_benchmarks_md;
use crate::util::{self, workspace_root};

const RUNS: usize = 5;
const GUEST_MIB: u64 = 256;
const VMMS: [&str; 3] = ["vivarium", "qemu-microvm", "qemu-q35"];

/// Runs the benchmark and records it in docs/BENCHMARKS.md.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let vivarium = util::build_release_vivarium()?;
    let target = util::target_dir();
    let fixtures = crate::fixtures::ensure()?;
    let scratch = target.join("bench-boot");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let disk = scratch.join("disk.img");
    std::fs::write(&disk, vec![0u8; 2 << 20]).map_err(|e| e.to_string())?;

    // One rig run per round, each booting every VMM once (in a rotating order): a long rig
    // run is more likely to hit the emulator's nested-virtualisation stall, which costs the
    // whole run; a round is rerun on its own.
    let mut results = Vec::new();
    let mut transcripts = String::new();
    for round in 1..=RUNS {
        let run = Rig::new(&fixtures, &script(&vivarium, round))
            .qemu()?
            .binary(&vivarium)
            .file(&disk, "disk.img")
            .timeout(Duration::from_secs(900))
            .run()?;
        if !run.succeeded() {
            return Err(format!(
                "round {round} of the benchmark failed in the rig\n{}",
                run.transcript()
            ));
        }
        eprintln!(
            "bench boot: round {round}/{RUNS} done ({:.0} s)",
            run.elapsed.as_secs_f64()
        );
        results.extend(run.results());
        transcripts.push_str(&run.transcript());
    }
    let mut boot: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut overhead: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut peak: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (key, value) in results {
        let Some((kind, vmm)) = key.split_once('.') else {
            continue;
        };
        let Some(vmm) = VMMS.iter().find(|v| vmm.starts_with(*v)) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match kind {
            "boot_ms" => boot.entry(vmm).or_default().push(value),
            "overhead_kib" => overhead.entry(vmm).or_default().push(value),
            "hwm_kib" => peak.entry(vmm).or_default().push(value),
            _ => {}
        }
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
    let viv_boot = median(&boot["vivarium"]);
    let mut table = String::from(
        "| VMM | median boot to marker | ratio to Vivarium | median peak RSS | median VMM overhead (peak RSS − guest RAM resident) |\n|---|---:|---:|---:|---:|\n",
    );
    for vmm in VMMS {
        let b = median(&boot[vmm]);
        table.push_str(&format!(
            "| {vmm} | {:.2} s | {:.2} | {:.1} MiB | {:.1} MiB |\n",
            b / 1000.0,
            b / viv_boot,
            median(&peak[vmm]) / 1024.0,
            median(&overhead[vmm]) / 1024.0,
        ));
    }
    let section = format!(
        "## Boot (nested rig)\n\n\
         Command: `cargo xtask bench boot` (release build). The Debian 12 kernel \
         (`linux-image-amd64`, bzImage), the busybox initramfs of the guest fixtures and a \
         2 MiB raw virtio-blk disk and a virtio-rng (Vivarium always has one, so the QEMU lines \
         add it), 1 vCPU, {GUEST_MIB} MiB, serial console, kernel command \
         line `console=ttyS0 quiet`; Vivarium (`vivarium run`), QEMU `-M microvm,pcie=on` and \
         QEMU `-M q35`, both `-enable-kvm -cpu host` with direct kernel boot; {RUNS} rounds, \
         each a rig run that boots the three once, in an order that rotates from round to \
         round. Boot time is from starting the VMM process to the guest's \
         `VIVARIUM-GUEST-READY` line, by the rig's clock. The rig is a software-emulated \
         machine with nested KVM, so only the ratios mean anything.\n\n\
         {table}\n\
         Vivarium boots in {:.2}x the time of QEMU microvm and {:.2}x that of QEMU q35. \
         Measured {}.\n",
        viv_boot / median(&boot["qemu-microvm"]),
        viv_boot / median(&boot["qemu-q35"]),
        util::today(),
    );
    println!("{section}");
    update_benchmarks_md(&root, "## Boot (nested rig)", &section)
}

/// The rig script of round `round`: one boot per VMM, the order rotated by the round.
fn script(vivarium: &Path, round: usize) -> String {
    let v = vivarium.display();
    let append = "console=ttyS0 quiet panic=-1 vivarium.then=acpi-wait";
    let qemu = format!(
        "qemu-system-x86_64 -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} -nodefaults \
         -no-user-config -display none -serial stdio -no-reboot \
         -kernel \"$VIVARIUM_GUEST_KERNEL\" -initrd \"$VIVARIUM_GUEST_INITRD\" \
         -append \"{append}\" -drive file=disk.img,format=raw,if=none,id=disk \
         -device virtio-blk-pci,drive=disk -device virtio-rng-pci"
    );
    let guest_kib = GUEST_MIB * 1024;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
cp "$VIVARIUM_RIG_FILES/disk.img" disk.img
{v} import guest disk.img --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "{append}" --cpus 1 --memory {GUEST_MIB} --network none --display none 2>/dev/null || exit 10
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
    hwm=$(awk '/^VmHWM/ {{print $2}}' /proc/$pid/status)
    rss=$(awk '/^VmRSS/ {{print $2}}' /proc/$pid/status)
    guest=$(awk '/^Size:/ {{s=$2}} /^Rss:/ {{ if (s=={guest_kib}) g+=$2 }} END {{print g+0}}' /proc/$pid/smaps)
    echo "VIVARIUM-RESULT boot_ms.$name.$run=$((end-start)) hwm_kib.$name.$run=$hwm overhead_kib.$name.$run=$((hwm-guest)) rss_kib.$name.$run=$rss"
    if [ "$name" = vivarium ]; then kill -INT $pid; else kill -TERM $pid; fi
    wait $pid
}}
run={round}
for slot in 0 1 2; do
    case $(( (slot + run) % 3 )) in
    0) measure vivarium $run {v} run guest ;;
    1) measure qemu-microvm $run {qemu} -M microvm,pcie=on,rtc=on ;;
    2) measure qemu-q35 $run {qemu} -M q35 ;;
    esac
done
exit 0
"#
    )
}
