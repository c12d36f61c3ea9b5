"""A remote run's signing key, delivered by reference: no Describe answer holds it.

A Batch job's container environment and a training job's ``Environment`` are returned by
``DescribeJobs`` and ``DescribeTrainingJob`` to anyone allowed to describe jobs in the
account; with write access to the run's S3 prefix, such a reader could forge signed
outputs whose pickles the host loads. So on AWS the key travels as a reference:

* Batch: an SSM Parameter Store SecureString ``/nbcontainer/runs/<run>`` (encrypted with
  ``AWSBackend.kms_key``, or AWS's own key for SSM), made for the run (one per sweep: an
  array job's children share a key) and deleted when it ends; the job gets
  ``NBCONTAINER_RUN_KEY_REF=ssm:<name>`` and its runner reads the parameter with the job
  role. (Not an ECS ``secrets`` entry: those live in the job definition, not in a job's
  overrides, so every run would need a job definition of its own; and ECS writes their
  values into the container's configuration on the instance, where ``docker inspect``
  shows them.)
* SageMaker: an S3 object ``<run prefix>/nbcontainer-key/run-key`` (SSE-KMS with
  ``AWSBackend.kms_key``, else SSE-S3), given to the job as the input channel
  ``nbcontainer-key``; deleted when the run ends.

``nbcontainer gc --aws`` deletes keys a killed kernel left (their runs ended, or are
unknown to the ledger, and they are older than an hour).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..runtime.run_key import KEY_FILE, KEY_REF_ENV
from .aws import aws_errors, split_s3_uri, tag_value

__all__ = [
    "KEY_CHANNEL",
    "SSM_PATH",
    "delete_key_object",
    "delete_ssm_key",
    "endpoint_of",
    "put_key_object",
    "put_ssm_key",
    "stale_ssm_keys",
]

SSM_PATH = "/nbcontainer/runs/"
KEY_CHANNEL = "nbcontainer-key"


def endpoint_of(aws_client: Any) -> str | None:
    """A client's endpoint when it is not AWS's own (the test bed's moto)."""
    url = str(aws_client.meta.endpoint_url)
    return None if ".amazonaws.com" in url else url


def put_ssm_key(ssm: Any, run_id: str, key: str, kms_key: str | None) -> dict[str, str]:
    """Make the run's parameter; returns what the job's environment gets instead of the
    key (its reference, and the SSM endpoint when it is not AWS's own)."""
    name = f"{SSM_PATH}{run_id}"
    kwargs: dict[str, Any] = {
        "Name": name,
        "Value": key,
        "Type": "SecureString",
        "Description": "nbcontainer run signing key; deleted when the run ends",
        "Tags": [{"Key": "io.nbcontainer.run-id", "Value": tag_value(run_id)}],
    }
    if kms_key:
        kwargs["KeyId"] = kms_key
    with aws_errors("ssm", "PutParameter"):
        ssm.put_parameter(**kwargs)
    env = {KEY_REF_ENV: f"ssm:{name}"}
    endpoint = endpoint_of(ssm)
    if endpoint:
        env["AWS_ENDPOINT_URL_SSM"] = endpoint
    return env


def delete_ssm_key(ssm: Any, name: str) -> None:
    """Delete a run's parameter (gone already: nothing to do)."""
    with aws_errors("ssm", "DeleteParameter"):
        try:
            ssm.delete_parameter(Name=name)
        except ssm.exceptions.ParameterNotFound:
            return


def put_key_object(s3: Any, run_uri: str, key: str, kms_key: str | None) -> str:
    """Put the run's key object under its prefix; returns the channel's S3 prefix."""
    bucket, prefix = split_s3_uri(f"{run_uri}/{KEY_CHANNEL}/")
    kwargs: dict[str, Any] = {
        "Bucket": bucket,
        "Key": f"{prefix.rstrip('/')}/{KEY_FILE}",
        "Body": key.encode(),
    }
    if kms_key:
        kwargs.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key)
    else:
        kwargs["ServerSideEncryption"] = "AES256"
    with aws_errors("s3", "PutObject"):
        s3.put_object(**kwargs)
    return f"{run_uri}/{KEY_CHANNEL}/"


def delete_key_object(s3: Any, channel_uri: str) -> None:
    """Delete the key object under a channel prefix (what put_key_object returned)."""
    bucket, prefix = split_s3_uri(channel_uri)
    with aws_errors("s3", "DeleteObject"):
        s3.delete_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{KEY_FILE}")


def stale_ssm_keys(
    ssm: Any, run_ended: Callable[[str], bool], older_than: float = 3600
) -> list[str]:
    """Run-key parameters whose run ended (or is unknown) and that are older than
    `older_than` seconds: what a kernel killed before its run ended left."""
    stale = []
    now = time.time()
    with aws_errors("ssm", "DescribeParameters"):
        for page in ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [SSM_PATH]}]
        ):
            for p in page.get("Parameters", []):
                name = str(p["Name"])
                modified = p.get("LastModifiedDate")
                age = now - modified.timestamp() if modified is not None else older_than
                if age >= older_than and run_ended(name[len(SSM_PATH) :]):
                    stale.append(name)
    return stale
