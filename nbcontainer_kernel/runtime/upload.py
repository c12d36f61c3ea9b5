"""Where no platform uploads a run's outputs (AWS Batch), the runner does it itself:
``NBCONTAINER_OUTPUT_URI=s3://bucket/prefix/`` makes it put ``outputs.tar.gz``
(``model/`` and ``output/``, the signed manifest included) there at the end, also
after a failure (the container contract).

Runs inside run images: standard library only, so S3's request signing (AWS
Signature Version 4) is done here rather than by boto3, which a run image need
not hold. Credentials come from the platform, never from the user: the job
role through the container credentials endpoint (what Batch and ECS give a job),
or the standard ``AWS_ACCESS_KEY_ID`` variables when the platform sets them.
With neither, the request goes unsigned and S3 answers whether that may write.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .contract import OUTPUT_URI_ENV

__all__ = [
    "Credentials",
    "OUTPUTS_OBJECT",
    "URI_ENV",
    "UploadError",
    "credentials_from",
    "object_url",
    "pack_outputs",
    "put_object",
    "sign_request",
    "split_s3_uri",
    "upload_outputs",
]

URI_ENV = OUTPUT_URI_ENV
OUTPUTS_OBJECT = "outputs.tar.gz"
#: Where ECS and Batch serve a task's role credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI).
CONTAINER_CREDENTIALS_HOST = "http://169.254.170.2"
_UNRESERVED = "-_.~"


class UploadError(RuntimeError):
    """The outputs could not be put where NBCONTAINER_OUTPUT_URI says."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never the secret in a log line
        return f"Credentials({self.access_key[:4]}…)"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without leading slash)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UploadError(f"{URI_ENV} must be s3://bucket/prefix, not {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def credentials_from(env: Mapping[str, str], timeout: float = 5.0) -> Credentials | None:
    """The platform's credentials: the standard variables, else the container credentials
    endpoint (the job role), else None."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
        )
    url = None
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        url = CONTAINER_CREDENTIALS_HOST + env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
    elif env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        url = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    if url is None:
        return None
    request = urllib.request.Request(url)
    token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    if env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
        token = Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text().strip()
    if token:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            doc = json.load(resp)
    except (OSError, ValueError) as exc:
        raise UploadError(
            f"the job role's credentials could not be read from {url}: {exc}"
        ) from exc
    return Credentials(doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token"))


def object_url(bucket: str, key: str, region: str, endpoint: str | None) -> str:
    """Path-style under a custom endpoint (an S3-compatible store), else AWS's own host."""
    quoted = urllib.parse.quote(key, safe="/" + _UNRESERVED)
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{quoted}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{quoted}"


def sign_request(
    method: str,
    url: str,
    headers: dict[str, str],
    payload_sha256: str,
    creds: Credentials,
    region: str,
    service: str = "s3",
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """Headers for `url` signed with AWS Signature Version 4 (what boto3's signer makes)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    parts = urllib.parse.urlsplit(url)
    signed = {k.lower(): " ".join(v.strip().split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_sha256
    if creds.token:
        signed["x-amz-security-token"] = creds.token
    names = sorted(signed)
    query = "&".join(
        f"{urllib.parse.quote(k, safe=_UNRESERVED)}={urllib.parse.quote(v, safe=_UNRESERVED)}"
        for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    )
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + creds.secret_key).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


def put_object(
    url: str, body: bytes, creds: Credentials | None, region: str, timeout: float = 300
) -> None:
    """PUT `body` at `url`, signed when there are credentials."""
    headers = {"content-type": "application/gzip", "content-length": str(len(body))}
    digest = hashlib.sha256(body).hexdigest()
    if creds is not None:
        headers = sign_request("PUT", url, headers, digest, creds, region)
    else:
        headers["x-amz-content-sha256"] = digest
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        hint = " (the job role needs s3:PutObject on this prefix)" if exc.code == 403 else ""
        raise UploadError(f"S3 answered {exc.code} for PUT {url}{hint}: {detail}") from exc
    except OSError as exc:
        raise UploadError(f"S3 could not be reached at {url}: {exc}") from exc


def pack_outputs(ml_root: Path) -> bytes:
    """model/ and output/ as one gzipped tar (regular files and directories only)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for top in ("model", "output"):
            base = ml_root / top
            if not base.is_dir():
                continue
            tar.add(base, arcname=top, recursive=False)
            for path in sorted(base.rglob("*")):
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    continue
                tar.add(path, arcname=str(path.relative_to(ml_root)), recursive=False)
    return buf.getvalue()


def upload_outputs(ml_root: Path, env: Mapping[str, str]) -> str | None:
    """Put the outputs where NBCONTAINER_OUTPUT_URI says (None when it says nothing);
    returns the object's s3:// address."""
    uri = env.get(URI_ENV)
    if not uri:
        return None
    bucket, prefix = split_s3_uri(uri)
    key = f"{prefix.rstrip('/')}/{OUTPUTS_OBJECT}" if prefix else OUTPUTS_OBJECT
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    put_object(
        object_url(bucket, key, region, endpoint),
        pack_outputs(ml_root),
        credentials_from(env),
        region,
    )
    return f"s3://{bucket}/{key}"


def _get(request: urllib.request.Request, shown: str, timeout: float) -> bytes:
    """The body of one GET; UploadError naming `shown` (never a signed query) otherwise."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as exc:
        raise UploadError(f"S3 answered {exc.code} for GET {shown}") from exc
    except OSError as exc:
        raise UploadError(f"S3 could not be reached at {shown}: {exc}") from exc


def get_url(url: str, timeout: float = 60) -> bytes:
    """GET a presigned https:// (or the test bed's http://) URL: its query is the signature."""
    if not url.startswith(("https://", "http://")):
        raise UploadError(f"not an HTTP URL: {url[:40]}")
    return _get(urllib.request.Request(url), "a presigned URL", timeout)


def get_object(uri: str, env: Mapping[str, str], timeout: float = 60) -> bytes:
    """GET an s3:// object with the platform's credentials (as upload_outputs puts one)."""
    bucket, key = split_s3_uri(uri)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    url = object_url(bucket, key, region, endpoint)
    creds = credentials_from(env)
    empty = hashlib.sha256(b"").hexdigest()
    headers = (
        sign_request("GET", url, {}, empty, creds, region)
        if creds is not None
        else {"x-amz-content-sha256": empty}
    )
    return _get(urllib.request.Request(url, headers=headers), url, timeout)
