#!/bin/busybox sh
# /init of the tools/vmrun guest (busybox sh, PID 1).  Loads the modules,
# mounts the host root read-only over 9p with fresh proc/sys/dev/tmpfs on top,
# the writable share at its host path and the control share at /run/vmrun,
# then chroots into the host root to run tools/vm/guest_exec.py, which runs
# the command and writes its exit status into the control share.
# Other modules load on demand: the kernel's modprobe helper chroots into the
# host root and runs its modprobe over the cached kernel's module tree.
# Nothing here comes from the command line: paths are read from files in the
# control share and always used quoted.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "vmrun-init: $*" >/dev/console
    sync
    poweroff -f
}

for m in /lib/modules/*.ko; do
    insmod "$m" || fail "insmod $m failed"
done

P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9" ctl /ctl || fail "cannot mount the control share"
R=/mnt/root
mount -t 9p -o "$P9,ro,cache=loose" hostroot "$R" || fail "cannot mount the host root"
mount -t proc proc "$R/proc" || fail "cannot mount $R/proc"
mount -t sysfs sysfs "$R/sys" || fail "cannot mount $R/sys"
mount -t devtmpfs devtmpfs "$R/dev" || fail "cannot mount $R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
ln -sf /proc/self/fd "$R/dev/fd"
ln -sf /proc/self/fd/0 "$R/dev/stdin"
ln -sf /proc/self/fd/1 "$R/dev/stdout"
ln -sf /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || fail "cannot mount $R/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/run" || fail "cannot mount $R/run"
mkdir -p "$R/run/lock" "$R/run/vmrun"
mount --move /ctl "$R/run/vmrun" || fail "cannot move the control share"

SHARE=$(cat "$R/run/vmrun/share") || fail "no share path"
PY=$(cat "$R/run/vmrun/python") || fail "no python path"
LAUNCHER=$(cat "$R/run/vmrun/launcher") || fail "no launcher path"
# The share's mount point exists on the host root, or (under /tmp or /run)
# is created in the tmpfs just mounted there.
mkdir -p "$R$SHARE" 2>/dev/null
mount -t 9p -o "$P9" share "$R$SHARE" || fail "cannot mount the share at $SHARE"
KROOT=$(cat "$R/run/vmrun/kroot")
KVER=$(cat "$R/run/vmrun/kver")
if [ -f "$R$KROOT/lib/modules/$KVER/modules.dep" ]; then
    echo "$KROOT" >/kroot
    echo /bin/modprobe-guest >/proc/sys/kernel/modprobe
fi
hostname dmthin-vm

chroot "$R" "$PY" -I -S "$LAUNCHER" /run/vmrun
sync
poweroff -f
