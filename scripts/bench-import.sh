#!/usr/bin/env bash
# Measures `stele import` throughput: starts a release `stele serve` (durability
# always) on a fresh data directory and a free port, fills a source topic with
# `stele bench` (100-byte payloads, 1,000 keys, 4 partitions), exports it with
# `stele export`, imports the file into a new topic of the same server with
# `stele import --create` (the target gets the source's settings: durability
# always), imports it again (everything skipped), and prints each import's JSON
# summary (events_per_s) and the server's and the importer's CPU seconds.
#
# Usage: scripts/bench-import.sh [EVENTS]   (default 1000000)
# Environment: STELE_BIN (default $CARGO_TARGET_DIR/release/stele or target/release/stele),
#              BENCH_DIR (parent of the data directory; default ./bench-tmp, a real disk),
#              BENCH_SOURCE (batched: runs of 100 events per key in the file, the default;
#                            pipelined: single-event appends, keys interleaved, runs of 1).
set -euo pipefail
bin=${STELE_BIN:-${CARGO_TARGET_DIR:-target}/release/stele}
events=${1:-1000000}
source_scenario=${BENCH_SOURCE:-batched}
parent=${BENCH_DIR:-./bench-tmp}
mkdir -p "$parent"
work=$(mktemp -d "$parent/stele-bench-import.XXXXXX")
mkfifo "$work/stderr"
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 --durability always 2>"$work/stderr" &
server=$!
cleanup() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
exec 3<"$work/stderr"
# The server announces its address once it listens: `stele: listening on ADDR, data in DIR`.
while IFS= read -r line <&3; do
    case "$line" in "stele: listening on "*) break ;; esac
done
cat <&3 >"$work/server.log" &
addr=${line#stele: listening on }
addr=${addr%%,*}
url="http://$addr"
echo "server pid $server on $url, data in $work/data" >&2

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

"$bin" bench --url "$url" --scenario "$source_scenario" --count "$events" --keys 1000 --size 100 \
    --partitions 4 --durability always >"$work/fill.json"
topic=$("$bin" topic list --url "$url" | grep "^bench-$source_scenario-" | head -n 1)
echo "source topic $topic ($events events, $source_scenario)" >&2
"$bin" export "$topic" --url "$url" --output "$work/export.jsonl" >&2
echo "export file $(du -h "$work/export.jsonl" | cut -f1)" >&2

for run in first again; do
    before=$(cpu "$server")
    TIMEFORMAT="$run import: importer cpu seconds %U user %S system, %R s wall"
    time "$bin" import "$work/export.jsonl" --topic imported --create --url "$url" --json
    after=$(cpu "$server")
    echo "$run import: server cpu seconds $(awk -v t="$((after - before))" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')" >&2
done
echo "load: $(uptime)" >&2
