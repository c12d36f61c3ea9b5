"""The run's signing key, as the runner gets it: by value on this machine, by reference
on AWS, where a job's or a training job's environment is shown by every Describe call.

* ``NBCONTAINER_RUN_KEY``: the key itself (``--local``: it travels in the claim, never in
  a container's configuration);
* ``NBCONTAINER_RUN_KEY_REF=ssm:NAME``: an SSM Parameter Store SecureString the host made
  for the run (Batch); the runner reads it with the job role (``ssm:GetParameter``, and
  ``kms:Decrypt`` on its key), signing the call itself;
* ``NBCONTAINER_RUN_KEY_REF=channel:NAME``: a SageMaker input channel the platform put at
  ``/opt/ml/input/data/NAME/`` from an S3 object under the run's prefix.

The host deletes the parameter or object when the run ends. Standard library only.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

from .trust import KEY_ENV

__all__ = ["KEY_FILE", "KEY_REF_ENV", "RunKeyError", "load_run_key", "ssm_parameter"]

KEY_REF_ENV = "NBCONTAINER_RUN_KEY_REF"
KEY_FILE = "run-key"  # the file in a key channel


class RunKeyError(RuntimeError):
    """The run's key could not be read where its reference says."""


def load_run_key(environ: MutableMapping[str, str], ml_root: Path) -> str | None:
    """The key (None: the run is not signed), taken out of `environ` either way, so that
    neither the cell nor its subprocesses see the key or where it is."""
    key = environ.pop(KEY_ENV, None)
    ref = environ.pop(KEY_REF_ENV, None)
    if key or not ref:
        return key
    kind, _, name = ref.partition(":")
    if kind == "channel":
        path = ml_root / "input" / "data" / Path(name).name / KEY_FILE
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise RunKeyError(f"the run's key channel {path} could not be read: {exc}") from exc
    if kind == "ssm":
        return ssm_parameter(name, environ)
    raise RunKeyError(f"{KEY_REF_ENV} is {ref[:40]!r}: expected ssm:NAME or channel:NAME")


def ssm_parameter(name: str, env: MutableMapping[str, str], timeout: float = 30) -> str:
    """A SecureString's value (``AmazonSSM.GetParameter`` with decryption, SigV4-signed
    with the platform's credentials). Imported only by a run that needs it (a --local
    run starts without an HTTP client)."""
    import hashlib
    import json
    import urllib.error
    import urllib.request

    from .upload import UploadError, credentials_from, sign_request

    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_SSM") or env.get("AWS_ENDPOINT_URL")
    url = (endpoint.rstrip("/") + "/") if endpoint else f"https://ssm.{region}.amazonaws.com/"
    body = json.dumps({"Name": name, "WithDecryption": True}).encode()
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "x-amz-target": "AmazonSSM.GetParameter",
    }
    try:
        creds = credentials_from(env)
    except UploadError as exc:
        raise RunKeyError(str(exc)) from exc
    digest = hashlib.sha256(body).hexdigest()
    if creds is None and endpoint:
        # No platform credentials, and an endpoint that is not AWS's (an emulator, such as
        # the test bed's moto, which tells services apart by the signature's scope): a
        # placeholder identity. AWS itself never sees it (its endpoints are not overridden).
        from .upload import Credentials

        creds = Credentials("anonymous", "anonymous")
    if creds is not None:
        headers = sign_request("POST", url, headers, digest, creds, region, service="ssm")
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        hint = (
            " (the job role needs ssm:GetParameter on it, and kms:Decrypt on its key)"
            if exc.code in (400, 403)
            else ""
        )
        raise RunKeyError(
            f"SSM answered {exc.code} for the run's key {name}{hint}: {detail}"
        ) from exc
    except (OSError, ValueError) as exc:
        raise RunKeyError(f"SSM could not be reached for the run's key {name}: {exc}") from exc
    try:
        return str(doc["Parameter"]["Value"])
    except (KeyError, TypeError) as exc:
        raise RunKeyError(f"SSM's answer for {name} holds no value") from exc
