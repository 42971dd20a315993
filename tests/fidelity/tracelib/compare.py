"""Comparing a kernel result with a simulator result of the same trace:
the quantities, the tally of agreements, the report."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

#: per-step quantities: name -> function of a step record
STEP_QUANTITIES = {
    "transaction id": lambda r: r.get("status", {}).get("transaction_id"),
    "used data blocks": lambda r: r.get("status", {}).get("used_data_blocks"),
    "total data blocks": lambda r: r.get("status", {}).get("total_data_blocks"),
    "total metadata blocks": lambda r: r.get("status", {}).get("total_metadata_blocks"),
    "metadata low watermark": lambda r: r.get("status", {}).get("metadata_low_watermark"),
    "mode": lambda r: r.get("status", {}).get("mode"),
    "discard mode": lambda r: r.get("status", {}).get("discard"),
    "no-space policy": lambda r: r.get("status", {}).get("no_space_policy"),
    "metadata snapshot held": lambda r: r.get("status", {}).get("held_root") is not None,
    "needs_check": lambda r: r.get("status", {}).get("needs_check"),
    "thin status lines": lambda r: r.get("thins"),
    "errno of the step": lambda r: (r.get("errno"), r.get("errnos"), r.get("status_errno")),
    "pool events": lambda r: r.get("events"),
    "used metadata blocks": lambda r: r.get("status", {}).get("used_metadata_blocks"),
    "held root block (position)": lambda r: r.get("status", {}).get("held_root"),
}

#: compared and shown, but not required to agree: metadata block positions
#: depend on when the kernel commits (every second), the simulator does not
INFO_QUANTITIES = {"held root block (position)"}


def parse_dump(xml: str) -> tuple[dict, dict, dict]:
    """(superblock attrs, {dev: details}, {dev: {vblock: (dblock, time)}})."""
    root = ET.fromstring(xml)
    details, maps = {}, {}
    for dev in root.iter("device"):
        d = dict(dev.attrib)
        dev_id = d.pop("dev_id")
        details[dev_id] = d
        m = maps[dev_id] = {}
        for el in dev:
            a = el.attrib
            if el.tag == "single_mapping":
                m[int(a["origin_block"])] = (int(a["data_block"]), int(a["time"]))
            elif el.tag == "range_mapping":
                o, db, t = int(a["origin_begin"]), int(a["data_begin"]), int(a["time"])
                for i in range(int(a["length"])):
                    m[o + i] = (db + i, t)
    return dict(root.attrib), details, maps


def final_quantities(res: dict) -> dict:
    """name -> {key: value} of the end-of-trace quantities (one entry each)."""
    fin = res["final"]
    out: dict = {}
    try:
        sb, details, maps = parse_dump(fin["dump"]["out"])
        out["superblock (thin_dump)"] = {"sb": sb}
        out["device details"] = details
        out["mappings (vblock -> data block, time)"] = maps
    except ET.ParseError as err:
        out["superblock (thin_dump)"] = {"sb": f"unparsable: {err}"}
    out["thin_dump XML"] = {"xml": fin["dump"]["out"]}
    rows = {}
    for line in fin["ls"]["out"].splitlines():
        f = line.split()
        if f:
            rows[f[0]] = f[1:]
    out["thin_ls figures"] = rows
    out["thin ids (metadata)"] = {"ids": fin.get("thin_ids")}
    out["device bytes (sha256)"] = fin["sha256"]
    out["thin_check 0.9.0 rc"] = {"rc": fin["check"]["rc"]}
    out["used metadata blocks (final)"] = {
        "used": fin["last"].get("status", {}).get("used_metadata_blocks")}
    return out


class Tally:
    """Counts of compared and equal values per quantity, with examples."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}
        self.diffs: list[str] = []

    def add(self, name: str, equal: bool, where: str, a=None, b=None) -> None:
        if name in INFO_QUANTITIES and a is None and b is None:
            return                              # nothing to compare
        row = self.rows.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += bool(equal)
        if not equal and name not in INFO_QUANTITIES:
            self.diffs.append(f"{where}: {name}: kernel={_short(a)} sim={_short(b)}")

    def table(self) -> str:
        lines = [f"{'quantity':50} {'compared':>9} {'equal':>9} {'share':>8}"]
        for name, (n, eq) in self.rows.items():
            share = f"{100.0 * eq / n:.1f}%" if n else "-"
            label = name + (" (info)" if name in INFO_QUANTITIES else "")
            lines.append(f"{label:50} {n:9d} {eq:9d} {share:>8}")
        return "\n".join(lines)

    def ok(self) -> bool:
        """True if every required quantity agreed everywhere."""
        return all(n == eq for name, (n, eq) in self.rows.items()
                   if name not in INFO_QUANTITIES)


