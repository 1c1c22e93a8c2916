#!/bin/sh
# Runs `runner "$@"` as the unprivileged user `runner`. When started as root
# (the default), it first looks up the group that owns the mounted Docker
# socket and adds it to the process's groups, so the runner can start sibling
# containers without being root. The gid differs between hosts (113 here, 999
# or 998 elsewhere), which is why this is done at start and not baked in.
# RUNNER_RUN_AS_ROOT=1 keeps root (e.g. a socket that only root may use).
#
# RUNNER_API_TOKEN_FILE (compose: the secret /run/secrets/runner_api_token) is
# a read-only mount of a host file with the host's owner and mode, typically
# 0600 and so unreadable by uid 10001. Before dropping root, the file is copied
# to /run/runner/api-token (a tmpfs in compose), mode 0400 for uid 10001 only,
# and RUNNER_API_TOKEN_FILE is pointed at the copy. The token itself is never
# put in the environment or on a command line.
set -eu
sock="${RUNNER_DOCKER_HOST:-unix:///var/run/docker.sock}"
sock="${sock#unix://}"
if [ "$(id -u)" = 0 ] && [ "${RUNNER_RUN_AS_ROOT:-0}" != 1 ]; then
  groups=10001
  if [ -S "$sock" ]; then
    groups="$groups,$(stat -c %g "$sock")"
  fi
  chown runner:runner /var/lib/runner 2>/dev/null || true
  if [ -n "${RUNNER_API_TOKEN_FILE:-}" ]; then
    if [ ! -f "$RUNNER_API_TOKEN_FILE" ] || [ ! -s "$RUNNER_API_TOKEN_FILE" ]; then
      echo "runner-entrypoint: RUNNER_API_TOKEN_FILE=$RUNNER_API_TOKEN_FILE is not a file holding" \
        "the API token (compose: create it with scripts/compose-token)" >&2
      exit 2
    fi
    mkdir -p /run/runner
    chown runner:runner /run/runner
    chmod 0700 /run/runner
    install -m 0400 -o runner -g runner "$RUNNER_API_TOKEN_FILE" /run/runner/api-token
    export RUNNER_API_TOKEN_FILE=/run/runner/api-token
  fi
  exec setpriv --reuid=10001 --regid=10001 --groups="$groups" --inh-caps=-all \
    /usr/local/bin/runner "$@"
fi
exec /usr/local/bin/runner "$@"
