"""From inside a containerized kernel: snapshot, build (the kernel's container
committed) and run a cell that uses a package pip-installed at run time."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from jupyter_client import KernelManager

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from tests.helpers import docker_provisioner, run, stdout_of


def _probe_wheel(dest: Path) -> Path:
    """A tiny pure-Python wheel, so the kernel's `pip install` needs no network."""
    files = {
        "nbc_probe_pkg/__init__.py": b"VALUE = 'probe-ok'\n",
        "nbc_probe_pkg-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: nbc-probe-pkg\nVersion: 1.0\n"
        ),
        "nbc_probe_pkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
        for n, d in files.items()
    ] + ["nbc_probe_pkg-1.0.dist-info/RECORD,,"]
    files["nbc_probe_pkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / "nbc_probe_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return path


def test_cell_run_from_a_containerized_kernel_uses_its_runtime_installs(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    wheel = _probe_wheel(tmp_path)
    name = make_kernelspec("nbc-inside")
    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    run_tag = None
    try:
        kc.wait_for_ready(timeout=60)
        content, outputs = run(kc, f"%pip install -q --no-index {wheel}", timeout=120)
        assert content["status"] == "ok", outputs
        code = (
            "from nbcontainer_kernel import snapshot, build_run_image, run_image\n"
            "x = 21\n"
            "snap = snapshot(get_ipython().user_ns, 'import nbc_probe_pkg\\n"
            "y = nbc_probe_pkg.VALUE + str(x * 2)\\nwhere = nbc_probe_pkg.__file__')\n"
            "img = build_run_image(snap)\n"
            "res = run_image(img.tag)\n"
            "snap.cleanup()\n"
            "print(res.exit_code, res.results['y'], res.results['where'], img.tag, img.deps_image, "
            "sep='|')\n"
        )
        content, outputs = run(kc, code, timeout=300)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        exit_code, y, where, run_tag, deps = stdout_of(outputs).strip().split("|")
        assert (exit_code, y) == ("0", "probe-ok42")
        # Imported from the committed virtualenv, not from a copy in the snapshot.
        assert where.startswith("/opt/nbcontainer/venv/")
        assert deps.startswith("nbcontainer/kernel-commit:")
        committed = engine.get_image(deps)
        assert committed.labels[labels.ROLE] == "deps-image"
        assert (
            committed.labels["io.nbcontainer.committed-from"] == docker_provisioner(km).container_id
        )
        # The kernel's connection secrets are not in the committed image.
        raw = b"".join(committed.save(named=True))
        assert km.session.key not in raw
        assert km.curve_secretkey is None or km.curve_secretkey not in raw
    finally:
        if run_tag:
            engine.remove_image(run_tag, force=True)
        kc.stop_channels()
        container_id = docker_provisioner(km).container_id
        km.shutdown_kernel(now=True)
    # The commit goes with its kernel.
    assert engine.images({"io.nbcontainer.committed-from": container_id}) == []
