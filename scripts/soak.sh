#!/usr/bin/env bash
# A long crash soak, for a machine with time to spare (not part of CI).
#
# Runs the crash drills in release mode with hundreds of kills:
#   - tests/drill.rs: `stele serve` (the real binary) driven over gRPC by
#     concurrent producers, compare-and-set writers and a cursor reader, killed
#     with SIGKILL after a random number of acknowledgements and checked after
#     every restart; then the disk-full drill;
#   - tests/kill9.rs: an embedded log in a child process, killed the same way.
#
# Usage: scripts/soak.sh [KILLS]      (default 500)
# Each test prints its seed; STELE_SEED=<seed> scripts/soak.sh repeats a run.
set -euo pipefail
cd "$(dirname "$0")/.."

kills="${1:-500}"
STELE_DRILL_KILLS="$kills" cargo test --release --test drill
STELE_KILL9_ROUNDS="$kills" cargo test --release --test kill9
