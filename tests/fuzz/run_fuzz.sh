#!/usr/bin/env bash
# Builds the request-body fuzzer with clang (libFuzzer + ASan + UBSan) and runs
# it for a bounded time over the seed corpus. Used by ctest (tests/fuzz).
#   run_fuzz.sh <source dir> <work dir> [seconds]
set -euo pipefail
SRC="$1"
WORK="$2"
SECONDS_MAX="${3:-30}"
CXX="${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}"
if [ -z "$CXX" ]; then
  echo "fuzz: clang++ not found; install clang and libclang-rt-14-dev (scripts/setup)" >&2
  exit 1
fi
mkdir -p "$WORK/corpus"
cp -n "$SRC"/tests/fuzz/corpus/* "$WORK/corpus/" 2>/dev/null || true
"$CXX" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DBOOST_JSON_NO_LIB -DBOOST_CONTAINER_NO_LIB -I"$SRC" \
  "$SRC/tests/fuzz/fuzz_request_body.cpp" "$SRC/api/task_json.cpp" "$SRC/base/ulid.cpp" \
  "$SRC/runner/queue/task.cpp" "$SRC/runner/queue/validation.cpp" "$SRC/api/json_text.cpp" \
  "$SRC/runner/node/node_control.cpp" \
  -o "$WORK/fuzz_request_body"
cd "$WORK"
# -rss_limit_mb bounds memory; -max_len covers bodies near the 1 MiB cap's shape.
exec ./fuzz_request_body -max_total_time="$SECONDS_MAX" -max_len=65536 -rss_limit_mb=2048 \
  -timeout=10 -print_final_stats=1 corpus
