#!/usr/bin/env bash
# Runs the peer benchmark for flowstate, RocksDB, fjall and cobble one after the other (one process
# per engine, so peak RSS is per engine) and prints a table with flowstate's ratios to each peer
# (engines not run show "-").
#
#   benches/peers/run.sh                      # 1M keys, all workloads
#   KEYS=200000 benches/peers/run.sh          # smaller
#   ENGINES="flowstate rocksdb" benches/peers/run.sh
#   EXTRA="--compressible" benches/peers/run.sh
#   EXTRA="--cache-mib 32 --zstd-level 1" benches/peers/run.sh
#
# Needs clang and libclang for RocksDB's bindings (Debian: apt-get install -y clang libclang-dev);
# the first build compiles RocksDB (about 13 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"
KEYS="${KEYS:-1000000}"
ENGINES="${ENGINES:-flowstate rocksdb fjall cobble}"
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
    BEGIN { ne = split("flowstate rocksdb fjall cobble", names, " ") }
    { engine[$2] = 1; key = $2 SUBSEP $3
      rate[key] = $6; secs[key] = $5; extra[key] = $7
      if (!($3 in seen)) { seen[$3] = 1; order[++n] = $3 } }
    function field(s, name,   i, parts, kv) {
        split(s, parts, " ")
        for (i in parts) { split(parts[i], kv, "="); if (kv[1] == name) return kv[2] }
        return ""
    }
    function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
    # One row: the value (with unit) of each engine in names order, then flowstate over each peer.
    function row(label, v, unit,   i, s) {
        s = sprintf("%-18s", label)
        for (i = 1; i <= ne; i++) s = s sprintf(" %14s", v[i] == "" ? "-" : v[i] unit)
        for (i = 2; i <= ne; i++) s = s sprintf(" %11s", ratio(v[1], v[i]))
        print s
    }
    # v[i] = the named field in the extra column of workload w for engine i ("" if not run).
    function fields(v, w, name,   i) {
        for (i = 1; i <= ne; i++) v[i] = field(extra[names[i] SUBSEP w], name)
    }
    END {
        s = sprintf("%-18s", "workload")
        for (i = 1; i <= ne; i++) s = s sprintf(" %14s", names[i])
        for (i = 2; i <= ne; i++) s = s sprintf(" %11s", "fs/" names[i])
        print s
        for (j = 1; j <= n; j++) {
            w = order[j]
            if (w == "memory") continue
            if (w ~ /^(checkpoint|checkpoint_incr|flush_after_fill)$/) {
                # Times in ms (lower is better) and, for checkpoints, bytes of new files.
                for (i = 1; i <= ne; i++) {
                    k = names[i] SUBSEP w
                    v[i] = (k in secs) ? sprintf("%.1f", secs[k] * 1000) : ""
                }
                row(w, v, "ms")
                if (w ~ /^checkpoint/) { fields(v, w, "new_bytes"); row("  new bytes", v, "") }
            } else {
                for (i = 1; i <= ne; i++) v[i] = rate[names[i] SUBSEP w]
                row(w, v, "/s")
                fields(v, w, "ops_per_cpu_s"); row("  per CPU-second", v, "")
            }
        }
        fields(v, "memory", "peak_rss_kib"); row("peak RSS", v, "KiB")
        fields(v, "memory", "peak_anon_kib"); row("peak anon RSS", v, "KiB")
        fields(v, "memory", "rss_file_kib"); row("file RSS at end", v, "KiB")
        fields(v, "memory", "db_bytes"); row("db bytes at end", v, "")
    }' "$OUT"
