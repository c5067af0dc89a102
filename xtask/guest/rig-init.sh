#!/bin/sh
# Vivarium nested test rig: the /init of the outer machine (busybox sh).
#
# The rig is a machine run by QEMU's software emulator (TCG) with real hardware
# virtualisation inside (see vivarium_e2e::rig), in one of two architectures:
# - x86_64: an emulated AMD CPU; the Debian kernel's kvm_amd module gives it a genuine
#   /dev/kvm. Built by vivarium_e2e::rig into rig.cpio.
# - arm64: QEMU's virt machine with EL2 (virtualization=on) and a GICv3; Debian's arm64
#   kernel has KVM built in. The fixtures' outer-initramfs.cpio, with the run's own archive
#   appended by vivarium_e2e::rig.
# Either way a VMM run inside it boots real guest kernels of that architecture.
#
# Layout of the outer initramfs:
#   /rig/modules/*.ko, /rig/modules/load-order   the rig's modules, in dependency order
#   /rig/script.sh                                the script under test (run with sh)
#   /rig/fixtures/                                guest fixtures: the kernel (vmlinuz on x86,
#                                                 Image on arm64) and guest-initramfs.cpio.gz
#   /rig/files/                                   files the caller carried in
#   carried binaries, their libraries and data at their host paths (an arm64 program's
#   libraries at their Debian arm64 paths)
#
# Protocol on the console (ttyS0 on x86, ttyAMA0 on arm64), each marker at the start of its
# own line:
#   VIVARIUM-RIG-READY kvm=yes|no   modules loaded; whether /dev/kvm exists
#   ...                             whatever the script prints (its stdout and stderr)
#   VIVARIUM-RIG-EXIT <code>        the script's exit code; the machine powers off next
#   <VIVARIUM-RIG-ALIVE>            every 5 s, anywhere (no line ending): the machine runs
#
# The script runs in /rig/work (a tmpfs) with PATH set and these variables:
#   VIVARIUM_GUEST_KERNEL, VIVARIUM_GUEST_INITRD   the guest fixtures
#   VIVARIUM_RIG_FILES                              /rig/files

/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /run /var/tmp
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/bin
export HOME=/tmp TMPDIR=/tmp

# Leave the initramfs for a tmpfs root first: the kernel's rootfs cannot be pivoted away
# from, and programs that sandbox themselves with pivot_root (passt) refuse to run on it.
if [ ! -e /.vivarium-rig-root ]; then
    mkdir -p /newroot
    mount -t tmpfs -o size=90% tmpfs /newroot
    for entry in /*; do
        case "$entry" in
        /newroot | /proc | /sys | /dev) ;;
        *) cp -a "$entry" /newroot/ ;;
        esac
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev
    : >/newroot/.vivarium-rig-root
    exec switch_root /newroot /init
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /rig/work
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
exec </dev/null >/dev/console 2>&1

# kvm_amd without virtual GIF: under the software emulator, nested guests with vGIF now and
# then left the emulated CPU halted with an interrupt pending, freezing the whole rig.
while read -r module; do
    case "$module" in
        kvm_amd.ko) insmod "/rig/modules/$module" vgif=0 || echo "rig: could not load $module" ;;
        *) insmod "/rig/modules/$module" || echo "rig: could not load $module" ;;
    esac
done </rig/modules/load-order

if [ -c /dev/kvm ]; then
    echo "VIVARIUM-RIG-READY kvm=yes"
else
    echo "VIVARIUM-RIG-READY kvm=no"
    dmesg | grep -i -e kvm -e svm | tail -n 5
fi

# Loopback, and a dummy interface with a default route: user-mode networking (passt) models
# the guest's network on the host's default route, and servers a test starts listen on lo.
ip link set lo up
if ip link add vivarium0 type dummy 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev vivarium0
    ip link set vivarium0 up
    ip route add default via 10.0.2.2 dev vivarium0
fi

# Heartbeat: the host side takes a machine that stops saying this for long as stalled (the
# token has no line ending; the reader removes it from whatever line it lands in).
(while :; do sleep 5; printf '<VIVARIUM-RIG-ALIVE>'; done) &

if [ -e /rig/fixtures/vmlinuz ]; then
    export VIVARIUM_GUEST_KERNEL=/rig/fixtures/vmlinuz
else
    export VIVARIUM_GUEST_KERNEL=/rig/fixtures/Image
fi
export VIVARIUM_GUEST_INITRD=/rig/fixtures/guest-initramfs.cpio.gz
export VIVARIUM_RIG_FILES=/rig/files
cd /rig/work
sh /rig/script.sh
echo "VIVARIUM-RIG-EXIT $?"
sync
poweroff -f
while true; do sleep 3600; done
