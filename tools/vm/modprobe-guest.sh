#!/bin/sh
# The kernel's modprobe helper in the tools/vmrun guest (/init writes its path
# to /proc/sys/kernel/modprobe): runs the host's modprobe inside the host root
# over the guest kernel's module tree, unpacked in vmrun's cache (/kroot).
exec chroot /mnt/root /sbin/modprobe -d "$(cat /kroot)" "$@"
