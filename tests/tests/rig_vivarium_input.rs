//! Keyboard and mouse input reach a real Debian guest, inside the nested rig (real `/dev/kvm`
//! in a software-emulated machine), driven through the command line as a user would.
//!
//! One rig run, one boot: the guest's init listens on the PS/2 mouse's event device and
//! reads a line from tty1 (the console the keyboard types on). `vivarium mouse` moves the
//! mouse and presses its buttons, and the guest's `psmouse` driver reports exactly those
//! moves, presses and the wheel as `EV_REL`/`EV_KEY` events; `vivarium type` types a line of
//! every printable ASCII character (shifted and not) and `--key enter` ends it, and the
//! guest's `atkbd` and the kernel's US keymap turn it back into exactly that line. Typing
//! into the VM before it starts and after it has powered off fails with "not running".
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`.

use std::path::Path;

use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};

/// What `vivarium type` types: every printable ASCII character but the space at either end
/// (`read` drops those), in an order that mixes shifted and unshifted keys.
const TYPED: &str = "Hello, World! ~`1!2@3#4$5%6^7&8*9(0)-_=+[{]}\\|;:'\",<.>/? AbCxYz";

/// The mouse actions, and the `(type, code, value)` evdev events Linux reports for them.
const MOUSE_ACTIONS: &str = "move:7,-5 down:left move:3,2 up:left click:right wheel:-1";
const EV_KEY: u16 = 1;
const EV_REL: u16 = 2;
const REL_X: u16 = 0;
const REL_Y: u16 = 1;
const REL_WHEEL: u16 = 8;
const BTN_LEFT: u16 = 0x110;
const BTN_RIGHT: u16 = 0x111;
const EXPECTED_MOUSE: &[(u16, u16, i32)] = &[
    (EV_REL, REL_X, 7),
    (EV_REL, REL_Y, -5),
    (EV_KEY, BTN_LEFT, 1),
    (EV_REL, REL_X, 3),
    (EV_REL, REL_Y, 2),
    (EV_KEY, BTN_LEFT, 0),
    (EV_KEY, BTN_RIGHT, 1),
    (EV_KEY, BTN_RIGHT, 0),
    (EV_REL, REL_WHEEL, -1),
];

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
S="$VIVARIUM_HOME/vms/guest.vivm/logs/serial.log"
{wait_for}
$V create guest --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "console=ttyS0 panic=-1 vivarium.checks=input,input-echo" \
    --no-disk --cpus 1 --memory 256 --network none --display none || exit 10
$V type guest early
echo "VIVARIUM-RESULT type_before_start_exit=$?"
$V start guest || exit 11
wait_for "$S" VIVARIUM-GUEST-INPUT-READY || exit 12
echo "VIVARIUM-RIG-MARK input-ready"
$V mouse guest {MOUSE_ACTIONS}
echo "VIVARIUM-RESULT mouse_exit=$?"
$V type guest "$(cat "$VIVARIUM_RIG_FILES/typed.txt")" --key enter
echo "VIVARIUM-RESULT type_exit=$?"
wait_for "$S" VIVARIUM-GUEST-DONE
echo "VIVARIUM-RIG-MARK guest-done"
grep VIVARIUM-RESULT "$S"
n=0
while ! $V --json status guest | grep -q '"state":"stopped"' && [ $n -lt 60 ]; do
    sleep 1; n=$((n+1))
done
$V --json status guest | grep -q '"state":"stopped"' \
    || echo "VIVARIUM-RIG-MARK the guest did not stop within 60 s: $($V --json status guest)"
$V type guest late
echo "VIVARIUM-RESULT type_after_stop_exit=$?"
exit 0
"#
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// The `(type, code, value)` of each x86_64 `struct input_event` (a 16-byte `timeval`, then
/// `u16 type`, `u16 code`, `s32 value`), leaving out the `EV_SYN` frame ends, `EV_MSC`
/// scancodes, and the high-resolution wheel events some kernels add beside `REL_WHEEL`.
fn decode_events(bytes: &[u8]) -> Vec<(u16, u16, i32)> {
    assert_eq!(bytes.len() % 24, 0, "whole input_event records");
    bytes
        .chunks(24)
        .map(|e| {
            (
                u16::from_le_bytes([e[16], e[17]]),
                u16::from_le_bytes([e[18], e[19]]),
                i32::from_le_bytes([e[20], e[21], e[22], e[23]]),
            )
        })
        .filter(|&(kind, code, _)| {
            // EV_SYN = 0, EV_MSC = 4; REL_WHEEL_HI_RES = 11, REL_HWHEEL_HI_RES = 12.
            kind != 0 && kind != 4 && !(kind == EV_REL && (code == 11 || code == 12))
        })
        .collect()
}

#[test]
fn typed_text_and_mouse_moves_reach_a_real_guest() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_input", None) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let typed = scratch.path().join("typed.txt");
    std::fs::write(&typed, TYPED).unwrap();
    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(&typed, "typed.txt")
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG vivarium input: whole rig run {:.1} s",
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
    run.expect("type_before_start_exit", "11");
    run.expect("mouse_exit", "0");
    run.expect("type_exit", "0");
    run.expect("type_after_stop_exit", "11");
    let inputs = run.result("input_devices").unwrap_or_default();
    assert!(
        inputs.contains("AT_Translated_Set_2_keyboard"),
        "{inputs}\n{}",
        run.transcript()
    );

    // The keyboard: the guest read back exactly the line typed.
    let typed_back = run.result("input_typed").unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&unhex(&typed_back)),
        TYPED,
        "the line the guest read from tty1\n{}",
        run.transcript()
    );
    assert_eq!(typed_back, hex(TYPED.as_bytes()));

    // The mouse: exactly the moves, buttons and wheel sent.
    let mouse = unhex(&run.result("input_mouse").unwrap_or_default());
    assert_eq!(
        decode_events(&mouse),
        EXPECTED_MOUSE,
        "the PS/2 mouse's events in the guest\n{}",
        run.transcript()
    );
}

#[test]
fn input_events_decode() {
    let mut record = vec![0u8; 16];
    record.extend_from_slice(&EV_REL.to_le_bytes());
    record.extend_from_slice(&REL_Y.to_le_bytes());
    record.extend_from_slice(&(-5i32).to_le_bytes());
    let syn = vec![0u8; 24];
    let mut bytes = record.clone();
    bytes.extend_from_slice(&syn);
    assert_eq!(decode_events(&bytes), [(EV_REL, REL_Y, -5)]);
    assert_eq!(unhex(&hex(&bytes)), bytes);
}
