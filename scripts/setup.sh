#!/usr/bin/env bash
# Everything the demo and the tests need on a fresh Debian machine:
#   a Docker engine (started when none answers), an offline-made base image,
#   the project's virtualenv (.venv) with the package installed editable, Debian's
#   docker-registry for the AWS test bed, docker-compose for SageMaker's local mode,
#   the JupyterLab extension built from labextension/ (Node.js and npm),
#   and, with --browser, Debian's chromium for the browser tests.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
cd "$here/.."

browser=0
venv_only=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    --venv-only) venv_only=1 ;;  # no Docker engine, no base image: for `make lint` and `make unit`
    *) log "unknown argument: $arg"; exit 2 ;;
  esac
done

if [ "$venv_only" -eq 0 ]; then
  "$here/docker-engine.sh"
  "$here/base-image.sh" "${NBCONTAINER_BASE_IMAGE:-nbcontainer/base:bookworm}"
fi

venv="${VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 lacks venv until python3-venv is installed (the one step that needs root).
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  log "creating the virtualenv $venv"
  python3 -m venv "$venv"
fi
# What was installed is stamped with pyproject.toml's digest: the same file installs nothing
# again (an editable install picks code changes up by itself), so `make unit` starts at once.
stamp="$venv/.nbcontainer-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
# Found, not imported: importing them all (sagemaker above all) takes seconds, which
# `make unit` would pay on every run; a fresh install below imports them in full.
found_all() {
  "$venv/bin/python" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("nbcontainer_kernel", "boto3", "moto",
         "sagemaker", "playwright", "hypothesis", "xdist", "ruff", "mypy")))'
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && found_all; then
  log "nbcontainer-kernel and its extras are installed in $venv (pyproject.toml unchanged)"
else
log "installing nbcontainer-kernel (editable, with the test, lint, aws and sagemaker extras) into $venv"
pip_log="$(mktemp)"
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -e '.[test,lint,aws,sagemaker]' >"$pip_log" 2>&1; then
  # A failed install fails setup, saying what pip said (never a half-installed venv that
  # turns tests into skips).
  log "pip could not install nbcontainer-kernel and its extras into $venv; pip's last lines:"
  tail -n 40 "$pip_log" >&2
  rm -f "$pip_log"
  exit 1
fi
grep -v '^WARNING: Location' "$pip_log" >&2 || true  # pip's warnings, if any
rm -f "$pip_log"
# Every part the README promises imports (the extras included).
"$venv/bin/python" -c 'import nbcontainer_kernel, boto3, moto, sagemaker.core.local.local_session, playwright, hypothesis, xdist, ruff, mypy' \
  || { log "the install into $venv is incomplete (an import above failed)"; exit 1; }
echo "$want" > "$stamp"
fi

if [ "$venv_only" -eq 0 ]; then
  # The JupyterLab extension (the Runs sidebar), built from its TypeScript sources.
  "$here/labextension.sh"
  # The AWS test bed's registry (scripts/aws-testbed.sh starts it with its own config), and
  # Docker Compose for SageMaker's local mode (--backend sagemaker-local).
  apt_install docker-registry docker-compose
fi

if [ "$browser" -eq 1 ]; then
  # Playwright drives Debian's chromium (it cannot download its own browsers here).
  apt_install chromium
fi
