"""The 2014 Docker storage article's figures, our replay's measurements
per step (:class:`Step`), and the plot of both.

The article measured ``du`` of devicemapper's sparse data and metadata
files after each step, and the size of aufs' per-layer diff directories
for the same workload.  Sizes are bytes as ``du -sh`` printed them.
"""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30

#: devicemapper, du of the data and metadata files: step -> (data, metadata)
DEVICEMAPPER = {"pull ubuntu:14.10": (590 * MiB, int(1.2 * MiB)),
                "pull ubuntu:12.10": (787 * MiB, int(1.4 * MiB)),
                "start container": (789 * MiB, int(1.5 * MiB)),
                "write 8000 MiB file": (int(8.6 * GiB), int(9.4 * MiB))}

#: aufs, du of the diff directories: step -> (bytes plotted, what the article says)
AUFS = {"pull ubuntu:14.10": (int(4 * 1024 + 217 * MiB + 300 * 1024 + 28 * 1024 + 24 * 1024
                                  + 42 * MiB + 12 * 1024),
                              "diff dirs 4.0K+217M (the 198.9 MB layer)+300K+28K+24K+42M+12K"),
        "write 8000 MiB file": (int(7.5 * GiB), "the container's diff dir 7.5G"),
        "commit the container": (int(3.0 * GiB), "the committed image's diff dir 3.0G"),
        "remove the container": (int(3.0 * GiB), ("the container's two dirs removed, the "
                                                  "committed image's 3.0G kept"))}


@dataclass
class Step:
    """One replay step's measurements."""
    name: str
    du_data: int
    du_metadata: int
    data_used: int
    metadata_used: int
    seconds: float
    article: tuple[int, int] | None = None
    aufs: tuple[int, str] | None = None


def step_figures(name: str) -> tuple[tuple[int, int] | None, tuple[int, str] | None]:
    """The article's devicemapper and aufs figures for step *name*."""
    return DEVICEMAPPER.get(name), AUFS.get(name)


def plot(steps: list[Step], path: str, scale: float = 1.0, backend: str = "") -> str:
    """Save a bar chart of du data/metadata per step, ours divided by
    *scale* (data only) beside the article's devicemapper and aufs figures;
    return a message.

    matplotlib is optional: without it, say how to get it.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("plot not saved: matplotlib is not installed "
                "(apt-get install python3-matplotlib, or pip install matplotlib)")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [s.name for s in steps]
    for ax, attr, title in ((axes[0], "du_data", "du data"), (axes[1], "du_metadata",
                                                             "du metadata")):
        # Data grows with the workload: divide by the scale to compare.  The
        # metadata has a large fixed part (superblock, bitmaps, one tree per
        # device), so it is shown as measured.
        div = scale if attr == "du_data" else 1.0
        ours = [getattr(s, attr) / MiB / div for s in steps]
        label = f"dmthin {backend}".strip()
        if scale != 1:
            label += f" / scale {scale:g}" if div != 1 else f" (at scale {scale:g})"
        ax.bar(range(len(steps)), ours, label=label)
        art = [(i, (s.article[0] if attr == "du_data" else s.article[1]) / MiB)
               for i, s in enumerate(steps) if s.article]
        if art:
            ax.scatter([i for i, _ in art], [v for _, v in art], color="red", zorder=3,
                       label="article (2014, devicemapper)")
        aufs = [(i, s.aufs[0] / MiB) for i, s in enumerate(steps) if s.aufs]
        if aufs and attr == "du_data":
            ax.scatter([i for i, _ in aufs], [v for _, v in aufs], color="green", marker="D",
                       zorder=3, label="article (2014, aufs diff dirs)")
        ax.set_xticks(range(len(steps)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("MiB")
        ax.set_title(f"{title} after each step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return f"plot saved to {path}"
