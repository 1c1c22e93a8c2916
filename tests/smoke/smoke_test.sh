#!/usr/bin/env bash
# Smoke test of the README's first command: `scripts/start` from a clean state
# (fresh data dir, free port) brings up a working appliance (embedded
# PostgreSQL, Docker when it answers, else processes); a task submitted through
# the API succeeds; SIGTERM stops it cleanly, leaving no runner process, no
# postgres process and no container behind.
#
# With RUNNER_BIN set (scripts/test sets it to its sanitizer build) scripts/start
# runs that binary instead of building build/release.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TMP="$(mktemp -d /tmp/runner-smoke.XXXXXX)"
# As root the embedded PostgreSQL runs as the postgres user, which must reach the data dir.
chmod 755 "$TMP"
SOCK=/var/run/docker.sock
TOKEN="smoke-$RANDOM$RANDOM"
PID=""
NODE=""
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
log() { echo "smoke: $*" >&2; }

docker_up() { curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1; }
node_containers() {
  # Containers of this node (labels io.runner.task + io.runner.node=<id>).
  local f
  f=$(printf '{"label":["io.runner.task","io.runner.node=%s"]}' "$NODE" | sed 's/{/%7B/g;s/}/%7D/g;s/"/%22/g;s/\[/%5B/g;s/\]/%5D/g;s/:/%3A/g;s/,/%2C/g;s/=/%3D/g')
  curl -sf --max-time 5 --unix-socket "$SOCK" "http://docker/containers/json?all=1&filters=$f" | python3 -c 'import json,sys; print(" ".join(c["Id"] for c in json.load(sys.stdin)))'
}
pg_pids() { pgrep -f -- "-D $TMP/var/postgres/data" || true; }

cleanup() {
  rc=$?
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  # Never leave a cluster running, even when the runner failed to stop it.
  if [ -f "$TMP/var/postgres/data/postmaster.pid" ]; then
    pg=$(head -1 "$TMP/var/postgres/data/postmaster.pid")
    kill -INT "$pg" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pg" 2>/dev/null || break; sleep 0.25; done
  fi
  if [ -n "$NODE" ] && docker_up; then
    for c in $(node_containers 2>/dev/null); do
      curl -sf -X DELETE --unix-socket "$SOCK" "http://docker/containers/$c?force=1" >/dev/null || true
    done
  fi
  if [ $rc != 0 ] && [ -f "$TMP/runner.log" ]; then
    echo "---- runner log (last 60 lines)" >&2; tail -60 "$TMP/runner.log" >&2
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT INT TERM

api() { curl -sS --max-time 10 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# A free port on loopback.
PORT=""
for _ in $(seq 1 50); do
  p=$(( 20000 + RANDOM % 40000 ))
  if ! ss -Hltn "sport = :$p" | grep -q .; then PORT=$p; break; fi
done
[ -n "$PORT" ] || fail "no free port"
BASE="http://127.0.0.1:$PORT"

log "scripts/start --listen 127.0.0.1:$PORT --data-dir $TMP/var"
start_s=$(date +%s)
# The suite saturates the CPU: CPU backpressure would hold the task (see runner-test.yaml).
RUNNER_API_TOKEN="$TOKEN" "$ROOT/scripts/start" --listen "127.0.0.1:$PORT" --data-dir "$TMP/var" \
  --config "$ROOT/tests/compose/runner-test.yaml" \
  >"$TMP/runner.log" 2>&1 &
PID=$!

# Up: /readyz answers 200 (database reached, pool running); builds may take a while.
deadline=$(( $(date +%s) + ${SMOKE_START_TIMEOUT:-900} ))
until curl -sf --max-time 2 "$BASE/readyz" >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || fail "scripts/start exited before the API answered"
  [ "$(date +%s)" -lt "$deadline" ] || fail "the API did not become ready"
  sleep 0.5
done
log "ready after $(( $(date +%s) - start_s )) s"

status=$(api "$BASE/api/v1/status")
NODE=$(echo "$status" | json 'd["node_id"]')
mode=$(echo "$status" | json 'd["mode"]')
log "node $NODE mode $mode"

marker="smoke-output-$RANDOM"
task=$(api -X POST "$BASE/api/v1/tasks" -d "{\"command\":[\"sh\",\"-c\",\"echo $marker\"]}")
id=$(echo "$task" | json 'd["id"]') || fail "submit failed: $task"
log "submitted $id"

deadline=$(( $(date +%s) + 120 ))
while :; do
  task=$(api "$BASE/api/v1/tasks/$id")
  state=$(echo "$task" | json 'd["state"]')
  case "$state" in queued | running) ;; *) break ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || fail "task $id still $state after 120 s"
  sleep 0.3
done
[ "$state" = succeeded ] || fail "task $id ended $state: $task"
used=$(echo "$task" | json 'd.get("isolation_used")')
if docker_up; then
  [ "$used" = docker ] || fail "Docker answers but the task ran with isolation $used"
fi
logs=$(api "$BASE/api/v1/tasks/$id/logs")
echo "$logs" | grep -q "$marker" || fail "the task's logs lack its output: $logs"
log "task $id succeeded with isolation $used, output seen"

# The dashboard is served.
page=$(curl -sf --max-time 5 "$BASE/") || fail "no dashboard at $BASE/"
echo "$page" | grep -qi "<html" || fail "$BASE/ is not the dashboard page"

log "SIGTERM"
kill -TERM "$PID"
deadline=$(( $(date +%s) + 90 ))
while kill -0 "$PID" 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the runner did not exit within 90 s of SIGTERM"
  sleep 0.2
done
rc=0; wait "$PID" || rc=$?
PID=""
[ "$rc" = 0 ] || fail "the runner exited $rc after SIGTERM"
left=$(pg_pids)
[ -z "$left" ] || fail "postgres processes left behind: $left"
[ ! -f "$TMP/var/postgres/data/postmaster.pid" ] || fail "postmaster.pid left behind"
if docker_up; then
  left=$(node_containers)
  [ -z "$left" ] || fail "containers left behind: $left"
fi
log "stopped cleanly, nothing left behind"
echo "1 passed, 0 failed"
