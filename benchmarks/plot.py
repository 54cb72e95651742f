"""`make bench`'s picture: benchmarks/results/*.json -> benchmarks/results/summary.png.

    python -m benchmarks.plot                      # validate every result file, render the PNG
    python -m benchmarks.plot --check              # validate only (no matplotlib needed)
    python -m benchmarks.plot record startup bench-results/startup.json   # what make bench
    python -m benchmarks.plot record demo bench-results/demo.out          # measured, as results

Two panels: (a) ready-to-serve start-up time on the host that ran `make bench` (plain JIT,
JAX's warm persistent compilation cache, ejaot's stored kernels, ejaot's stored steps);
(b) kernel speed against cuDNN from the recorded GPU results (transcribed from
BENCHMARKS.md: they cannot be measured on a CPU host). Each panel's caption names the
device, date, commit and command of its figures. Rendering uses matplotlib's Agg backend
with its default style, reads nothing but the result files and writes the same bytes for
the same inputs. matplotlib is imported only to render: validating and recording need
nothing outside the standard library (tests/product/test_bench_plot.py validates every file).

Result file schema (version 1). Each file is one JSON object:

  schema   1 (int)
  kind     "startup" or "kernel_vs_cudnn"
  title    str, one line: what was measured
  device   str: the machine, as the measurement states it
  date     str, UTC: "YYYY-MM-DD", optionally " HH:MM" or " HH:MM–HH:MM" (en dash or -)
  command  str: the command that produced the figures
  commit   str: the commit whose sources were measured, 7-40 hex digits; "+dirty" appended
           when the working tree's sources differed from it
  source   "make bench" (measured by it on the host named in `device`) or
           "BENCHMARKS.md table <heading>" (transcribed from that table, figures unchanged)
  notes    str, optional
  rows     non-empty list; its items depend on `kind`:

  kind "startup": seconds until a server is ready to serve; also `unit`: "s".
    row = {"measure": str (unique in the file), "label": str (the panel's wording),
           "values": {MODE: seconds > 0},
           "range": {MODE: [low, high]}  optional, low <= value <= high,
           "count": int >= 1             optional, how many entries a median is over}
    MODE is one of
      "jit"            plain JIT: traced and compiled at start-up
      "warm_cache"     the same with JAX's persistent compilation cache already filled
      "ejaot_kernels"  ejaot serving stored kernels
      "ejaot_steps"    ejaot serving the model's whole stored steps
    and `values` holds "jit" and at least one "ejaot_*" mode.

  kind "kernel_vs_cudnn": a kernel's speed against cuDNN's, timed in the same call; also
  `kernel` (str), `dtype` (str), `unit`: "TFLOP/s".
    row = {"shape": str, "time": str or null (the call's time where the table marks a
                                              row as another call, "HH:MM"),
           "ejaot": {"fwd": T, "fwd_bwd": T}, "cudnn": {"fwd": T, "fwd_bwd": T},
           "xla": {"fwd": T}  optional,
           "fwd_vs_cudnn": number > 0, "fwd_bwd_vs_cudnn": number > 0}
    with T = {"tflops": number > 0, "ms": number > 0}. The ratios are the table's own
    (from unrounded timings); each must agree with ejaot's TFLOP/s over cuDNN's within 0.015.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SCHEMA = 1
KINDS = ("startup", "kernel_vs_cudnn")
MODES = ("jit", "warm_cache", "ejaot_kernels", "ejaot_steps")          # the plot's order
MODE_LABELS = {"jit": "plain JIT", "warm_cache": "XLA warm persistent cache",
               "ejaot_kernels": "ejaot: stored kernels", "ejaot_steps": "ejaot: stored steps"}
MODE_COLORS = {"jit": "#9e9e9e", "warm_cache": "#e69f00", "ejaot_kernels": "#56b4e9",
               "ejaot_steps": "#0b4f8a"}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}([–-]\d{2}:\d{2})?)?$")
COMMIT = re.compile(r"^[0-9a-f]{7,40}(\+dirty)?$")
RATIO_TOLERANCE = 0.015


# -- the schema ------------------------------------------------------------------------------
def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _str(x) -> bool:
    return isinstance(x, str) and x.strip() != "" and "\n" not in x


def validate(doc) -> list[str]:
    """Every way `doc` departs from the schema (module docstring), as messages; [] if none."""
    if not isinstance(doc, dict):
        return ["a result file holds one JSON object"]
    errors = []
    common = {"schema", "kind", "title", "device", "date", "command", "commit", "source", "rows"}
    extra = {"startup": {"unit"}, "kernel_vs_cudnn": {"unit", "kernel", "dtype"}}.get(doc.get("kind"), set())
    for key in sorted(common | extra):
        if key not in doc:
            errors.append(f"missing key {key!r}")
    unknown = set(doc) - common - extra - {"notes"}
    if unknown:
        errors.append(f"unknown keys {sorted(unknown)}")
    if "schema" in doc and doc["schema"] != SCHEMA:
        errors.append(f"schema must be {SCHEMA}, not {doc['schema']!r}")
    if "kind" in doc and doc["kind"] not in KINDS:
        errors.append(f"kind must be one of {KINDS}, not {doc['kind']!r}")
    for key in ("title", "device", "command") + tuple(sorted(extra - {"unit"})):
        if key in doc and not _str(doc[key]):
            errors.append(f"{key} must be a non-empty one-line string")
    if "notes" in doc and not isinstance(doc["notes"], str):
        errors.append("notes must be a string")
    if "date" in doc and not (isinstance(doc["date"], str) and DATE.match(doc["date"])):
        errors.append(f"date {doc['date']!r} is not 'YYYY-MM-DD[ HH:MM[–HH:MM]]'")
    if "commit" in doc and not (isinstance(doc["commit"], str) and COMMIT.match(doc["commit"])):
        errors.append(f"commit {doc['commit']!r} is not 7-40 lowercase hex digits (+dirty)")
    if "source" in doc:
        src = doc["source"]
        if not (src == "make bench" or (isinstance(src, str) and _str(src)
                                        and src.startswith("BENCHMARKS.md table ") and len(src) > 20)):
            errors.append(f"source must be 'make bench' or 'BENCHMARKS.md table <heading>', not {src!r}")
    rows = doc.get("rows")
    if "rows" in doc and not (isinstance(rows, list) and rows):
        errors.append("rows must be a non-empty list")
        rows = []
    if doc.get("kind") == "startup":
        if "unit" in doc and doc["unit"] != "s":
            errors.append("a startup result's unit is 's'")
        errors += _validate_startup_rows(rows or [])
    elif doc.get("kind") == "kernel_vs_cudnn":
        if "unit" in doc and doc["unit"] != "TFLOP/s":
            errors.append("a kernel_vs_cudnn result's unit is 'TFLOP/s'")
        errors += _validate_cudnn_rows(rows or [])
    return errors


def _validate_startup_rows(rows) -> list[str]:
    errors, seen = [], set()
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            errors.append(f"{where} is not an object")
            continue
        unknown = set(row) - {"measure", "label", "values", "range", "count"}
        if unknown:
            errors.append(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("measure", "label"):
            if not _str(row.get(key)):
                errors.append(f"{where}.{key} must be a non-empty one-line string")
        if row.get("measure") in seen:
            errors.append(f"{where}.measure {row['measure']!r} repeats")
        seen.add(row.get("measure"))
        values = row.get("values")
        if not isinstance(values, dict) or not values:
            errors.append(f"{where}.values must be an object of mode: seconds")
            continue
        for mode, v in values.items():
            if mode not in MODES:
                errors.append(f"{where}.values: unknown mode {mode!r} (one of {MODES})")
            elif not _positive(v):
                errors.append(f"{where}.values.{mode} must be a positive number, not {v!r}")
        if "jit" not in values or not any(m.startswith("ejaot_") for m in values):
            errors.append(f"{where}.values must hold 'jit' and an 'ejaot_*' mode")
        if "range" in row:
            rng = row["range"]
            if not isinstance(rng, dict):
                errors.append(f"{where}.range must be an object of mode: [low, high]")
            else:
                for mode, lh in rng.items():
                    if not _positive(values.get(mode)):
                        errors.append(f"{where}.range.{mode} has no valid value")
                    elif not (isinstance(lh, list) and len(lh) == 2 and all(_positive(x) for x in lh)
                              and lh[0] <= values[mode] <= lh[1]):
                        errors.append(f"{where}.range.{mode} must be [low, high] around its value")
        if "count" in row and not (isinstance(row["count"], int) and not isinstance(row["count"], bool)
                                   and row["count"] >= 1):
            errors.append(f"{where}.count must be an integer >= 1")
    return errors


def _validate_timing(t, where) -> list[str]:
    if not (isinstance(t, dict) and set(t) == {"tflops", "ms"}):
        return [f"{where} must be {{'tflops': ..., 'ms': ...}}"]
    return [f"{where}.{k} must be a positive number" for k in ("tflops", "ms") if not _positive(t[k])]


def _validate_cudnn_rows(rows) -> list[str]:
    errors = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            errors.append(f"{where} is not an object")
            continue
        required = {"shape", "time", "ejaot", "cudnn", "fwd_vs_cudnn", "fwd_bwd_vs_cudnn"}
        for key in sorted(required - set(row)):
            errors.append(f"{where}: missing key {key!r}")
        unknown = set(row) - required - {"xla"}
        if unknown:
            errors.append(f"{where}: unknown keys {sorted(unknown)}")
        if "shape" in row and not _str(row["shape"]):
            errors.append(f"{where}.shape must be a non-empty one-line string")
        if row.get("time") is not None and not (isinstance(row["time"], str)
                                                and re.match(r"^\d{2}:\d{2}$", row["time"])):
            errors.append(f"{where}.time must be null or 'HH:MM'")
        ok = True
        for side, passes in (("ejaot", ("fwd", "fwd_bwd")), ("cudnn", ("fwd", "fwd_bwd")), ("xla", ("fwd",))):
            if side not in row:
                ok = ok and side == "xla"
                continue
            if not (isinstance(row[side], dict) and set(row[side]) == set(passes)):
                errors.append(f"{where}.{side} must hold exactly {list(passes)}")
                ok = False
                continue
            for p in passes:
                bad = _validate_timing(row[side][p], f"{where}.{side}.{p}")
                errors += bad
                ok = ok and not bad
        for p in ("fwd", "fwd_bwd"):
            ratio = row.get(f"{p}_vs_cudnn")
            if f"{p}_vs_cudnn" in row and not _positive(ratio):
                errors.append(f"{where}.{p}_vs_cudnn must be a positive number")
            elif ok and _positive(ratio):
                measured = row["ejaot"][p]["tflops"] / row["cudnn"][p]["tflops"]
                if abs(measured - ratio) > RATIO_TOLERANCE:
                    errors.append(f"{where}.{p}_vs_cudnn {ratio} disagrees with the TFLOP/s "
                                  f"({measured:.3f}): a transcription error?")
    return errors


def load_results(directory: Path = RESULTS) -> list[tuple[Path, dict]]:
    """Every result file of `directory`, validated, in name order; SystemExit naming the
    first malformed one."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError as e:
            raise SystemExit(f"{path}: not JSON: {e}")
        errors = validate(doc)
        if errors:
            raise SystemExit(f"{path}: " + "; ".join(errors))
        out.append((path, doc))
    return out


