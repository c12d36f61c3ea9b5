"""Trust and secrets against a real daemon: a run image made from a containerized kernel
holds none of its secrets, and a real run's outputs tampered with after the run are refused
by %remote_result without running anything."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

from jupyter_client import KernelManager

from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import run, stdout_of

SPEC_ENV = {
    "DATABASE_URL": "postgres://app:SpecEnvSecret99@db/app",
    "MY_API_TOKEN": "SpecTokenSecret77",
    "PLAIN_SETTING": "keep-me-plain",
}


def test_a_run_image_from_a_kernel_holds_none_of_its_secrets(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-secrets", env=SPEC_ENV)
    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        cells = [
            "import os, pathlib\nos.environ['RUNTIME_TOKEN'] = 'RuntimeTokenSecret55'",
            "aws = pathlib.Path.home() / '.aws'\naws.mkdir(exist_ok=True)\n"
            "(aws / 'credentials').write_text('[default]\\naws_secret_access_key = "
            "AwsFileSecret33\\n')",
            "typed_secret = 'TypedSecret11'",
            "print(os.path.exists(os.environ['NBCONTAINER_CONNECTION_FILE']), pathlib.Path.home())",
            "%%remote_run --local --name leak\nanswer = 6 * "
            "7\nprint(os.environ.get('PLAIN_SETTING'))",
            "print(answer)",
            # The warm run made no image: its rerun, without the pool, makes one from the
            # kept snapshot. Both are scanned.
            "%config LocalBackend.run_pool_size = 0",
            "%%remote_run --local --rerun leak-1\n# its image",
        ]
        outs = []
        for code in cells:
            content, outputs = run(kc, code, timeout=300)
            assert content["status"] == "ok", (code, [o["content"] for o in outputs])
            outs.append(stdout_of(outputs))
        assert outs[3] == "False /tmp\n", (
            "the extension removed the connection file; HOME is the tmpfs"
        )
        assert "keep-me-plain" in outs[4] and outs[5] == "42\n"
        row, rerun = ledger.get("leak-1"), ledger.get("leak-2")
        assert row["status"] == "SUCCEEDED" and row["verified"] == "signed"
        assert row["image"] == "" and rerun["status"] == "SUCCEEDED" and rerun["image"]
        kept = ledger.run_dir("leak-1") / "snapshot"
        snapshot_files = b"".join(p.read_bytes() for p in sorted(kept.rglob("*")) if p.is_file())
        contents, names = _image_files(engine, rerun["image"])
        contents += snapshot_files
        secrets = {
            "connection key": km.session.key,
            "curve secret key": km.curve_secretkey or b"no-curve-key",
            "spec env secret": b"SpecEnvSecret99",
            "spec env token": b"SpecTokenSecret77",
            "runtime env secret": b"RuntimeTokenSecret55",
            "~/.aws file": b"AwsFileSecret33",
            "typed secret": b"TypedSecret11",
            "run key": row["run_key"].encode(),
            "rerun's key": rerun["run_key"].encode(),
        }
        assert [what for what, s in secrets.items() if s in contents] == []
        paths = [
            n
            for n in names
            if "history.sqlite" in n
            or "nbcontainer-snapshot-" in n
            or "/.aws/" in n
            or n.endswith("connection.json")
        ]
        assert paths == [], f"files that must not be in the image: {paths}"
        # The scan sees the image's files: the snapshot, and the package's own code.
        assert "opt/nbcontainer/snapshot/manifest.json" in names and b"SNAPSHOT_DIR" in contents
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _image_files(engine: Engine, image: str) -> tuple[bytes, list[str]]:
    """Every layer's file contents (and the image config) as one blob, and every file name."""
    saved = io.BytesIO(b"".join(engine.get_image(image).save(named=True)))
    blobs, names = [], []
    with tarfile.open(fileobj=saved) as outer:
        for member in outer.getmembers():
            data = outer.extractfile(member).read() if member.isfile() else b""
            blobs.append(data)
            if member.name.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    names += [m.name for m in layer.getmembers()]
    return b"".join(blobs), names


def test_outputs_tampered_after_a_real_run_are_refused(
    engine: Engine, ip, ledger: Ledger, tmp_path: Path
) -> None:
    result = ip.run_cell("%%remote_run --local --name tamper\nframe = docs.copy()\nlookup = {1, 2}")
    assert result.error_in_exec is None, result.error_in_exec
    model = Path(ledger.get("tamper-1")["result_dir"]) / "model"
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (model / "lookup.pkl").write_bytes(pickle.dumps(Payload()))
    refused = ip.run_cell("%remote_result tamper-1")
    assert type(refused.error_in_exec).__name__ == "UntrustedResults"
    assert (
        "model/lookup.pkl: its content differs" in str(refused.error_in_exec)
        and not marker.exists()
    )
    # The data of a refused run on request; never its pickles.
    values = ip.run_line_magic("remote_result", "tamper-1 --unverified")
    assert sorted(values) == ["frame"] and not marker.exists()
