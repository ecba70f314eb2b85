#!/bin/bash
# The default suite end to end, an earlier commit against the working tree, alternating.
#   benchmarks/ab_run.sh REV [ROUNDS] [THREADS]
# Each run is a fresh store under $TMPDIR; prints stage_seconds, measure/train, wall and
# peak RSS. Threads are fixed (OMP_NUM_THREADS, default 2): the thread heuristic reads the
# 1-minute load average, which the previous run leaves high.
set -euo pipefail
rev=$1; rounds=${2:-2}; threads=${3:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d); trap 'git -C "$here" worktree remove --force "$tmp/prev" >/dev/null 2>&1 || true' EXIT
git -C "$here" worktree add -q --detach "$tmp/prev" "$rev"
# The editable install maps genbench_plugins and genbench.registry to this checkout's
# plugins/ and registry/: point the earlier commit's run at its own.
mkdir "$tmp/shim" && ln -s "$tmp/prev/plugins" "$tmp/shim/genbench_plugins"
ln -s "$tmp/prev/registry" "$tmp/prev/genbench/registry"
for i in $(seq "$rounds"); do
  for v in prev new; do
    d=$tmp/${v}_$i; src=$here; shim=; [ $v = prev ] && src=$tmp/prev && shim=$tmp/shim
    (cd "$src" && PYTHONPATH=$shim OMP_NUM_THREADS=$threads /usr/bin/time -f "%e %M" -o "$d.time" \
      python -c "from genbench.cli import main; main()" run --store "$d" --json "$d.json" > "$d.log" 2>&1) || true
    python - "$v" "$i" "$d" <<'PY'
import json, sys
v, i, d = sys.argv[1:]
s = json.load(open(f"{d}.json"))["summary"]["stage_seconds"]
wall, rss = open(f"{d}.time").read().split()
print(f"{v} {i}: wall {wall} s, peak RSS {int(rss) / 1e6:.2f} GB, {s}, measure/train {s['measure'] / s['train']:.3f}")
PY
  done
done