# -- recording what make bench measured ----------------------------------------------------
def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"record: a result names the commit measured, which needs a git checkout ({e})")


def measured_commit() -> str:
    """HEAD, with "+dirty" when the sources a benchmark runs differ from it."""
    head = _git("rev-parse", "--short=7", "HEAD")
    changed = _git("status", "--porcelain", "--", "ejaot", "kernels", "examples", "manifests",
                   "benchmarks/startup.py", "pyproject.toml", "requirements/base.txt")
    return head + ("+dirty" if changed else "")


def host_device() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or 'CPU'}, {os.cpu_count()} cores, no accelerator"


def _utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime())


def record_startup(res: dict, command: str) -> dict:
    """benchmarks/startup.py's startup.json -> a startup result: each mode's first-call time,
    median over the start-up-bound entries (the criterion of startup.py's own table)."""
    if res.get("base", "jit") != "jit":
        raise SystemExit("record startup: the plot compares plain JIT; this run compiled the portable tier")
    bound = [r for r in res["rows"] if r["ejaot_steady_s"] < 0.25 * r["jit_first_s"] and r["ejaot_overhead_s"] > 1e-3]
    if not bound:
        raise SystemExit("record startup: no start-up-bound entry in the results")
    values, ranges = {}, {}
    for src, mode in (("jit", "jit"), ("cache", "warm_cache"), ("ejaot", "ejaot_kernels")):
        firsts = [r[f"{src}_first_s"] for r in bound]
        values[mode] = round(statistics.median(firsts), 4)
        ranges[mode] = [round(min(firsts), 4), round(max(firsts), 4)]
    date = res["date"].removesuffix(" UTC")
    return {"schema": SCHEMA, "kind": "startup",
            "title": "One kernel entry: first result in a fresh process (cpu target, default manifest)",
            "device": f"{res.get('cpu') or 'CPU'}, {res['cores']} cores, no accelerator", "date": date,
            "command": command, "commit": measured_commit(), "source": "make bench", "unit": "s",
            "notes": (f"median over the {len(bound)} start-up-bound entries of {len(res['rows'])} timed "
                      f"({res['entries_in_store']} in the store); range: min and max; ejaot: "
                      "ejaot.load + bundle.call on the compiled tier"),
            "rows": [{"measure": "kernel_first_call", "label": "one kernel, first call "
                      f"(median of {len(bound)} entries)", "values": values, "range": ranges, "count": len(bound)}]}


