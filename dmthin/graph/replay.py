"""Replay of the 2014 Docker storage article (docs/experiment.md)
through the graph driver.

Steps: start the driver (base device formatted with Docker's mkfs.ext4
options); pull ubuntu:14.10 (seven layers, synthetic files adding up to the
published layer sizes); pull ubuntu:12.10; start a container (``-init``
layer with Docker's init files, then the read-write layer); write a large
file (8000 MiB at scale 1); replace it with a 3000 MiB one; commit the
container (diff against its init layer, applied as a new image layer);
remove the container.  After each step: ``du`` of the data and metadata
files, the pool's status, the image tree, and the article's figures beside
ours.

``--scale F`` multiplies every size (layers, files, base device, data and
metadata files) by F; the article's figures are shown unscaled and ours
also divided by F.  Scaled down, the base is formatted with ``-T default``
so it keeps the geometry mke2fs gave Docker's 10G base (4K blocks, 16K
bytes per inode) instead of its "small" type; the journal is still smaller
in proportion (mke2fs sizes it by filesystem size).  Both backends write
the large file as zeros, exactly ``dd if=/dev/zero``: through the mounted
rootfs (kernel) or through the ext4 view of the thin device (simulator),
so the pool provisions the same blocks.  The commit streams the diff into
the new layer through a pipe (no scratch copy), and the simulator never
copies a device: scratch space stays at mke2fs' scratch file for the base
(the blocks it writes, removed at once).  Long steps show progress bars
(stderr, on a terminal); :attr:`Replay.seconds` is the whole run's time.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm import tqdm

from ..units import human_size_decimal
from .article import Step, step_figures
from .deviceset import DeviceSet
from .driver import Driver
from .tree import Entry

MB = 1000 * 1000   # Docker's decimal MB
MiB = 1 << 20

#: (layer id, parent, own size in bytes) -- ubuntu:14.10, then ubuntu:12.10
UBUNTU_1410 = [("511136ea3c5a", "", 0), ("500cae81e00f", "511136ea3c5a", 198_900_000),
               ("3ed75c4904e0", "500cae81e00f", 200_000),
               ("b8c495ea8a4e", "3ed75c4904e0", 20_000),
               ("0f154c52e965", "b8c495ea8a4e", 16_000),
               ("f180ea115597", "0f154c52e965", 37_816_084),
               ("2185fd50e2ca", "f180ea115597", 0)]
UBUNTU_1210 = [("bac448df371d", "511136ea3c5a", 100_900_000),
               ("dfaad36d8984", "bac448df371d", 200_000),
               ("5796a7edb16b", "dfaad36d8984", 0),
               ("c5881f11ded9", "5796a7edb16b", 71_000_000)]
TAGS = {"2185fd50e2ca": "ubuntu:14.10", "c5881f11ded9": "ubuntu:12.10"}
CONTAINER = "4b1bd8c0f3a5"
COMMITTED = "9d4e5a1c7b2f"

@dataclass
class Replay:
    """Runs the workload; see the module docstring."""
    root: str
    backend: str = "sim"
    scale: float = 1.0
    out: Callable[[str], object] = print
    steps: list[Step] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def s(self, nbytes: float, align: int = 1) -> int:
        n = int(nbytes * self.scale)
        return max(align, n // align * align) if nbytes else 0

    def options(self) -> list[str]:
        opts = [f"dm.basesize={self.s(10 << 30, MiB)}",
                f"dm.loopdatasize={self.s(100 << 30, MiB)}",
                f"dm.loopmetadatasize={max(4 * MiB, self.s(2 << 30, MiB))}", "dm.fs=ext4",
                "dm.blkdiscard=true"]
        if self.scale < 1:
            # mke2fs picks its "small" type (1K blocks, 4K bytes/inode) under 512M; Docker's
            # 10G base got the "default" type: keep that geometry when scaled down.
            opts += ["dm.mkfsarg=-T", "dm.mkfsarg=default"]
        return opts

    def run(self) -> list[Step]:
        t0 = time.monotonic()
        self.driver = Driver(self.root, self.options(), backend=self.backend,
                             cleanup_interval=None)
        try:
            self._step("driver started (base device formatted)", t0)
            for name, layers in (("pull ubuntu:14.10", UBUNTU_1410),
                                 ("pull ubuntu:12.10", UBUNTU_1210)):
                t = time.monotonic()
                for layer, parent, size in layers:
                    self._pull(layer, parent, self.s(size))
                self._step(name, t)
            t = time.monotonic()
            self.driver.create_read_write(CONTAINER + "-init", "2185fd50e2ca")
            self.driver.apply_diff(CONTAINER + "-init", "2185fd50e2ca", init_layer())
            self.driver.create_read_write(CONTAINER, CONTAINER + "-init")
            self._step("start container", t)
            t = time.monotonic()
            self._write_big(self.s(8000 * MiB, 4096))
            self._step("write 8000 MiB file", t)
            t = time.monotonic()
            self._write_big(self.s(3000 * MiB, 4096))
            self._step("replace it with a 3000 MiB file", t)
            t = time.monotonic()
            self.driver.create(COMMITTED, "2185fd50e2ca")
            diff = self.driver.diff(CONTAINER, CONTAINER + "-init", stream=True)
            with diff, io.BufferedReader(_Progress(diff, None, "commit (diff -> new layer)")) \
                    as src:
                self.sizes[COMMITTED] = self.driver.apply_diff(COMMITTED, "2185fd50e2ca", src)
            self._step("commit the container", t)
            t = time.monotonic()
            self.driver.remove(CONTAINER)
            self.driver.remove(CONTAINER + "-init")
            self._step("remove the container", t)
        finally:
            self.driver.cleanup()
            self.seconds = time.monotonic() - t0
        return self.steps

    def _pull(self, layer: str, parent: str, size: int) -> None:
        self.driver.create(layer, parent)
        tar = synthetic_layer(layer, size)
        with io.BufferedReader(_Progress(tar, len(tar.getbuffer()), f"pull {layer}")) as src:
            self.sizes[layer] = self.driver.apply_diff(layer, parent, src)

    def _write_big(self, size: int) -> None:
        with self.driver.open_fs(CONTAINER, write=True) as tree:
            tree.begin()
            tree.remove("test.txt")
            now = time.time_ns()
            with io.BufferedReader(_Progress(io.BufferedReader(ZeroReader(size)), size,
                                             f"dd if=/dev/zero of=test.txt "
                                             f"({size // MiB} MiB)")) as src:
                tree.write_file(Entry("test.txt", stat.S_IFREG | 0o644, 0, 0, size, now), src)
            tree.commit()

    def _step(self, name: str, t: float) -> None:
        ds = self.driver.deviceset
        st = ds.live_pool.status()
        home = ds.loop_dir
        article, aufs = step_figures(name)
        step = Step(name, du(home / "data"), du(home / "metadata"),
                    int(st.used_data_blocks) * ds.live_pool.data_block_size,
                    int(st.used_metadata_blocks) * 4096, time.monotonic() - t,
                    article, aufs)
        self.steps.append(step)
        self.report(step, ds)

    def report(self, step: Step, ds: DeviceSet) -> None:
        p = self.out
        p(f"== {step.name} ({step.seconds:.1f}s)")
        p(f"   du data {fmt_du(step.du_data)}   du metadata {fmt_du(step.du_metadata)}"
          f"   (pool: data used {human_size_decimal(step.data_used)}, metadata used "
          f"{human_size_decimal(step.metadata_used)})")
        if step.article:
            a_data, a_meta = step.article
            p(f"   article: du data {fmt_du(a_data)}   du metadata {fmt_du(a_meta)}"
              + (f"   ours / scale: {fmt_du(step.du_data / self.scale)}, "
                 f"{fmt_du(step.du_metadata / self.scale)}" if self.scale != 1 else ""))
        if step.aufs:
            p(f"   article, aufs: {step.aufs[1]}"
              + (f"   (ours / scale: du data {fmt_du(step.du_data / self.scale)})"
                 if self.scale != 1 and not step.article else ""))
        p(f"   pool status: {ds.live_pool.status_line()}")
        for line in image_tree(ds, self.sizes):
            p("   " + line)


def du(path: str | os.PathLike[str]) -> int:
    """What ``du`` counts: allocated blocks of the file."""
    return os.stat(path).st_blocks * 512


def fmt_du(n: float) -> str:
    """``du -sh`` style: binary units, one decimal under 10."""
    for unit in ("", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.1f}{unit}" if n < 10 and unit else f"{n:.0f}{unit}"
        n /= 1024
    return str(n)


def image_tree(ds: DeviceSet, sizes: dict[str, int]) -> list[str]:
    """``docker images --tree`` style lines for the devices in *ds*."""
    parents = {layer: parent for layer, parent, _ in UBUNTU_1410 + UBUNTU_1210}
    parents.update({COMMITTED: "2185fd50e2ca", CONTAINER + "-init": "2185fd50e2ca",
                    CONTAINER: CONTAINER + "-init"})
    present = [h for h in ds.devices if h]
    children: dict[str, list[str]] = {}
    for h in present:
        children.setdefault(parents.get(h, ""), []).append(h)
    lines: list[str] = []

    def walk(h: str, depth: int, virtual: int) -> None:
        virtual += sizes.get(h, 0)
        tag = f" Tags: {TAGS[h]}" if h in TAGS else ""
        info = ds.devices[h]
        lines.append(f"{'  ' * depth}└─{h} Virtual Size: {human_size_decimal(virtual)} "
                     f"(thin id {info.device_id}){tag}")
        for c in sorted(children.get(h, [])):
            walk(c, depth + 1, virtual)

    for root in sorted(children.get("", [])):
        walk(root, 0, 0)
    return lines


class _Progress(io.RawIOBase):
    """Reads *src* while a progress bar counts the bytes (stderr; shown on a
    terminal only)."""

    def __init__(self, src: IO[bytes], total: int | None, desc: str):
        super().__init__()
        self.src = src
        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=None, leave=False)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.src.read(len(b))
        b[:len(data)] = data
        self.bar.update(len(data))
        return len(data)

    def close(self) -> None:
        self.bar.close()
        super().close()


class PatternReader(io.RawIOBase):
    """*size* bytes of a repeating non-zero pattern."""

    def __init__(self, size: int):
        self.left = size
        self.block = hashlib.sha256(b"dmthin").digest() * (MiB // 32)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.left, len(self.block))
        b[:n] = self.block[:n]
        self.left -= n
        return n


class ZeroReader(PatternReader):
    """*size* zero bytes (``dd if=/dev/zero``)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.block = bytes(MiB)


