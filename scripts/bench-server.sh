#!/usr/bin/env bash
# Starts a release `stele serve` on a fresh data directory and a free port, runs
# `stele bench` against it with the arguments given, then stops the server.
# Usage: scripts/bench-server.sh [stele bench arguments...]
# Environment: STELE_BIN (default $CARGO_TARGET_DIR/release/stele or target/release/stele),
#              BENCH_DIR (parent of the data directory; default ./bench-tmp, a real disk),
#              BENCH_TLS=1 (serve TLS with a certificate made by openssl; bench over https),
#              BENCH_AUTH=1 (serve --auth required; bench with a token holding every grant),
#              STELE_BENCH_BIN (the load generator's binary; default STELE_BIN, so that
#              an older server can run under a newer load generator),
#              BENCH_SERVE_ARGS (more `stele serve` arguments, e.g. --worker-threads 64).
set -euo pipefail
bin=${STELE_BIN:-${CARGO_TARGET_DIR:-target}/release/stele}
parent=${BENCH_DIR:-./bench-tmp}
mkdir -p "$parent"
work=$(mktemp -d "$parent/stele-bench.XXXXXX")
mkfifo "$work/stderr"
# shellcheck disable=SC2206 # words on purpose
serve_args=(${BENCH_SERVE_ARGS:-})
bench_args=()
scheme=http
if [ "${BENCH_TLS:-0}" = 1 ]; then
    # A CA, and a P-256 server certificate for localhost signed by it.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=stele bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext"
    openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
        -days 2 -extfile "$work/ext" -out "$work/tls.pem" 2>/dev/null
    serve_args+=(--tls-cert "$work/tls.pem" --tls-key "$work/tls.key")
    bench_args+=(--ca-cert "$work/ca.pem")
    scheme=https
fi
if [ "${BENCH_AUTH:-0}" = 1 ]; then
    "$bin" token generate >"$work/admin.token"
    serve_args+=(--auth required --bootstrap-token-file "$work/admin.token" --audit-log off)
    bench_args+=(--token-file "$work/admin.token")
fi
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 "${serve_args[@]}" 2>"$work/stderr" &
server=$!
exec 3<"$work/stderr"
# The server announces its address once it listens: `stele: listening on ADDR, data in DIR`.
while IFS= read -r line <&3; do
    case "$line" in "stele: listening on "*) break ;; esac
done
cat <&3 >"$work/server.log" &
addr=${line#stele: listening on }
addr=${addr%%,*}
host=${addr%%:*}
[ "$scheme" = https ] && host=localhost
echo "server pid $server on $scheme://$host:${addr##*:}, data in $work/data" >&2
status=0
"${STELE_BENCH_BIN:-$bin}" bench --url "$scheme://$host:${addr##*:}" --fsync-probe-dir "$work/data" --server-pid "$server" \
    "${bench_args[@]}" "$@" || status=$?
# The server's CPU time over the whole run (user + system), for per-event costs.
ticks=$(awk '{print $14 + $15}' "/proc/$server/stat")
echo "server cpu seconds $(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')" >&2
kill -TERM "$server"
wait "$server" || true
rm -rf "$work"
exit "$status"
