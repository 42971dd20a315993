"""Kernel and initramfs for tools/vmrun (stdlib only), cached.

The kernel is Debian's current linux-image-amd64 image, fetched with apt-get
download + dpkg -x (nothing is installed) and booted through its PVH entry;
the initramfs holds a static busybox, init.sh, modprobe-guest.sh and the
modules of modules.txt with their dependencies.  Both live in the cache
($DMTHIN_VM_CACHE or ~/.cache/dmthin-vm) and are rebuilt when an input
changes.
"""
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib

VMDIR = os.path.dirname(os.path.realpath(__file__))
INIT = os.path.join(VMDIR, "init.sh")
MODPROBE = os.path.join(VMDIR, "modprobe-guest.sh")
MODULES = os.path.join(VMDIR, "modules.txt")
BUSYBOX = "/bin/busybox"

#: bump when the initramfs layout changes, so cached images are rebuilt
INITRD_FORMAT = "1"


class VmError(Exception):
    """A problem vmrun reports in one line and exits 125 for."""


def log(msg):
    """One line on stderr, prefixed."""
    print("vmrun: " + msg, file=sys.stderr, flush=True)


def capture(argv, **kw):
    """Run *argv*; return (exit status, stdout+stderr text)."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, **kw)
    except FileNotFoundError:
        return 127, "%s: not found" % argv[0]
    return p.returncode, p.stdout.decode(errors="replace")


def check(argv, what, **kw):
    """Run *argv*; raise VmError naming *what* if it fails.  Returns output."""
    rc, out = capture(argv, **kw)
    if rc != 0:
        tail = out.strip().splitlines()[-3:]
        raise VmError("%s failed (%s exited %d): %s" % (what, argv[0], rc, " | ".join(tail)))
    return out


def apt_update():
    """apt-get update (root only)."""
    log("apt-get update")
    check(["apt-get", "update"], "apt-get update")


# ---------------------------------------------------------------- kernel

def cache_dir():
    """The cache directory (created, 0700)."""
    path = os.environ.get("DMTHIN_VM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dmthin-vm")
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.path.realpath(path).split("/")[1] in ("tmp", "run"):
        log("warning: cache %s is hidden in the guest (fresh tmpfs on /tmp and /run): "
            "modules outside tools/vm/modules.txt will not load on demand" % path)
    return path


def apt_stamp():
    """A string that changes when apt's package lists change."""
    parts = []
    for path in ("/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin", "/etc/apt/sources.list",
                 "/etc/apt/sources.list.d"):
        try:
            st = os.stat(path)
            parts.append("%s:%d:%d" % (path, st.st_mtime_ns, st.st_size))
        except OSError:
            parts.append(path + ":-")
    return " ".join(parts)


def kernel_candidate(cache):
    """(package, version) of linux-image-amd64's current image, or None.

    apt-cache takes about a second; its answer is kept in the cache until
    apt's lists change.
    """
    memo = os.path.join(cache, "kernel-candidate")
    stamp = apt_stamp()
    try:
        with open(memo) as f:
            old_stamp, pkg, version = f.read().split("\n")[:3]
        if old_stamp == stamp and pkg and version:
            return pkg, version
    except (OSError, ValueError):
        pass
    found = query_kernel_candidate()
    if found:
        fd, tmp = tempfile.mkstemp(prefix="tmp-cand-", dir=cache)
        with os.fdopen(fd, "w") as f:
            f.write("%s\n%s\n%s\n" % (stamp, found[0], found[1]))
        os.rename(tmp, memo)
    return found


def query_kernel_candidate():
    """Ask apt-cache for (package, version) of linux-image-amd64's image."""
    rc, out = capture(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"^\s*Depends:\s*(linux-image-[0-9]\S*)\s*$", out, re.M) if rc == 0 else None
    if not m:
        return None
    pkg = m.group(1)
    rc, out = capture(["apt-cache", "policy", pkg])
    v = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M) if rc == 0 else None
    if not v or v.group(1) == "(none)":
        return None
    return pkg, v.group(1)


def cached_kernels(cache):
    """Completed kernel directories in the cache, newest first."""
    kdir = os.path.join(cache, "kernel")
    if not os.path.isdir(kdir):
        return []
    found = [os.path.join(kdir, d) for d in os.listdir(kdir)
             if os.path.exists(os.path.join(kdir, d, ".complete"))]
    return sorted(found, key=os.path.getmtime, reverse=True)


