#!/usr/bin/env bash
# End to end test of compose.yaml: build and start the appliance with
# docker-compose (v1, as Debian ships it; `docker compose` v2 when v1 is absent),
# submit a task over the published loopback port with the API token, see it
# succeed in a sibling container, `down` (the database volume survives: the task
# is still there after the next `up`), then `down -v`. Cleans up on every path.
#
# The token is made by scripts/compose-token in a 0600 file that uid 10001
# cannot read, handed over as the compose secret, and must appear neither in
# the runner container's Config.Env (Engine API inspect) nor in the runner
# process's environment or command line.
#
# Images are reused across runs on the same machine (the apt layers and, when
# the sources did not change, the compile layer are cached), so a re-run costs
# the C++ build at most. Prints how long build+up took.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SOCK=/var/run/docker.sock
PROJECT="${COMPOSE_TEST_PROJECT:-runnertest}"
export POSTGRES_PASSWORD="compose-test-$RANDOM$RANDOM"
log() { echo "compose: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# The token file as a newcomer makes it (scripts/compose-token), owned by the
# caller with mode 0600. No RUNNER_API_TOKEN in the environment: compose.yaml
# must not need one.
unset RUNNER_API_TOKEN
SECRETS_DIR=$(mktemp -d)
export RUNNER_API_TOKEN_HOST_FILE="$SECRETS_DIR/runner-api-token"
"$ROOT/scripts/compose-token" "$RUNNER_API_TOKEN_HOST_FILE" 2>/dev/null || fail "scripts/compose-token failed"
TOKEN=$(cat "$RUNNER_API_TOKEN_HOST_FILE")
[ ${#TOKEN} = 64 ] || fail "scripts/compose-token wrote '${TOKEN}', want 64 hex digits"
[ "$(stat -c %a "$RUNNER_API_TOKEN_HOST_FILE")" = 600 ] || fail "the token file is not mode 0600"
"$ROOT/scripts/compose-token" "$RUNNER_API_TOKEN_HOST_FILE" 2>/dev/null || fail "scripts/compose-token failed on an existing file"
[ "$(cat "$RUNNER_API_TOKEN_HOST_FILE")" = "$TOKEN" ] || fail "scripts/compose-token replaced an existing token"

if command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  fail "neither docker-compose nor docker compose is installed (apt-get install docker-compose)"
fi
DC=("${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/compose.yaml" -f "$ROOT/tests/compose/compose.test.yaml")

PORT=""
for _ in $(seq 1 50); do
  p=$(( 20000 + RANDOM % 40000 ))
  if ! ss -Hltn "sport = :$p" | grep -q .; then PORT=$p; break; fi
done
[ -n "$PORT" ] || fail "no free port"
export RUNNER_PORT="$PORT"
BASE="http://127.0.0.1:$PORT"

NODE=""
cleanup() {
  rc=$?
  if [ $rc != 0 ]; then
    log "runner logs (last 60 lines):"; "${DC[@]}" logs --no-color --tail=60 runner >&2 2>&1 || true
  fi
  "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$SECRETS_DIR"
  if [ -n "$NODE" ]; then
    # Task containers of the compose runner, should any survive it.
    ids=$(curl -sf --unix-socket "$SOCK" "http://docker/containers/json?all=1" |
      python3 -c "import json,sys; print(' '.join(c['Id'] for c in json.load(sys.stdin) if c.get('Labels',{}).get('io.runner.node')=='$NODE'))" || true)
    for c in $ids; do curl -sf -X DELETE --unix-socket "$SOCK" "http://docker/containers/$c?force=1" >/dev/null || true; done
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

api() { curl -sS --max-time 10 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
wait_ready() {
  local deadline=$(( $(date +%s) + $1 ))
  until curl -sf --max-time 2 "$BASE/readyz" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the runner did not become ready on $BASE within $1 s"
    sleep 1
  done
}
runner_health() { docker inspect -f '{{.State.Health.Status}}' "$("${DC[@]}" ps -q runner)" 2>/dev/null || echo none; }

"$ROOT/scripts/seed-base-image"
"${COMPOSE[@]}" -f "$ROOT/compose.yaml" config -q || fail "compose.yaml is rejected by ${COMPOSE[*]}"
"${DC[@]}" config -q || fail "the test override is rejected by ${COMPOSE[*]}"
"${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true

log "build + up"
t0=$(date +%s)
timeout 1500 "${DC[@]}" up -d --build >"${TMPDIR:-/tmp}/compose-up-$PROJECT.log" 2>&1 ||
  { tail -40 "${TMPDIR:-/tmp}/compose-up-$PROJECT.log" >&2; fail "up --build failed"; }
t1=$(date +%s)
wait_ready 120
deadline=$(( $(date +%s) + 60 ))
until [ "$(runner_health)" = healthy ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the runner container is not healthy: $(runner_health)"
  sleep 1
done
t2=$(date +%s)
log "timing: build+up $(( t1 - t0 )) s, ready+healthy $(( t2 - t1 )) s later"

# Loopback only, and the token is required.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/api/v1/status")
[ "$code" = 401 ] || fail "GET /api/v1/status without the token answered $code, want 401"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer x$TOKEN" "$BASE/api/v1/status")
[ "$code" = 401 ] || fail "GET /api/v1/status with a wrong token answered $code, want 401"

# The token is in no environment: the container's Config.Env (what `docker
# inspect` shows), the runner's /proc/1/environ and /proc/1/cmdline (`ps`).
# The runner is PID 1 (the entrypoint execs it) and runs as uid 10001; only
# that uid may read its environ (root in the container lacks CAP_SYS_PTRACE).
cid=$("${DC[@]}" ps -q runner)
curl -sf --unix-socket "$SOCK" "http://docker/containers/$cid/json" | TOKEN="$TOKEN" python3 -c '
import json, os, sys
env = json.load(sys.stdin)["Config"]["Env"]
token = os.environ["TOKEN"]
leaks = [e.split("=", 1)[0] for e in env if token in e or e.startswith("RUNNER_API_TOKEN=")]
if leaks: sys.exit("the runner container has the token in Config.Env: " + ", ".join(leaks))
if "RUNNER_API_TOKEN_FILE=/run/secrets/runner_api_token" not in env:
    sys.exit("Config.Env lacks RUNNER_API_TOKEN_FILE=/run/secrets/runner_api_token: %s" % env)
' || fail "Engine API inspect of the runner container"
for f in environ cmdline; do
  docker exec -u 10001:10001 "$cid" cat "/proc/1/$f" | tr '\0' '\n' >"$SECRETS_DIR/proc-$f" || fail "cannot read /proc/1/$f"
  [ -s "$SECRETS_DIR/proc-$f" ] || fail "/proc/1/$f is empty"
  ! grep -qF "$TOKEN" "$SECRETS_DIR/proc-$f" || fail "the runner's /proc/1/$f holds the token"
done
grep -qx /usr/local/bin/runner "$SECRETS_DIR/proc-cmdline" || fail "PID 1 is not the runner: $(cat "$SECRETS_DIR/proc-cmdline")"
grep -qx 'RUNNER_API_TOKEN_FILE=/run/runner/api-token' "$SECRETS_DIR/proc-environ" ||
  fail "the runner does not read the entrypoint's copy of the token: $(grep TOKEN "$SECRETS_DIR/proc-environ")"
[ "$(docker exec "$cid" awk '/^Uid:/ {print $2}' /proc/1/status)" = 10001 ] || fail "the runner does not run as uid 10001"
[ "$(docker exec "$cid" stat -c '%u %a' /run/runner/api-token)" = "10001 400" ] ||
  fail "the runner's token copy is not 0400 for uid 10001"
log "token from the secret file: not in Config.Env, /proc/1/environ or /proc/1/cmdline"

status=$(api "$BASE/api/v1/status")
NODE=$(echo "$status" | json 'd["node_id"]')
runner_host=$(docker inspect -f '{{.Config.Hostname}}' "$("${DC[@]}" ps -q runner)")

marker="compose-output-$RANDOM"
secret="compose-secret-$RANDOM$RANDOM"
task=$(api -X POST "$BASE/api/v1/tasks" -d "{\"command\":[\"sh\",\"-c\",\"echo $marker; hostname; echo s:\$SEKRIT\"],\"isolation\":\"docker\",\"secrets\":{\"SEKRIT\":\"$secret\"}}")
id=$(echo "$task" | json 'd["id"]') || fail "submit failed: $task"
deadline=$(( $(date +%s) + 120 ))
while :; do
  task=$(api "$BASE/api/v1/tasks/$id")
  state=$(echo "$task" | json 'd["state"]')
  case "$state" in queued | running) ;; *) break ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || fail "task $id still $state after 120 s"
  sleep 0.5
done
[ "$state" = succeeded ] || fail "task $id ended $state: $task"
[ "$(echo "$task" | json 'd.get("isolation_used")')" = docker ] || fail "task did not run in Docker: $task"
logs=$(api "$BASE/api/v1/tasks/$id/logs")
echo "$logs" | grep -q "$marker" || fail "logs lack the task's output: $logs"
echo "$logs" | grep -qx 's:\*\*\*' || fail "the secret did not reach the task masked: $logs"
! echo "$logs$task" | grep -qF "$secret" || fail "the secret's value is in an answer"
task_host=$(echo "$logs" | grep -v "$marker" | head -1)
[ -n "$task_host" ] && [ "$task_host" != "$runner_host" ] ||
  fail "the task did not run in a container of its own (hostname '$task_host', runner '$runner_host')"
log "task $id succeeded in sibling container $task_host"

log "down (volumes kept), up again: the task and the secret key are still there"
key_sum() { docker exec "$("${DC[@]}" ps -q runner)" sha256sum /var/lib/runner/secret.key | cut -d' ' -f1; }
key_before=$(key_sum)
[ -n "$key_before" ] || fail "no secret key in the runner's data dir"
"${DC[@]}" down >/dev/null 2>&1 || fail "down failed"
[ -z "$("${DC[@]}" ps -q)" ] || fail "containers left after down"
docker volume inspect "${PROJECT}_pgdata" >/dev/null 2>&1 || fail "down removed the database volume"
docker volume inspect "${PROJECT}_runnerdata" >/dev/null 2>&1 || fail "down removed the runner's data volume"
"${DC[@]}" up -d >/dev/null 2>&1 || fail "second up failed"
wait_ready 120
[ "$(api "$BASE/api/v1/tasks/$id" | json 'd["state"]')" = succeeded ] || fail "the task was lost across down/up"
[ "$(key_sum)" = "$key_before" ] || fail "the recreated runner has another secret key: sealed secrets would not open"

"${DC[@]}" down -v >/dev/null 2>&1 || fail "down -v failed"
! docker volume inspect "${PROJECT}_pgdata" >/dev/null 2>&1 || fail "down -v left the volume"
! docker volume inspect "${PROJECT}_runnerdata" >/dev/null 2>&1 || fail "down -v left the runner's data volume"
log "timing: build+up $(( t1 - t0 )) s"
echo "1 passed, 0 failed"
