#!/usr/bin/env bash
# The overhead Stele's NATS backend adds over the raw JetStream it runs on:
# one 3-node loopback cluster (crates/nats/examples/test_cluster.rs: fresh
# stores, `sync_interval: always`), then
#   1. `stele bench` against `stele serve --backend <the cluster>` (release),
#   2. tools/nats-bench with R3 streams against the same cluster,
# the same scenarios one after the other, each line with the load average.
#
# Usage: scripts/bench-nats-backend.sh [SCENARIOS] (default sequential,pipelined,batched,cas)
# Environment: REPEAT (runs per scenario, default 3), COUNT (events per run,
# default 20000; sequential keeps 2000), STELE_NATS_SERVER (else the test venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios="${1:-sequential,pipelined,batched,cas}"
repeat="${REPEAT:-3}"
count="${COUNT:-20000}"
target="${CARGO_TARGET_DIR:-target}"
binary="${STELE_NATS_SERVER:-$target/tmp/nats-venv/bin/nats-server}"
[ -x "$binary" ] || { echo "bench-nats-backend: no nats-server at $binary (run scripts/it-nats.sh once, or set STELE_NATS_SERVER)" >&2; exit 2; }
cargo build --quiet --release --bin stele
cargo build --quiet -p stele-nats --features test-cluster --example test_cluster
(cd tools/nats-bench && cargo build --quiet --release)
nats_bench="tools/nats-bench/target/release/nats-bench"
[ -n "${CARGO_TARGET_DIR:-}" ] && [ -x "$CARGO_TARGET_DIR/release/nats-bench" ] && nats_bench="$CARGO_TARGET_DIR/release/nats-bench"

work="$(mktemp -d)"
cleanup() {
    [ -n "${serve:-}" ] && kill "$serve" 2>/dev/null && wait "$serve" 2>/dev/null || true
    [ -n "${feeder:-}" ] && kill "$feeder" 2>/dev/null || true
    [ -n "${launcher:-}" ] && wait "$launcher" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/stdin"
sleep infinity >"$work/stdin" &
feeder=$!
"$target/debug/examples/test_cluster" "$binary" "$work/urls" <"$work/stdin" 2>"$work/cluster.log" &
launcher=$!
for _ in $(seq 1 600); do [ -s "$work/urls" ] && break; sleep 0.1; done
[ -s "$work/urls" ] || { echo "bench-nats-backend: the cluster did not start" >&2; exit 1; }
urls="$(cat "$work/urls")"
echo "bench-nats-backend: cluster $urls, $("$binary" --version), $(nproc) cores" >&2

"$target/release/stele" serve --listen 127.0.0.1:0 --data-dir "$work/state" --backend "$urls" 2>"$work/serve.log" &
serve=$!
for _ in $(seq 1 600); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
address="$(sed -n 's/.*listening on \([^,]*\),.*/\1/p' "$work/serve.log" | head -1)"
[ -n "$address" ] || { echo "bench-nats-backend: stele serve did not start" >&2; cat "$work/serve.log" >&2; exit 1; }

# With several runs, only the median line of each (every run's line goes to stderr).
medians() {
    if [ "$repeat" -gt 1 ]; then tee /dev/stderr | grep '"run":"median"' || true; else cat; fi
}
for scenario in ${scenarios//,/ }; do
    counted=(--count "$count")
    [ "$scenario" = sequential ] && counted=()
    echo "== $scenario: stele bench, NATS backend (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    "$target/release/stele" bench --url "http://$address" --scenario "$scenario" --repeat "$repeat" \
        "${counted[@]}" --server-pid "$serve" | medians
    echo "== $scenario: nats-bench, R3 streams on the same cluster (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    "$nats_bench" --url "${urls%%,*}" --replicas 3 --durability always --scenario "$scenario" --repeat "$repeat" \
        "${counted[@]}" | medians
done
