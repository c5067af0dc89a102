#!/bin/sh
# Vivarium guest fixture: the /init of guest-initramfs.cpio.gz (busybox sh).
#
# Built into the initramfs by `cargo xtask fixtures` (vivarium_e2e::fixtures). Boot the fixture
# kernel with this initramfs and `console=ttyS0` (or hvc0); everything is reported as lines on
# the console.
#
# Protocol (each marker at the start of its own line):
#   VIVARIUM-GUEST-READY              /proc, /sys, /dev are mounted and the drivers are loaded
#   VIVARIUM-RESULT <key>=<value>     one line per check, in the order the checks were named
#   VIVARIUM-GUEST-DONE               all checks ran; the final action comes next
#   VIVARIUM-GUEST-MARK <text>        a wait gave up (what it awaited); the checks go on
#
# A check never reads what the kernel sets up asynchronously (device nodes, input devices,
# a process's open files) once and reports whatever is there: it waits, with a bound, for
# exactly what it needs, and says so with a mark when the bound runs out.
#
# Kernel command line parameters (all optional):
#   vivarium.checks=a,b,c   checks to run, in order (default: none). Known checks:
#     uptime       uptime_s=<seconds since boot, from /proc/uptime>
#     cpus         cpus=<online CPUs>
#     mem          mem_kib=<MemTotal in KiB>
#     blk-sha256   blk_sha256=<sha256 of the first blk_len bytes of /dev/<blk_dev>>
#     blk-size     blk_bytes=<size of /dev/<blk_dev> in bytes>
#     blk-write    blk_write=ok|mismatch|error: writes 512 bytes of a known pattern at byte
#                  blk_write_off of /dev/<blk_dev> with O_DIRECT, reads them back with O_DIRECT
#                  (pattern: the line "VIVARIUM-PATTERN <offset>" padded with '.' to 511 bytes,
#                  then a newline)
#     blk-ro       blk_ro=<errno name>|writable: tries to write /dev/<ro_dev>; a read-only disk
#                  must answer EROFS, EPERM, EACCES or EIO
#     rng          rng_bytes=<bytes read from /dev/hwrng within 10 s, 64 asked>
#                  rng_source=<the kernel's current hwrng or none>
#     net          net_ifaces=<network interfaces but lo, comma separated, or none>
#     net-dhcp     net_ip=<IPv4 address/prefix eth0 got by DHCP, or none>
#                  net_gw=<the router DHCP named, or none>; configures eth0 and the route
#     net-tcp      net_tcp=<the line a server answered>: connects to the router (passt maps
#                  it to the host's loopback) on port tcp_port, sends "guest-<mac>", reads a line
#     net-listen   net_listen=ready: serves TCP port listen_port in the background, answering
#                  every connection with "VIVARIUM-GUEST-SERVED <what it read>" (for forwards)
#     cdrom-sha256 cdrom_sha256=<sha256 of the first cd_len bytes of /dev/sr0>
#     input        input_devices=<names of the input devices, comma separated, spaces as _>,
#                  once every port of the i8042 has its device (psmouse probes the mouse
#                  after its module loaded, asynchronously)
#     input-echo   listens on the PS/2 mouse's /dev/input/event* and opens tty1 (the console
#                  the keyboard types on), prints VIVARIUM-GUEST-INPUT-READY, reads one line
#                  from tty1, then reports input_typed=<hex of the line> and
#                  input_mouse=<hex of the input_event records the mouse sent meanwhile>
#                  (every one of them: reported once the listener has read them all)
#     console-echo prints VIVARIUM-GUEST-CONSOLE-READY, reads one line from the console (the
#                  serial port: what `vivarium console` types), then reports
#                  console_typed=<hex of the line>
#     fb           fb=<name of /dev/fb0's driver or none>
#     rtc          rtc_epoch=<seconds since the epoch by /dev/rtc0, or none>
#                  rtc_driver=<the driver of rtc0, or none>
#     virtio       virtio_ids=<virtio device ids present, comma separated, or none>
#     dmesg-blk    dmesg_bytes=<size>: writes the kernel log to /dev/<blk_dev> (for comparing
#                  boots; add `initcall_debug log_buf_len=4M` to the command line for initcall
#                  times; the serial console is too slow for that much text)
#     an unknown check gives <check>=unknown-check
#   vivarium.blk_dev=vda    block device of blk-sha256, blk-size and blk-write
#   vivarium.blk_len=N      bytes hashed by blk-sha256 (default 1048576)
#   vivarium.blk_write_off=N  byte offset of blk-write, a multiple of 512 (default 65536)
#   vivarium.ro_dev=vda     block device of blk-ro
#   vivarium.cd_len=N       bytes hashed by cdrom-sha256 (default 2048)
#   vivarium.tcp_port=N     port of net-tcp (default 7777)
#   vivarium.listen_port=N  port of net-listen (default 80)
#   vivarium.then=ACTION    what to do at the end (default poweroff):
#     poweroff   power off at once (poweroff -f)
#     reboot     reboot at once (reboot -f)
#     acpi-wait  print VIVARIUM-GUEST-WAITING, then power off when the ACPI power button is
#                pressed (busybox acpid runs /etc/acpi/PWRF/00000080 on KEY_POWER)
#     shell      an interactive shell on the console

