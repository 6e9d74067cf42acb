"""The table that bench/run_all.py prints: Scanyard's figures, its references',
the ratios and issue 9's goals."""
from __future__ import annotations

GOALS = {"zip/bare": 1.3, "zip/orthanc": 3.0, "dicom1/bare": 0.9, "dicom1/orthanc": 1.0,
         "dicom4/dicom1": 2.0, "archive 2000 files s": 1.0, "p95 ms": 200, "memory MB": 300}
WIDTHS = (42, 32, 38, 16, 16)


def show(figures: dict) -> None:
    data = figures.get("data", {})
    print(f"\nScanyard, {figures['started'].replace('T', ' ')}, {figures['cores']} cores "
          f"(load {figures['load']:.1f} at the start)")
    if "parallel" in figures:
        print(f"this machine: {figures['cores']} processes at once did "
              f"{figures['parallel']:.2f}x the work of one (bench/cores.py)")
    if "file_creation" in figures:
        made = figures["file_creation"]
        print(f"creating a file of 4 KB in the data folder: {made['alone']:.2f} ms alone, "
              f"{made['at_once']:.2f} ms with {figures['cores']} processes at once")
    if data:
        print(f"data: {data['studies']} studies x {data['series']} series x {data['images']} "
              f"MR images of {data['size']}x{data['size']} = {data['count']:,} instances, "
              f"{data['bytes'] / 1e6:.0f} MB (zip {data['zip_bytes'] / 1e6:.0f} MB)")
    if "site_script" in figures:
        print(f"the site anonymization script in the zip upload: {figures['site_script']}")
    print()
    rows = [("measure", "Scanyard", "reference", "ratio (rounds)", "goal")]
    for part in (_zip_rows, _dicom_rows, _archive_rows, _listing_rows, _memory_rows):
        rows += part(figures)
    for row in rows:
        print("  " + "  ".join(f"{cell:<{w}}" if i < 3 else f"{cell:>{w}}"
                               for i, (cell, w) in enumerate(zip(row, WIDTHS, strict=True))))


def _missing(step: dict | None, name: str) -> list[tuple]:
    if step is None:
        return [(name, "skipped", "", "", "")]
    return [(name, step["missing"], "", "", "")] if "missing" in step else []


def _goal(value: float | None, goal: float, unit: str = "x") -> str:
    """Return "goal: ok" or "goal: MISSED"; ratios must reach the goal, the rest stay below."""
    if value is None:
        return ""
    if unit == "x":
        return f">= {goal:g}x: {'ok' if value >= goal else 'MISSED'}"
    return f"< {goal:g} {unit}: {'ok' if value < goal else 'MISSED'}"


def _spread(value: float, per_round: list[float]) -> str:
    """Return a ratio of medians with the range of the rounds' own ratios:
    how much the machine moved within the run."""
    if len(per_round) < 2:
        return f"{value:.2f}"
    return f"{value:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def _per_round(ours: dict, theirs: dict) -> list[float]:
    """Return our rate over theirs round by round (each measured in the same
    round), or each of our rounds over their one figure."""
    mine = ours.get("rates") or []
    their = theirs.get("rates") or ([theirs["rate"]] if theirs.get("rounds", 1) == 1 else [])
    if len(their) == 1:
        return [rate / their[0] for rate in mine]
    if len(mine) != len(their):
        return []
    return [a / b for a, b in zip(mine, their, strict=True)]


def _rate(r: dict) -> str:
    return f"{r['rate']:.0f} inst/s, {r['mb_per_s']:.0f} MB/s"


def _zip_rows(f: dict) -> list[tuple]:
    step = f.get("zip")
    if step is None or "missing" in step:
        return _missing(step, "HTTP zip upload to READY")
    ours, theirs = step["scanyard"], step.get("orthanc")
    if "missing" in ours:
        rows = [("HTTP zip upload to READY", ours["missing"], "", "", "")]
        if theirs:
            rows.append(("", "", f"Orthanc {_rate(theirs)}", "", ""))
        return rows
    rows = [("HTTP zip upload to READY", _rate(ours), "bare loop (1 process)",
             _spread(ours["bare_ratio"], ours.get("bare_ratios") or []),
             _goal(ours["bare_ratio"], GOALS["zip/bare"]))]
    if theirs:
        ratio = ours["rate"] / theirs["rate"]
        rows.append(("", "", f"Orthanc {_rate(theirs)}", _spread(ratio, _per_round(ours, theirs)),
                     _goal(ratio, GOALS["zip/orthanc"])))
    return rows


