"""Nsight Compute reports of benchmark cases, summarized: per kernel of the profiled call,
its time and where that time goes (the fractions of the SM's, the tensor pipe's, the
load/store pipe's and DRAM's peak rates that ncu measured, occupancy, registers, and the warp stall
reasons that dominate), and per case the kernels' total against the case's FLOPs and bytes.

    python -m benchmarks.gpu.ncu_summary CASE.csv[:CASE.json] ... [--json F] [--markdown F]

Each CSV is `ncu --import CASE.ncu-rep --csv --page raw --print-units base` (one row per
profiled kernel, a units row first); the JSON beside it is profile.py's --meta (the case,
FLOPs, bytes). benchmarks/gpu/profile.sh makes both. Metrics missing from a report (another
ncu version, another section set) are left empty, never guessed.

Timings under ncu are of one kernel at a time (ncu serializes kernels, and flushes caches
before each replay), with the clocks left alone (--clock-control none); they are evidence of
where a kernel spends its time, not the benchmark's timings (suite.py).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path

# (column, metric names in order of preference; the first present is taken)
METRICS = {
    "time_ns": ("gpu__time_duration.sum",),
    "sm_pct": ("sm__throughput.avg.pct_of_peak_sustained_elapsed",),
    # the whole tensor pipe (wgmma and mma.sync alike); a per-instruction-kind metric
    # would read 0 for a kernel that uses the other kind
    "tensor_pct": ("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",),
    "lsu_pct": ("l1tex__data_pipe_lsu_wavefronts.avg.pct_of_peak_sustained_elapsed",),
    "dram_pct": ("dram__throughput.avg.pct_of_peak_sustained_elapsed",
                 "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
    "dram_bytes": ("dram__bytes.sum",),
    "issue_pct": ("smsp__issue_active.avg.pct_of_peak_sustained_active",),
    "occupancy_pct": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "registers": ("launch__registers_per_thread",),
    "smem_per_block": ("launch__shared_mem_per_block",),
    "grid": ("launch__grid_size",),
    "block": ("launch__block_size",),
}
STALL = re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$")
# every tensor-pipe metric the report holds is kept in the JSON (names differ across chips)
TENSOR = re.compile(r"^sm__(pipe|inst_executed_pipe)_tensor\w*\.avg\.pct_of_peak_sustained_active$")


def _number(text: str):
    t = text.strip().replace(",", "")
    if not t or t.lower() in ("n/a", "nan"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def read_raw_csv(text: str) -> list[dict]:
    """Rows of an `ncu --csv --page raw` export: {column: text}; the units row (the one
    whose "ID" is empty) dropped, and any lines ncu prints before the header (==PROF==)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no ncu raw CSV header (a line starting with \"ID\") in the report")
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    return [r for r in rows if (r.get("ID") or "").strip()]


def short_name(name: str, width: int = 60) -> str:
    """A kernel's name without its template arguments and parameter list."""
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            if depth == 0 and ch == "(":
                break
            depth += 1
            continue
        if ch in ">)":
            depth = max(0, depth - 1)
            continue
        if depth == 0:
            out.append(ch)
    s = "".join(out).strip().removeprefix("void ")
    return s if len(s) <= width else s[: width - 1] + "…"


def summarize_kernel(row: dict) -> dict:
    k = {"name": short_name(row.get("Kernel Name", "")), "full_name": row.get("Kernel Name", "")}
    for col, names in METRICS.items():
        k[col] = next((_number(row[n]) for n in names if n in row and _number(row[n]) is not None), None)
    stalls = {m.group(1): _number(v) for n, v in row.items() if (m := STALL.match(n)) and _number(v)}
    k["stalls"] = dict(sorted(stalls.items(), key=lambda kv: -kv[1]))
    k["tensor_metrics"] = {n: _number(v) for n, v in row.items() if TENSOR.match(n) and _number(v) is not None}
    return k


def summarize_case(csv_text: str, meta: dict | None) -> dict:
    kernels = [summarize_kernel(r) for r in read_raw_csv(csv_text)]
    total_ns = sum(k["time_ns"] or 0.0 for k in kernels)
    case = {"meta": meta or {}, "kernels": kernels, "kernel_time_us": total_ns / 1e3}
    if meta and total_ns:
        if meta.get("flops"):
            case["tflops"] = meta["flops"] / (total_ns * 1e-9) / 1e12
        if meta.get("bytes"):
            case["gbps"] = meta["bytes"] / (total_ns * 1e-9) / 1e9
    return case


def _fmt(v, spec=".0f"):
    return "" if v is None else format(v, spec)


def markdown(cases: list[dict]) -> str:
    out = []
    for c in cases:
        m = c["meta"]
        head = f"**{m.get('case', '?')}** ({m.get('call', '')})" if m else "**(no case description)**"
        rates = []
        if "tflops" in c:
            rates.append(f"{c['tflops']:.0f} TFLOP/s")
        if "gbps" in c:
            rates.append(f"{c['gbps']:.0f} GB/s")
        out.append(f"{head}: {len(c['kernels'])} kernels, {c['kernel_time_us']:.1f} µs in all"
                   + (f" ({', '.join(rates)} over that time)" if rates else ""))
        out.append("")
        out.append("| kernel | µs | SM % | tensor % | LSU % | DRAM % | issue % | occupancy % | regs | "
                   "smem KiB | grid × block | top stalls (cycles per issue) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for k in c["kernels"]:
            stalls = ", ".join(f"{n} {v:.1f}" for n, v in list(k["stalls"].items())[:3])
            smem = None if k["smem_per_block"] is None else k["smem_per_block"] / 1024
            shape = "" if k["grid"] is None else f"{k['grid']:.0f} × {_fmt(k['block'])}"
            out.append(f"| {k['name']} | {_fmt(k['time_ns'] and k['time_ns'] / 1e3, '.1f')} | {_fmt(k['sm_pct'])} | "
                       f"{_fmt(k['tensor_pct'])} | {_fmt(k['lsu_pct'])} | {_fmt(k['dram_pct'])} | "
                       f"{_fmt(k['issue_pct'])} | {_fmt(k['occupancy_pct'])} | {_fmt(k['registers'])} | "
                       f"{_fmt(smem, '.1f')} | {shape} | {stalls} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Summarizes ncu raw CSV exports of benchmark cases.")
    p.add_argument("reports", nargs="+", help="CASE.csv or CASE.csv:CASE.json (profile.py --meta)")
    p.add_argument("--json", help="write the summary as JSON here")
    p.add_argument("--markdown", help="write the Markdown tables here (default: print them)")
    args = p.parse_args(argv)
    cases = []
    for spec in args.reports:
        csv_path, _, meta_path = spec.partition(":")
        meta = json.loads(Path(meta_path).read_text()) if meta_path else None
        cases.append(summarize_case(Path(csv_path).read_text(), meta))
    text = markdown(cases)
    if args.json:
        Path(args.json).write_text(json.dumps(cases, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
