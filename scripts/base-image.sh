#!/usr/bin/env bash
# Make a Debian base image with Python 3 offline, for machines that cannot
# pull from an image registry: debootstrap a minimal bookworm root, copy the
# host's CA bundle into it (so pip inside a build trusts what the host trusts)
# and `docker import` it.
#
# usage: scripts/base-image.sh [NAME]     (default: nbcontainer/base:bookworm)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"

name="${1:-${NBCONTAINER_BASE_IMAGE:-nbcontainer/base:bookworm}}"

if docker image inspect "$name" >/dev/null 2>&1; then
  log "base image $name is present"
  exit 0
fi

# An image from a registry is the easy way; try it first, quietly.
if [ "$name" != "nbcontainer/base:bookworm" ] && docker pull -q "$name" >/dev/null 2>&1; then
  log "pulled $name"
  exit 0
fi

apt_install debootstrap ca-certificates
root="$(mktemp -d /tmp/nbcontainer-rootfs.XXXXXX)"
trap 'as_root rm -rf "$root"' EXIT
log "debootstrap bookworm into $root (about 30-60 s)"
as_root debootstrap --variant=minbase \
  --include=python3,python3-pip,python3-venv,ca-certificates \
  bookworm "$root" >"$(state_dir)/debootstrap.log" 2>&1 || {
    tail -n 20 "$(state_dir)/debootstrap.log" >&2; exit 1; }
as_root cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
as_root rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
log "importing $name"
as_root tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8' \
  -c 'CMD ["python3"]' \
  -c 'LABEL io.nbcontainer.role=base' \
  - "$name" >/dev/null
log "base image $name is ready"
