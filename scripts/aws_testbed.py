"""The AWS test bed: real parts that stand in for AWS on this machine.

    python scripts/aws_testbed.py start [--state DIR]   # prints KEY=VALUE lines to export
    python scripts/aws_testbed.py stop  [--state DIR]

* moto in server mode on 127.0.0.1 (S3, Batch, CloudWatch Logs, IAM, ECR API,
  SageMaker API), with MOTO_DOCKER_NETWORK_MODE=host so that the job containers
  its Batch starts reach it at 127.0.0.1;
* Debian's docker-registry on 127.0.0.1 as the image registry (ECR's stand-in;
  loopback needs no TLS);
* through boto3: a bucket, an IAM role for jobs, a compute environment and a job queue.

The state (pids, logs, the registry's config and storage, the env file) lives in
one directory; `stop` stops both servers and removes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REGION = "us-east-1"
BUCKET = "nbcontainer-testbed"
QUEUE = "nbcontainer-testbed"
ROLE = "nbcontainer-testbed-job"
REPOSITORY = "nbcontainer"


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nbcontainer" / "aws-testbed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not answer at {url}: {exc}") from exc
            time.sleep(0.2)


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop kills the whole server
        )
    return proc.pid


def _registry_config(state: Path, port: int) -> Path:
    # Debian's shipped config asks for an htpasswd file that does not exist: our own,
    # bound to loopback, storage in the state directory, deletes allowed (for cleanup).
    config = state / "registry.yml"
    storage = state / "registry-data"
    storage.mkdir(exist_ok=True)
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    return config


def _env_for(moto_port: int, registry_port: int) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "NBCONTAINER_REGISTRY": f"127.0.0.1:{registry_port}/{REPOSITORY}",
        "NBCONTAINER_BATCH_QUEUE": QUEUE,
        "NBCONTAINER_BATCH_JOB_ROLE": f"arn:aws:iam::123456789012:role/{ROLE}",
        "NBCONTAINER_S3_PREFIX": f"s3://{BUCKET}/runs",
    }


def _make_resources(env: dict[str, str]) -> None:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )
    url = env["AWS_ENDPOINT_URL"]
    session.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    iam = session.client("iam", endpoint_url=url)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["ecs-tasks.amazonaws.com", "batch.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
    env["NBCONTAINER_BATCH_JOB_ROLE"] = role["Role"]["Arn"]
    service = iam.create_role(
        RoleName="nbcontainer-testbed-batch-service", AssumeRolePolicyDocument=json.dumps(trust)
    )
    batch = session.client("batch", endpoint_url=url)
    ce = batch.create_compute_environment(
        computeEnvironmentName="nbcontainer-testbed",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=service["Role"]["Arn"],
    )
    batch.create_job_queue(
        jobQueueName=QUEUE,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}],
    )


def start(state: Path) -> dict[str, str]:
    if (state / "env").exists():
        stop(state)
    state.mkdir(parents=True, exist_ok=True)
    moto_port, registry_port = _free_port(), _free_port()
    server_env = {
        **os.environ,
        "MOTO_PORT": str(moto_port),
        "MOTO_DOCKER_NETWORK_MODE": "host",
    }
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if moto is None:
        raise SystemExit("moto_server is missing: pip install 'moto[server]' (the test extra)")
    registry = shutil.which("docker-registry")
    if registry is None:
        raise SystemExit("docker-registry is missing: apt-get install docker-registry")
    pids = {
        "moto": _spawn(
            [moto, "-H", "127.0.0.1", "-p", str(moto_port)], state / "moto.log", server_env
        ),
        "registry": _spawn(
            [registry, "serve", str(_registry_config(state, registry_port))],
            state / "registry.log",
            dict(os.environ),
        ),
    }
    (state / "pids.json").write_text(json.dumps(pids))
    _wait_http(f"http://127.0.0.1:{moto_port}/moto-api/", "moto")
    _wait_http(f"http://127.0.0.1:{registry_port}/v2/", "docker-registry")
    env = _env_for(moto_port, registry_port)
    _make_resources(env)
    (state / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM to the server's process group; SIGKILL if it is still there after `grace`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stop(state: Path) -> None:
    pids_file = state / "pids.json"
    if pids_file.exists():
        for pid in json.loads(pids_file.read_text()).values():
            _stop_group(pid)
    shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "stop", "env"])
    p.add_argument("--state", type=Path, default=_default_state())
    args = p.parse_args()
    if args.action == "start":
        env = start(args.state)
        print("".join(f"{k}={v}\n" for k, v in env.items()), end="")
    elif args.action == "env":
        print((args.state / "env").read_text(), end="")
    else:
        stop(args.state)


if __name__ == "__main__":
    main()
