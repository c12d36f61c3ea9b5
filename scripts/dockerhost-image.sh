#!/usr/bin/env bash
# The image of the remote Docker host test bed (scripts/dockerhost_testbed.py): a Debian
# bookworm root with Debian's docker.io and openssh-server, made offline with debootstrap
# (no image can be pulled here) and `docker import`ed. Cached like the base image.
#
# usage: scripts/dockerhost-image.sh [NAME]   (default: nbcontainer/testbed-dockerhost:bookworm)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"

name="${1:-nbcontainer/testbed-dockerhost:bookworm}"
if docker image inspect "$name" >/dev/null 2>&1; then
  log "test bed image $name is present"
  exit 0
fi
apt_install debootstrap ca-certificates
root="$(mktemp -d /tmp/nbcontainer-dockerhost.XXXXXX)"
trap 'as_root rm -rf "$root"' EXIT
log "debootstrap bookworm with docker.io and openssh-server into $root (a minute or two)"
as_root debootstrap --variant=minbase \
  --include=docker.io,openssh-server,iptables,ca-certificates,procps \
  bookworm "$root" >"$(state_dir)/debootstrap-dockerhost.log" 2>&1 || {
    tail -n 20 "$(state_dir)/debootstrap-dockerhost.log" >&2; exit 1; }
as_root rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/* \
  "$root"/etc/ssh/ssh_host_*  # host keys are made per test bed, by its start
log "importing $name"
as_root tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8' \
  -c 'LABEL io.nbcontainer.role=testbed-image' \
  - "$name" >/dev/null
log "test bed image $name is ready"
