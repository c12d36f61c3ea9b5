"""jupyter_client's KernelManager / AsyncKernelManager with the nbcontainer-docker provisioner."""

from __future__ import annotations

import asyncio
import queue
import time

import pytest
from jupyter_client import AsyncKernelManager, KernelManager

from nbcontainer_kernel.docker.engine import Engine
from tests.helpers import (
    docker_provisioner,
    inspected,
    interrupt_and_reply,
    run,
    start_busy_loop,
    started,
    stdout_of,
)


def test_start_execute_interrupt_restart_shutdown(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-km")
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        container_id = docker_provisioner(km).container_id
        assert inspected(engine, container_id)["State"]["Running"]

        # stdout and rich display come back
        content, outputs = run(
            kc,
            "import os, socket\nx = 41\nprint('hello', x + 1)\n"
            "from IPython.display import HTML, display\n"
            "display(HTML('<b>rich</b>'))\nsocket.gethostname()",
        )
        assert content["status"] == "ok"
        assert stdout_of(outputs) == "hello 42\n"
        displays = [m for m in outputs if m["msg_type"] == "display_data"]
        assert displays[0]["content"]["data"]["text/html"] == "<b>rich</b>"
        result = [m for m in outputs if m["msg_type"] == "execute_result"][0]
        # the code ran in the kernel's container: its hostname is the container id
        assert container_id.startswith(result["content"]["data"]["text/plain"].strip("'"))

        # interrupt a busy loop: the kernel survives and answers
        msg_id = start_busy_loop(kc)
        reply = interrupt_and_reply(km, kc, msg_id)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        content, outputs = run(kc, "print(x)")
        assert stdout_of(outputs) == "41\n", (content, [m["content"] for m in outputs])

        # restart: a fresh container, the state is gone
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        assert docker_provisioner(km).container_id != container_id
        assert engine.inspect(container_id) is None, "the old container must be removed"
        content, outputs = run(kc, "print('x' in dir())")
        assert stdout_of(outputs) == "False\n"
    finally:
        kc.stop_channels()
        new_id = docker_provisioner(km).container_id
        km.shutdown_kernel()
    assert not km.is_alive()
    assert engine.inspect(new_id) is None


def test_interrupt_by_signal_fallback(engine: Engine, make_kernelspec) -> None:
    """interrupt_mode 'signal' delivers SIGINT through the Docker API."""
    name = make_kernelspec("nbc-sig")
    km = KernelManager(kernel_name=name)
    km.kernel_spec.interrupt_mode = "signal"
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute("import time\nwhile True: time.sleep(0.01)")
        time.sleep(1.0)
        reply = interrupt_and_reply(km, kc, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert km.is_alive()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


async def test_async_kernel_manager(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-async")
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        reply = await kc.execute_interactive("print(6 * 7)", timeout=30)
        assert reply["content"]["status"] == "ok"
        assert await km.is_alive()
        first = docker_provisioner(km).container_id
        await km.restart_kernel(now=True)
        await kc.wait_for_ready(timeout=60)
        assert docker_provisioner(km).container_id not in (None, first)
    finally:
        kc.stop_channels()
        cid = docker_provisioner(km).container_id
        await km.shutdown_kernel()
    assert engine.inspect(cid) is None


def test_two_kernels_have_separate_ports_and_state(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-two")
    kms = [KernelManager(kernel_name=name) for _ in range(2)]
    kcs = []
    try:
        for km in kms:
            km.start_kernel()
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            kcs.append(kc)
        ports = [set(docker_provisioner(km)._host_ports.values()) for km in kms]
        assert not ports[0] & ports[1]
        run(kcs[0], "state = 'first'")
        run(kcs[1], "state = 'second'")
        assert stdout_of(run(kcs[0], "print(state)")[1]) == "first\n"
        assert stdout_of(run(kcs[1], "print(state)")[1]) == "second\n"
    finally:
        for kc in kcs:
            kc.stop_channels()
        for km in kms:
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def test_ports_are_published_on_loopback_only(engine: Engine, make_kernelspec) -> None:
    import socket

    name = make_kernelspec("nbc-ports")
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    try:
        info = engine.inspect(docker_provisioner(km).container_id)
        bindings = [b for v in info["NetworkSettings"]["Ports"].values() for b in (v or [])]
        assert len(bindings) == 5
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
        assert km.get_connection_info()["ip"] == "127.0.0.1"
        # From a non-loopback address of this host the ports do not answer.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outward address
        outward = s.getsockname()[0]
        s.close()
        if not outward.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((outward, int(bindings[0]["HostPort"])), timeout=2).close()
    finally:
        km.shutdown_kernel(now=True)


def test_curve_encryption_keeps_out_a_client_without_the_keys(
    engine: Engine, make_kernelspec
) -> None:
    from jupyter_client import BlockingKernelClient

    name = make_kernelspec("nbc-curve", transport_encryption="required")
    with started(name) as (km, kc):
        info = km.get_connection_info()
        assert info.get("curve_publickey"), "CurveZMQ keys must be in the connection info"
        # The same ports and HMAC key, but no Curve keys: the kernel must not answer.
        plain = BlockingKernelClient()
        plain.load_connection_info(
            {k: v for k, v in info.items() if not k.startswith("curve")}  # type: ignore[arg-type]
        )
        plain.start_channels()
        try:
            plain.kernel_info()
            with pytest.raises(queue.Empty):  # no reply: the kernel ignored the unencrypted request
                plain.get_shell_msg(timeout=3)
        finally:
            plain.stop_channels()


def test_reattach_with_provisioner_info(engine: Engine, make_kernelspec) -> None:
    """A restarted server finds a kernel's container again (load_provisioner_info)."""
    name = make_kernelspec("nbc-reattach")
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    run(kc, "remembered = 'yes'")
    kc.stop_channels()
    info = asyncio.run(docker_provisioner(km).get_provisioner_info())
    conn = km.get_connection_info()

    from jupyter_client.provisioning import KernelProvisionerFactory

    km2 = KernelManager(kernel_name=name)
    km2.kernel_id = km.kernel_id
    km2.provisioner = KernelProvisionerFactory.instance().create_provisioner_instance(
        km.kernel_id, km2.kernel_spec, parent=km2
    )
    asyncio.run(docker_provisioner(km2).load_provisioner_info(info))
    km2.load_connection_info(conn)
    assert km2.is_alive()
    kc2 = km2.client()
    kc2.start_channels()
    try:
        kc2.wait_for_ready(timeout=30)
        assert stdout_of(run(kc2, "print(remembered)")[1]) == "yes\n"
    finally:
        kc2.stop_channels()
        km2.shutdown_kernel(now=True)
    assert engine.inspect(info["container_id"]) is None
    docker_provisioner(km).container_id = None  # km2 owns and removed it
