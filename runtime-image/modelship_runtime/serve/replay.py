"""Replay: send the artifact's golden set to the canary every interval, and compare.

Live mirroring sees only what clients happen to send, and a quiet stable sends nothing; the
golden set (``golden.npz``, the samples the build calibrated and validated with, one array per
input, samples on axis 0) gives every canary the same known inputs however busy the pod is.
Each round takes the next ``replay_samples`` rows (wrapping around), runs the stable's own model
on each (on the replay's thread, beside the data plane: it is no client request), and sends it
to the canary as one request of a batch of one, marked ``replay``, through the plan's
:class:`~.mirror.Mirror`, which compares and records it as ``source="replay"``. Rows go one at
a time and nothing is queued, so nothing is dropped; closing stops the replay at once (a
request being sent is not waited for, and its answer is not recorded).

A golden set may also hold ``labels`` (int64 [N], one true class per row, from the user's
calibration file; an input of that name stays an input). Then each compared row also counts
whether each revision's arg-max is that class: the accuracy of the stable and of the canary on
the same known inputs, which agreement alone cannot tell (a canary that fixes the stable's
mistakes disagrees with it). Labels that do not fit are ignored, and the status says why: they
are a figure to read, not a reason to stop replaying.
"""

from __future__ import annotations

import logging
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile

from modelship.api.serving import REPLAY_LABELS
from modelship_runtime.serve.mirror import REPLAY, Mirror, MirrorJob
from modelship_runtime.serve.model import Feeds, Outputs, TensorInfo
from modelship_runtime.serve.tensors import NUMPY_DTYPES

REPLAY_RETRIES = 1
"""A golden row that got no answer is sent once more (see Mirror.compare_with_canary)."""
LABELS = REPLAY_LABELS

log = logging.getLogger("modelship_runtime.serve.replay")

Array = np.ndarray[Any, Any]
Predict = Callable[[Feeds, Sequence[str] | None], Outputs]
"""The stable's own model (``OnnxModel.predict``; onnxruntime sessions are thread-safe)."""


class GoldenSetUnusable(Exception):
    """The artifact's golden set is missing or does not fit the model; the message says why."""


@dataclass(frozen=True, slots=True)
class GoldenSet:
    arrays: dict[str, Array]
    rows: int
    labels: Array | None = None
    """One true class per row (int64 [rows]), when the golden set has usable labels."""
    labels_reason: str | None = None
    """Why the golden set's labels are ignored; None when used or when it has none."""

    def row(self, index: int) -> Feeds:
        """Sample ``index`` as a client would send it: a batch of one (leading axis kept)."""
        return {name: array[index : index + 1] for name, array in self.arrays.items()}

    def label(self, index: int) -> int | None:
        return None if self.labels is None else int(self.labels[index])


def load_golden_set(path: Path, inputs: Sequence[TensorInfo]) -> GoldenSet:
    """The golden set at ``path``, checked against the model's inputs so that every row is a
    request the model accepts."""
    if not path.is_file():
        raise GoldenSetUnusable(
            f"the artifact has no golden set ({path}): it was built before builders wrote one"
        )
    try:
        with path.open("rb") as file:  # closed here even when numpy gives up half-way
            arrays, raw_labels = _read_arrays(np.load(file, allow_pickle=False), inputs, path)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise GoldenSetUnusable(f"the golden set {path} is not a readable .npz: {exc}") from None
    counts = sorted({len(array) if array.ndim else 0 for array in arrays.values()})
    if len(counts) != 1 or not counts[0]:
        raise GoldenSetUnusable(
            f"the golden set {path} needs one or more rows, as many for every input (it has "
            f"{counts} rows)"
        )
    for info in inputs:
        _check_row(arrays[info.name][:1], info, path)
    if raw_labels is None:
        return GoldenSet(arrays, counts[0])
    labels, why = _labels(raw_labels, counts[0])
    if why is not None:
        why = f"the golden set's labels {why}; replaying without accuracy"
        log.warning("%s (%s)", why, path)
    return GoldenSet(arrays, counts[0], labels, why)


