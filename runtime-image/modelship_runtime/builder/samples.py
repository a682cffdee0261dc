"""Sample inputs for calibration, validation and benchmarks, their drift statistics, and the
artifact's golden set (the same samples, for replay to a canary).

Calibration data is an .npz with one array per input name, samples along the first axis (extra
arrays are ignored), and optionally ``labels``, one true class index per sample (unless an input
has that name: then it is that input), which the golden set carries so that a replay can tell
each revision's accuracy. Without it, inputs are generated from the signature: floats ~ N(0, 1); int
inputs named like *mask* are ones, *type* zeros, other ints small ids in [0, 100); dynamic
dimensions are 1 for the batch and 16 elsewhere. Generated inputs suit smoke checks, not
calibration: give real data for int8-static and meaningful accuracy figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelship.api.artifact import Signature, TensorStats
from modelship.api.serving import REPLAY_LABELS
from modelship.api.v1alpha1 import TensorDatatype, TensorSpec
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.signature import OIP_TO_NUMPY

Feed = dict[str, np.ndarray]
Labels = np.ndarray[Any, np.dtype[np.int64]]
LABELS = REPLAY_LABELS
GENERATED_SAMPLES = 32
_DYNAMIC_DIM = 16
_HISTOGRAM_BINS = 10


@dataclass(frozen=True, slots=True)
class Samples:
    """The sample inputs a build judges its variants on, and their true classes when known."""

    feeds: list[Feed]
    labels: Labels | None = None
    """One class index per feed (int64 [len(feeds)]): the calibration file's ``labels``."""


def load_npz(path: Path, signature: Signature, limit: int) -> Samples:
    """One single-sample feed per row of the calibration arrays, at most ``limit``, with the
    labels of those rows when the file has them."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BuildError(
            f"calibration file {path.name} is not a readable .npz ({e}); save it with "
            "numpy.savez(path, **{input_name: array})",
            reason="InvalidCalibration",
        ) from e
    with data:
        missing = [t.name for t in signature.inputs if t.name not in data.files]
        if missing:
            raise BuildError(
                f"calibration file {path.name} lacks arrays for inputs {missing} (it has "
                f"{data.files}); store one array per model input, samples on axis 0",
                reason="InvalidCalibration",
            )
        arrays = {
            t.name: np.asarray(data[t.name]).astype(OIP_TO_NUMPY[t.datatype], copy=False)
            for t in signature.inputs
        }
        has_labels = LABELS in data.files and LABELS not in arrays
        raw_labels = np.asarray(data[LABELS]) if has_labels else None
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise BuildError(
            f"calibration arrays in {path.name} have different sample counts {sorted(counts)}; "
            "every input needs one row per sample",
            reason="InvalidCalibration",
        )
    total = counts.pop()
    labels = None if raw_labels is None else _labels(raw_labels, total)
    n = min(total, limit)
    feeds = [{name: a[i : i + 1] for name, a in arrays.items()} for i in range(n)]
    return Samples(feeds, None if labels is None else labels[:n])


def _labels(raw: np.ndarray, samples: int) -> Labels:
    """The calibration file's labels as int64 class indices, or why they cannot be."""
    problem = None
    if raw.ndim != 1:
        problem = (
            f"has shape {list(raw.shape)}: give one class index per sample, shape [{samples}] "
            "(for one-hot or score rows, save labels.argmax(axis=1))"
        )
    elif len(raw) != samples:
        problem = f"has {len(raw)} values for {samples} samples: give one class index per sample"
    elif not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        problem = f"is {raw.dtype}: give integer class indices"
    elif not np.all(np.isfinite(raw) & (raw >= 0) & (raw < 2.0**63) & (raw == np.floor(raw))):
        problem = "holds values that are not class indices (whole numbers, 0 or more)"
    if problem is not None:
        raise BuildError(
            f"calibration array '{LABELS}' {problem}; or rename it if it is no labels",
            reason="InvalidCalibration",
        )
    return raw.astype(np.int64)


def _generate_one(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    shape = [d if d > 0 else (1 if i == 0 else _DYNAMIC_DIM) for i, d in enumerate(spec.shape)]
    dtype = OIP_TO_NUMPY[spec.datatype]
    name = spec.name.lower()
    if spec.datatype in (TensorDatatype.FP16, TensorDatatype.FP32, TensorDatatype.FP64):
        return rng.standard_normal(shape).astype(dtype)
    if spec.datatype == TensorDatatype.BOOL:
        return rng.random(shape) < 0.5
    if spec.datatype == TensorDatatype.BYTES:
        raise BuildError(
            f"cannot generate sample strings for input {spec.name!r}; provide "
            "optimization.calibration.uri with real inputs",
            reason="InvalidCalibration",
        )
    if "mask" in name:
        return np.ones(shape, dtype)
    if "type" in name:
        return np.zeros(shape, dtype)
    return rng.integers(0, 100, shape).astype(dtype)


def generate(signature: Signature, count: int, seed: int = 0) -> list[Feed]:
    rng = np.random.default_rng(seed)
    return [{t.name: _generate_one(t, rng) for t in signature.inputs} for _ in range(count)]


def write_golden_set(samples: Samples, path: Path) -> Path | None:
    """The samples as the artifact's golden set, in the calibration file's layout (one array
    per input, samples on axis 0, and ``labels`` when known), for serving pods to replay to a
    canary; None when the feeds are not all single samples (a model with a fixed batch size
    above one), which a server could not send one by one."""
    feeds = samples.feeds
    if not feeds or any(a.shape[:1] != (1,) for feed in feeds for a in feed.values()):
        return None
    arrays = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
    if samples.labels is not None:  # load_npz took no labels where an input has their name
        arrays[LABELS] = samples.labels.astype(np.int64)
    np.savez(path, allow_pickle=False, **arrays)
    return path


def statistics(feeds: list[Feed]) -> dict[str, TensorStats]:
    """Per-input distribution of the samples: the baseline the server compares traffic with."""
    stats: dict[str, TensorStats] = {}
    for name in feeds[0] if feeds else ():
        values = np.concatenate([f[name].reshape(-1) for f in feeds])
        if values.dtype == np.object_ or values.size == 0:
            continue
        values = values.astype(np.float64)
        counts, edges = np.histogram(values, bins=_HISTOGRAM_BINS)
        stats[name] = TensorStats(
            mean=float(values.mean()),
            std=float(values.std()),
            min=float(values.min()),
            max=float(values.max()),
            count=int(values.size),
            histogram_edges=[float(e) for e in edges],
            histogram_counts=[int(c) for c in counts],
        )
    return stats
