#!/usr/bin/env bash
# Build time of a manifest on this host: local (all cores), Ray with 1 and 2 workers, and
# 3 shards built one after another then merged (the CI-matrix flow, here serialized: its
# wall time on 3 runners is the slowest shard plus the merge). Each from an empty store.
# Usage: bash benchmarks/build_scaling.sh TARGET [MANIFEST]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-cpu}; M=${2:-manifests/default.toml}; E=.venv/bin/ejaot
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
t() { local s=$(date +%s.%N); "$@" > "$d/log" 2>&1 || { cat "$d/log"; exit 1; }; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
echo "target $T, manifest $M, $(nproc) cores, $(date -u +%FT%TZ), commit $(git log -1 --format=%h)"
echo "local:          $(t $E build --manifest $M --target $T --out $d/local --quiet) s"
echo "ray, 1 worker:  $(t $E build --manifest $M --target $T --out $d/ray1 --quiet --executor ray --jobs 1) s"
echo "ray, 2 workers: $(t $E build --manifest $M --target $T --out $d/ray2 --quiet --executor ray --jobs 2) s"
for i in 1 2 3; do echo "shard $i/3:      $(t $E build --manifest $M --target $T --out $d/s$i --quiet --shard $i/3) s"; done
echo "merge:          $(t $E merge $d/merged $d/s1 $d/s2 $d/s3) s"
