"""pytest fixtures for tests against the real clients (Docker's daemon, LVM2).

tests/clients/conftest.py imports them; another test directory can too::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))
    from client_fixtures import *  # noqa: F401,F403  (the fixtures)

All of them need the tools/vmrun guest (skip outside it, fail under CI) and
are session-scoped where they cost seconds: one writable /etc and cgroup2
mount, one scratch file system, one containerd, one root made by dockerd
(:func:`docker_made_root`, read it, or :func:`copy_root` it before changing
anything).
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import client_env
from client_docker import Containerd, Dockerd, image_tar, known_content
from client_env import Scratch, run
from client_lvm import Lvm

__all__ = [
    "MADE_FILES",
    "DockerRoot",
    "assert_root_contents",
    "clients_containerd",
    "clients_guest",
    "clients_scratch",
    "clients_tree",
    "copy_root",
    "docker_made_root",
    "dockerd_factory",
    "lvm",
    "node_dir_name",
]


def node_dir_name(request: pytest.FixtureRequest, prefix: str) -> str:
    """A directory name for the requesting test (or module)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    return f"{prefix}-{name}"


@pytest.fixture(scope="session")
def clients_tree() -> Path:
    """Root of the unpacked docker.io/containerd/runc/lvm2 tree."""
    client_env.require_guest()
    return client_env.clients_root()


@pytest.fixture(scope="session")
def clients_guest(clients_tree: Path) -> Iterator[Path]:
    """The guest prepared for dockerd (writable /etc, cgroup2); yields the
    clients' tree."""
    with client_env.guest_system():
        yield clients_tree


@pytest.fixture(scope="session")
def clients_scratch(clients_tree: Path) -> Iterator[Scratch]:
    """The scratch ext4 file system (O_DIRECT works there, unlike tmpfs)."""
    with client_env.scratch_fs() as scratch:
        yield scratch


#: what :func:`dockerd_factory` gives: ``make(data_root=None, storage_opts=None)``
DockerdFactory = Callable[..., Dockerd]


@pytest.fixture(scope="session")
def clients_containerd(clients_guest: Path) -> Iterator[Containerd]:
    """One containerd for every dockerd of the session (started once: it
    costs seconds under TCG)."""
    ctd = Containerd(clients_guest, "session")
    ctd.start()
    try:
        yield ctd
    finally:
        ctd.stop()