def kernel_layout(root):
    """(vmlinuz path, modules dir, kernel version) of an unpacked image."""
    for libdir in ("lib/modules", "usr/lib/modules"):
        base = os.path.join(root, libdir)
        if os.path.isdir(base):
            for kver in sorted(os.listdir(base)):
                vmlinuz = os.path.join(root, "boot", "vmlinuz-" + kver)
                if os.path.exists(vmlinuz):
                    return vmlinuz, os.path.join(base, kver), kver
    raise VmError("no boot/vmlinuz-* with matching modules in %s: remove it and retry" % root)


def fetch_kernel(cache, pkg, version):
    """Download and unpack *pkg*; return its cache directory."""
    name = re.sub(r"[^A-Za-z0-9.+_-]", "_", "%s_%s" % (pkg, version))
    final = os.path.join(cache, "kernel", name)
    if os.path.exists(os.path.join(final, ".complete")):
        return final
    os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tmp-", dir=os.path.dirname(final))
    try:
        log("fetching %s %s (apt-get download, dpkg -x)" % (pkg, version))
        check(["apt-get", "download", "%s=%s" % (pkg, version)], "apt-get download " + pkg,
              cwd=work)
        debs = [f for f in os.listdir(work) if f.endswith(".deb")]
        if len(debs) != 1:
            raise VmError("apt-get download %s left %d .deb files in %s" % (pkg, len(debs), work))
        root = os.path.join(work, "root")
        check(["dpkg", "-x", os.path.join(work, debs[0]), root], "dpkg -x " + debs[0])
        os.unlink(os.path.join(work, debs[0]))
        _, moddir, kver = kernel_layout(root)
        if moddir.startswith(os.path.join(root, "usr")) and not os.path.exists(
                os.path.join(root, "lib")):
            os.symlink("usr/lib", os.path.join(root, "lib"))
        check(["depmod", "-b", root, kver], "depmod -b")
        with open(os.path.join(root, ".complete"), "w") as f:
            f.write("%s %s\n" % (pkg, version))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(root, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prune(os.path.dirname(final), "", final)
    return final


def prune(folder, prefix, keep, age=3600):
    """Remove entries of *folder* starting with *prefix*, other than *keep*,
    unused for *age* seconds (superseded kernels and initramfs images)."""
    now = time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if (name.startswith(prefix) and not name.startswith("tmp-") and path != keep
                and now - os.path.getmtime(path) > age):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)


def ensure_kernel(cache):
    """The unpacked kernel to boot (fetched when the candidate changed)."""
    cand = kernel_candidate(cache)
    if cand is None and os.geteuid() == 0 and not cached_kernels(cache):
        apt_update()
        cand = kernel_candidate(cache)
    if cand is not None:
        return fetch_kernel(cache, *cand)
    have = cached_kernels(cache)
    if have:
        log("apt-cache names no linux-image-amd64 kernel; using cached %s"
            % os.path.basename(have[0]))
        return have[0]
    raise VmError("apt-cache depends linux-image-amd64 names no kernel: run apt-get update "
                  "(as root) and retry")


