"""Cross-compile time of a manifest for each TPU generation, on this (CPU-only) host.

Each generation is built into a fresh store in a fresh `ejaot build` process (libtpu's
compile-only topology; both tiers plus the Mosaic payloads). Results: <out>/tpu_compile.json
and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATIONS = ("tpu-v5e", "tpu-v5p", "tpu-v4", "tpu-v6e")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="manifests/default.toml")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--targets", default=",".join(GENERATIONS))
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "ejaot")
    rows = []
    for target in args.targets.split(","):
        with tempfile.TemporaryDirectory() as d:
            cmd = [exe, "build", "--manifest", args.manifest, "--target", target, "--out", d, "--quiet"]
            if args.jobs:
                cmd += ["--jobs", str(args.jobs)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            seconds = time.perf_counter() - t0
            ls = subprocess.run([exe, "ls", d, "--json"], capture_output=True, text=True)
            entries = [json.loads(x) for x in ls.stdout.splitlines()]
        row = {"target": target, "seconds": round(seconds, 1), "rc": r.returncode, "entries": len(entries),
               "with_executable": sum("executable" in e["payloads"] for e in entries),
               "with_mosaic": sum("mosaic" in e["payloads"] for e in entries),
               "summary": r.stdout.strip().splitlines()[0] if r.stdout.strip() else r.stderr[-300:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
           "manifest": args.manifest, "rows": rows}
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "tpu_compile.json").write_text(json.dumps(res, indent=1))
    md = [f"Cross-compile of {args.manifest} on this CPU host ({res['cores']} cores), {res['date']}, "
          "one fresh `ejaot build` per generation:", "",
          "| target | entries | compiled tier | Mosaic payload | wall time |", "| --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['target']} | {r['entries']} | {r['with_executable']} | {r['with_mosaic']} | {r['seconds']} s |"
           for r in rows]
    (out / "tpu_compile.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
