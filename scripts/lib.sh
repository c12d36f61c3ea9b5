# Shared helpers for the setup scripts. Sourced, not run.
set -euo pipefail

log() { printf '\033[1m[nbcontainer setup]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  # Install Debian packages that are missing; apt finds its own mirror.
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}

state_dir() {
  # Where setup keeps logs and pid files of the services it starts.
  local d="${NBCONTAINER_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/nbcontainer}"
  mkdir -p "$d"
  printf '%s' "$d"
}