def record_demo(summary: dict, command: str) -> dict:
    """examples/demo.py's last line -> a startup result (whole model, every bucket)."""
    names = {"jit": "jit", "warm_cache": "warm_cache", "ejaot": "ejaot_kernels", "steps": "ejaot_steps"}
    device = summary.get("device")
    device = host_device() if device in (None, "cpu") else device
    rows = []
    for key, label in (("buckets_s", "whole model, every bucket ready (weights loaded)"),
                       ("ready_s", "whole model, ready from process start")):
        rows.append({"measure": key, "label": label,
                     "values": {names[m]: v for m, v in summary[key].items() if m in names}})
    return {"schema": SCHEMA, "kind": "startup",
            "title": f"Whole model ready to serve: {summary['model']}, {summary['target']} target",
            "device": device, "date": _utc_now(), "command": command, "commit": measured_commit(),
            "source": "make bench", "unit": "s",
            "notes": (f"tokens match the plain-JAX reference: {summary.get('tokens_match')}; "
                      f"stored decode step vs jitted: {summary.get('decode_vs_jit')}; ejaot: stored "
                      "kernels inlined into each traced step (the step still compiles); stored steps: "
                      "the whole prefill/decode steps from the compiled tier"),
            "rows": rows}


def _write(doc: dict, path: Path) -> None:
    errors = validate(doc)
    if errors:
        raise SystemExit(f"refusing to write {path}: " + "; ".join(errors))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


