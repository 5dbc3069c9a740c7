#!/usr/bin/env bash
# Runs the peer benchmark for flowstate, RocksDB and fjall one after the other (one process per
# engine, so peak RSS is per engine) and prints a table with flowstate's ratios.
#
#   benches/peers/run.sh                      # 1M keys, all workloads
#   KEYS=200000 benches/peers/run.sh          # smaller
#   ENGINES="flowstate rocksdb" benches/peers/run.sh
#   EXTRA="--compressible" benches/peers/run.sh
#
# Needs clang and libclang for RocksDB's bindings (Debian: apt-get install -y clang libclang-dev);
# the first build compiles RocksDB (about 13 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"
KEYS="${KEYS:-1000000}"
ENGINES="${ENGINES:-flowstate rocksdb fjall}"
EXTRA="${EXTRA:-}"
OUT="${OUT:-target/peers-results.tsv}"

cargo build --release --quiet
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
for engine in $ENGINES; do
    echo "== $engine" >&2
    # shellcheck disable=SC2086
    ./target/release/peers --engine "$engine" --workload all --keys "$KEYS" $EXTRA \
        | tee /dev/stderr | grep '^RESULT' >> "$OUT"
    sync
done

awk -F'\t' '
    { engine[$2] = 1; key = $2 SUBSEP $3
      rate[key] = $6; secs[key] = $5; extra[key] = $7
      if (!($3 in seen)) { seen[$3] = 1; order[++n] = $3 } }
    function field(s, name,   i, parts, kv) {
        split(s, parts, " ")
        for (i in parts) { split(parts[i], kv, "="); if (kv[1] == name) return kv[2] }
        return ""
    }
    function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
    END {
        printf "%-18s %14s %14s %14s %12s %12s\n", "workload", "flowstate", "rocksdb", "fjall", "fs/rocksdb", "fs/fjall"
        for (i = 1; i <= n; i++) {
            w = order[i]
            if (w == "memory") continue
            if (w ~ /^(checkpoint|checkpoint_incr|flush_after_fill)$/) {
                # Times in ms (lower is better) and, for checkpoints, bytes of new files.
                f = secs["flowstate" SUBSEP w] * 1000; r = secs["rocksdb" SUBSEP w] * 1000; j = secs["fjall" SUBSEP w] * 1000
                printf "%-18s %12.1fms %12.1fms %12.1fms %12s %12s\n", w, f, r, j, ratio(f, r), ratio(f, j)
                if (w ~ /^checkpoint/) {
                    f = field(extra["flowstate" SUBSEP w], "new_bytes"); r = field(extra["rocksdb" SUBSEP w], "new_bytes"); j = field(extra["fjall" SUBSEP w], "new_bytes")
                    printf "%-18s %14s %14s %14s %12s %12s\n", "  new bytes", f, r, j, ratio(f, r), ratio(f, j)
                }
            } else {
                f = rate["flowstate" SUBSEP w]; r = rate["rocksdb" SUBSEP w]; j = rate["fjall" SUBSEP w]
                printf "%-18s %12s/s %12s/s %12s/s %12s %12s\n", w, f, r, j, ratio(f, r), ratio(f, j)
                f = field(extra["flowstate" SUBSEP w], "ops_per_cpu_s"); r = field(extra["rocksdb" SUBSEP w], "ops_per_cpu_s"); j = field(extra["fjall" SUBSEP w], "ops_per_cpu_s")
                printf "%-18s %14s %14s %14s %12s %12s\n", "  per CPU-second", f, r, j, ratio(f, r), ratio(f, j)
            }
        }
        f = field(extra["flowstate" SUBSEP "memory"], "peak_rss_kib"); r = field(extra["rocksdb" SUBSEP "memory"], "peak_rss_kib"); j = field(extra["fjall" SUBSEP "memory"], "peak_rss_kib")
        printf "%-18s %12sKiB %12sKiB %12sKiB %12s %12s\n", "peak RSS", f, r, j, ratio(f, r), ratio(f, j)
        f = field(extra["flowstate" SUBSEP "memory"], "peak_anon_kib"); r = field(extra["rocksdb" SUBSEP "memory"], "peak_anon_kib"); j = field(extra["fjall" SUBSEP "memory"], "peak_anon_kib")
        printf "%-18s %12sKiB %12sKiB %12sKiB %12s %12s\n", "peak anon RSS", f, r, j, ratio(f, r), ratio(f, j)
        f = field(extra["flowstate" SUBSEP "memory"], "rss_file_kib"); r = field(extra["rocksdb" SUBSEP "memory"], "rss_file_kib"); j = field(extra["fjall" SUBSEP "memory"], "rss_file_kib")
        printf "%-18s %12sKiB %12sKiB %12sKiB %12s %12s\n", "file RSS at end", f, r, j, ratio(f, r), ratio(f, j)
        f = field(extra["flowstate" SUBSEP "memory"], "db_bytes"); r = field(extra["rocksdb" SUBSEP "memory"], "db_bytes"); j = field(extra["fjall" SUBSEP "memory"], "db_bytes")
        printf "%-18s %14s %14s %14s %12s %12s\n", "db bytes at end", f, r, j, ratio(f, r), ratio(f, j)
    }' "$OUT"
