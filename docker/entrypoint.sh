#!/bin/sh
# Runs `runner "$@"` as the unprivileged user `runner`. When started as root
# (the default), it first looks up the group that owns the mounted Docker
# socket and adds it to the process's groups, so the runner can start sibling
# containers without being root. The gid differs between hosts (113 here, 999
# or 998 elsewhere), which is why this is done at start and not baked in.
# RUNNER_RUN_AS_ROOT=1 keeps root (e.g. a socket that only root may use).
set -eu
sock="${RUNNER_DOCKER_HOST:-unix:///var/run/docker.sock}"
sock="${sock#unix://}"
if [ "$(id -u)" = 0 ] && [ "${RUNNER_RUN_AS_ROOT:-0}" != 1 ]; then
  groups=10001
  if [ -S "$sock" ]; then
    groups="$groups,$(stat -c %g "$sock")"
  fi
  chown runner:runner /var/lib/runner 2>/dev/null || true
  exec setpriv --reuid=10001 --regid=10001 --groups="$groups" --inh-caps=-all \
    /usr/local/bin/runner "$@"
fi
exec /usr/local/bin/runner "$@"
