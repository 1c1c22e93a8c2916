# Sourced by every bench/*/run: dependencies, the build tree and the results
# folder, the same for all of them.
#
#   --quick (each run's flag) tiny sizes, no target judged: proves the bench
#                             still builds and runs (CI runs every bench/*/run
#                             this way). Results go under the build tree, never
#                             over the committed bench/results/.
#   BENCH_BUILD_DIR=DIR       build the bench programs in that configured tree
#                             (only -DRUNNER_BUILD_BENCH=ON is added: CI's quick
#                             runs reuse scripts/test's tree). Default:
#                             build/bench, Release, which the figures need.
bench_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

bench_log() { echo "bench: $*" >&2; }
bench_die() { bench_log "$*"; exit 1; }

# The packages the benchmarks need beyond the build (Node.js for graphile-worker, jq).
bench_setup() {
  "$bench_root/scripts/setup" bench >/dev/null 2>"$bench_root/build/.bench-setup.log" || {
    cat "$bench_root/build/.bench-setup.log" >&2
    bench_die "scripts/setup bench failed (above)"
  }
}

# bench_build TARGET: builds it; sets BENCH_BIN and BENCH_RESULTS.
bench_build() {
  local target="$1" dir out
  if [[ -n "${BENCH_BUILD_DIR:-}" ]]; then
    dir="$BENCH_BUILD_DIR"
    out=$(cmake -S "$bench_root" -B "$dir" -DRUNNER_BUILD_BENCH=ON 2>&1) ||
      { echo "$out" >&2; bench_die "cmake (configure $dir) failed"; }
  else
    dir="$bench_root/build/bench"
    out=$(cmake -S "$bench_root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DRUNNER_BUILD_TESTS=OFF -DRUNNER_BUILD_BENCH=ON 2>&1) ||
      { echo "$out" >&2; bench_die "cmake (configure $dir) failed"; }
  fi
  bench_log "building $target in $dir"
  out=$(cmake --build "$dir" -j"$(nproc)" --target "$target" 2>&1) ||
    { echo "$out" | tail -40 >&2; bench_die "building $target failed (above)"; }
  BENCH_BIN="$dir/bench/$target"
  if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    BENCH_RESULTS="$dir/bench-quick-results"
  else
    BENCH_RESULTS="$bench_root/bench/results"
  fi
  mkdir -p "$BENCH_RESULTS"
}

mkdir -p "$bench_root/build"
bench_setup