def _short(v, limit: int = 160) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def compare(kern: dict, sim: dict, tally: Tally | None = None) -> Tally:
    """Compare a kernel result with a sim result of the same trace."""
    tally = tally or Tally()
    name = kern["trace"]
    timing = set(kern.get("header", {}).get("timing_dependent", ()))
    if timing:                          # see generate(): compared as information
        plain = Tally()
        compare(_strip_timing(kern), _strip_timing(sim), plain)
        for q, (n, eq) in plain.rows.items():
            label = q + " [timing]" if q in timing else q
            row = tally.rows.setdefault(label, [0, 0])
            row[0] += n
            row[1] += eq
            if label != q:
                INFO_QUANTITIES.add(label)
        tally.diffs += [d for d in plain.diffs if not any(f": {q}:" in d for q in timing)]
        return tally
    ks, ss = kern["steps"], sim["steps"]
    if len(ks) != len(ss):
        tally.add("number of steps", False, name, len(ks), len(ss))
    for i, (a, b) in enumerate(zip(ks, ss, strict=False)):
        for q, f in STEP_QUANTITIES.items():
            va, vb = f(a), f(b)
            tally.add(q, va == vb, f"{name} step {i} ({a['op']})", va, vb)
    fa, fb = final_quantities(kern), final_quantities(sim)
    for q in fa:
        da, db = fa[q], fb.get(q, {})
        for key in sorted(set(da) | set(db), key=str):
            va, vb = da.get(key), db.get(key)
            if q.startswith("device bytes") and va != vb:
                ba = kern["final"].get("blocks", {}).get(key, {})
                bb = sim["final"].get("blocks", {}).get(key, {})
                diff = sorted((k for k in set(ba) | set(bb) if ba.get(k) != bb.get(k)), key=int)
                va, vb = {k: ba.get(k) for k in diff[:4]}, {k: bb.get(k) for k in diff[:4]}
                tally.add(q, False, f"{name} final dev {key} ({len(diff)} blocks differ: "
                          f"{' '.join(diff[:12])})", va, vb)
                continue
            if q.startswith("mappings") and va != vb and va is not None and vb is not None:
                diff = sorted(k for k in set(va) | set(vb) if va.get(k) != vb.get(k))
                va = {k: va.get(k) for k in diff[:4]}
                vb = {k: vb.get(k) for k in diff[:4]}
                tally.add(q, False, f"{name} final dev {key} ({len(diff)} vblocks differ)",
                          va, vb)
                continue
            tally.add(q, va == vb, f"{name} final {key}", va, vb)
    return tally


def _strip_timing(res: dict) -> dict:
    out = dict(res)
    out["header"] = {k: v for k, v in res.get("header", {}).items() if k != "timing_dependent"}
    return out


def report(tally: Tally, max_diffs: int = 40) -> str:
    text = tally.table()
    if tally.diffs:
        text += f"\n\n{len(tally.diffs)} differences (first {max_diffs}):\n"
        text += "\n".join(tally.diffs[:max_diffs])
    return text
