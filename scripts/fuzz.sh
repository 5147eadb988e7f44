#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for SECONDS (default 30).
#
#   scripts/fuzz.sh                  # every target, 30 s each (what CI runs)
#   scripts/fuzz.sh 600              # a longer soak
#   scripts/fuzz.sh 300 engine_ops   # chosen targets only
#
# The targets are built with plain cargo and the flags `cargo fuzz build
# --sanitizer none` passes (cargo-fuzz 0.13), so cargo-fuzz need not be
# installed; the `fuzz` profile in fuzz/Cargo.toml has the settings cargo-fuzz
# gives its release build. STELE_FUZZ_BUILD=cargo-fuzz builds with
# `cargo fuzz build --sanitizer none` instead.
#
# Targets run STELE_FUZZ_JOBS at a time (default: the number of CPUs), each
# single-threaded. Each runs in its own working corpus,
# fuzz/target/corpus-work/TARGET (ignored by git, kept between runs), seeded
# from the committed fuzz/corpus/TARGET, which is read and never written.
# A crash, timeout or out-of-memory input is written under
# fuzz/artifacts/TARGET/ and its path printed; the script exits non-zero
# after every target has run. The fuzz build uses its own target directory,
# fuzz/target (STELE_FUZZ_TARGET_DIR overrides it), so the instrumentation
# flags never invalidate the main build.
# STELE_FUZZ_ARGS adds libFuzzer flags (e.g. "-dict=FILE -max_len=65536").
set -euo pipefail

seconds="${1:-30}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${STELE_FUZZ_TARGET_DIR:-$root/fuzz/target}"
jobs="${STELE_FUZZ_JOBS:-$(nproc)}"
host="$(rustc -vV | sed -n 's/^host: //p')"

# Every [[bin]] of fuzz/Cargo.toml is a target.
all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$root/fuzz/Cargo.toml" | grep -v '^stele-fuzz$')
targets="${*:-$all_targets}"

started=$SECONDS
case "${STELE_FUZZ_BUILD:-cargo}" in
    cargo)
        # What cargo-fuzz 0.13 passes for `--sanitizer none` on Linux, less
        # `-Cdebug-assertions` and `-Ccodegen-units=1`, which the `fuzz` profile
        # sets. `--target` keeps the flags off build scripts and proc macros.
        # Sanitizers (AddressSanitizer...) need nightly: use cargo-fuzz for them.
        RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth" \
            cargo build --manifest-path "$root/fuzz/Cargo.toml" --locked --bins \
            --target "$host" --profile fuzz --target-dir "$target_dir"
        bin_dir="$target_dir/$host/fuzz"
        ;;
    cargo-fuzz)
        if ! cargo fuzz --version >/dev/null 2>&1; then
            cargo install cargo-fuzz --locked
        fi
        (cd "$root/fuzz" && CARGO_TARGET_DIR="$target_dir" cargo fuzz build --sanitizer none)
        bin_dir="$target_dir/$host/release"
        ;;
    *)
        echo "fuzz: STELE_FUZZ_BUILD must be cargo or cargo-fuzz" >&2
        exit 2
        ;;
esac
echo "fuzz: built in $((SECONDS - started)) s; running ${seconds} s per target, $jobs at a time"

logs="$target_dir/fuzz-logs"
mkdir -p "$logs"

# Runs one target; its libFuzzer output goes to $logs/TARGET.log and its exit
# status to $logs/TARGET.status.
run_target() {
    local target="$1"
    local work="$target_dir/corpus-work/$target"
    local artifacts="$root/fuzz/artifacts/$target"
    local status=0
    mkdir -p "$work" "$artifacts"
    # Seed the working corpus; libFuzzer only ever writes into it.
    cp -n "$root/fuzz/corpus/$target"/* "$work"/ 2>/dev/null || true
    "$bin_dir/$target" "$work" \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 ${STELE_FUZZ_ARGS:-} \
        >"$logs/$target.log" 2>&1 || status=$?
    echo "$status" >"$logs/$target.status"
}

# Prints a target's summary: the final coverage line and libFuzzer's stats.
summarize() {
    local target="$1" status="$2" log="$logs/$1.log"
    local done_line execs_per_second runs
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    execs_per_second=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -n 1)
    runs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n 1)
    if [[ "$status" == 0 ]]; then
        echo "=== $target: ok, ${runs:-?} runs, ${execs_per_second:-?} exec/s; ${done_line:-no DONE line}"
    else
        echo "=== $target: FAILED (exit $status); last lines of $log:"
        tail -n 40 "$log"
        echo "=== $target: crash input(s); rerun one with: $bin_dir/$target INPUT"
        sed -n 's/.*Test unit written to \(.*\)$/  \1/p' "$log"
    fi
}

# Waits for running targets to finish and summarizes the finished ones.
failed=()
running=()
reap() {
    local waited=0 still=() target status
    wait -n 2>/dev/null || waited=$?
    for target in "${running[@]}"; do
        if [[ -f "$logs/$target.status" || "$waited" == 127 ]]; then
            # 127: no child left, so a target died without writing its status.
            status=$(cat "$logs/$target.status" 2>/dev/null || echo "lost")
            summarize "$target" "$status"
            if [[ "$status" != 0 ]]; then
                failed+=("$target")
            fi
        else
            still+=("$target")
        fi
    done
    running=("${still[@]+"${still[@]}"}")
}

run_started=$SECONDS
for target in $targets; do
    if [[ ! -x "$bin_dir/$target" ]]; then
        echo "fuzz: no target named $target" >&2
        exit 2
    fi
    rm -f "$logs/$target.status"
    while ((${#running[@]} >= jobs)); do
        reap
    done
    run_target "$target" &
    running+=("$target")
done
while ((${#running[@]} > 0)); do
    reap
done
echo "fuzz: ran for $((SECONDS - run_started)) s"

if ((${#failed[@]} > 0)); then
    echo "fuzz: FAILED targets: ${failed[*]} (crash inputs under fuzz/artifacts/, logs under $logs/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds} s without a crash"
