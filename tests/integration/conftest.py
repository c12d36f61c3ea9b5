"""Integration fixtures: a real Docker engine, the kernel image, kernelspecs.

The engine and the base image are made by scripts/setup.sh (run by `make
test`). The kernel image is a cached image like the base: it is rebuilt only
when its inputs change, and kept between runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.testing import globalipapp

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.images.kernel import build_kernel_image
from nbcontainer_kernel.kernel import kernelspec, pool
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import DaemonNotAvailable, EngineError, KernelSpecError

BASE_IMAGE = os.environ.get("NBCONTAINER_BASE_IMAGE", "nbcontainer/base:bookworm")
KERNEL_IMAGE = os.environ.get("NBCONTAINER_TEST_IMAGE", "nbcontainer/python:3.11")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return Engine.connect()
    except DaemonNotAvailable as exc:
        pytest.fail(
            f"integration tests need a Docker engine; run `make test` (scripts/setup.sh): {exc}"
        )


@pytest.fixture(scope="session")
def kernel_image(engine: Engine) -> str:
    if not engine.has_image(BASE_IMAGE):
        pytest.fail(f"base image {BASE_IMAGE} is missing; run scripts/base-image.sh")
    build_kernel_image(engine, BASE_IMAGE, KERNEL_IMAGE)
    return KERNEL_IMAGE


@pytest.fixture(scope="session")
def examples_kernel_image(engine: Engine, kernel_image: str) -> str:
    """The kernel image with matplotlib (the example notebooks and the browser test plot)
    and nbformat (`nbcontainer containerize` from the kernel). Cached like the kernel
    image."""
    tag = KERNEL_IMAGE + "-examples"
    build_kernel_image(engine, BASE_IMAGE, tag, requirements=["matplotlib", "nbformat"])
    return tag


@pytest.fixture
def make_kernelspec(kernel_image: str) -> Iterator[Callable[..., str]]:
    """Install a kernelspec (in the tests' own Jupyter dir) with provisioner options."""
    made: list[str] = []

    def make(
        name: str = "nbc-test",
        image: str | None = None,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> str:
        path = kernelspec.install(
            image or kernel_image, name, f"test {name}", options=options, env=env, check_image=False
        )
        if argv is not None:
            import json

            spec_file = os.path.join(path, "kernel.json")
            with open(spec_file) as fh:
                spec = json.load(fh)
            spec["argv"] = argv
            with open(spec_file, "w") as fh:
                json.dump(spec, fh)
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(KernelSpecError):  # a test may have removed it itself
            kernelspec.remove(name)


def own_containers(engine: Engine) -> list[Any]:
    """Containers made by this test process (its pid is their owner)."""
    return engine.containers(
        {labels.OWNER_PID: str(os.getpid()), labels.OWNER_HOST: labels.Owner.current().host}
    )


@pytest.fixture(autouse=True)
def no_leaked_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every integration test must leave no container of its own behind."""
    yield
    if "engine" not in request.fixturenames:
        return
    engine = request.getfixturevalue("engine")
    # The warm pool's waiting containers belong to this process, as a server's do, and go
    # when it exits; a test ends as a server would.
    pool.close_all()
    leaked = own_containers(engine)
    for c in leaked:
        engine.remove(c.id)
    assert not leaked, f"containers left behind: {[c.name for c in leaked]}"


@pytest.fixture
def new_images(engine: Engine) -> Iterator[None]:
    """Run images and kernel commits a test makes are removed (dependency layers stay)."""

    def made() -> set[str]:
        return {i.id for i in engine.images({labels.ROLE: labels.ROLE_RUN_IMAGE})}

    before = made()
    yield
    for image_id in made() - before:
        with contextlib.suppress(
            EngineError
        ):  # a leaked container uses it: no_leaked_containers says so
            engine.remove_image(image_id, force=True)


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    path = tmp_path / "ledger" / "runs.db"
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(path))
    return Ledger(path)


@pytest.fixture
def ip(ledger: Ledger, new_images: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NBCONTAINER_BASE_IMAGE", BASE_IMAGE)
    globalipapp.start_ipython()  # once per process; later calls do nothing
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbcontainer_kernel")
    shell.run_line_magic("config", f"RemoteRun.ledger_path = {str(ledger.path)!r}")
    shell.run_line_magic("config", "RemoteRun.progress = 'text'")
    shell.run_cell(
        "import pandas as pd\n"
        "docs = pd.DataFrame({'n': [1, 2, 3], 'w': [0.5, 1.5, 2.5], "
        "'c': pd.Categorical(['a', 'b', "
        "'a'])}, index=pd.date_range('2024-01-01', periods=3, name='day'))\n"
        "topics = 2"
    )
    before = set(shell.user_ns)
    yield shell
    # One shell serves every test: what a test assigned is not the next test's.
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]


@pytest.fixture(scope="session")
def testbed(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The test bed, started by the project's own script and stopped at the end; yields
    the environment it prints (aws_env makes it a test's own); the Batch and SageMaker tests
    share it."""
    state = tmp_path_factory.mktemp("aws-testbed")
    script = str(ROOT / "scripts" / "aws-testbed.sh")
    venv = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    out = subprocess.run(
        [script, "start", "--state", str(state)], capture_output=True, text=True, env=venv
    )
    assert out.returncode == 0, out.stderr
    try:
        yield dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    finally:
        subprocess.run([script, "stop", "--state", str(state)], check=False, env=venv)


@pytest.fixture
def aws_env(testbed: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test bed's environment, for this test only (later tests see none of it)."""
    for name, value in testbed.items():
        monkeypatch.setenv(name, value)
    return testbed


@pytest.fixture(scope="session")
def sagemaker_kernel_image(engine: Engine, kernel_image: str) -> str:
    """A kernel image a team would use for sagemaker-local: sagemaker-core in its venv and
    Debian's docker-compose (what local mode runs). Cached: built again only when missing."""
    import io
    import tarfile

    with_core = "nbcontainer/python:3.11-sagemaker-core"
    tag = "nbcontainer/python:3.11-sagemaker"
    build_kernel_image(engine, BASE_IMAGE, with_core, requirements=["boto3", "sagemaker-core"])
    previous = engine.get_image(tag) if engine.has_image(tag) else None
    if (
        previous is None
        or previous.labels.get("io.nbcontainer.test-from") != engine.get_image(with_core).id
    ):
        dockerfile = (
            f"FROM {with_core}\n"
            "RUN apt-get update -q && apt-get install -y -q --no-install-recommends "
            "docker-compose && rm -rf /var/lib/apt/lists/*\n"
        ).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        buf.seek(0)
        engine.build(buf, tag, labels={"io.nbcontainer.test-from": engine.get_image(with_core).id})
        # The machine's disk outlives the tests: the old copy goes, once nothing names it.
        if previous is not None and not engine.get_image(previous.id).tags:
            with contextlib.suppress(EngineError):
                engine.remove_image(previous.id)
    return tag


@pytest.fixture
def testbed_kernelspec(make_kernelspec, testbed: dict[str, str]) -> Callable[..., str]:
    """A kernelspec whose kernel reaches the test bed: the host network (moto and the
    registry listen on 127.0.0.1), the test bed's environment, Docker through the guard
    (or the raw socket, which SageMaker's local mode needs)."""

    def make(name: str, image: str, docker_access: str = "guarded") -> str:
        return str(
            make_kernelspec(
                name, image=image, network_mode="host", env=testbed, docker_access=docker_access
            )
        )

    return make
