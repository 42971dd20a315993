"""The docker-article replay at small scale on the simulator: it runs in
seconds and the pool moves the way the article's steps say it must."""
import time

from dmthin.cli.main import main
from dmthin.graph.article import plot
from dmthin.graph.replay import COMMITTED, CONTAINER, MiB, Replay


def test_replay_small_scale_on_sim(tmp_path):
    lines = []
    t = time.monotonic()
    rep = Replay(str(tmp_path / "docker"), backend="sim", scale=0.01, out=lines.append)
    steps = {s.name: s for s in rep.run()}
    elapsed = time.monotonic() - t
    assert elapsed < 120, elapsed            # seconds normally; generous for a loaded machine
    names = list(steps)
    assert names == ["driver started (base device formatted)", "pull ubuntu:14.10",
                     "pull ubuntu:12.10", "start container", "write 8000 MiB file",
                     "replace it with a 3000 MiB file", "commit the container",
                     "remove the container"]
    used = [s.data_used for s in steps.values()]
    # pulls add at least the layers' own bytes (1.99+0.002+0.38 MB and 1.01+0.71 MB)
    assert used[1] - used[0] >= 2_370_000
    assert used[2] - used[1] >= 1_720_000
    # the 80 MiB file provisions at least 80 MiB of new blocks
    assert used[4] - used[3] >= 80 * MiB
    # replacing it provisions at most the new 30 MiB: blocks ext4 freed stay provisioned
    # (no discard mount option) and are partly reused (the kernel's ext4 took 14.8 MB of new
    # blocks at this scale)
    assert used[5] - used[4] <= 31 * MiB
    # the committed layer holds the 30 MiB file
    assert rep.sizes[COMMITTED] == 30 * MiB
    assert used[6] - used[5] >= 30 * MiB
    # removing the container discards its blocks (dm.blkdiscard) and frees them
    assert used[7] < used[6] - 70 * MiB
    assert steps["remove the container"].du_data <= steps["commit the container"].du_data
    text = "\n".join(lines)
    assert "article: du data 590M   du metadata 1.2M" in text
    assert "article, aufs: the container's diff dir 7.5G" in text
    assert 0 < rep.seconds < elapsed + 1
    assert "Tags: ubuntu:14.10" in text and CONTAINER not in text.split("== remove")[1]
    # the PNG plot of data and metadata usage over the steps
    png = tmp_path / "replay.png"
    assert plot(list(steps.values()), str(png)) == f"plot saved to {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_cli_argument_errors(capsys):
    assert main(["replay", "docker-article", "--scale", "2"]) == 1
    assert "invalid --scale 2.0" in capsys.readouterr().err


def test_graph_status_and_ls_cli(make_ds, capsys):
    ds = make_ds()
    ds.add_device("a", "")
    ds.shutdown()
    data = ds.root / "devicemapper" / "data"
    size = data.stat().st_size
    assert main(["graph", "status", str(ds.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Storage Driver: devicemapper\n Pool Name: docker-")
    assert " Base Device Size: 16.78MB\n" in out and " Data Space Total: 67.11MB\n" in out
    assert data.stat().st_size == size                       # status never grows the files
    assert main(["graph", "ls", str(ds.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines[1:]] == [["base", "1"], ["a", "2"]]
    assert main(["graph", "status", str(ds.root / "nope")]) == 1
    assert "is not a graph root" in capsys.readouterr().err