/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /run /var/log
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

# Drivers, in dependency order; a driver without its device loads fine and stays idle.
while read -r module; do
    insmod "/lib/modules/$module" 2>/dev/null
done </lib/modules/load-order

param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
        "vivarium.$1="*) echo "${word#*=}"; return ;;
        esac
    done
    echo "$2"
}

result() {
    echo "VIVARIUM-RESULT $1=$2"
}

# The errno name of a failed write, from busybox's message.
errno_name() {
    case "$1" in
    *"Read-only file system"*) echo EROFS ;;
    *"Operation not permitted"*) echo EPERM ;;
    *"Permission denied"*) echo EACCES ;;
    *"I/O error"*) echo EIO ;;
    *"No such"*) echo ENOENT ;;
    *) echo "other:$(echo "$1" | tr ' ' '_')" ;;
    esac
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds, for at most
# SECONDS; otherwise prints a mark saying what it awaited, and fails.
wait_until() {
    wait_limit=$(($1 * 10))
    wait_what=$2
    shift 2
    wait_tries=0
    until "$@"; do
        wait_tries=$((wait_tries + 1))
        if [ "$wait_tries" -ge "$wait_limit" ]; then
            echo "VIVARIUM-GUEST-MARK gave up waiting $((wait_limit / 10)) s for $wait_what"
            return 1
        fi
        usleep 100000
    done
}

# Waits for a device node (drivers probe asynchronously).
wait_dev() {
    wait_until 20 "$1" [ -e "$1" ]
}

# Whether every port of the i8042 has the input device of its driver (atkbd, psmouse).
serio_ports_ready() {
    for port in /sys/bus/serio/devices/serio*; do
        [ -e "$port" ] || continue
        ls "$port/input" 2>/dev/null | grep -q '^input' || return 1
    done
}

# Whether process $1 has file $2 open.
has_open() {
    ls -l "/proc/$1/fd" 2>/dev/null | grep -q "$2"
}

# Whether process $1 sleeps in a read of an input device (so it has read every event queued).
reading_input() {
    case "$(cat "/proc/$1/wchan" 2>/dev/null)" in
    *evdev_read*) return 0 ;;
    *) return 1 ;;
    esac
}

pattern() {
    printf 'VIVARIUM-PATTERN %s' "$1" | dd bs=511 conv=sync 2>/dev/null | tr '\000' '.'
    echo
}

check_blk_write() {
    dev="/dev/$(param blk_dev vda)"
    off=$(param blk_write_off 65536)
    wait_dev "$dev"
    pattern "$off" >/tmp/pattern
    if ! dd if=/tmp/pattern of="$dev" bs=512 seek=$((off / 512)) count=1 \
        oflag=direct conv=notrunc 2>/tmp/err; then
        result blk_write "error:$(errno_name "$(cat /tmp/err)")"
        return
    fi
    dd if="$dev" of=/tmp/back bs=512 skip=$((off / 512)) count=1 iflag=direct 2>/dev/null
    if cmp -s /tmp/pattern /tmp/back; then
        result blk_write ok
    else
        result blk_write mismatch
    fi
}

