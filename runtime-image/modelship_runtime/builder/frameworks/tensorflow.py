"""TensorFlow: a SavedModel (its serving signature), a Keras ``.keras`` file (exported to a
SavedModel first) or a TF Lite flatbuffer, to ONNX with ``tf2onnx``.

Input and output names and shapes come from the model's signature (a SavedModel's and a TF
Lite file's ``serving_default``, a Keras model's inputs), with dynamic dimensions kept. Only the
convert step imports this module, in the tensorflow converter image.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelship.api.v1alpha1 import ModelFormat, ModelSource
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.frameworks import Converted, first_line, quiet, rename_io
from modelship_runtime.builder.samples import Feed

OPSET = 17
"""The ONNX opset tf2onnx targets."""
SERVING = "serving_default"
_TFLITE_ID = b"TFL3"


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The reference outputs come from TensorFlow's plain kernels: oneDNN's reorder floating
    # point sums between runs (and announces so on every import).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    with quiet():
        import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf


def _version(tf: Any) -> str:
    return f"tensorflow {tf.__version__}"


def _signature(loaded: Any, where: str) -> tuple[str, Any]:
    signatures = dict(loaded.signatures)
    if SERVING in signatures:
        return SERVING, signatures[SERVING]
    if len(signatures) == 1:
        return next(iter(signatures.items()))
    raise BuildError(
        f"{where} has no serving signature"
        + (f" (it has {', '.join(sorted(signatures))}; name one {SERVING})" if signatures else "")
        + f"; save it with one: tf.saved_model.save(model, dir, signatures={{'{SERVING}': "
        "model.__call__.get_concrete_function(tf.TensorSpec([None, ...], tf.float32))}) or, "
        "for Keras, model.export(dir)",
        reason="InvalidModel",
    )


def _from_saved_model(tf: Any, directory: Path, key: str, work: Path) -> Path:
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    out = work / "tf2onnx.onnx"
    try:
        with quiet():
            graph, inputs, outputs, renames = tf_loader.from_saved_model(
                str(directory), None, None, signatures=[key], return_tensors_to_rename=True
            )
            model, _ = tf2onnx_convert.from_graph_def(
                graph,
                input_names=inputs,
                output_names=outputs,
                opset=OPSET,
                tensors_to_rename=renames,
            )
    except BuildError:
        raise
    except Exception as e:  # tf2onnx raises ValueError/KeyError/... on graphs it cannot map
        raise BuildError(
            f"tf2onnx could not convert the SavedModel's signature {key} ({first_line(e)})",
            reason="ConversionFailed",
        ) from e
    onnx.save(model, str(out))
    return out


def _tensors(values: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in values.items()}


def _saved_model(directory: Path, work: Path) -> Converted:
    tf = _tf()
    try:
        with quiet():
            loaded = tf.saved_model.load(str(directory))
    except Exception as e:  # TF raises OSError, NotFoundError, DecodeError... on bad dirs
        raise BuildError(
            f"{directory.name} is not a loadable SavedModel ({first_line(e)}); save it with "
            "tf.saved_model.save or model.export and pack the whole directory (saved_model.pb "
            "and variables/)",
            reason="InvalidModel",
        ) from e
    key, function = _signature(loaded, f"the SavedModel {directory.name}")
    out = _from_saved_model(tf, directory, key, work)

    def run(feed: Feed) -> dict[str, np.ndarray]:
        with quiet():
            result = function(**{n: tf.constant(v) for n, v in feed.items()})
        return _tensors(result)

    return Converted(onnx=out, framework=_version(tf), run=run)


def _output_index(name: str) -> int:
    m = re.fullmatch(r"output_(\d+)", name)
    return int(m.group(1)) if m else -1


def _keras(path: Path, work: Path) -> Converted:
    tf = _tf()
    import keras

    try:
        with quiet():
            # safe_mode refuses Lambda layers' pickled code, the one way a .keras file runs code.
            model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as e:  # Keras raises ValueError/TypeError/zip errors on bad files
        raise BuildError(
            f"{path.name} is not a loadable Keras model ({first_line(e)}); save it with "
            "model.save('model.keras') (Keras 3; Lambda layers are refused: they hold code)",
            reason="InvalidModel",
        ) from e
    exported = work / "keras-savedmodel"
    try:
        with quiet():
            model.export(str(exported), format="tf_saved_model", verbose=False)
    except Exception as e:  # a model Keras cannot trace (subclassed without build) and more
        raise BuildError(
            f"Keras could not export {path.name} as a SavedModel ({first_line(e)}); build the "
            "model with an Input layer (a known input signature) before saving it",
            reason="ConversionFailed",
        ) from e
    out = _from_saved_model(tf, exported, SERVING, work)
    names = [i.name for i in model.inputs]
    outputs = [o.name for o in onnx.load(str(out), load_external_data=False).graph.output]
    # Keras' export names the flattened outputs output_0, output_1, ... in order.
    order = sorted(outputs, key=_output_index)

    def run(feed: Feed) -> dict[str, np.ndarray]:
        args = feed[names[0]] if len(names) == 1 else {n: feed[n] for n in names}
        with quiet():
            result = model(args, training=False)
        leaves = [np.asarray(t) for t in tf.nest.flatten(result)]
        return dict(zip(order, leaves, strict=False))

    return Converted(onnx=out, framework=f"keras {keras.__version__} ({_version(tf)})", run=run)


def _tflite(path: Path, work: Path) -> Converted:
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != _TFLITE_ID:
        raise BuildError(
            f"{path.name} is not a TF Lite flatbuffer (no {_TFLITE_ID.decode()} identifier); "
            "convert the model with tf.lite.TFLiteConverter and upload the .tflite file",
            reason="InvalidModel",
        )
    tf = _tf()
    from tf2onnx import convert as tf2onnx_convert

    try:
        with quiet():
            interpreter = tf.lite.Interpreter(model_path=str(path))
    except Exception as e:  # a truncated or damaged flatbuffer
        raise BuildError(
            f"{path.name} is not a readable TF Lite model ({first_line(e)}); upload it again",
            reason="InvalidModel",
        ) from e
    signatures = interpreter.get_signature_list()
    key = SERVING if SERVING in signatures else next(iter(signatures), None)
    runner = interpreter.get_signature_runner(key) if key is not None else None
    renames: dict[str, str] = {}
    if runner is not None:
        details = runner.get_input_details() | runner.get_output_details()
        renames = {d["name"]: name for name, d in details.items()}
    out = work / "tf2onnx.onnx"
    try:
        with quiet():
            model, _ = tf2onnx_convert.from_tflite(str(path), opset=OPSET)
    except Exception as e:  # tf2onnx raises many types on flatbuffers it cannot map
        raise BuildError(
            f"tf2onnx could not convert {path.name} ({first_line(e)})",
            reason="ConversionFailed",
        ) from e
    rename_io(model, renames)
    onnx.save(model, str(out))
    inputs = interpreter.get_input_details()

    def run(feed: Feed) -> dict[str, np.ndarray]:
        if runner is not None:
            with quiet():
                return _tensors(runner(**feed))
        for d in inputs:  # no signature: tensors by name, batch as given
            interpreter.resize_tensor_input(d["index"], feed[d["name"]].shape)
        interpreter.allocate_tensors()
        for d in inputs:
            interpreter.set_tensor(d["index"], feed[d["name"]])
        interpreter.invoke()
        details = interpreter.get_output_details()
        return {d["name"]: interpreter.get_tensor(d["index"]) for d in details}

    return Converted(onnx=out, framework=f"TF Lite ({_version(tf)})", run=run)


def convert(path: Path, source: ModelSource, work: Path) -> Converted:
    if source.format == ModelFormat.TENSORFLOW:
        return _saved_model(path, work)
    if source.format == ModelFormat.KERAS:
        return _keras(path, work)
    return _tflite(path, work)
