#!/usr/bin/env bash
# Starts a release `stele serve` on a fresh data directory and a free port, runs
# `stele bench` against it with the arguments given, then stops the server.
# Usage: scripts/bench-server.sh [stele bench arguments...]
# Environment: STELE_BIN (default $CARGO_TARGET_DIR/release/stele or target/release/stele),
#              BENCH_DIR (parent of the data directory; default ./bench-tmp, a real disk).
set -euo pipefail
bin=${STELE_BIN:-${CARGO_TARGET_DIR:-target}/release/stele}
parent=${BENCH_DIR:-./bench-tmp}
mkdir -p "$parent"
work=$(mktemp -d "$parent/stele-bench.XXXXXX")
mkfifo "$work/stderr"
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 2>"$work/stderr" &
server=$!
exec 3<"$work/stderr"
# The server announces its address once it listens: `stele: listening on ADDR, data in DIR`.
IFS= read -r line <&3
cat <&3 >"$work/server.log" &
addr=${line#stele: listening on }
addr=${addr%%,*}
echo "server pid $server on $addr, data in $work/data" >&2
status=0
"$bin" bench --url "http://$addr" --fsync-probe-dir "$work/data" --server-pid "$server" "$@" || status=$?
kill -TERM "$server"
wait "$server" || true
rm -rf "$work"
exit "$status"
