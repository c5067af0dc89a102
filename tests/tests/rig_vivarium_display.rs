//! The screen of a real Debian guest, inside the nested rig: the kernel console is drawn into
//! the display's video memory, and `vivarium screenshot` shows exactly what the guest's
//! `/dev/fb0` holds.
//!
//! One rig run, two guests booted one after the other (the guest ends in a shell on its serial
//! console, commands reach it through `vivarium console` with input from a pipe):
//! 1. `boot`: the bochs module is refused (`module_blacklist=bochs`), so the console is the
//!    kernel's built-in `vesafb` on the framebuffer the boot parameters announce (1024x768);
//! 2. `bochs`: the guest's init loads the `bochs` DRM driver, which sets the mode the kernel
//!    command line asks for (`video=Virtual-1:800x600`) through the adapter's registers: the
//!    host's view follows (the screenshot is 800x600).
//!
//! For each, the guest stops the cursor blinking, prints a marker line on `/dev/tty0`, waits,
//! and copies `/dev/fb0` (the visible rows) to its virtio disk; the script then takes a
//! screenshot. Both come out of the rig on its console (gzip and base64 lines), and the test
//! compares them pixel for pixel (blue, green, red; the fourth byte is padding). The
//! screenshots are kept in `target/test-screenshots/`.
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`.

use std::io::Read;
use std::path::Path;

use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};

/// The guests: name, extra kernel command line, the mode the screenshot must have.
const GUESTS: [(&str, &str, (u32, u32)); 2] = [
    ("boot", "module_blacklist=bochs", (1024, 768)),
    ("bochs", "video=Virtual-1:800x600", (800, 600)),
];

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let wait_for = rig::WAIT_FOR_SH;
    let carry = rig::CARRY_SH;
    let mut script = format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
{wait_for}
guest() {{ # VM COMMAND: type a command line on the guest's console
    printf '%s\n' "$2" | $V console "$1" > /dev/null 2>&1
}}
{carry}
"#
    );
    for (name, extra, _) in GUESTS {
        script.push_str(&format!(
            r#"
S="$VIVARIUM_HOME/vms/{name}.vivm/logs/serial.log"
$V create {name} --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "console=ttyS0 quiet panic=-1 consoleblank=0 vivarium.checks=fb vivarium.then=shell {extra}" \
    --disk-size 8M --cpus 1 --memory 256 --network none --display 1024x768 || exit 10
$V start {name} || exit 11
wait_for "$S" VIVARIUM-GUEST-DONE || exit 12
sleep 2
guest {name} 'echo 0 > /sys/class/graphics/fbcon/cursor_blink; printf "\033[2J\033[H" > /dev/tty0; echo "VIVARIUM SCREEN MARKER {name}: the console is visible" > /dev/tty0; sleep 3; m=$(head -n 1 /sys/class/graphics/fb0/modes); wh=${{m#*:}}; wh=${{wh%%p*}}; s=$(cat /sys/class/graphics/fb0/stride); dd if=/dev/fb0 of=/dev/vda bs=$s count=${{wh#*x}} 2>/dev/null; sync; echo FB""RESULT {name}_fb=$(tr " " _ < /sys/class/graphics/fb0/name) {name}_mode=$wh {name}_stride=$s {name}_line=whole'
# The whole line (its last field): the stride and the mode are read out of it next.
wait_for "$S" "FBRESULT {name}_fb=.* {name}_line=whole" || exit 13
$V screenshot {name} /tmp/{name}.png
echo "VIVARIUM-RESULT {name}_screenshot_exit=$?"
line=$(tr -d '\r' < "$S" | grep '^FBRESULT ' | tail -n 1)
echo "VIVARIUM-RESULT ${{line#FBRESULT }}"
stride=$(echo "$line" | sed 's/.*_stride=\([0-9]*\).*/\1/')
rows=$(echo "$line" | sed 's/.*_mode=[0-9]*x\([0-9]*\).*/\1/')
$V stop --force {name}
head -c $((stride * rows)) "$VIVARIUM_HOME/vms/{name}.vivm/disks/disk0.raw" | gzip -c > /tmp/{name}.fb.gz
carry {name}.png /tmp/{name}.png
carry {name}.fb.gz /tmp/{name}.fb.gz
"#
        ));
    }
    script.push_str("exit 0\n");
    script
}

#[test]
fn the_guest_console_is_on_the_screen_and_the_host_follows_its_mode_changes() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_display", None) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .timeout(std::time::Duration::from_secs(900))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG vivarium display: whole rig run {:.1} s",
        run.elapsed.as_secs_f64()
    ));
    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the rig\n{}",
        run.transcript()
    );
    assert!(
        run.succeeded(),
        "the rig script failed\n{}",
        run.transcript()
    );
    let files = run.carried();
    let results: Vec<String> = run
        .results()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    loud(&format!("RIG vivarium display: {}", results.join(" ")));
    // The kernel's own driver drives the boot framebuffer; the bochs driver replaces it.
    run.expect("boot_fb", "VESA_VGA");
    run.expect("bochs_fb", "bochs-drmdrmfb");
    for (name, _, (width, height)) in GUESTS {
        run.expect(&format!("{name}_screenshot_exit"), "0");
        run.expect(&format!("{name}_mode"), &format!("{width}x{height}"));
        let stride: usize = run
            .result(&format!("{name}_stride"))
            .and_then(|s| s.parse().ok())
            .expect("the guest reported its stride");
        let png = files
            .get(&format!("{name}.png"))
            .unwrap_or_else(|| panic!("no screenshot of {name} came out\n{}", run.transcript()));
        let kept = rig::screenshot_dir().join(format!("rig-{name}.png"));
        std::fs::write(&kept, png).expect("keep the screenshot");
        let shot = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .expect("the screenshot is a PNG")
            .to_rgba8();
        assert_eq!(
            shot.dimensions(),
            (width, height),
            "{name}: the host's view has the guest's mode"
        );
        let mut fb = Vec::new();
        flate2::read::GzDecoder::new(
            &files
                .get(&format!("{name}.fb.gz"))
                .unwrap_or_else(|| panic!("no fb0 dump of {name} came out"))[..],
        )
        .read_to_end(&mut fb)
        .expect("the fb0 dump is gzip");
        std::fs::write(rig::screenshot_dir().join(format!("rig-{name}.fb0")), &fb)
            .expect("keep the fb0 dump");
        assert_eq!(fb.len(), stride * height as usize, "{name}: fb0 dump size");
        let mut lit = 0usize;
        for y in 0..height {
            for x in 0..width {
                let p = shot.get_pixel(x, y).0;
                let at = y as usize * stride + x as usize * 4;
                let guest = [fb[at + 2], fb[at + 1], fb[at]];
                assert_eq!(
                    [p[0], p[1], p[2]],
                    guest,
                    "{name}: the screenshot and /dev/fb0 differ at ({x}, {y}); see {}",
                    kept.display()
                );
                lit += usize::from(guest != [0, 0, 0]);
            }
        }
        // The marker line (and whatever else is on the console) is drawn: not a black screen.
        assert!(lit > 500, "{name}: only {lit} pixels are lit");
        loud(&format!(
            "RIG vivarium display: {name}: {width}x{height}, {lit} pixels lit, screenshot in {}",
            kept.display()
        ));
    }
}
