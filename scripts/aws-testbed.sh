#!/usr/bin/env bash
# The AWS test bed (see scripts/aws_testbed.py): moto in server mode and Debian's
# docker-registry, both on 127.0.0.1, with a bucket, a role, a compute environment and
# a job queue.   scripts/aws-testbed.sh start|stop|env [--state DIR]
# `start` prints the environment to use: eval "$(scripts/aws-testbed.sh start)" or
# set -a; . <(scripts/aws-testbed.sh env); set +a
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
cd "$here/.."
venv="${VENV:-.venv}"
if [ "${1:-}" = "start" ]; then
  "$here/docker-engine.sh" >&2
  apt_install docker-registry
  "$venv/bin/python" -c 'import moto, boto3' 2>/dev/null || {
    log "installing the aws and test extras (boto3, moto[server]) into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[aws,test]' >&2; }
fi
exec "$venv/bin/python" "$here/aws_testbed.py" "$@"
