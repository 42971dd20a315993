"""LVM2 2.03.16 as a test counterpart in the tools/vmrun guest.

:class:`Lvm` runs the ``lvm`` of the clients' tree with its own
configuration directory (``LVM_SYSTEM_DIR``): only loop devices are scanned,
no udev, no monitoring, no backups or archives, and the thin tools it runs
(``thin_check_executable`` and friends) are settable.  :meth:`Lvm.pv` puts a
physical volume on a sparse file's loop device; :meth:`Lvm.close` removes
every volume group, device-mapper device and loop device it made, on every
path.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client_env import LVM, run

#: what LVM 2.03.16 would run by default (Debian's thin-provisioning-tools 0.9.0)
THIN_TOOLS = {"thin_check": "/usr/sbin/thin_check", "thin_dump": "/usr/sbin/thin_dump",
              "thin_repair": "/usr/sbin/thin_repair", "thin_restore": "/usr/sbin/thin_restore"}


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_conf_value(v) for v in value) + "]"
    text = str(value)
    assert '"' not in text and "\\" not in text, f"cannot quote {text!r} for lvm.conf"
    return f'"{text}"'


@dataclass
class Lvm:
    """An LVM configuration under *workdir* and the volumes made with it.

    *thin_tools* overrides ``thin_check_executable``, ``thin_dump_executable``,
    ``thin_repair_executable`` (keys ``thin_check``, ``thin_dump``,
    ``thin_repair``); *thin_check_options* and *thin_repair_options* likewise.
    """

    tree: Path
    workdir: Path
    thin_tools: Mapping[str, str] = field(default_factory=dict)
    thin_check_options: Sequence[str] = ("-q",)
    thin_repair_options: Sequence[str] = ("",)
    vgs: list[str] = field(default_factory=list, init=False)
    loops: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "etc").mkdir(exist_ok=True)
        self.configure()

    @property
    def system_dir(self) -> Path:
        """LVM_SYSTEM_DIR."""
        return self.workdir / "etc"

    def configure(self, **overrides: object) -> None:
        """(Re)write lvm.conf; *overrides* replace attributes first
        (``thin_tools=``, ``thin_check_options=``, ``thin_repair_options=``)."""
        for name, value in overrides.items():
            assert hasattr(self, name), name
            setattr(self, name, value)
        tools = dict(THIN_TOOLS, **self.thin_tools)
        sections: dict[str, dict[str, object]] = {
            "config": {"checks": 1, "abort_on_errors": 1},
            "devices": {
                "dir": "/dev", "scan": ["/dev"],
                "filter": ["a|^/dev/loop[0-9]+$|", "r|.*|"],
                "global_filter": ["a|^/dev/loop[0-9]+$|", "r|.*|"],
                "obtain_device_list_from_udev": 0, "external_device_info_source": "none",
                "use_devicesfile": 0, "md_component_detection": 0,
                "multipath_component_detection": 0, "fw_raid_component_detection": 0,
                "sysfs_scan": 1,
            },
            "global": {
                "locking_dir": "/run/lock/lvm", "use_lvmlockd": 0, "use_lvmpolld": 0,
                "event_activation": 0,
                "thin_check_executable": tools["thin_check"],
                "thin_dump_executable": tools["thin_dump"],
                "thin_repair_executable": tools["thin_repair"],
                "thin_check_options": list(self.thin_check_options),
                "thin_repair_options": list(self.thin_repair_options),
            },
            "activation": {"udev_sync": 0, "udev_rules": 0, "verify_udev_operations": 0,
                           "monitoring": 0, "checks": 1},
            "backup": {"backup": 0, "archive": 0},
            "log": {"verbose": 0, "syslog": 0},
        }
        lines = []
        for section, values in sections.items():
            lines.append(section + " {")
            lines += [f"\t{k} = {_conf_value(v)}" for k, v in values.items()]
            lines.append("}")
        (self.system_dir / "lvm.conf").write_text("\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        """The environment LVM runs with."""
        return dict(os.environ, LVM_SYSTEM_DIR=str(self.system_dir),
                    LVM_SUPPRESS_FD_WARNINGS="1", DM_DISABLE_UDEV="1")

    def __call__(self, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        """Run ``lvm ARGS`` (e.g. ``lvm("lvcreate", ...)``); returns the
        CompletedProcess.

        :raises ClientError: *check* and a non-zero exit.
        """
        return run([str(self.tree / LVM), *args], check=check, env=self.env())

    # ------------------------------------------------------------ volumes

    def pv(self, size: int, name: str) -> str:
        """A loop device over a new sparse file of *size* bytes, made a PV;
        returns the device path."""
        backing = self.workdir / f"{name}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = run(["losetup", "-f", "--show", str(backing)]).stdout.strip()
        self.loops.append(dev)
        self("pvcreate", "-q", "-y", dev)
        return dev

    def vgcreate(self, vg: str, *pvs: str) -> None:
        """A volume group of *pvs* (removed by :meth:`close`)."""
        self("vgcreate", "-q", vg, *pvs)
        self.vgs.append(vg)

    def lvs(self, vg: str, fields: str = "lv_name,lv_attr,segtype") -> list[list[str]]:
        """``lvs -a`` rows (every LV, hidden ones too)."""
        out = self("lvs", "-a", "--noheadings", "--separator", "|", "-o", fields, vg).stdout
        return [[c.strip() for c in line.split("|")] for line in out.splitlines() if line.strip()]

    @staticmethod
    def dm_name(vg: str, lv: str) -> str:
        """The device-mapper name LVM gives VG/LV (dashes doubled)."""
        return vg.replace("-", "--") + "-" + lv.replace("-", "--")

    def path(self, vg: str, lv: str) -> str:
        """/dev/mapper path of VG/LV (present while active)."""
        return "/dev/mapper/" + self.dm_name(vg, lv)

    def close(self) -> None:
        """Deactivate and remove every VG made here, then remove leftover dm
        devices of those VGs and detach the loop devices.  Never raises."""
        for vg in self.vgs:
            self("vgchange", "-an", vg, check=False)
            self("vgremove", "-ff", "-y", vg, check=False)
        prefixes = tuple(self.dm_name(vg, "") for vg in self.vgs)
        for _ in range(4):
            names = [line.split()[0] for line in run(["dmsetup", "ls"], check=False)
                     .stdout.splitlines() if line.startswith(prefixes)] if prefixes else []
            if not names:
                break
            for name in names:
                run(["dmsetup", "remove", name], check=False)
        for dev in self.loops:
            self("pvremove", "-ff", "-y", dev, check=False)
            run(["losetup", "-d", dev], check=False)
        self.vgs.clear()
        self.loops.clear()