# -- the picture -----------------------------------------------------------------------------
def _seconds(v: float) -> str:
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s"


def _ratio(r: float) -> str:
    return f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def _caption(docs: list[dict]) -> str:
    lines = []
    for d in docs:
        text = (f"{d['title']}. {d['device']} · {d['date']} UTC · commit {d['commit']} · "
                f"{d['command']} · source: {d['source']}")
        if any("range" in row for row in d["rows"]):
            text += " · whiskers: min–max over the entries"
        lines += textwrap.wrap(text, 100)
    return "\n".join(lines)


def _panel_startup(ax, docs: list[dict]) -> None:
    rows = [row for d in docs for row in d["rows"]]
    modes = [m for m in MODES if any(m in r["values"] for r in rows)]
    height = 0.8 / len(modes)
    labels, positions = [], []
    for i, row in enumerate(rows):
        y0 = len(rows) - 1 - i                           # the first row on top
        labels.append(textwrap.fill(row["label"], 26))
        positions.append(y0)
        present = [m for m in modes if m in row["values"]]
        for j, mode in enumerate(present):
            y = y0 + 0.4 - height * (j + 0.5) * len(modes) / len(present)
            v = row["values"][mode]
            xerr = None
            if mode in row.get("range", {}):
                lo, hi = row["range"][mode]
                xerr = [[v - lo], [hi - v]]
            ax.barh(y, v, height=height * 0.9 * len(modes) / len(present), color=MODE_COLORS[mode],
                    xerr=xerr, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"},
                    label=MODE_LABELS[mode] if i == 0 or mode not in rows[0]["values"] else None)
            text = _seconds(v)
            if mode.startswith("ejaot_"):
                text += f"  ({_ratio(row['values']['jit'] / v)} JIT"
                if "warm_cache" in row["values"]:
                    text += f", {_ratio(row['values']['warm_cache'] / v)} warm cache"
                text += ")"
            edge = row["range"][mode][1] if mode in row.get("range", {}) else v
            ax.text(edge * 1.08, y, text, va="center", fontsize=7.5,
                    fontweight="bold" if mode.startswith("ejaot_") else "normal")
    ax.set_xscale("log")
    lo = min(min(r["values"].values()) for r in rows)
    hi = max(max(r.get("range", {}).get(m, [0, v])[1] for m, v in r["values"].items()) for r in rows)
    ax.set_xlim(lo / 3, hi * 40)                        # room for the labels on the right
    ax.set_yticks(positions, labels, fontsize=8.5)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("seconds until ready to serve (log scale; lower is better)")
    devices = ", ".join(sorted({d["device"] for d in docs}))
    ax.set_title(f"(a) Start-up, ready to serve: {devices}", fontsize=11, loc="left", pad=24)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: [MODE_LABELS[m] for m in MODES].index(names[k]))
    ax.legend([handles[k] for k in order], [names[k] for k in order], fontsize=8, ncol=len(order),
              loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, handlelength=1.2, columnspacing=1.0)
    ax.grid(axis="x", which="major", alpha=0.3)