def _read_arrays(
    data: object, inputs: Sequence[TensorInfo], path: Path
) -> tuple[dict[str, Array], Array | None]:
    """The inputs' arrays, and the labels' when the golden set has them (and no input has
    their name)."""
    if not isinstance(data, NpzFile):
        raise ValueError("it holds a single array, not one per input")
    with data:
        missing = [info.name for info in inputs if info.name not in data.files]
        if missing:
            raise GoldenSetUnusable(
                f"the golden set {path} has no array for input(s) {missing} (it has {data.files})"
            )
        arrays = {info.name: np.asarray(data[info.name]) for info in inputs}
        has_labels = LABELS in data.files and LABELS not in arrays
        return arrays, np.asarray(data[LABELS]) if has_labels else None


def _labels(raw: Array, rows: int) -> tuple[Array | None, str | None]:
    """The labels as int64 class indices, or None and why they are unusable."""
    if raw.dtype.kind not in "iu" or raw.shape != (rows,):
        return None, f"are {raw.dtype} {list(raw.shape)}, not one int64 class per row [{rows}]"
    if rows and raw.min() < 0:
        return None, "hold negative values, which are no class indices"
    return raw.astype(np.int64), None


def _check_row(row: Array, info: TensorInfo, path: Path) -> None:
    shape = row.shape
    fits = len(shape) == len(info.shape) and all(
        want < 0 or got == want for got, want in zip(shape, info.shape, strict=True)
    )
    if row.dtype != NUMPY_DTYPES[info.datatype] or not fits:
        raise GoldenSetUnusable(
            f"the golden set {path} does not fit input '{info.name}': a row is {row.dtype} "
            f"{list(shape)}, the model takes {info.datatype} {list(info.shape)} (-1 = any size)"
        )


class Replay:
    """Rounds of the golden set sent to one canary through ``mirror`` (see the module)."""

    def __init__(
        self, mirror: Mirror, golden: GoldenSet, predict: Predict, interval_s: float, samples: int
    ) -> None:
        self.mirror = mirror
        self.golden = golden
        self.predict = predict
        self.interval_s = interval_s
        self.samples = min(samples, golden.rows)
        self._stop = threading.Event()
        self._next = 0
        self._thread = threading.Thread(target=self._run, name="mirror-replay", daemon=True)
        if golden.labels is not None:
            mirror.series[REPLAY].count_labels()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "enabled": not self._stop.is_set(),
            "interval_s": self.interval_s,
            "samples": self.golden.rows,
            "reason": None,
            "requests": self.mirror.counts(REPLAY),
            **labels_status(self.golden, self.mirror.series[REPLAY].accuracy()),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.round()
            self._stop.wait(self.interval_s)

    def round(self) -> None:
        """The next ``samples`` rows, one request each, until done or closed."""
        output = self.mirror.output
        for _ in range(self.samples):
            if self._stop.is_set():
                return
            index = self._next
            self._next = (index + 1) % self.golden.rows
            feeds = self.golden.row(index)
            try:
                (stable,) = self.predict(feeds, [output])
            except Exception as exc:  # the stable itself failed: nothing to compare with
                why = f"the stable's model failed on golden row {index}: {exc}"
                self.mirror.failed(REPLAY, why)
                continue
            job = MirrorJob(f"replay-{index}", feeds, stable, 0, REPLAY, self.golden.label(index))
            self.mirror.compare_with_canary(job, retries=REPLAY_RETRIES)


def labels_status(golden: GoldenSet | None, accuracy: dict[str, float] | None) -> dict[str, Any]:
    """The replay status's labels part: labelled rows in the golden set, why its labels are
    ignored (null when they are not), and each side's accuracy so far (null before any)."""
    return {
        "labels": 0 if golden is None or golden.labels is None else golden.rows,
        "labels_reason": None if golden is None else golden.labels_reason,
        "accuracy": accuracy,
    }
