//! A real Debian guest on Vivarium's user-mode network (virtio-net + passt), inside the
//! nested rig, started through the CLI as a user would:
//! - the guest's virtio-net card comes up as eth0 and gets an address and a router by DHCP
//!   from passt;
//! - it connects over TCP to a server the test runs on the rig's loopback (passt maps the
//!   router's address to the host), sends a line and reads the server's answer;
//! - a host port forwarded in the VM's configuration reaches a listener in the guest;
//! - `vivarium stop` ends the VM and its passt.
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`; passt must be installed on
//! the host (it is carried into the rig with its libraries).

use std::path::Path;

use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};

/// Host port forwarded to the guest's port 80.
const FORWARDED_PORT: u16 = 8080;
/// Port of the test's server on the rig's loopback.
const SERVER_PORT: u16 = 7777;
/// The guest's MAC address.
const MAC: &str = "52:54:00:12:34:56";

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
S="$VIVARIUM_HOME/vms/guest.vivm/logs/serial.log"
{wait_for}
# The server on the rig's loopback answers one line per connection.
printf '#!/bin/sh\nread -r line\necho "server-got-$line"\n' > /tmp/answer.sh
chmod +x /tmp/answer.sh
(while :; do nc -l -p {SERVER_PORT} -e /tmp/answer.sh; done) >/dev/null 2>&1 &
server=$!

checks="net,net-dhcp,net-tcp,net-listen"
$V create guest --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "console=ttyS0 quiet panic=-1 vivarium.checks=$checks vivarium.tcp_port={SERVER_PORT} vivarium.listen_port=80 vivarium.then=acpi-wait" \
    --no-disk --cpus 1 --memory 256 --network user \
    --forward tcp:{FORWARDED_PORT}:80 --display none || exit 10
$V set guest --mac {MAC} || exit 10
$V start guest || exit 11
wait_for "$S" VIVARIUM-GUEST-WAITING
grep VIVARIUM-RESULT "$S"
ps | grep -v grep | grep -q passt && echo "VIVARIUM-RESULT passt_running=yes"
reply=$(echo rig-hello | nc -w 10 127.0.0.1 {FORWARDED_PORT} | head -n 1)
echo "VIVARIUM-RESULT forwarded_reply=$(echo "$reply" | tr ' ' _)"
$V stop --timeout 30 guest
echo "VIVARIUM-RESULT stop_exit=$?"
# passt ends with the VM process (its parent-death signal), at its own pace.
n=0
while ps | grep -v grep | grep -q passt && [ $n -lt 40 ]; do usleep 500000; n=$((n+1)); done
if ps | grep -v grep | grep -q passt; then
    echo "VIVARIUM-RIG-MARK passt still runs 20 s after the VM stopped:"
    ps | grep -v grep | grep passt
else
    echo "VIVARIUM-RESULT passt_ended=yes"
fi
kill $server
tail -n 5 "$VIVARIUM_HOME/vms/guest.vivm/logs/vm.log"
grep -v "^$" "$VIVARIUM_HOME/vms/guest.vivm/logs/passt.log" | tail -n 20
exit 0
"#
    )
}

#[test]
fn a_debian_guest_gets_dhcp_reaches_the_host_and_serves_a_forwarded_port() {
    let Some(fixtures) = rig::fixtures_or_skip(
        "rig_vivarium_network",
        rig::find_program("passt")
            .is_none()
            .then(|| "passt is not installed".to_string()),
    ) else {
        return;
    };
    let passt = rig::find_program("passt").expect("passt");
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let mut rig = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .binary(&passt)
        .timeout(std::time::Duration::from_secs(600));
    // passt re-executes itself as passt.avx2 where the CPU has AVX2.
    if let Some(avx2) = rig::find_program("passt.avx2") {
        rig = rig.binary(avx2);
    }
    let run = rig.run().expect("the rig starts");
    loud(&format!(
        "RIG vivarium network: whole rig run {:.1} s",
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
    run.expect("net_ifaces", "eth0");
    let ip = run.result("net_ip").unwrap_or_default();
    assert!(
        ip != "none" && ip.contains('/'),
        "no DHCP address: {ip:?}\n{}",
        run.transcript()
    );
    let gateway = run.result("net_gw").unwrap_or_default();
    assert!(
        gateway != "none",
        "no router from DHCP\n{}",
        run.transcript()
    );
    run.expect(
        "net_tcp",
        &format!("server-got-guest-{}", MAC.replace(':', "")),
    );
    run.expect("net_listen", "ready");
    run.expect("passt_running", "yes");
    run.expect("forwarded_reply", "VIVARIUM-GUEST-SERVED_rig-hello");
    run.expect("stop_exit", "0");
    run.expect("passt_ended", "yes");
}