check_blk_ro() {
    dev="/dev/$(param ro_dev vda)"
    wait_dev "$dev"
    if echo x | dd of="$dev" bs=512 count=1 conv=sync,fsync oflag=direct 2>/tmp/err; then
        result blk_ro writable
    else
        result blk_ro "$(errno_name "$(cat /tmp/err)")"
    fi
}

check_rng() {
    wait_dev /dev/hwrng
    bytes=$(timeout 10 dd if=/dev/hwrng bs=64 count=1 iflag=fullblock 2>/dev/null | wc -c)
    result rng_bytes "$bytes"
    source=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
    result rng_source "${source:-none}"
}

list_or_none() {
    list=$(echo $1 | tr ' ' ',')
    echo "${list:-none}"
}

check_input() {
    wait_until 10 "the devices of the i8042's ports" serio_ports_ready
    names=""
    for name in /sys/class/input/input*/name; do
        [ -e "$name" ] && names="$names $(tr ' ' '_' <"$name")"
    done
    result input_devices "$(list_or_none "$names")"
}

mouse_event_device() {
    for dev in /sys/class/input/event*; do
        case "$(cat "$dev/device/name" 2>/dev/null)" in
        *Mouse*) mouse="/dev/input/${dev##*/}"; return 0 ;;
        esac
    done
    return 1
}

check_input_echo() {
    mouse=""
    wait_until 10 "the PS/2 mouse's event device" mouse_event_device && wait_dev "$mouse"
    cat "$mouse" >/tmp/mouse-events 2>/dev/null &
    reader=$!
    # Announce only once the reader listens and tty1 is open, so that no early event or key
    # is lost.
    wait_until 5 "the mouse's reader to listen" has_open "$reader" /dev/input/event
    exec 3</dev/tty1
    echo VIVARIUM-GUEST-INPUT-READY
    IFS= read -r line <&3
    exec 3<&-
    # The mouse moved before the keys came: its events are queued, but the reader may not
    # have written them all yet.
    wait_until 5 "the mouse's reader to read every event" reading_input "$reader"
    kill "$reader" 2>/dev/null
    result input_typed "$(printf '%s' "$line" | od -An -v -tx1 | tr -d ' \n')"
    result input_mouse "$(od -An -v -tx1 /tmp/mouse-events | tr -d ' \n')"
}

check_virtio() {
    ids=""
    for id in /sys/bus/virtio/devices/*/device; do
        [ -e "$id" ] && ids="$ids $(($(cat "$id")))"
    done
    result virtio_ids "$(list_or_none "$ids")"
}

check_net() {
    ifaces=""
    for iface in /sys/class/net/*; do
        name=${iface##*/}
        [ -e "$iface" ] && [ "$name" != lo ] && ifaces="$ifaces $name"
    done
    result net_ifaces "$(list_or_none "$ifaces")"
}

check_net_dhcp() {
    cat >/tmp/udhcpc.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    echo "$ip/${mask:-24} ${router%% *}" >/tmp/dhcp-lease
    ;;
esac
SCRIPT
    chmod +x /tmp/udhcpc.sh
    wait_dev /sys/class/net/eth0
    ip link set lo up
    ip link set eth0 up
    rm -f /tmp/dhcp-lease
    udhcpc -i eth0 -n -q -t 10 -T 2 -s /tmp/udhcpc.sh >/dev/null 2>&1
    if [ -s /tmp/dhcp-lease ]; then
        read -r addr gw </tmp/dhcp-lease
        result net_ip "$addr"
        result net_gw "$gw"
    else
        result net_ip none
        result net_gw none
        result net_counters "rx=$(cat /sys/class/net/eth0/statistics/rx_packets),tx=$(cat /sys/class/net/eth0/statistics/tx_packets),operstate=$(cat /sys/class/net/eth0/operstate)"
    fi
}

