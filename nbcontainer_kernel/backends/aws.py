"""AWS clients for the remote backends: boto3 imported only when one is used.

Credentials come from boto3's standard chain (environment, profile, SSO, the
instance's role); ``AWS_ENDPOINT_URL`` points every client at another endpoint
(the test bed's moto). Retries are botocore's ``standard`` mode: exponential
backoff with jitter, and only on throttling (429), transient 5xx answers and
connection errors; a 4xx that is the caller's fault fails at once.
:func:`aws_errors` turns botocore's exceptions into :class:`CloudError` with
what happened and what to do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from traitlets import Unicode

from ..runtime.errors import CloudError, NbcontainerError
from .base import Backend

__all__ = [
    "Clients",
    "AWSBackend",
    "aws_errors",
    "poll_interval",
    "read_log_forward",
    "run_prefix",
    "s3_chunks",
    "tag_value",
    "check_credentials",
    "client",
    "environment_key",
    "region",
    "s3_endpoint",
    "split_s3_uri",
]

_RETRIES = {"mode": "standard", "max_attempts": 8}


def _session() -> Any:
    try:
        import boto3
    except ImportError as exc:  # the aws extra is not installed
        raise NbcontainerError(
            "The AWS backends need boto3: pip install 'nbcontainer-kernel[aws]'"
        ) from exc
    return boto3.session.Session()


def client(service: str) -> Any:
    """A boto3 client with standard retries (one per call site; they are cheap)."""
    from botocore.config import Config

    return _session().client(
        service,
        config=Config(retries=_RETRIES, user_agent_extra="nbcontainer-kernel"),  # type: ignore[arg-type]
    )


def environment_key() -> tuple[tuple[str, str], ...]:
    """What decides boto3's credentials and endpoints: clients made under another key
    are made again (a user may set AWS_PROFILE in the notebook between runs)."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


class Clients:
    """A backend's boto3 clients, one per service, made again when the AWS_* environment
    changed since (a user may set AWS_PROFILE in the notebook between runs)."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._env = environment_key()

    def get(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = client(service)
        return self._clients[service]

    def refresh(self) -> None:
        """Forget the clients when the environment changed (called by each run's check)."""
        if self._env != environment_key():
            self._clients.clear()
            self._env = environment_key()


class AWSBackend(Backend):
    """What every AWS backend is set with: where run images go, where results come back,
    and the KMS key of a run's signing key at rest (``c.AWSBackend.registry`` sets it
    for all of them; ``c.BatchBackend.registry`` for one)."""

    registry = Unicode(
        None,
        allow_none=True,
        help="Where run images are pushed for remote backends: host[:port]/repository, e.g. "
        "ACCOUNT.dkr.ecr.REGION.amazonaws.com/nbcontainer (env NBCONTAINER_REGISTRY).",
    ).tag(config=True, env="NBCONTAINER_REGISTRY")
    s3_prefix = Unicode(
        None,
        allow_none=True,
        help="s3://bucket/prefix where remote runs leave their results (env "
        "NBCONTAINER_S3_PREFIX).",
    ).tag(config=True, env="NBCONTAINER_S3_PREFIX")
    kms_key = Unicode(
        None,
        allow_none=True,
        help="KMS key (id, ARN or alias) that encrypts a remote run's signing key where it "
        "waits for the run: the SSM parameter on Batch, the S3 object on SageMaker (env "
        "NBCONTAINER_KMS_KEY); by default AWS's own key for SSM and S3-managed keys.",
    ).tag(config=True, env="NBCONTAINER_KMS_KEY")

    def require(self, settings: Mapping[str, Any], needed: Mapping[str, str]) -> None:
        """MissingSetting for the first of `needed` (setting -> what it is) unset, naming
        the setting as it is configured and its environment variable."""
        from ..runtime.errors import MissingSetting

        traits = self.traits(config=True)
        for name, what in {
            **needed,
            "s3_prefix": "the s3://bucket/prefix where results go",
            "registry": "the registry run images are pushed to",
        }.items():
            if not settings.get(name):
                env = traits[name].metadata.get("env", "")
                raise MissingSetting(f"{type(self).__name__}.{name}", env, what)


def run_prefix(s3_prefix: str, run_id: str) -> str:
    """``s3://bucket/prefix/<run id>-<8 hex>``: where one submission of a run keeps its
    objects. Run ids count per ledger: two ledgers (two users, a ledger made anew) sharing
    one prefix would otherwise write over each other's outputs."""
    import secrets

    bucket, prefix = split_s3_uri(s3_prefix)
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}{run_id}-{secrets.token_hex(4)}"


