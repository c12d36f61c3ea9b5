"""How a runner gets its signing key (runner/run_key.py): by value, or by reference from an
SSM parameter or an input channel, and taken out of its environment either way.

The SSM side is checked against a small HTTP server speaking SSM's JSON protocol: the
request is what AWS expects (the target, a SigV4 scope of ssm), and failures say what to
do. The same call against moto runs in tests/integration/test_batch.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from nbcontainer_kernel.runtime.run_key import KEY_REF_ENV, RunKeyError, load_run_key
from nbcontainer_kernel.runtime.trust import KEY_ENV


class _Ssm(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"headers": dict(self.headers), "body": body})
        status, answer = self.answers.get(body["Name"], (400, {"__type": "ParameterNotFound"}))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def ssm() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Ssm)
    # A short poll: shutdown() waits for the loop to see it.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Ssm.seen.clear()
    _Ssm.answers = {"/nbcontainer/runs/r-1": (200, {"Parameter": {"Value": "k" * 64}})}
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_key_by_value_is_taken_out_of_the_environment(tmp_path: Path) -> None:
    env = {KEY_ENV: "abc", "OTHER": "1"}
    assert load_run_key(env, tmp_path) == "abc"
    assert env == {"OTHER": "1"}


def test_a_key_from_a_channel_is_read_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "input" / "data" / "nbcontainer-key").mkdir(parents=True)
    (tmp_path / "input" / "data" / "nbcontainer-key" / "run-key").write_text("x" * 64 + "\n")
    env = {KEY_REF_ENV: "channel:nbcontainer-key"}
    assert load_run_key(env, tmp_path) == "x" * 64 and env == {}
    with pytest.raises(RunKeyError, match="could not be read"):
        load_run_key({KEY_REF_ENV: "channel:missing"}, tmp_path)


def test_a_key_from_ssm_is_read_with_a_signed_get_parameter(ssm: str, tmp_path: Path) -> None:
    env = {
        KEY_REF_ENV: "ssm:/nbcontainer/runs/r-1",
        "AWS_ENDPOINT_URL_SSM": ssm,
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    assert load_run_key(env, tmp_path) == "k" * 64
    assert KEY_REF_ENV not in env
    [call] = _Ssm.seen
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers["x-amz-target"] == "AmazonSSM.GetParameter"
    assert "/eu-west-1/ssm/aws4_request" in headers["authorization"]
    assert call["body"] == {"Name": "/nbcontainer/runs/r-1", "WithDecryption": True}


@pytest.mark.parametrize(
    ("ref", "answer", "says"),
    [
        ("ssm:/nbcontainer/runs/gone", None, "ssm:GetParameter"),
        ("ssm:/nbcontainer/runs/odd", (200, {"nothing": 1}), "holds no value"),
        ("vault:x", None, "expected ssm:NAME or channel:NAME"),
    ],
)
def test_a_key_that_cannot_be_read_is_a_clear_error(
    ssm: str, tmp_path: Path, ref: str, answer: Any, says: str
) -> None:
    if answer is not None:
        _Ssm.answers[ref[4:]] = answer
    env = {KEY_REF_ENV: ref, "AWS_ENDPOINT_URL_SSM": ssm}
    with pytest.raises(RunKeyError, match=says):
        load_run_key(env, tmp_path)


def test_ssm_that_cannot_be_reached_is_a_clear_error(tmp_path: Path) -> None:
    env = {KEY_REF_ENV: "ssm:/x", "AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:9"}
    with pytest.raises(RunKeyError, match="could not be reached"):
        load_run_key(env, tmp_path)
