"""A warm container's claim in every order of claim, signal and exit (issue 25).

A waiter looks for its claim before it waits, so a fast one may find it, do its work and
exit before the host's SIGWINCH arrives: that container ran and holds its run's outputs;
it must be handed over, not removed as a dead waiter. One that died before it took its
claim still fails (made for the claim) or is replaced (one that was waiting). Forced here
with an Engine over the fake daemon; a real container whose work ends before the signal
is in tests/integration/test_warm_runs.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from nbcontainer_kernel.docker import labels, warm
from nbcontainer_kernel.docker.archives import make_tar
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.kernel.pool import CLAIM_FILE, KernelPool
from nbcontainer_kernel.runtime.contract import RUN_CLAIM_FILE
from nbcontainer_kernel.runtime.errors import WaiterDied
from tests.fakes import FAKE_KERNEL_IMAGE, FakeDocker

IMAGE = FAKE_KERNEL_IMAGE  # an image the fake daemon holds


def _pool(daemon: FakeDocker, claim_file: str, cls: type[warm.WarmPool] = warm.WarmPool) -> Any:
    return cls(
        lambda: Engine(daemon),
        role=labels.ROLE_RUN_POOL,
        shape="s" * 16,
        image=IMAGE,
        image_id="sha256:1",
        create_kwargs={},
        size=1,
        claim_file=claim_file,
    )


def _after_put(daemon: FakeDocker, then: str, claim_file: str) -> None:
    """What the container does once its claim is in: `takes` (the waiter takes it, works
    and exits before the signal), `dies` (it exits without taking it), `waits` (it is
    woken by the signal, as usual)."""
    real_put = daemon.api.put_archive

    def put(ident: str, path: str, data: Any) -> bool:
        ok = real_put(ident, path, data)
        c = daemon.get(ident)
        if then == "takes":
            c.files.pop(claim_file, None)
            c.exit(0, log=b"ran\n[nbcontainer] exit 0 mark\n")
        elif then == "dies":
            c.exit(1, log=b"killed\n")
        return ok

    daemon.api.put_archive = put  # type: ignore[method-assign]


@pytest.mark.parametrize("made", [True, False], ids=["made for the claim", "waiting"])
def test_a_waiter_that_ran_before_the_signal_is_a_claimed_container(
    daemon: FakeDocker, made: bool
) -> None:
    pool = _pool(daemon, RUN_CLAIM_FILE)
    if not made:
        pool.fill()
    _after_put(daemon, "takes", RUN_CLAIM_FILE)
    claimed = pool.claim(lambda: make_tar({RUN_CLAIM_FILE.lstrip("/"): b"{}"}), "run-1", make=True)
    assert claimed is not None and claimed.name == "run-1"
    c = daemon.get(claimed.container_id)
    assert c.state["Status"] == "exited" and b"[nbcontainer] exit 0" in c.log  # kept, outputs too


def test_a_waiter_made_for_the_claim_that_died_before_taking_it_is_reported(
    daemon: FakeDocker,
) -> None:
    pool = _pool(daemon, RUN_CLAIM_FILE)
    _after_put(daemon, "dies", RUN_CLAIM_FILE)
    with pytest.raises(WaiterDied, match="killed"):
        pool.claim(lambda: make_tar({RUN_CLAIM_FILE.lstrip("/"): b"{}"}), "run-1", make=True)
    assert daemon.containers_by_id == {}


def test_a_waiting_container_that_died_is_replaced_by_one_made_for_the_claim(
    daemon: FakeDocker,
) -> None:
    pool = _pool(daemon, RUN_CLAIM_FILE)
    pool.fill()
    [waiting] = pool.waiting()
    daemon.get(waiting.container_id).exit(137)  # died while it waited (its claim never read)
    claimed = pool.claim(lambda: make_tar({RUN_CLAIM_FILE.lstrip("/"): b"{}"}), "run-1", make=True)
    assert claimed is not None and claimed.container_id != waiting.container_id
    assert waiting.container_id not in daemon.containers_by_id


def test_a_woken_waiter_is_claimed_as_before(daemon: FakeDocker) -> None:
    pool = _pool(daemon, RUN_CLAIM_FILE)
    pool.fill()
    claimed = pool.claim(lambda: make_tar({RUN_CLAIM_FILE.lstrip("/"): b"{}"}), "run-1")
    assert claimed is not None
    assert daemon.get(claimed.container_id).signals == ["SIGWINCH"]


def test_a_kernel_whose_waiter_took_its_claim_before_the_signal_is_that_kernel(
    daemon: FakeDocker,
) -> None:
    pool = _pool(daemon, CLAIM_FILE, KernelPool)
    pool.fill()
    _after_put(daemon, "takes", CLAIM_FILE)
    claimed = pool.claim_kernel("k1", {"key": "x"}, ["python"], {}, None, 0, 0)
    assert claimed is not None and claimed.name.endswith("k1")