def pvh_entry_note(elf):
    """True if ELF image *elf* carries the PVH entry note qemu boots it by."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf,
                                                                  phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
            if elf[off + 12:off + 12 + namesz] == b"Xen\0" and ntype == 18:
                return True  # XEN_ELFNOTE_PHYS32_ENTRY
            off += 12 + (-(-namesz // 4) * 4) + (-(-descsz // 4) * 4)
    return False


def boot_image(kernel):
    """The image to hand qemu's -kernel.

    A bzImage decompresses itself, which takes seconds under TCG; qemu can
    instead boot the uncompressed vmlinux through its PVH entry (CONFIG_PVH).
    The vmlinux is extracted once into the cache; without a PVH note, or in a
    format the stdlib cannot unpack, the bzImage is used as it is.
    """
    vmlinuz, _, _ = kernel_layout(kernel)
    target = os.path.join(kernel, "vmlinux-pvh")
    if os.path.exists(target):
        return target
    marker = os.path.join(kernel, "vmlinux-pvh.none")
    if os.path.exists(marker):
        return vmlinuz
    with open(vmlinuz, "rb") as f:
        data = f.read()
    elf = b""
    for magic, make in ((b"\xfd7zXZ\0", lambda: lzma.LZMADecompressor()),
                        (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))):
        at = data.find(magic)
        if at >= 0:
            try:
                elf = make().decompress(data[at:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if pvh_entry_note(elf):
                break
    if not pvh_entry_note(elf):
        open(marker, "w").close()
        return vmlinuz
    fd, tmp = tempfile.mkstemp(prefix="tmp-vmlinux-", dir=kernel)
    with os.fdopen(fd, "wb") as f:
        f.write(elf)
    os.rename(tmp, target)
    return target


# ---------------------------------------------------------------- initramfs

def norm(name):
    """Module name as the kernel spells it ("-" -> "_", no suffix)."""
    base = os.path.basename(name)
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def module_order(moddir, wanted):
    """Module paths (relative to *moddir*) to insmod, dependencies first."""
    deps, paths = {}, {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            head, _, rest = line.partition(":")
            mod = norm(head)
            paths[mod] = head.strip()
            deps[mod] = [norm(d) for d in rest.split()]
    builtin = set()
    bpath = os.path.join(moddir, "modules.builtin")
    if os.path.exists(bpath):
        with open(bpath) as f:
            builtin = {norm(line.strip()) for line in f if line.strip()}
    order, seen = [], set()

    def visit(mod, chain):
        if mod in seen or mod in builtin:
            return
        if mod not in paths:
            raise VmError("module %s (%s) is not in this kernel: fix tools/vm/modules.txt"
                          % (mod, " <- ".join(chain)))
        seen.add(mod)
        for d in deps[mod]:
            visit(d, [*chain, d])
        order.append(paths[mod])

    for mod in wanted:
        visit(norm(mod), [mod])
    return order


def wanted_modules():
    """Names listed in tools/vm/modules.txt."""
    with open(MODULES) as f:
        return [line.split("#")[0].strip() for line in f
                if line.split("#")[0].strip()]


def module_bytes(path):
    """Contents of a module file, decompressed."""
    if path.endswith(".xz"):
        with lzma.open(path) as f:
            return f.read()
    if path.endswith(".gz"):
        with gzip.open(path) as f:
            return f.read()
    if path.endswith(".zst"):
        rc = subprocess.run(["zstd", "-dc", path], stdout=subprocess.PIPE)
        if rc.returncode != 0:
            raise VmError("cannot decompress %s: install zstd" % path)
        return rc.stdout
    with open(path, "rb") as f:
        return f.read()


class Cpio:
    """A newc (SVR4, no CRC) archive as the kernel's initramfs unpacker reads it."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join("%08x" % v for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
            len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        """Add directory *name* (0755)."""
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name, data, perm=0o644):
        """Add regular file *name*."""
        self._entry(name, stat.S_IFREG | perm, data)

    def chardev(self, name, major, minor, perm=0o600):
        """Add character device node *name*."""
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self):
        """The archive's bytes (with trailer)."""
        self._entry("TRAILER!!!", 0, nlink=1)
        return self.buf.getvalue()


def sha256_file(path):
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_initrd(cache, kernel):
    """Path of the cached initramfs for *kernel*, built if any input changed."""
    _, moddir, kver = kernel_layout(kernel)
    order = module_order(moddir, wanted_modules())
    key = hashlib.sha256()
    for part in (INITRD_FORMAT, os.path.basename(kernel), kver, "\n".join(order),
                 sha256_file(INIT), sha256_file(MODPROBE), sha256_file(MODULES),
                 sha256_file(BUSYBOX)):
        key.update(part.encode() + b"\0")
    path = os.path.join(cache, "initrd-%s.gz" % key.hexdigest()[:16])
    if os.path.exists(path):
        return path
    arc = Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", "mnt/root", "ctl", "lib", "lib/modules"):
        arc.dir(d)
    arc.chardev("dev/console", 5, 1)
    arc.chardev("dev/null", 1, 3, 0o666)
    with open(BUSYBOX, "rb") as f:
        arc.file("bin/busybox", f.read(), 0o755)
    with open(INIT, "rb") as f:
        arc.file("init", f.read(), 0o755)
    with open(MODPROBE, "rb") as f:
        arc.file("bin/modprobe-guest", f.read(), 0o755)
    for i, rel in enumerate(order):
        arc.file("lib/modules/%03d-%s.ko" % (i, norm(rel)), module_bytes(os.path.join(moddir, rel)))
    data = gzip.compress(arc.finish(), 6, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix="tmp-initrd-", dir=cache)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
    prune(cache, "initrd-", path)
    log("built initramfs %s (%d modules, %d KiB)" % (os.path.basename(path), len(order),
                                                     len(data) // 1024))
    return path
