"""Docker's daemon (dockerd 20.10, devicemapper graph driver) as a test
counterpart in the tools/vmrun guest.

:class:`Dockerd` starts one daemon on a data root with given storage options
and talks to it over its Engine API (HTTP on a unix socket, stdlib only): the
``docker`` CLI costs seconds per call under TCG, the API does the same work
(the CLI is only its client) in a fraction.  :meth:`Dockerd.cli` runs the
real CLI where a test wants it.  :func:`image_tar` builds an image from the
static busybox and files of known content, for ``docker import`` (there is
no network in the guest).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client_env import DOCKER, DOCKERD, ClientError, run, wait_for

API = "/v1.41"  # Engine API of Docker 20.10
BUSYBOX = "/bin/busybox"

#: storage options of a loop-lvm root (dockerd makes data and metadata files
#: under DATA_ROOT/devicemapper/devicemapper); ext4, as xfs needs >= 300 MB
LOOP_LVM_OPTS: tuple[str, ...] = (
    "dm.loopdatasize=2G", "dm.loopmetadatasize=128M", "dm.basesize=256M", "dm.fs=ext4")
#: always given: no udevd in the guest
UDEV_OPT = "dm.override_udev_sync_check=true"


class DockerError(ClientError):
    """dockerd refused a request, or did not start or stop."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def image_tar(files: Mapping[str, bytes]) -> bytes:
    """A root file system tar for ``docker import``: ``/bin/busybox`` (static)
    with ``/bin/sh`` and ``/bin/cat`` links to it, ``/etc``, ``/tmp``, and
    *files* (path -> bytes, mode 0644; parent directories made)."""
    buf = io.BytesIO()
    dirs: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(path: str) -> None:
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o1777 if d == "tmp" else 0o755
                    tar.addfile(info)

        for d in ("bin", "etc", "tmp"):
            add_dir(d)
        with open(BUSYBOX, "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in ("sh", "cat", "ls"):
            link = tarfile.TarInfo("bin/" + applet)
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        for path, content in sorted(files.items()):
            path = path.strip("/")
            add_dir(os.path.dirname(path))
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def known_content(seed: str, size: int) -> bytes:
    """*size* bytes determined by *seed* (SHAKE-256 output)."""
    return hashlib.shake_256(seed.encode()).digest(size)


def file_tar(files: Mapping[str, bytes]) -> bytes:
    """A tar of plain files (name -> bytes), for ``docker cp`` into a container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@dataclass
class Containerd:
    """A containerd for dockerd (``dockerd --containerd SOCKET``).

    dockerd would start one itself but gives it only seconds to come up,
    which a loaded TCG guest does not always manage; started here, it gets
    as long as it needs.  Its root and state live in ``/run/ctd-TAG``; the
    CRI plugin is off (as in dockerd's own containerd configuration).
    """

    tree: Path
    tag: str = "0"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def run_dir(self) -> Path:
        """Root, state, socket, configuration and log live here."""
        return Path(f"/run/ctd-{self.tag}")

    @property
    def socket(self) -> str:
        """Its gRPC socket."""
        return str(self.run_dir / "containerd.sock")

    def start(self, timeout: float = 300) -> None:
        """Start it and wait until its socket accepts connections.

        :raises DockerError: it exited or did not listen in *timeout* s.
        """
        assert self.proc is None, "containerd already running"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.run_dir / "root"}"\n'
            f'state = "{self.run_dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n')
        log_path = self.run_dir / "containerd.log"
        env = dict(os.environ, PATH=f"{self.tree / 'usr/bin'}:{self.tree / 'usr/sbin'}:"
                   + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.tree / "usr/bin/containerd"), "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise DockerError(f"containerd exited {self.proc.returncode} while starting:\n"
                                  + log_path.read_text(errors="replace")[-3000:])
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.socket)
                except OSError:
                    return False
            return True

        if not wait_for(listening, timeout, 0.1):
            self.stop()
            raise DockerError(f"containerd did not listen on {self.socket} in {timeout:g} s")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL (its whole process group) if need be."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Dockerd:
    """One dockerd on *data_root* (devicemapper driver).

    *storage_opts* are added to ``dm.override_udev_sync_check=true`` (loop-lvm
    by default).  *tag* names the per-daemon run directory
    ``/run/dk-TAG`` (exec root, socket, pid file; short, as unix socket
    paths must be).  *containerd*: a running :class:`Containerd` to use;
    without one, each start starts one of its own (stopped with dockerd).
    Use :meth:`running` (or :meth:`start`/:meth:`stop`).
    """

    tree: Path
    data_root: Path
    storage_opts: Sequence[str] = LOOP_LVM_OPTS
    tag: str = "0"
    log_path: Path | None = None
    containerd: Containerd | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)
    own_containerd: Containerd | None = field(default=None, init=False)

    # ------------------------------------------------------------ lifecycle

    @property
    def run_dir(self) -> Path:
        """Exec root, socket and pid file live here."""
        return Path(f"/run/dk-{self.tag}")

    @property
    def socket(self) -> str:
        """The API socket's path."""
        return str(self.run_dir / "docker.sock")

    def env(self) -> dict[str, str]:
        """dockerd's environment: the clients' tree first on PATH."""
        path = ":".join([str(self.tree / "usr/bin"), str(self.tree / "usr/sbin"),
                         os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        return dict(os.environ, PATH=path, DM_DISABLE_UDEV="1")

    def argv(self) -> list[str]:
        """dockerd's command line."""
        argv = [str(self.tree / DOCKERD), "--data-root", str(self.data_root),
                "--exec-root", str(self.run_dir / "exec"),
                "--pidfile", str(self.run_dir / "dockerd.pid"),
                "-H", "unix://" + self.socket,
                "--storage-driver", "devicemapper",
                "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
                "--ip-forward=false", "--userland-proxy=false",
                "--containerd", self._containerd_socket(),
                "--storage-opt", UDEV_OPT]
        for opt in self.storage_opts:
            argv += ["--storage-opt", opt]
        return argv

    def _containerd_socket(self) -> str:
        ctd = self.containerd or self.own_containerd
        assert ctd is not None, "no containerd"
        return ctd.socket

    def start(self, timeout: float = 180) -> None:
        """Start dockerd and wait until its API answers.

        :raises DockerError: it exited or did not answer in *timeout* s (the
            message holds the end of its log).
        """
        assert self.proc is None, "dockerd already running"
        if self.containerd is None and self.own_containerd is None:
            self.own_containerd = Containerd(self.tree, f"dk-{self.tag}")
            self.own_containerd.start()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        if self.log_path is None:
            self.log_path = self.run_dir / "dockerd.log"
        with open(self.log_path, "ab") as log:
            log.write(b"==== start %d: %s\n" % (self.starts, " ".join(self.argv()).encode()))
            log.flush()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env(),
                                         start_new_session=True)
        self.starts += 1
        try:
            ready = wait_for(self._ready, timeout, 0.1)
        except BaseException:
            self.kill()
            raise
        if not ready:
            self.kill()
            raise DockerError(f"dockerd did not answer on {self.socket} in {timeout:g} s"
                              f"\n{self.log_tail()}")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            rc = self.proc.returncode
            raise DockerError(f"dockerd exited {rc} while starting\n{self.log_tail()}")
        try:
            status, body = self.request("GET", "/_ping", timeout=5)
        except OSError:
            return False
        return status == 200 and body == b"OK"

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM and wait; dockerd unmounts its devices and, with loop-lvm,
        removes its pool and loop devices.

        :raises DockerError: it did not exit in *timeout* s (then killed) or
            exited non-zero.
        """
        proc = self.proc
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DockerError(f"dockerd ignored SIGTERM for {timeout:g} s: killed\n"
                              f"{self.log_tail()}") from None
        self.proc = None
        self._stop_own_containerd()
        if rc != 0:
            raise DockerError(f"dockerd exited {rc} on SIGTERM\n{self.log_tail()}")

    def _stop_own_containerd(self) -> None:
        ctd, self.own_containerd = self.own_containerd, None
        if ctd is not None:
            ctd.stop()

    def kill(self) -> None:
        """SIGKILL dockerd and its process group (containerd, shims), then
        undo what it left: mounts under its roots, its dm devices, its loop
        devices."""
        proc = self.proc
        self.proc = None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.clean_up()
        self._stop_own_containerd()

    def clean_up(self) -> list[str]:
        """Remove what a killed dockerd left behind; returns what was removed.

        Mounts below the data and exec roots, device-mapper devices named
        ``docker-*`` (thin devices before pools), loop devices backed by
        files under the data root.
        """
        removed: list[str] = []
        roots = (str(self.data_root) + "/", str(self.run_dir) + "/")
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for point in reversed(points):
            if point.startswith(roots) and run(["umount", "-l", point],
                                               check=False).returncode == 0:
                removed.append(point)
        for _ in range(3):
            names = [line.split()[0] for line in run(["dmsetup", "ls"], check=False)
                     .stdout.splitlines() if line.startswith("docker-")]
            for name in sorted(names, key=lambda n: n.endswith("-pool")):
                if run(["dmsetup", "remove", name], check=False).returncode == 0:
                    removed.append(name)
        for line in run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"],
                        check=False).stdout.splitlines():
            dev, _, back = line.strip().partition(" ")
            if back.strip().startswith(roots[0]):
                run(["losetup", "-d", dev], check=False)
                removed.append(dev)
        return removed

    @contextlib.contextmanager
    def running(self) -> Iterator[Dockerd]:
        """Started for the block, stopped (killed if need be) after it."""
        self.start()
        try:
            yield self
        except BaseException:
            with contextlib.suppress(DockerError):
                self.stop()
            self.kill()
            raise
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The end of dockerd's log."""
        try:
            assert self.log_path is not None
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no dockerd log)"
        return "\n".join(["--- dockerd log ---", *text.splitlines()[-lines:]])

    # ------------------------------------------------------------ the Engine API

    def request(self, method: str, path: str, body: bytes | None = None,
                query: Mapping[str, str] | None = None,
                content_type: str = "application/json",
                timeout: float = 300) -> tuple[int, bytes]:
        """One API call; returns (HTTP status, body)."""
        url = path if path == "/_ping" else API + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        conn = _UnixHTTPConnection(self.socket, timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, url, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def call(self, method: str, path: str, body: bytes | None = None,
             query: Mapping[str, str] | None = None,
             content_type: str = "application/json") -> Any:
        """An API call that must succeed (2xx); returns its JSON (or None).

        :raises DockerError: another status (the message holds dockerd's).
        """
        status, data = self.request(method, path, body, query, content_type)
        if status // 100 != 2:
            raise DockerError(f"{method} {path} {dict(query or {})}: HTTP {status} "
                              f"{data.decode(errors='replace').strip()}\n{self.log_tail(15)}")
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data

    def version(self) -> dict[str, Any]:
        """``docker version`` (the daemon's part)."""
        return self.call("GET", "/version")  # type: ignore[no-any-return]

    def info(self) -> dict[str, Any]:
        """``docker info``; ``DriverStatus`` is the devicemapper section."""
        return self.call("GET", "/info")  # type: ignore[no-any-return]

    def driver_status(self) -> dict[str, str]:
        """``docker info``'s storage driver lines as a dict."""
        return dict(self.info()["DriverStatus"])

    def import_image(self, tar: bytes, ref: str) -> str:
        """``docker import - REF``; returns the image id (sha256:...)."""
        repo, _, tag = ref.partition(":")
        status, data = self.request("POST", "/images/create", tar,
                                    {"fromSrc": "-", "repo": repo, "tag": tag or "latest"},
                                    content_type="application/x-tar")
        last: dict[str, Any] = {}
        for line in data.decode(errors="replace").splitlines():
            if line.strip():
                last = json.loads(line)
                if "error" in last or "errorDetail" in last:
                    break
        if status != 200 or "error" in last or not str(last.get("status", "")).startswith(
                "sha256:"):
            raise DockerError(f"docker import {ref}: HTTP {status} {last}\n{self.log_tail(15)}")
        return str(last["status"])

    def create(self, image: str, cmd: Sequence[str] = ("/bin/sh",),
               name: str | None = None) -> str:
        """``docker create [--name NAME] IMAGE CMD``; returns the container id."""
        spec = json.dumps({"Image": image, "Cmd": list(cmd), "NetworkDisabled": True})
        return str(self.call("POST", "/containers/create", spec.encode(),
                             {"name": name} if name else None)["Id"])

    def cp_in(self, container: str, directory: str, files: Mapping[str, bytes]) -> None:
        """``docker cp`` of plain *files* (name -> bytes) into *directory*."""
        self.call("PUT", f"/containers/{container}/archive", file_tar(files),
                  {"path": directory}, content_type="application/x-tar")

    def cp_out(self, container: str, path: str) -> bytes:
        """``docker cp CONTAINER:PATH -``: the bytes of one regular file."""
        status, data = self.request("GET", f"/containers/{container}/archive",
                                    query={"path": path})
        if status != 200:
            raise DockerError(f"docker cp {container}:{path}: HTTP {status} "
                              f"{data.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            assert member is not None and member.isfile(), f"{path} is not a regular file"
            f = tar.extractfile(member)
            assert f is not None
            return f.read()

    def commit(self, container: str, ref: str) -> str:
        """``docker commit CONTAINER REF``; returns the image id."""
        repo, _, tag = ref.partition(":")
        return str(self.call("POST", "/commit", None,
                             {"container": container, "repo": repo,
                              "tag": tag or "latest"})["Id"])

    def rm(self, container: str) -> None:
        """``docker rm -f CONTAINER``."""
        self.call("DELETE", f"/containers/{container}", query={"force": "1"})

    def rmi(self, image: str) -> None:
        """``docker rmi IMAGE``."""
        self.call("DELETE", f"/images/{image}")

    def inspect_image(self, image: str) -> dict[str, Any]:
        """``docker image inspect``."""
        return self.call("GET", f"/images/{image}/json")  # type: ignore[no-any-return]

    def inspect_container(self, container: str) -> dict[str, Any]:
        """``docker container inspect``."""
        return self.call("GET", f"/containers/{container}/json")  # type: ignore[no-any-return]

    def device(self, image_or_container: str) -> dict[str, str]:
        """The devicemapper GraphDriver data (DeviceId, DeviceName,
        DeviceSize) of an image's top layer or a container's layer."""
        try:
            data = self.inspect_container(image_or_container)
        except DockerError:
            data = self.inspect_image(image_or_container)
        return dict(data["GraphDriver"]["Data"])

    def read_file(self, image: str, path: str) -> bytes:
        """A file's bytes in *image*, through a container made and removed
        for it (its device is mounted by dockerd)."""
        return self.read_files(image, [path])[path]

    def read_files(self, image: str, paths: Sequence[str]) -> dict[str, bytes]:
        """Several files of *image* through one container made and removed
        for them: {path: bytes}."""
        cid = self.create(image, ["/bin/true"])
        try:
            return {path: self.cp_out(cid, path) for path in paths}
        finally:
            self.rm(cid)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real ``docker`` CLI against this daemon."""
        return run([str(self.tree / DOCKER), "-H", "unix://" + self.socket, *args],
                   check=check, env=self.env())
