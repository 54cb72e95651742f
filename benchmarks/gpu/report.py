"""gpu_results.json (benchmarks/gpu/suite.py) -> the Markdown tables for BENCHMARKS.md: a
header with the run's command, device, date, commit and measured device rates, then one
table per kernel (columns: time under jax.jit, TFLOP/s, GB/s, % of the measured matmul rate,
% of the measured copy bandwidth, bound, the eager call's time, cuDNN's rate and our ratio
to it).

    python -m benchmarks.gpu.report gpu_results.json [--out tables.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TITLES = {
    "flash_attention": "flash_attention (forward; forward + backward)",
    "flash_mla_attention": "flash_mla_attention (forward; forward + backward)",
    "mla_attention": "mla_attention decode (contiguous latent cache)",
    "paged_mla_attention": "paged_mla_attention decode (paged latent cache)",
    "page_attention": "page_attention decode (paged GQA)",
}
BYTES_NOTE = {
    "flash_attention": "Q, K, V read and O written once (fwd+bwd: also O, dO read, dQ, dK, dV written); "
                       "FLOPs 4·B·Hq·S·T·D, halved when causal, ×3.5 for fwd+bwd",
    "flash_mla_attention": "Q, K, V read and O written once, and the two projections (fwd+bwd as "
                           "flash_attention); FLOPs: attention at head dim L (as flash_attention) plus "
                           "the four projections 4 · 2·B·H·S·D·L (×3 for fwd+bwd)",
    "mla_attention": "latent cache + rope keys read once, w_kc and w_vc, query, rope query and output; "
                     "FLOPs 2·B·H·T·(576 + 512) at DeepSeek-V3 shapes",
    "paged_mla_attention": "the pages the contexts use (latent + rope), w_kc and w_vc, query, rope query, "
                           "output, block table and context lengths; FLOPs as mla_attention",
    "page_attention": "K and V of the pages the contexts use, query, output, block table and context "
                      "lengths; FLOPs 4·Hq·D·Σ context",
}
ORDER = ("flash_attention", "flash_mla_attention", "mla_attention", "paged_mla_attention", "page_attention")
COMPARED = {"flash_attention": ("cudnn", "cuDNN"), "flash_mla_attention": ("xla", "XLA")}


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _rate(x) -> str:
    """Three significant figures without an exponent: 644, 18.4, 0.0184."""
    if x is None:
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else (f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def case_label(row: dict) -> str:
    """The row's id without its kernel name and mode (those are the table's and a column)."""
    parts = row["id"].split(" ", 2)
    return parts[2] if len(parts) == 3 else row["id"]


def compared_cells(row: dict, name: str = "cudnn") -> tuple[str, str]:
    c = row.get(name)
    if not c:
        return "–", "–"
    if c.get("status") == "ok":
        return _rate(c.get("tflops")), (f"{c['ratio']:.2f}×" if c.get("ratio") is not None else "–")
    if c.get("status") == "skipped":
        return "skipped¹", "–"
    return "error²", "–"


def eager_cell(row: dict) -> str:
    e = row.get("eager")
    if not e:
        return "–"
    return _num(e["time"]["median_s"] * 1e6, ".1f") if "time" in e else "error"


def _mib(n) -> str:
    return "–" if n is None else f"{n / 2 ** 20:,.0f}"


def flash_twin(row: dict, rows: list[dict]) -> dict | None:
    """The flash_attention row at a flash_mla_attention row's shapes (its batch, seq, heads,
    head_dim, causal, mode and dtype; one kv head per query head, keys as long as queries;
    neither with an optional input)."""
    d = row["dims"]
    for r in rows:
        f = r["dims"]
        if (r["kernel"] == "flash_attention" and r["mode"] == row["mode"] and not r.get("error")
                and r["dtype"] == row["dtype"] and not r.get("present") and not row.get("present")
                and (f["batch"], f["seq"], f["kv_seq"], f["q_heads"], f["kv_heads"], f["head_dim"])
                == (d["batch"], d["seq"], d["seq"], d["heads"], d["heads"], d["head_dim"])
                and bool(r["static"].get("causal")) == bool(row["static"].get("causal"))
                and all(r["static"].get(k) is None for k in ("sliding_window", "logits_soft_cap"))):
            return r
    return None


def header(doc: dict) -> list[str]:
    rates = doc.get("device_rates") or {}
    copy, mm = rates.get("copy") or {}, rates.get("matmul") or {}
    dev = doc.get("device") or {}
    copy_s = f"{copy['gbps']:.0f} GB/s" if "gbps" in copy else f"not measured ({copy.get('error')})"
    mm_s = (f"{mm['tflops']:.1f} TFLOP/s (n = {mm['n']})" if "tflops" in mm
            else f"not measured ({mm.get('error')})")
    ridge = rates.get("ridge_flops_per_byte")
    floor = rates.get("call_floor") or {}
    floor_s = (f" A jitted one-kernel call on a 4 KB array takes {floor['us']:.1f} µs back to back (the host's "
               "cost per jitted call: a row near it is paced by the host)." if "us" in floor else "")
    lines = [
        f"Command: `{doc.get('command')}` · device: {dev.get('kind')} ({dev.get('platform')}) · "
        f"{doc.get('date')} · commit {doc.get('commit')} · jax {doc.get('jax')}"
        + (" · **smoke run (tiny shapes; not a benchmark)**" if doc.get("mode") == "smoke" else ""),
        "",
        f"Measured in the same process: device-to-device copy {copy_s} (jitted `jnp.copy`, read + write "
        f"counted), dense bf16 matmul {mm_s}"
        + (f"; ridge point {ridge:.0f} FLOP/byte." if ridge else ".") + floor_s,
    ]
    t = (doc.get("settings") or {})
    lines += ["", f"Each figure: median over {t.get('iters')} samples of back-to-back calls of "
              "`jax.jit` over `ejaot.load(store).call` (the whole call, as a server's jitted step makes "
              "it), host wall clock with `block_until_ready` per sample, after warm-up; eager µs: the "
              "same call made eagerly (the bundle's Python dispatch on every call); % matmul and % copy "
              "are of the rates above; bound: arithmetic intensity (minimum bytes) against the ridge "
              "point."]
    return lines


def kernel_table(kernel: str, rows: list[dict], all_rows: list[dict] = ()) -> list[str]:
    flash = kernel in COMPARED
    other, other_label = COMPARED.get(kernel, ("cudnn", "cuDNN"))
    latent = kernel == "flash_mla_attention"
    cols = (["case"] + (["mode"] if flash else []) + ["µs", "TFLOP/s", "GB/s", "% matmul", "% copy", "bound"]
            + ["eager µs"])
    cols += [f"{other_label} TFLOP/s", f"vs {other_label}"] if flash else []
    cols += ["scratch MiB (ours / XLA)", "TFLOP/s vs flash_attention"] if latent else []
    out = [f"**{TITLES.get(kernel, kernel)}**", "", "| " + " | ".join(cols) + " |",
           "|" + "|".join(["---"] * (2 if flash else 1) + ["---:"] * (len(cols) - (2 if flash else 1))) + "|"]
    notes = []
    for r in rows:
        label = case_label(r)
        if r.get("warning"):
            label += " †"
            notes.append(f"† {r['id']}: {r['warning']}")
        lead = [label] + ([r.get("mode", "")] if flash else [])
        if r.get("error"):
            out.append("| " + " | ".join(lead + [f"error: {r['error'][:120]}"] + [""] * (len(cols) - len(lead) - 1))
                       + " |")
            continue
        cells = lead + [_num(r["time"]["median_s"] * 1e6, ".1f"), _rate(r.get("tflops")),
                        _rate(r.get("gbps")), _pct(r.get("frac_matmul")), _pct(r.get("frac_copy")),
                        r.get("bound") or "–", eager_cell(r)]
        if flash:
            cells += list(compared_cells(r, other))
        if latent:
            twin = flash_twin(r, all_rows)
            cells += [f"{_mib(r.get('temp_bytes'))} / {_mib((r.get('xla') or {}).get('temp_bytes'))}",
                      f"{r['tflops'] / twin['tflops']:.2f}×" if twin and r.get("tflops") else "–"]
        out.append("| " + " | ".join(cells) + " |")
    reasons = sorted({(r.get(other) or {}).get("reason") for r in rows
                      if (r.get(other) or {}).get("status") == "skipped"} - {None})
    errors = sorted({f"{r['id']}: {(r.get(other) or {}).get('error')}" for r in rows
                     if (r.get(other) or {}).get("status") == "error"})
    notes += [f"¹ {other_label} not run: {x}" for x in reasons] + [f"² {other_label} failed: {x}" for x in errors]
    if latent:
        notes.append("scratch: the compiled program's temp allocation (XLA's memory analysis); TFLOP/s "
                     "vs flash_attention: our rate (projections counted) over flash_attention's at the "
                     "same batch, seq, heads, head_dim and mask, from the same run (a rate, not a time: "
                     "the two count different FLOPs).")
    if flash:
        back = sorted({r["backward"] for r in rows if r.get("backward")})
        notes += [f"fwd+bwd: the backward is {b}." for b in back]
    notes.append("GB/s: the minimum traffic of one call, " + BYTES_NOTE[kernel] + " (benchmarks/gpu/roofline.py).")
    return out + ([""] + notes if notes else [])


def render(doc: dict) -> str:
    by_kernel: dict = {}
    for r in doc.get("rows", []):
        by_kernel.setdefault(r["kernel"], []).append(r)
    lines = header(doc)
    for k in sorted(by_kernel, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        lines += [""] + kernel_table(k, by_kernel[k], doc.get("rows", []))
    if doc.get("errors"):
        lines += ["", "Run-level errors: " + "; ".join(doc["errors"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="gpu_results.json")
    p.add_argument("--out", help="write the Markdown here (default: stdout)")
    a = p.parse_args(argv)
    text = render(json.loads(Path(a.results).read_text()))
    if a.out:
        Path(a.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
