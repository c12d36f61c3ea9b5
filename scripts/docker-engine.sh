#!/usr/bin/env bash
# Make sure a Docker engine answers: if none does, install Debian's docker.io
# and start dockerd in the background (no systemd needed).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"

if docker info >/dev/null 2>&1; then
  log "Docker engine answers ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

apt_install docker.io
state="$(state_dir)"
log "starting dockerd (log: $state/dockerd.log)"
# setsid: the daemon must outlive this script and the shell that ran it.
as_root setsid dockerd --host unix:///var/run/docker.sock >"$state/dockerd.log" 2>&1 < /dev/null &

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "Docker engine is up ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within 60 s; its log follows"
tail -n 30 "$state/dockerd.log" >&2 || true
exit 1
