#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target in fuzz/ for N seconds each (default 30).
#
#   scripts/fuzz.sh          # 30 s per target (CI)
#   scripts/fuzz.sh 600      # a longer run
#
# New interesting inputs go to fuzz/target/corpus-work/TARGET (ignored by git);
# the committed seeds in fuzz/corpus/TARGET are read, never written. A crash
# leaves its input in fuzz/artifacts/TARGET/ and makes the script exit non-zero
# after every target has run. Targets run on stable Rust without a sanitizer
# (the engine's only `unsafe` is the mmap wrapper), as the brief for CI asks.
set -euo pipefail

seconds="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"
cargo fuzz build --sanitizer none

failed=()
for target in $(cargo fuzz list); do
    work="$root/fuzz/target/corpus-work/$target"
    mkdir -p "$work"
    echo "=== $target: ${seconds}s"
    if ! cargo fuzz run --sanitizer none "$target" "$work" "$root/fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
