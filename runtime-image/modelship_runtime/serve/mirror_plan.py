"""Following the operator's mirroring plan: a file the server re-reads while it runs.

The operator mounts key ``<name>.json`` of ConfigMap ``modelship-mirror`` into every serving
pod and names the file in ``mirror_file``; the kubelet swaps the file's content in place when
the ConfigMap changes, so the server reads it every ``mirror_poll_s`` (on a worker thread: an
unchanged file costs that read and nothing else). A plan for this pod's revision starts a
:class:`~.mirror.Mirror` for the pair it names and, when the plan asks and the artifact has a
golden set, its :class:`~.replay.Replay`; a changed plan closes both at once and starts the new
pair's. Anything else leaves the pod mirroring nothing, and ``GET /v2/mirror`` says why: no
file or an empty one, a plan for another revision (canary pods mount the same file), or an
invalid plan (logged once per content).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelship.api.serving import REPLAY_FILE, MirrorPlan
from modelship_runtime.serve.dataplane import DataPlane
from modelship_runtime.serve.mirror import (
    REPLAY,
    Mirror,
    MirrorConfig,
    MirrorMetrics,
    PlanRejected,
    Sender,
)
from modelship_runtime.serve.model import OnnxModel
from modelship_runtime.serve.replay import (
    GoldenSet,
    GoldenSetUnusable,
    Replay,
    labels_status,
    load_golden_set,
)
from modelship_runtime.serve.settings import ServeSettings

log = logging.getLogger("modelship_runtime.serve.mirror")

NO_PLAN_FILE = "this pod was told no mirroring plan file (mirror_file unset)"
NO_PLAN = "no mirroring plan (the plan file is missing or empty)"
NOT_READ = "the plan file is read once the model is warmed up"
_ERRORS_SHOWN = 5


def read_plan_file(path: Path) -> bytes:
    """The plan file's content; empty when it is missing (the ConfigMap is optional)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise PlanRejected(f"cannot read {path}: {exc.strerror or exc}") from None


def plan_for(content: bytes, revision: str | None) -> MirrorPlan | str:
    """The plan this pod follows, or why it follows none; raises :class:`PlanRejected` for
    content that is no valid plan."""
    if not content.strip():
        return NO_PLAN
    try:
        plan = MirrorPlan.model_validate_json(content)
    except ValidationError as exc:
        raise PlanRejected(_validation_summary(exc)) from None
    if plan.stable != revision:
        return (
            f"the plan is for the pods of revision '{plan.stable}' (mirroring to "
            f"'{plan.canary}'); this pod is revision '{revision or ''}'"
        )
    return plan


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors()
    shown = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'the plan'}: {error['msg']}"
        for error in errors[:_ERRORS_SHOWN]
    )
    more = f" (and {len(errors) - _ERRORS_SHOWN} more)" if len(errors) > _ERRORS_SHOWN else ""
    return f"not a MirrorPlan: {shown}{more}"


@dataclass(frozen=True, slots=True)
class _Following:
    """The plan being followed and what runs for it, swapped as a whole so a reader never
    sees one plan's mirror beside another's replay."""

    plan: MirrorPlan
    mirror: Mirror
    replay: Replay | None
    replay_off: str | None
    """Why there is no replay (None: there is one)."""