def synthetic_layer(layer: str, size: int) -> io.BytesIO:
    """A layer tar holding files of pseudo-random content summing to *size*."""
    buf = io.BytesIO()
    seed = hashlib.sha256(layer.encode()).digest()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        d = tarfile.TarInfo(f"usr/share/{layer}")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        left, i = size, 0
        while left > 0:
            n = min(left, 256 << 10)
            ti = tarfile.TarInfo(f"usr/share/{layer}/file-{i:05d}")
            ti.size, ti.mode = n, 0o644
            data = hashlib.shake_256(seed + i.to_bytes(4, "little")).digest(n)
            tar.addfile(ti, io.BytesIO(data))
            left -= n
            i += 1
    buf.seek(0)
    return buf


def init_layer() -> io.BytesIO:
    """Docker 1.x's ``<id>-init`` contents: dev/, etc/ files, .dockerenv,
    .dockerinit."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("dev", "dev/pts", "dev/shm", "etc", "proc", "sys"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        for name, data in (("etc/hosts", b"127.0.0.1 localhost\n"), ("etc/hostname", b"\n"),
                           ("etc/resolv.conf", b"nameserver 8.8.8.8\n"), (".dockerenv", b""),
                           (".dockerinit", b"")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o755 if name == ".dockerinit" else 0o644
            tar.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("etc/mtab")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/proc/mounts"
        tar.addfile(ti)
    buf.seek(0)
    return buf
