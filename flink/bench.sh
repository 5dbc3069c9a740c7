#!/usr/bin/env bash
# The Flink benchmarks of BENCHMARKS.md: every backend on the same input, one MiniCluster JVM per
# run, one after the other. Prints one RESULT line per run (and the peak RSS of its JVM).
#
#   flink/build.sh && flink/bench.sh [reference|hot|all]
#
# Environment: BACKENDS (default "hashmap rocksdb forst flowstate"), EVENTS / KEYS of the
# reference job (4000000 / 1000000), HOT_KEYS / LOAD / HOT_CHECKPOINTS of the hot-key job
# (1000000 / 5000000 / 6: checkpoints of the hot phase), BENCH_DIR (scratch, default a temporary directory).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$here/build"
what="${1:-all}"
backends="${BACKENDS:-hashmap rocksdb forst flowstate}"
scratch="${BENCH_DIR:-$(mktemp -d)}"
classpath="$build/bench-classes:$(cat "$build/classpath.txt")"
mkdir -p "$scratch"

run() {
  local name="$1"
  shift
  rm -rf "$scratch/run"
  /usr/bin/time -f "PEAK_RSS_KB=%M" -o "$scratch/time.txt" \
    java -Xmx4g -cp "$classpath" io.flowstate.flink.bench.Bench "$@" --dir "$scratch/run" \
    >"$scratch/$name.log" 2>&1 || {
    echo "FAILED $name (log: $scratch/$name.log)" >&2
    tail -20 "$scratch/$name.log" >&2
    return 1
  }
  grep '^RESULT_HOT' "$scratch/$name.log" || true
  echo "$(grep '^RESULT ' "$scratch/$name.log") $(cat "$scratch/time.txt")"
}

if [ "$what" = reference ] || [ "$what" = all ]; then
  input="$scratch/reference-input.txt"
  if [ ! -f "$input" ]; then
    java -cp "$classpath" io.flowstate.flink.jobs.GenerateInput --events "${EVENTS:-4000000}" \
      --keys "${KEYS:-1000000}" --seed 7 --output "$input" >&2
  fi
  for backend in $backends; do
    run "reference-$backend" --job reference --backend "$backend" --input "$input"
  done
fi
if [ "$what" = hot ] || [ "$what" = all ]; then
  for backend in $backends; do
    run "hot-$backend" --job hot --backend "$backend" --keys "${HOT_KEYS:-1000000}" \
      --load "${LOAD:-5000000}" --hot-checkpoints "${HOT_CHECKPOINTS:-6}"
  done
fi