def poll_interval(waited: float) -> float:
    """AWS's status APIs are rate-limited per account: 1 s while a job starts, backing off
    to 10 s."""
    return min(10.0, 1.0 + waited / 30.0)


def check_credentials(service: str) -> None:
    """CloudError NoCredentials at once when boto3's chain finds none (before any build)."""
    with aws_errors(service, "credentials"):
        if _session().get_credentials() is None:
            import botocore.exceptions

            raise botocore.exceptions.NoCredentialsError()


def region() -> str:
    name = _session().region_name
    if not name:
        raise CloudError(
            "configuration",
            "region",
            "NoRegion",
            "no AWS region is configured: set AWS_DEFAULT_REGION or `aws configure set region`",
        )
    return str(name)


def s3_endpoint() -> str | None:
    """The S3 endpoint when it is not AWS's own (an S3-compatible store, the test bed)."""
    url = str(client("s3").meta.endpoint_url)
    return None if url.endswith(".amazonaws.com") or ".amazonaws.com." in url else url


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at either end)."""
    from ..runtime.upload import UploadError
    from ..runtime.upload import split_s3_uri as split

    try:
        bucket, prefix = split(uri)
    except UploadError as exc:
        raise CloudError("s3", "parse", "InvalidURI", str(exc)) from None
    return bucket, prefix.strip("/")


@contextlib.contextmanager
def aws_errors(service: str, operation: str) -> Iterator[None]:
    """Translate botocore's exceptions raised inside the block into CloudError."""
    import botocore.exceptions as bce

    try:
        yield
    except bce.NoCredentialsError as exc:
        raise CloudError(
            service,
            operation,
            "NoCredentials",
            "no AWS credentials were found. Set AWS_PROFILE (after `aws sso login` or "
            "`aws configure`), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ) from exc
    except bce.NoRegionError as exc:
        raise CloudError(
            service,
            operation,
            "NoRegion",
            "no AWS region is configured: set AWS_DEFAULT_REGION or `aws configure set region`",
        ) from exc
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError) as exc:
        raise CloudError(
            service,
            operation,
            "Unreachable",
            f"{exc}. Check the network, a proxy, or AWS_ENDPOINT_URL",
        ) from exc
    except bce.ClientError as exc:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(err.get("Code") or "ClientError")
        message = str(err.get("Message") or exc)
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            message += " (the README's AWS section lists the permissions needed)"
        raise CloudError(service, operation, code, message, status) from exc
    except bce.BotoCoreError as exc:
        raise CloudError(service, operation, type(exc).__name__, str(exc)) from exc


def tag_value(text: str) -> str:
    """A value AWS tagging takes: letters, digits, spaces and _ . : / = + - @ (256 at most)."""
    import re

    return re.sub(r"[^\w .:/=+\-@]", "_", text)[:256]


def s3_chunks(s3: Any, uri: str, size: int = 1 << 20) -> Iterator[bytes] | None:
    """An S3 object's bytes as chunks, or None when there is no such object; an object
    above NBCONTAINER_MAX_RESULT_BYTES is refused before any byte is read."""
    from ..config import max_result_bytes
    from ..runtime.errors import InvalidOption

    bucket, key = split_s3_uri(uri)
    try:
        with aws_errors("s3", "GetObject"):
            obj = s3.get_object(Bucket=bucket, Key=key)
    except CloudError as exc:
        if exc.code in ("NoSuchKey", "404"):
            return None
        raise
    cap = max_result_bytes()
    if int(obj.get("ContentLength") or 0) > cap:
        raise InvalidOption("NBCONTAINER_MAX_RESULT_BYTES", cap, f"{uri} is larger")
    body = obj["Body"]
    return iter(lambda: body.read(size), b"")


def read_log_forward(
    logs: Any, group: str, stream: str, token: str | None
) -> tuple[list[str], str | None]:
    """The CloudWatch Logs lines of `stream` after `token` (from the start for None), and the
    token to read on from. CloudError when a read fails (callers treat logs as a view)."""
    lines: list[str] = []
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream}
        kwargs["startFromHead"] = True
        if token:
            kwargs["nextToken"] = token
        with aws_errors("logs", "GetLogEvents"):
            page = logs.get_log_events(**kwargs)
        lines.extend(e["message"] for e in page.get("events", []))
        done = not page.get("events") or page.get("nextForwardToken") == token
        token = page.get("nextForwardToken")
        if done:
            return lines, token