class MirrorControl:
    """Starts, swaps and stops this pod's mirroring as the plan file says (see the module)."""

    def __init__(
        self,
        settings: ServeSettings,
        model: OnnxModel,
        plane: DataPlane,
        metrics: MirrorMetrics,
        send: Sender | None = None,
    ) -> None:
        self.settings = settings
        self.path = settings.mirror_file
        self.model = model
        self.plane = plane
        self.metrics = metrics
        self._send = send
        self._lock = threading.Lock()
        self._seen: tuple[bytes, str | None] | None = None
        self._following: _Following | None = None
        self._reason = NO_PLAN_FILE if self.path is None else NOT_READ
        self._reported: set[str] = set()
        self._golden: GoldenSet | str | None = None
        """Loaded once, when a plan first asks for replay; a str says why it is unusable."""
        self._closed = False

    async def follow(self) -> None:
        """Read the plan file now and again every ``mirror_poll_s``, until cancelled."""
        if self.path is None:
            return
        while True:
            await self.poll()
            await asyncio.sleep(self.settings.mirror_poll_s)

    async def poll(self) -> None:
        """Read the plan file once (on a worker thread) and follow what it says."""
        try:
            await asyncio.to_thread(self.check)
        except Exception:  # a bug here must not stop the polling, nor the pod
            log.exception("following the mirroring plan failed")
        following = self._following
        mirror = following.mirror if following is not None else None
        self.plane.tap = mirror if mirror is not None and mirror.config.share > 0 else None

    def check(self) -> None:
        """One read of the plan file; acts only when what it says changed."""
        if self.path is None:
            return
        try:
            content, error = read_plan_file(self.path), None
        except PlanRejected as exc:
            content, error = b"", str(exc)
        with self._lock:
            if self._closed or (content, error) == self._seen:
                return
            self._seen = (content, error)
            if error is not None:
                self._reject(content, error)
                return
            try:
                found = plan_for(content, self.settings.revision)
                if isinstance(found, str):
                    self._idle(found)
                elif self._following is None or found != self._following.plan:
                    self._start(found)
            except PlanRejected as exc:
                self._reject(content, str(exc))

    def status(self) -> dict[str, Any]:
        """``GET /v2/mirror``."""
        following = self._following
        if following is None:
            return {"enabled": False, "reason": self._reason}
        return {**following.mirror.status(), "replay": self._replay_status(following)}

    def close(self) -> None:
        """Stop mirroring for good (SIGTERM): nothing waits for a mirror in flight."""
        self.plane.tap = None
        with self._lock:
            self._closed = True
            self._stop()
            self._reason = "the server is shutting down"

    def _start(self, plan: MirrorPlan) -> None:
        config = MirrorConfig.from_plan(plan, self.settings, self.model.outputs)
        self._stop()
        mirror = Mirror(config, self.metrics, self._send)
        mirror.start()
        replay, replay_off = self._replay_for(mirror)
        self._following = _Following(plan, mirror, replay, replay_off)
        replaying = (
            f"{replay.samples} golden samples every {config.replay_interval_s:g} s"
            if replay is not None
            else replay_off
        )
        log.info("mirroring %.1f%% of served requests to %s (canary revision '%s'), comparing "
                 "output '%s'; replay: %s", 100 * config.share, config.url, config.canary,
                 config.output, replaying)  # fmt: skip

    def _replay_for(self, mirror: Mirror) -> tuple[Replay | None, str | None]:
        interval = mirror.config.replay_interval_s
        if interval is None:
            return None, "the plan asks for no replay (replay_interval_s unset)"
        golden = self._golden_set()
        if isinstance(golden, str):
            return None, golden
        replay = Replay(mirror, golden, self.model.predict, interval, mirror.config.replay_samples)
        replay.start()
        return replay, None

    def _golden_set(self) -> GoldenSet | str:
        if self._golden is None:
            try:
                self._golden = load_golden_set(
                    self.settings.model_dir / REPLAY_FILE, self.model.inputs
                )
            except GoldenSetUnusable as exc:
                self._golden = f"{exc}; no replay"
                log.warning("%s", self._golden)
        return self._golden

    def _replay_status(self, following: _Following) -> dict[str, Any]:
        if following.replay is not None:
            return following.replay.status()
        golden = self._golden
        return {
            "enabled": False,
            "interval_s": following.plan.replay_interval_s,
            "samples": golden.rows if isinstance(golden, GoldenSet) else 0,
            "reason": following.replay_off,
            "requests": following.mirror.counts(REPLAY),
            **labels_status(golden if isinstance(golden, GoldenSet) else None, None),
        }

    def _idle(self, reason: str) -> None:
        if self._following is not None:
            log.info("mirroring stopped: %s", reason)
        self._stop()
        self._reason = reason

    def _reject(self, content: bytes, why: str) -> None:
        self._stop()
        self._reason = f"invalid plan: {why}"
        key = hashlib.sha256(content + why.encode()).hexdigest()
        if key not in self._reported:
            self._reported.add(key)
            log.error("mirroring nothing: the plan in %s is invalid: %s", self.path, why)

    def _stop(self) -> None:
        following, self._following = self._following, None
        if following is not None:
            if following.replay is not None:
                following.replay.close()
            following.mirror.close()
