"""Bad input gets a clear error: missing image, no ipykernel, OOM, death at start."""

from __future__ import annotations

import logging
import time

import pytest
from jupyter_client import KernelManager

from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.runtime.errors import ImageNotFound, ImageNotUsable, KernelDied
from tests.helpers import docker_provisioner, started

from .conftest import BASE_IMAGE


def test_missing_image_is_reported_before_the_start(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-missing", image="nbcontainer/does-not-exist:1")
    km = KernelManager(kernel_name=name)
    with pytest.raises(ImageNotFound) as err:
        km.start_kernel()
    assert err.value.image == "nbcontainer/does-not-exist:1"
    assert "could not be pulled" in str(err.value)
    assert "nbcontainer image build" in str(err.value)
    assert km.provisioner is None or docker_provisioner(km).container_id is None


def test_image_without_ipykernel_is_refused(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-noipykernel", image=BASE_IMAGE)
    km = KernelManager(kernel_name=name)
    with pytest.raises(ImageNotUsable) as err:
        km.start_kernel()
    assert "ipykernel is not installed" in str(err.value)
    assert f"nbcontainer image build --base {BASE_IMAGE}" in str(err.value)


def test_kernel_dying_at_once_fails_the_start_with_its_log(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec(
        "nbc-dies-now",
        argv=["python3", "-c", "import sys; print('boom at once', file=sys.stderr); sys.exit(3)"],
    )
    km = KernelManager(kernel_name=name)
    # Docker may still report the container running when its ports are read;
    # then the death is seen by the client's readiness wait instead.
    try:
        km.start_kernel()
    except KernelDied as err:
        assert err.exit_code == 3 and "boom at once" in err.log_tail
        assert "boom at once" in str(err)
        return
    kc = km.client()
    kc.start_channels()
    try:
        with pytest.raises(RuntimeError, match="died"):
            kc.wait_for_ready(timeout=30)
        assert "boom at once" in docker_provisioner(km).exit_error.log_tail
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_kernel_dying_during_start_reports_its_last_log_lines(
    engine: Engine, make_kernelspec, caplog: pytest.LogCaptureFixture
) -> None:
    name = make_kernelspec(
        "nbc-dies",
        argv=[
            "python3",
            "-c",
            "import sys, time; time.sleep(1.5); print('boom at start', file=sys.stderr); "
            "sys.exit(3)",
        ],
    )
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="died"):
            kc.wait_for_ready(timeout=30)
        err = docker_provisioner(km).exit_error
        assert err is not None and err.exit_code == 3 and not err.oom_killed
        assert "boom at start" in err.log_tail
        assert "boom at start" in caplog.text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_out_of_memory_is_reported_and_restart_works(
    engine: Engine, make_kernelspec, caplog: pytest.LogCaptureFixture
) -> None:
    name = make_kernelspec("nbc-oom", memory="160m")
    with started(name) as (km, kc):
        info = engine.inspect(docker_provisioner(km).container_id)
        assert info["HostConfig"]["Memory"] == 160 * 1024**2
        with caplog.at_level(logging.ERROR):
            kc.execute("hog = b'x' * (600 * 1024 ** 2)")
            deadline = time.monotonic() + 60
            while km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not km.is_alive(), "the kernel should have been killed"
        err = docker_provisioner(km).exit_error
        assert err is not None and err.oom_killed
        assert "OOMKilled" in caplog.text and "160m" in caplog.text

        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("small = b'x' * 1024", timeout=30)
        assert reply["content"]["status"] == "ok"
        assert docker_provisioner(km).exit_error is None
