"""The secret filter, table-driven: every secret form leaks nowhere, every harmless variable
travels. Then the places the filter guards: namespace strings, symlinked code, notebook
outputs, parameter labels."""

from __future__ import annotations

import base64
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.images.runs import _shown_parameters
from nbcontainer_kernel.snapshots import filter_env, snapshot
from nbcontainer_kernel.snapshots.env import is_secret, looks_like_secret
from nbcontainer_kernel.snapshots.sources import collect_sources
from tests.helpers import examples

_B = base64.b64encode(b"alice:wonderland").decode()
_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"

# (name, value): each a secret, by its name, its value, or both.
SECRETS = [
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
    ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEBYaDH"),
    ("AWS_PROFILE", "prod"),
    ("MY_API_KEY", "abc123"),
    ("OPENAI_API_KEY", "sk-proj-abcdefghijklmnopqrstuvwx"),
    ("GITHUB_TOKEN", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    ("GITHUB_PAT", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"),
    ("GH_PAT", "x"),
    ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXX"),
    ("DISCORD_WEBHOOK", "https://discord.com/api/webhooks/123/abc"),
    ("PGPASS", "hunter2"),
    ("PGPASSWORD", "hunter2"),
    ("MYSQL_PWD", "hunter2"),
    ("DB_PASS", "hunter2"),
    ("DB_PWD", "hunter2"),
    ("SMTP_PASS", "hunter2"),
    ("CREDS", "user:pw"),
    ("STRIPE_SK", "x"),
    ("DB_PASSWORD", "x"),
    ("CLIENT_SECRET", "x"),
    ("githubToken", "x"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/key.json"),
    ("SENTRY_DSN", "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"),
    ("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"),
    ("SSH_PRIVATE_KEY", _PEM),
    # Harmless names, secret values:
    ("LEGACY_ID", "AKIAIOSFODNN7EXAMPLE"),
    ("TEMP_ID", "ASIAIOSFODNN7EXAMPLE"),
    ("CI_VALUE", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    ("FINE_GRAINED", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"),
    ("BOT", "xoxb-123456789012-abcdefghij"),
    ("OPENAI", "sk-abcdefghijklmnopqrstuvwx"),
    ("STRIPE", "sk_live_abcdefghijklmnop1234"),
    ("HEADER", "Basic " + _B),
    ("BEARER_HEADER", "Bearer abcdefghijklmnopqrstuvwxyz012345"),
    ("SESSION", _JWT),
    ("DEPLOY", _PEM),
    ("CACHE_URL", "redis://:s3cretpw@cache:6379/0"),
    ("DATABASE_URL", "postgres://app:pa/ss@db:5432/app"),
    ("MONGO_URL", "mongodb+srv://user:pw@cluster0.example.net/db"),
    ("ERRORS", "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"),
    ("LIBPQ", "host=db user=app password=hunter2 dbname=app"),
    ("JDBC", "jdbc:mysql://db:3306/app?user=app&password=hunter2"),
    (
        "AZURE_STORAGE",
        "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abcdefghijklmnopqrstuvwxyz0123==",
    ),
    ("SAS_URL", "https://x.blob.core.windows.net/c?sv=2022&sig=abcdefghijkl%3D"),
    ("GITLAB", "glpat-abcdefghijklmnopqrstu"),
    ("GOOGLE", "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345"),
    (
        "PYPI",
        "pypi-AgEIcHlwaS5vcmcCJGFiY2RlZmdoLWFiY2QtZWZnaC1hYmNkLWVmZ2hpamtsbW5vcAACKlszLCJhYmMiXQ",
    ),
    ("NPM", "npm_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("SENDGRID", "SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
    ("HTTPS_PROXY", "http://user:proxypw@proxy:3128"),
    # An authorization scheme's value is a secret whatever the name.
    ("AUTHORIZATION", "token abc123def456"),
    ("GH_HEADER", "Authorization: token abc123def456"),
    ("AUTH_HEADER", "Bearer abc.def-123"),
    ("UPSTREAM", 'Digest username="ada", realm="x", response="6629fae49393a05397450978507c4ef1"'),
    ("SIGNED", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request"),
    ("PROXY_HEADER", "Proxy-Authorization: Basic " + _B),
    ("KERBEROS", "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag"),
    ("API", "ApiKey 0123456789abcdef"),
    # A KEY word with a value that is no field name, and strong words whatever the value.
    ("ORDER_KEY", "9f86d081884c7d659a2feaa0c55ad015"),
    ("KEY", "AbCdEfGhIjKlMnOpQrSt0123"),
    ("WAREHOUSE_PASSWORD", "date"),
    ("APP_CLIENT_SECRET", "id"),
    ("GH_TOKEN", "abc"),
]

# (name, value): harmless, must travel.
HARMLESS = [
    ("AWS_REGION", "eu-west-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("GOOGLE_CLOUD_PROJECT", "my-project"),
    ("AUTHOR", "Ada Lovelace"),
    ("KEYBOARD_LAYOUT", "us"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("PASSENGER_COUNT", "4"),
    ("MODEL_NAME", "resnet50"),
    ("DATA_URL", "https://example.com/data/train.csv"),
    ("MLFLOW_TRACKING_URI", "http://localhost:5000"),
    ("PG_URL", "postgres://db:5432/app"),
    ("REGISTRY", "https://registry.example.com:443/@scope/pkg"),
    ("GIT_SHA", "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"),
    ("RUN_UUID", "123e4567-e89b-12d3-a456-426614174000"),
    ("OMP_NUM_THREADS", "4"),
    ("CUDA_VISIBLE_DEVICES", "0,1"),
    ("TZ", "Europe/Paris"),
    ("GREETING", "Basic settings apply"),
    ("SKLEARN_TASK", "task-classification-with-a-long-name"),
    ("REPO", "git+https://github.com/org/repo@v1.0"),
    ("DONKEY_WORK", "yes"),
    ("S3_PREFIX", "s3://bucket/prefix/"),
    # A name word alone is no secret when the value is a number, a boolean or a field name.
    ("MAX_TOKENS", "4096"),
    ("NUM_TOKENS", "10"),
    ("MAX_NEW_TOKENS", "512"),
    ("SORT_KEY", "date"),
    ("KEY_COLUMN", "id"),
    ("PRIMARY_KEY", "id"),
    ("PARTITION_KEY", "created_at"),
    ("CACHE_KEY", "UserId"),
    ("USE_AUTH", "false"),
    ("TOKEN_LIMIT", "1e6"),
    ("PASSES", "3"),
    ("SECRET_ROTATION_DAYS", "30"),
    ("TOKENIZER", "bert-base-uncased"),
]


def test_the_tables_are_as_large_as_the_issue_asks() -> None:
    assert len(SECRETS) >= 50 and len(HARMLESS) >= 30


@pytest.mark.parametrize(("name", "value"), SECRETS, ids=[f"{n}" for n, _ in SECRETS])
def test_every_secret_form_is_caught(name: str, value: str) -> None:
    assert is_secret(name, value)
    kept, dropped, _ = filter_env({name: value})
    assert kept == {} and dropped == [name]


@pytest.mark.parametrize(("name", "value"), HARMLESS, ids=[n for n, _ in HARMLESS])
def test_no_harmless_variable_is_dropped(name: str, value: str) -> None:
    kept, dropped, machine = filter_env({name: value})
    assert kept == {name: value}, (dropped, machine)


def test_secret_values_are_in_no_snapshot_file(tmp_path: Path) -> None:
    # Short values ("x") would be found anywhere: give those a unique value (names catch them).
    secrets = {
        n: v if len(v) >= 12 else f"unique-secret-value-{i}" for i, (n, v) in enumerate(SECRETS)
    }
    env = secrets | dict(HARMLESS)
    with snapshot({"x": 1}, "x", env=env, cwd=tmp_path, include_dependencies=False) as snap:
        blob = b"".join(p.read_bytes() for p in snap.directory.rglob("*") if p.is_file())
        leaks = [
            n for n, v in secrets.items() if v.encode() in blob or json.dumps(v).encode() in blob
        ]
        assert leaks == []
        assert sorted(snap.env_secrets_dropped) == sorted(n for n, _ in SECRETS)
        assert all(n in snap.env_names for n, _ in HARMLESS)


_TOKEN_CHARS = string.ascii_letters + string.digits


@settings(max_examples=examples(200), deadline=None)
@given(
    user=st.text(_TOKEN_CHARS + "._-", max_size=12),
    password=st.text(_TOKEN_CHARS + "!$%^*()/-_.~", min_size=1, max_size=30).filter(
        lambda p: not p.split("/")[0].isdigit()
    ),
    scheme=st.sampled_from(
        ["postgres", "postgresql", "mysql", "redis", "amqp", "https", "mongodb+srv"]
    ),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5})?", fullmatch=True),
)
def test_any_url_with_a_password_is_a_secret(
    user: str, password: str, scheme: str, host: str
) -> None:
    assert looks_like_secret(f"{scheme}://{user}:{password}@{host}/db")


@settings(max_examples=examples(200), deadline=None)
@given(
    prefix=st.sampled_from(["ghp_", "gho_", "ghs_", "xoxb-", "sk-", "glpat-", "hf_", "sk_live_"]),
    body=st.text(_TOKEN_CHARS, min_size=36, max_size=60),
)
def test_token_formats_are_caught_anywhere_in_a_value(prefix: str, body: str) -> None:
    assert looks_like_secret(f"token is {prefix}{body} (do not share)")


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "MODEL",
                "DATA",
                "CACHE",
                "APP",
                "SPARK",
                "TORCH",
                "HF",
                "MLFLOW",
                "DASK",
                "RAY",
                "TRAIN",
                "EVAL",
                "NUM",
                "BATCH",
                "LOG",
                "OUTPUT",
                "INPUT",
                "GPU",
            ]
        ),
        min_size=1,
        max_size=2,
    ),
    st.lists(
        st.sampled_from(
            [
                "REGION",
                "PROJECT",
                "NAME",
                "COUNT",
                "URL",
                "HOME",
                "DIR",
                "PATH",
                "LEVEL",
                "MODE",
                "SIZE",
                "WORKERS",
                "SEED",
            ]
        ),
        min_size=1,
        max_size=2,
    ),
    st.text(string.ascii_lowercase + string.digits + "-./", max_size=20),
)
def test_descriptive_names_with_plain_values_travel(
    head: list[str], tail: list[str], value: str
) -> None:
    name = "_".join(head + tail)
    assert not is_secret(name, value), name


def test_a_string_variable_that_looks_like_a_secret_is_shipped_only_by_name(tmp_path: Path) -> None:
    ns = {
        "token": "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "url": "postgres://u:pw@db/x",
        "n": 3,
    }
    cell = "print(token, url, n)"
    for all_vars in (False, True):
        with snapshot(
            ns, cell, cwd=tmp_path, include_dependencies=False, all_vars=all_vars
        ) as snap:
            kinds = {v.name: (v.kind, v.skipped) for v in snap.variables}
            assert kinds["n"][0] == "value"
            for name in ("token", "url"):
                assert kinds[name][0] == "skipped" and "looks like a secret" in kinds[name][1]
                assert ns[name] not in kinds[name][1]
            blob = b"".join(p.read_bytes() for p in snap.directory.rglob("*") if p.is_file())
            assert b"ghp_aBc" not in blob and b"u:pw" not in blob
    with snapshot(ns, cell, variables=["token"], cwd=tmp_path, include_dependencies=False) as snap:
        assert [v.kind for v in snap.variables] == ["value"]


def test_symlinks_out_of_the_tree_are_not_followed_and_loops_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = SECRETVALUE\n")
    work = tmp_path / "work"
    (work / "pkg").mkdir(parents=True)
    (work / "pkg" / "__init__.py").write_text("")
    (work / "pkg" / "creds.json").symlink_to(home / ".aws" / "credentials")
    (work / "pkg" / "loop").symlink_to(work / "pkg")
    (work / "outside.py").symlink_to(home / ".aws" / "credentials")
    (work / "inside.py").symlink_to(work / "pkg" / "__init__.py")
    (work / "mod.py").write_text("X = 1\n")
    tree = collect_sources(work, path=[])
    assert sorted(p.as_posix() for p in tree.files) == ["inside.py", "mod.py", "pkg/__init__.py"]


def test_cell_mode_ships_the_notebook_without_outputs(tmp_path: Path) -> None:
    nb = tmp_path / "n.ipynb"
    nb.write_text(
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "source": "print(key)",
                        "metadata": {},
                        "execution_count": 3,
                        "outputs": [
                            {"output_type": "stream", "name": "stdout", "text": "OUTPUT-SECRET"}
                        ],
                    }
                ],
                "metadata": {"widgets": {"state": "WIDGET-STATE"}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    with snapshot({}, "", notebook=nb, cwd=tmp_path, include_dependencies=False) as snap:
        shipped = (snap.directory / "notebook.ipynb").read_text()
        assert (
            "print(key)" in shipped
            and "OUTPUT-SECRET" not in shipped
            and "WIDGET-STATE" not in shipped
        )


def test_parameter_defaults_in_labels_pass_the_filter() -> None:
    params: list[dict[str, Any]] = [
        {"name": "alpha", "type": "float", "default": 0.5},
        {"name": "api_token", "type": "str", "default": "abc"},
        {"name": "db", "type": "str", "default": "postgres://u:hunter2@db/x"},
    ]
    shown = _shown_parameters(params)
    assert shown[0] == params[0]
    assert "abc" not in json.dumps(shown) and "hunter2" not in json.dumps(shown)


_SECRET_NAMES = st.lists(
    st.sampled_from(
        ["MAX", "NUM", "DB", "API", "GITHUB", "KEY", "TOKEN", "TOKENS", "SECRET", "PASSWORD",
         "PASS", "AUTH", "CREDS", "PAT", "SK", "SALT", "AWS", "SORT", "PRIMARY"]
    ),
    min_size=1,
    max_size=3,
).map("_".join)  # fmt: skip


@settings(max_examples=examples(400), deadline=None)
@given(
    name=_SECRET_NAMES,
    value=st.one_of(
        st.integers(-(10**9), 10**9).map(str),
        st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.6g}"),
        st.sampled_from(["true", "False", "yes", "NO", "on", "off", "0", "1"]),
    ),
)
def test_a_short_number_or_boolean_is_no_secret_under_any_name(name: str, value: str) -> None:
    assert not is_secret(name, value), (name, value)


@settings(max_examples=examples(300), deadline=None)
@given(
    name=st.sampled_from(["AUTHORIZATION", "HEADER", "X", "UPSTREAM_AUTHORIZATION", "H"]),
    scheme=st.sampled_from(["token", "Token", "Bearer", "bearer", "ApiKey", "Negotiate"]),
    credential=st.text(_TOKEN_CHARS, min_size=8, max_size=40).filter(
        lambda c: any(ch.isdigit() for ch in c)
    ),
    prefix=st.sampled_from(["", "Authorization: ", "authorization:  "]),
)
def test_a_value_in_an_authorization_scheme_is_a_secret_whatever_its_name(
    name: str, scheme: str, credential: str, prefix: str
) -> None:
    assert is_secret(name, f"{prefix}{scheme} {credential}")


def test_the_tables_name_each_variable_once() -> None:
    names = [n for n, _ in SECRETS + HARMLESS]
    assert len(names) == len(set(names))