def _dicom_rows(f: dict) -> list[tuple]:
    step = f.get("dicom")
    if step is None or "missing" in step:
        return _missing(step, "DICOM receiver")
    rows = []
    for n in (1, 4):
        ours = step[f"scanyard x{n}"]
        label = f"DICOM receiver, {n} association{'s' if n > 1 else ''}"
        refs = [("bare", "bare pynetdicom", GOALS["dicom1/bare"] if n == 1 else None),
                ("orthanc", "Orthanc", GOALS["dicom1/orthanc"] if n == 1 else None),
                ("storescp", "DCMTK storescp", None)]
        if n == 4:
            one = step["scanyard x1"]
            rows.append((label, _rate(ours), "Scanyard, 1 association",
                         _spread(ours["rate"] / one["rate"], _per_round(ours, one)),
                         _goal(ours["rate"] / one["rate"], GOALS["dicom4/dicom1"])))
            label = ""
        for kind, name, goal in refs:
            theirs = step.get(f"{kind} x{n}")
            if theirs:
                ratio = ours["rate"] / theirs["rate"]
                their_one = step.get(f"{kind} x1") if n == 4 else None
                gain = f" ({theirs['rate'] / their_one['rate']:.2f}x 1)" if their_one else ""
                rows.append((label, _rate(ours) if label else "",
                             f"{name} {theirs['rate']:.0f} inst/s{gain}",
                             _spread(ratio, _per_round(ours, theirs)),
                             _goal(ratio, goal) if goal else ""))
                label = ""
        rows.append(("  until every session is READY", f"{ours['ready']:.1f} s", "", "", ""))
    return rows


def _archive_rows(f: dict) -> list[tuple]:
    rows = []
    step = f.get("dicom") or {}
    a = (step.get("scanyard x1") or {}).get("archive") if "missing" not in step else None
    if a and a["jobs"]:
        count, jobs = f["data"]["count"], a["jobs"]
        # The goal is 2,000 files in one session; sessions each add their own fixed costs.
        goal = _goal(sum(jobs), GOALS["archive 2000 files s"], "s") if count >= 2000 else ""
        rows.append((f"archiving {a['sessions']} sessions, {count:,} files",
                     f"jobs {sum(jobs):.2f} s in all", f"slowest job {max(jobs):.2f} s", "",
                     goal))
        rows.append(("  until the last is archived", f"{a['wall']:.2f} s", "", "", ""))
    ours = (f.get("zip") or {}).get("scanyard") or {}
    if "archive_s" in ours:
        rows.append((f"archiving the uploaded session, {ours['files']:,} files",
                     f"job {ours['archive_job_s']:.2f} s", "", "",
                     _goal(ours["archive_job_s"], GOALS["archive 2000 files s"], "s")))
        rows.append(("  until its page answers", f"{ours['archive_s']:.2f} s", "", "", ""))
    return rows


def _listing_rows(f: dict) -> list[tuple]:
    step = f.get("listing")
    if step is None or "missing" in step:
        return _missing(step, "listings")
    rows = []
    for kind, test in (("pages", lambda name: not name.startswith("REST")),
                       ("REST lists", lambda name: name.startswith("REST"))):
        worst = [(t["p95"], t["median"], name, user.removeprefix("bench-"))
                 for user, timings in step["timings"].items()
                 for name, t in timings.items() if test(name)]
        label = f"{kind} p95, {step['files']:,} files"
        p95, median, name, user = max(worst)
        rows.append((label, f"worst {p95:.0f} ms, median {median:.0f}", f"{name} ({user})", "",
                     _goal(p95, GOALS["p95 ms"], "ms")))
    return rows


def _memory_rows(f: dict) -> list[tuple]:
    peaks: dict[str, float] = {}
    theirs: dict[str, float] = {}
    dicom, zips = f.get("dicom") or {}, f.get("zip") or {}
    for result in dicom.values() if "missing" not in dicom else ():
        for role, mb in (result.get("memory") or {}).items():
            target = theirs if role == "Orthanc" else peaks
            target[role] = max(target.get(role, 0), mb)
    peaks.update((zips.get("scanyard") or {}).get("memory") or {})
    if zips.get("orthanc memory"):
        theirs["Orthanc (zip)"] = zips["orthanc memory"]["Orthanc"]
    if (f.get("listing") or {}).get("peak_rss_mb"):
        peaks["listings (fill + requests)"] = f["listing"]["peak_rss_mb"]
    rows, others = [], [f"{role} {mb:.0f} MB" for role, mb in sorted(theirs.items())]
    for n, (role, mb) in enumerate(sorted(peaks.items())):
        rows.append(("peak memory" if n == 0 else "", f"{mb:.0f} MB {role}",
                     others[n] if n < len(others) else "", "",
                     _goal(mb, GOALS["memory MB"], "MB")))
    return rows
