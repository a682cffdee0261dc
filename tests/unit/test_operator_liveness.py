"""The liveness check: /healthz fails when the watch misses changes, a reconcile hangs or the
event loop stalls, and answers ok otherwise (a standby too)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from localkube.ports import free_port
from modelship import controller as controller_module
from modelship.api.v1alpha1 import Phase
from modelship.controller import Controller
from modelship.metrics import Liveness, OperatorMetrics
from modelship.reconciler import Outcome


def md(name: str, uid: str = "u1", generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "uid": uid, "generation": generation}}


def new_controller(reconcile: Callable[[dict[str, Any]], Outcome] | None = None) -> Controller:
    return Controller(
        reconcile or (lambda _body: Outcome(Phase.READY, 300)),
        concurrency=1,
        metrics=OperatorMetrics(),
        lister=lambda: [],
        check_seconds=60,
    )


def test_a_watch_that_catches_up_between_audits_is_healthy() -> None:
    c = new_controller()
    c.upsert(md("a"))
    c.audit([md("a", generation=2), md("b")])  # the watch is a moment behind: fine
    c.upsert(md("a", generation=2))
    c.upsert(md("b"))
    c.audit([md("a", generation=2), md("b")])
    assert c._diagnose(time.monotonic()) is None


def test_a_change_still_not_delivered_an_audit_later_was_missed() -> None:
    c = new_controller()
    c.upsert(md("a"))
    c.audit([md("a", generation=2)])
    assert c._diagnose(time.monotonic()) is None
    c.audit([md("a", generation=2)])
    problem = c._diagnose(time.monotonic())
    assert problem is not None
    assert "missed changes for more than 60s (ml/a)" in problem


def test_a_new_object_never_delivered_was_missed() -> None:
    c = new_controller()
    c.audit([md("new")])
    c.audit([md("new")])
    assert "ml/new" in (c._diagnose(time.monotonic()) or "")


def test_a_lost_delete_is_missed_but_a_recent_create_is_not() -> None:
    c = new_controller()
    c.upsert(md("gone"))
    c.upsert(md("fresh"))  # delivered by the watch while the list was on its way
    c.audit([md("fresh")])
    c.audit([md("fresh")])
    assert "ml/gone" in (c._diagnose(time.monotonic()) or "")
    c = new_controller()
    c.upsert(md("fresh"))
    c.audit([])
    c.audit([md("fresh")])
    assert c._diagnose(time.monotonic()) is None


def test_a_recreated_object_is_given_an_audit_to_arrive() -> None:
    c = new_controller()
    c.upsert(md("a", uid="old"))
    c.audit([md("a", uid="new")])
    c.upsert(md("a", uid="new"))
    c.audit([md("a", uid="new")])
    assert c._diagnose(time.monotonic()) is None


def test_a_hung_reconcile_and_a_stalled_loop_fail_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(controller_module, "STUCK_SECONDS", 0.05)
    monkeypatch.setattr(controller_module, "HEARTBEAT_SECONDS", 0.01)
    release = threading.Event()

    def hang(_body: dict[str, Any]) -> Outcome:
        release.wait(10)
        return Outcome(Phase.READY, 300)

    async def scenario() -> tuple[str | None, str | None, str | None]:
        c = new_controller(hang)
        c.start()
        healthy = c.problem()
        c.upsert(md("slow"))
        deadline = time.monotonic() + 5
        while c.problem() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        hung = c.problem()
        release.set()
        # The heartbeat stops beating (as when the loop is blocked): the check says so.
        monkeypatch.setattr(controller_module, "STALLED_SECONDS", 0.0)
        stalled = c.problem()
        await c.stop()
        return healthy, hung, stalled

    healthy, hung, stalled = asyncio.run(scenario())
    assert healthy is None
    assert hung is not None
    assert "reconciling ml/slow has run for more than" in hung
    assert stalled is not None
    assert "event loop has not run" in stalled


def get(port: int, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_healthz_answers_ok_until_the_check_finds_a_problem() -> None:
    liveness = Liveness()
    port = free_port()
    server = liveness.serve(port, host="127.0.0.1")
    assert server is not None
    try:
        assert get(port) == (200, "ok\n"), "a standby (nothing attached yet) is alive"
        problem: list[str] = []
        liveness.attach(lambda: problem[0] if problem else None)
        assert get(port) == (200, "ok\n")
        problem.append("the watch of ModelDeployments missed changes")
        assert get(port) == (503, "the watch of ModelDeployments missed changes\n")
        assert get(port, "/metrics")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_off_and_a_taken_port_do_not_stop_the_operator() -> None:
    assert Liveness().serve(0) is None
    first = Liveness().serve(port := free_port(), host="127.0.0.1")
    assert first is not None
    try:
        assert Liveness().serve(port, host="127.0.0.1") is None
    finally:
        first.shutdown()
        first.server_close()