def _panel_cudnn(ax, docs: list[dict]) -> None:
    rows = [(d, row) for d in docs for row in d["rows"]]
    x = list(range(len(rows)))
    width = 0.38
    for k, (key, label, color) in enumerate((("fwd_vs_cudnn", "forward", "#0b4f8a"),
                                             ("fwd_bwd_vs_cudnn", "forward + backward", "#56b4e9"))):
        xs = [i + (k - 0.5) * width for i in x]
        vals = [row[key] for _, row in rows]
        ax.bar(xs, vals, width * 0.95, color=color, label=label)
        for xi, v in zip(xs, vals):
            ax.text(xi, v + 0.015, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="#c0392b", linewidth=1, linestyle="--", label="cuDNN (= 1.0)")
    names = []
    for d, row in rows:
        words = row["shape"].split()
        name = "\n".join((" ".join(words[:2]), " ".join(words[2:4]), " ".join(words[4:]))).strip()
        if len(docs) > 1:
            name = f"{d['kernel']}\n{name}"
        if row["time"]:
            name += f"\n(call at {row['time']})"
        names.append(name)
    ax.set_xticks(x, names, fontsize=7.5)
    ax.set_ylim(0, max(max(r["fwd_vs_cudnn"], r["fwd_bwd_vs_cudnn"]) for _, r in rows) * 1.18)
    ax.set_ylabel("ejaot TFLOP/s ÷ cuDNN TFLOP/s (higher is faster)")
    kernels = ", ".join(sorted({f"{d['kernel']} ({d['dtype']})" for d in docs}))
    devices = ", ".join(sorted({d["device"] for d in docs}))
    ax.set_title(f"(b) Kernel speed vs cuDNN (recorded): {kernels}, {devices}", fontsize=11, loc="left",
                 pad=24)
    ax.legend(fontsize=8, ncol=3, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)


def render(results: list[tuple[Path, dict]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcdefaults()                           # no matplotlibrc of this machine's
    startup = [d for _, d in results if d["kind"] == "startup"]
    cudnn = [d for _, d in results if d["kind"] == "kernel_vs_cudnn"]
    panels = [(p, docs) for p, docs in ((_panel_startup, startup), (_panel_cudnn, cudnn)) if docs]
    if not panels:
        raise SystemExit("no results to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels), 5.6), dpi=100, squeeze=False)
    for ax, (draw, docs) in zip(axes[0], panels):
        draw(ax, docs)
        ax.annotate(_caption(docs), xy=(0, 0), xycoords="axes fraction", xytext=(0, -62),
                    textcoords="offset points", va="top", ha="left", fontsize=6.8, color="#333333")
    fig.suptitle("ejaot benchmarks (benchmarks/results/*.json; `make bench`)", fontsize=12, x=0.01, ha="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.15,
                metadata={"Software": None}, pil_kwargs={"optimize": True})
    plt.close(fig)
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out} ({out.stat().st_size // 1024} KiB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("record", nargs="*", metavar="record {startup,demo} FILE",
                    help="turn a measurement of make bench into a result file instead of plotting")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=None,
                    help="the PNG (default RESULTS/summary.png), or the result file when recording")
    ap.add_argument("--command", default=None, help="when recording: the command that measured it")
    ap.add_argument("--check", action="store_true", help="validate the result files only")
    args = ap.parse_args(argv)
    if args.record:
        if len(args.record) != 3 or args.record[0] != "record" or args.record[1] not in ("startup", "demo"):
            ap.error("usage: record {startup,demo} FILE")
        what, path = args.record[1], Path(args.record[2])
        if what == "startup":
            doc = record_startup(json.loads(path.read_text()),
                                 args.command or "make bench (python -m benchmarks.startup)")
        else:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if not lines:
                raise SystemExit(f"{path} is empty: did examples/demo.py fail?")
            doc = record_demo(json.loads(lines[-1]), args.command or "make bench (python examples/demo.py)")
        _write(doc, args.out or args.results / f"cpu_{what}.json")
        return 0
    results = load_results(args.results)
    print(f"{len(results)} result files valid: {', '.join(p.name for p, _ in results)}")
    if not args.check:
        render(results, args.out or args.results / "summary.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