check_net_tcp() {
    gw=none
    [ -s /tmp/dhcp-lease ] && read -r _ gw </tmp/dhcp-lease
    mac=$(tr -d : </sys/class/net/eth0/address 2>/dev/null)
    reply=$(echo "guest-$mac" | timeout 30 nc -w 10 "$gw" "$(param tcp_port 7777)" 2>&1 | head -n 1)
    result net_tcp "$(echo "${reply:-none}" | tr ' ' _)"
}

check_net_listen() {
    printf '#!/bin/sh\nread -r line\necho "VIVARIUM-GUEST-SERVED $line"\n' >/tmp/serve.sh
    chmod +x /tmp/serve.sh
    (while :; do nc -l -p "$(param listen_port 80)" -e /tmp/serve.sh; done) >/dev/null 2>&1 &
    result net_listen ready
}

run_check() {
    case "$1" in
    uptime) result uptime_s "$(cut -d' ' -f1 /proc/uptime)" ;;
    cpus) result cpus "$(grep -c ^processor /proc/cpuinfo)" ;;
    mem) result mem_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" ;;
    blk-sha256)
        dev="/dev/$(param blk_dev vda)"
        wait_dev "$dev"
        sum=$(head -c "$(param blk_len 1048576)" "$dev" | sha256sum)
        result blk_sha256 "${sum%% *}"
        ;;
    blk-size)
        wait_dev "/dev/$(param blk_dev vda)"
        result blk_bytes "$(blockdev --getsize64 "/dev/$(param blk_dev vda)" 2>/dev/null)"
        ;;
    blk-write) check_blk_write ;;
    blk-ro) check_blk_ro ;;
    rng) check_rng ;;
    net) check_net ;;
    net-dhcp) check_net_dhcp ;;
    net-tcp) check_net_tcp ;;
    net-listen) check_net_listen ;;
    cdrom-sha256)
        wait_dev /dev/sr0
        sum=$(head -c "$(param cd_len 2048)" /dev/sr0 | sha256sum)
        result cdrom_sha256 "${sum%% *}"
        ;;
    input) check_input ;;
    input-echo) check_input_echo ;;
    console-echo)
        echo VIVARIUM-GUEST-CONSOLE-READY
        IFS= read -r line
        result console_typed "$(printf '%s' "$line" | od -An -v -tx1 | tr -d ' \n')"
        ;;
    fb) result fb "$(cat /sys/class/graphics/fb0/name 2>/dev/null || echo none)" ;;
    virtio) check_virtio ;;
    dmesg-blk)
        dev="/dev/$(param blk_dev vda)"
        wait_dev "$dev"
        dmesg > /tmp/dmesg
        dd if=/tmp/dmesg of="$dev" conv=fsync 2>/dev/null
        result dmesg_bytes "$(wc -c < /tmp/dmesg)"
        ;;
    rtc)
        result rtc_epoch "$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null || echo none)"
        result rtc_driver "$(basename "$(readlink /sys/class/rtc/rtc0/device/driver 2>/dev/null)" 2>/dev/null || echo none)"
        ;;
    *) result "$1" unknown-check ;;
    esac
}

acpi_wait() {
    mkdir -p /etc/acpi/PWRF
    printf '#!/bin/sh\necho VIVARIUM-GUEST-POWER-BUTTON >/dev/console\npoweroff -f\n' \
        >/etc/acpi/PWRF/00000080
    chmod +x /etc/acpi/PWRF/00000080
    acpid -f -c /etc/acpi -l /dev/null &
    # Announce the wait only once acpid listens, so that an early press is not lost.
    wait_until 5 "acpid to listen" has_open "$!" /dev/input/event
    echo VIVARIUM-GUEST-WAITING
    while true; do sleep 3600; done
}

echo VIVARIUM-GUEST-READY
for check in $(param checks "" | tr ',' ' '); do
    run_check "$check"
done
echo VIVARIUM-GUEST-DONE

case "$(param then poweroff)" in
reboot) reboot -f ;;
acpi-wait) acpi_wait ;;
shell) exec setsid cttyhack sh ;;
*) poweroff -f ;;
esac
# poweroff -f returns only if the machine could not be switched off.
while true; do sleep 3600; done
