#!/usr/bin/env python3
"""Per-kernel summary of an Nsight Compute CSV export, as a markdown table.

Input: what `ncu --import REPORT --csv --page raw` prints (scripts/profile-ncu.sh): a header row
("ID", "Process ID", ..., "Kernel Name", ..., then one column per metric), a row of units, then one
row per kernel launch. Lines before the header (the profiled program's own output, ==PROF== lines)
are skipped; numbers may carry thousands separators; a metric the GPU cannot collect reads "n/a".

Output: one row per kernel name, the kernels taking most time first: launches, total and mean
duration, achieved DRAM bandwidth, registers per thread, achieved occupancy.

    python3 scripts/ncu_summary.py ncu.csv [--out summary.md]
"""
import argparse
import csv
import sys

DURATION = "gpu__time_duration.sum"
DRAM_BW = "dram__bytes.sum.per_second"
REGISTERS = "launch__registers_per_thread"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
# What scripts/profile-ncu.sh asks ncu for (keep the two in step).
METRICS = [DURATION, DRAM_BW, REGISTERS, OCCUPANCY]

TIME_SCALE_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3,
                 "msecond": 1e3, "s": 1e6, "second": 1e6}
PREFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def number(text):
    """A float from an ncu cell ("1,234.5", "n/a" -> None)."""
    text = text.strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def to_us(value, unit):
    if unit not in TIME_SCALE_US:
        raise ValueError(f"unknown time unit {unit!r} for {DURATION}")
    return value * TIME_SCALE_US[unit]


def to_gb_per_s(value, unit):
    """byte/second, Kbyte/second, ..., also "B/s"-style abbreviations, to GB/s (1e9 bytes/s)."""
    size, _, per = unit.partition("/")
    if per not in ("second", "s", "sec"):
        raise ValueError(f"unknown bandwidth unit {unit!r} for {DRAM_BW}")
    for p, scale in PREFIX.items():
        if size in (p + "byte", p + "B"):
            return value * scale / 1e9
    raise ValueError(f"unknown bandwidth unit {unit!r} for {DRAM_BW}")


def read_rows(lines):
    """(header, units, launch rows) of the CSV that starts at the "ID" header line."""
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID",')), None)
    if start is None:
        raise ValueError("no ncu CSV header (a line starting with \"ID\",) found; "
                         "was this written by `ncu --csv --page raw`?")
    rows = list(csv.reader(lines[start:]))
    header = rows[0]
    if "Kernel Name" not in header or DURATION not in header:
        raise ValueError(f"the CSV lacks the 'Kernel Name' or '{DURATION}' column")
    units, launches = rows[1], [r for r in rows[2:] if len(r) == len(header)]
    return header, units, launches


def summarize(lines):
    header, units, launches = read_rows(lines)
    col = {name: i for i, name in enumerate(header)}
    kernels = {}
    for r in launches:
        name = r[col["Kernel Name"]]
        dur = number(r[col[DURATION]])
        if dur is None:
            continue
        us = to_us(dur, units[col[DURATION]])
        k = kernels.setdefault(name, {"n": 0, "us": 0.0, "bw_us": 0.0, "bw_w": 0.0,
                                      "occ_us": 0.0, "occ_w": 0.0, "regs": set()})
        k["n"] += 1
        k["us"] += us
        if DRAM_BW in col:
            bw = number(r[col[DRAM_BW]])
            if bw is not None:
                k["bw_us"] += to_gb_per_s(bw, units[col[DRAM_BW]]) * us
                k["bw_w"] += us
        if OCCUPANCY in col:
            occ = number(r[col[OCCUPANCY]])
            if occ is not None:
                k["occ_us"] += occ * us
                k["occ_w"] += us
        if REGISTERS in col:
            regs = number(r[col[REGISTERS]])
            if regs is not None:
                k["regs"].add(int(regs))
    return kernels


def table(kernels):
    total = sum(k["us"] for k in kernels.values()) or 1.0
    out = ["| kernel | launches | total µs | share | mean µs | DRAM GB/s | registers/thread | achieved occupancy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, k in sorted(kernels.items(), key=lambda kv: -kv[1]["us"]):
        bw = f"{k['bw_us'] / k['bw_w']:.1f}" if k["bw_w"] else "n/a"
        occ = f"{k['occ_us'] / k['occ_w']:.1f} %" if k["occ_w"] else "n/a"
        regs = "/".join(str(r) for r in sorted(k["regs"])) or "n/a"
        out.append(f"| {name} | {k['n']} | {k['us']:.1f} | {100 * k['us'] / total:.1f} % | "
                   f"{k['us'] / k['n']:.2f} | {bw} | {regs} | {occ} |")
    out.append(f"| **all kernels** | {sum(k['n'] for k in kernels.values())} | {total:.1f} | 100 % | | | | |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="output of `ncu --import REPORT --csv --page raw`")
    ap.add_argument("--out", help="also write the table to this file")
    a = ap.parse_args()
    try:
        with open(a.csv, newline="") as f:
            kernels = summarize(f.read().splitlines())
    except (OSError, ValueError) as e:
        sys.exit(f"ncu_summary: {a.csv}: {e}")
    if not kernels:
        sys.exit(f"ncu_summary: {a.csv}: no kernel launches with a duration; did the profiled "
                 "range hold any kernels (ncu --profile-from-start off needs cuProfilerStart)?")
    md = table(kernels)
    print(md, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