@pytest.fixture
def dockerd_factory(clients_guest: Path, clients_scratch: Scratch,
                    clients_containerd: Containerd,
                    request: pytest.FixtureRequest) -> Iterator[DockerdFactory]:
    """``make(data_root=None, storage_opts=LOOP_LVM_OPTS) -> Dockerd`` (not
    started; use ``with d.running():``; *data_root* defaults to a new
    directory on the scratch file system).  Every daemon made is stopped (or
    killed and cleaned up) at the end of the test."""
    made: list[Dockerd] = []

    def make(data_root: Path | None = None, storage_opts: tuple[str, ...] | None = None
             ) -> Dockerd:
        root = data_root or clients_scratch.mkdir(node_dir_name(request, f"docker{len(made)}"))
        kw = {} if storage_opts is None else {"storage_opts": storage_opts}
        d = Dockerd(clients_guest, root, tag=f"f{len(made)}",  # type: ignore[arg-type]
                    containerd=clients_containerd, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        try:
            d.stop()
        finally:
            d.kill()


#: the files of the imported image (path -> bytes)
MADE_FILES: dict[str, bytes] = {
    "/etc/hello": b"hello from dmthin's tests\n",
    "/data/blob": known_content("blob", 300 * 1024 + 17),
    "/data/zeros": bytes(128 * 1024),
}
#: copied into a container and committed
MADE_ADDED: dict[str, bytes] = {"added": known_content("added", 70 * 1024)}


@dataclass
class DockerRoot:
    """A data root dockerd made and left (stopped), and what it holds.

    ``images``: ref -> image id; ``files``: ref (image or container name) ->
    {path: bytes} as the container sees them; ``devices``: ref -> the
    devicemapper GraphDriver data (DeviceId, DeviceName, DeviceSize);
    ``containers``: name -> id; ``removed``: device ids dockerd deleted.
    """

    path: Path
    images: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def home(self) -> Path:
        """``devicemapper``: the graph driver's home (its ``metadata/``,
        ``mnt/`` and the pool's ``devicemapper/``)."""
        return self.path / "devicemapper"

    @property
    def pool_dir(self) -> Path:
        """``devicemapper/devicemapper``: the loop-lvm data and metadata files."""
        return self.path / "devicemapper" / "devicemapper"

    @property
    def metadata(self) -> Path:
        """The pool's metadata file."""
        return self.pool_dir / "metadata"


def copy_root(src: DockerRoot, dst: Path) -> DockerRoot:
    """A copy of a stopped root (sparse files stay sparse) with the same
    records; *dst* must not exist."""
    run(["cp", "-a", "--sparse=always", str(src.path), str(dst)])
    return DockerRoot(dst, dict(src.images), dict(src.containers),
                      {k: dict(v) for k, v in src.files.items()},
                      {k: dict(v) for k, v in src.devices.items()}, list(src.removed))


def make_docker_root(d: Dockerd) -> DockerRoot:
    """Drive *d* (running) through import, create, cp, commit, rm; record
    what it made."""
    root = DockerRoot(d.data_root)
    base = d.import_image(image_tar(MADE_FILES), "dmthin-test:base")
    root.images["dmthin-test:base"] = base
    root.files["dmthin-test:base"] = dict(MADE_FILES)
    c1 = d.create("dmthin-test:base", ["/bin/true"], name="made-c1")
    d.cp_in(c1, "/etc", MADE_ADDED)
    committed = d.commit(c1, "dmthin-test:committed")
    root.images["dmthin-test:committed"] = committed
    root.files["dmthin-test:committed"] = dict(
        MADE_FILES, **{"/etc/" + k: v for k, v in MADE_ADDED.items()})
    gone = d.create("dmthin-test:base", ["/bin/true"], name="made-gone")
    root.removed.append(d.device(gone)["DeviceId"])
    d.rm(gone)
    d.rm(c1)
    c2 = d.create("dmthin-test:committed", ["/bin/true"], name="made-c2")
    d.cp_in(c2, "/data", {"c2-only": b"written in made-c2\n"})
    root.containers["made-c2"] = c2
    root.files["made-c2"] = dict(root.files["dmthin-test:committed"],
                                 **{"/data/c2-only": b"written in made-c2\n"})
    for ref in ("dmthin-test:base", "dmthin-test:committed", "made-c2"):
        root.devices[ref] = d.device(ref)
    return root


def same_device(a: dict[str, str], b: dict[str, str]) -> bool:
    """The same Docker device: id, size and hash (the pool's part of the
    dm name, ``docker-MAJ:MIN-INO``, changes with the root's inode)."""
    return (a["DeviceId"], a["DeviceSize"], a["DeviceName"].rsplit("-", 1)[-1]) == \
        (b["DeviceId"], b["DeviceSize"], b["DeviceName"].rsplit("-", 1)[-1])


def assert_root_contents(d: Dockerd, root: DockerRoot) -> None:
    """Every image and container of *root* is known to *d* (running) with
    the same devices and every recorded file's bytes."""
    for ref, image_id in root.images.items():
        assert d.inspect_image(ref)["Id"] == image_id
    for name, cid in root.containers.items():
        assert d.inspect_container(name)["Id"] == cid
    for ref, dev in root.devices.items():
        assert same_device(d.device(ref), dev), ref
    for ref, files in root.files.items():
        if ref in root.containers:
            got = {path: d.cp_out(ref, path) for path in files}
        else:
            got = d.read_files(ref, sorted(files))
        for path, data in files.items():
            assert got[path] == data, f"{ref}:{path}"


@pytest.fixture(scope="session")
def docker_made_root(clients_guest: Path, clients_scratch: Scratch,
                     clients_containerd: Containerd) -> Iterator[DockerRoot]:
    """A loop-lvm root dockerd made (import, create, cp, commit, rm) and left
    stopped: read it, never change it (:func:`copy_root` first)."""
    d = Dockerd(clients_guest, clients_scratch.mkdir("docker-made"), tag="made",
                containerd=clients_containerd)
    try:
        with d.running():
            root = make_docker_root(d)
        yield root
    finally:
        d.kill()


@pytest.fixture
def lvm(clients_tree: Path, clients_scratch: Scratch,
        request: pytest.FixtureRequest) -> Iterator[Lvm]:
    """An LVM configuration of its own (default thin tools); every VG, dm
    device and loop device made with it is removed at the end."""
    env = Lvm(clients_tree, clients_scratch.mkdir(node_dir_name(request, "lvm")))
    try:
        yield env
    finally:
        env.close()
        shutil.rmtree(env.workdir, ignore_errors=True)
