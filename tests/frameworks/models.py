"""Small real models made in PyTorch, TensorFlow, Keras and TF Lite, for the builder's tests.

Usage: python tests/frameworks/models.py OUTDIR KIND [KIND...]

Run it with an interpreter that has the framework of each KIND (torch for the ``cnn-*``,
``*-pt2`` and ``*-pickle*`` kinds, tensorflow for the others); each framework is imported only
when a KIND needs it. Every good model KIND also writes ``<kind>.npz`` (``inputs``: 8 fixed
float32 samples, ``outputs``: the framework's own outputs for them) and ``<kind>-samples.npz``
(the same samples under the model's input name, the builder's calibration format).

Good models:
  cnn-pt2            cnn.pt2: torch.export archive, input ``image`` [batch,3,32,32] (batch 1..1024),
                     output [batch,10]
  cnn-pickle         cnn.pt: the same CNN (same weights) pickled whole with torch.save; it is a
                     plain torch.nn.Sequential, so unpickling needs torch only (no test class on
                     PYTHONPATH), but its forward argument is ``input``; load it with
                     torch.load(path, weights_only=False)
  mlp-keras          mlp.keras: input ``features`` [batch,8], output [batch,3] (softmax)
  mlp-savedmodel     mlp_savedmodel.tar.gz: directory mlp_savedmodel/ (model.export), signature
                     serving_default: features [batch,8] -> output_0 [batch,3]
  mlp-tflite         mlp.tflite: signature serving_default: features [-1,8] -> output_0 [-1,3]
Broken inputs:
  broken-pt2         truncated.pt2: the cnn.pt2 bytes cut to half
  pickle-missing-class
                     missing_class.pt: a whole module whose class lives in a module
                     (modelship_missing_module) that exists only while this script runs
  savedmodel-nosig   nosig_savedmodel.tar.gz: directory nosig_savedmodel/, a SavedModel with two
                     tf.functions and no signatures at all
  tflite-custom-op   custom_op.tflite: features [-1,8] -> erfinv(tanh(features)); Erfinv is a
                     custom op (allow_custom_ops) that neither TF Lite nor tf2onnx implements
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import io
import logging
import os
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

BATCH = 8


def cnn_inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)


def mlp_inputs() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((BATCH, 8)).astype(np.float32)


def write_samples(out: Path, kind: str, input_name: str, inputs: np.ndarray, outputs: Any) -> None:
    outputs = np.asarray(outputs, dtype=np.float32)
    np.savez(out / f"{kind}.npz", inputs=inputs, outputs=outputs)
    np.savez(out / f"{kind}-samples.npz", **{input_name: inputs})


def pack_dir(src: Path, archive: Path, arcname: str) -> None:
    """tar.gz of src as arcname/, with sorted entries and zeroed times and owners."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with (
        archive.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.add(src, arcname=arcname, recursive=False, filter=clean)
        for path in sorted(src.rglob("*")):
            tar.add(
                path, arcname=f"{arcname}/{path.relative_to(src)}", recursive=False, filter=clean
            )


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence native code that writes to fd 2 (TF Lite's delegate banner)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --- PyTorch -------------------------------------------------------------------------------


@functools.cache
def torch_cnn() -> Any:
    """The CNN as (wrapper with forward(image), body): body is a plain nn.Sequential."""
    import torch
    from torch import nn

    # torch.export imports the FLOP counter, which warns that triton is missing (CPU builds)
    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)

    torch.manual_seed(0)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    body = nn.Sequential(
        *block(3, 16),
        *block(16, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():  # non-trivial BatchNorm parameters and statistics
        for module in body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.body(image)

    model = SmallCNN().eval()
    return model, body


def cnn_reference(kind: str, out: Path) -> None:
    import torch

    model, _ = torch_cnn()
    x = cnn_inputs()
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    write_samples(out, kind, "image", x, y)


def cnn_pt2_bytes() -> bytes:
    import torch

    model, _ = torch_cnn()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.from_numpy(cnn_inputs()),)
    program = torch.export.export(model, example, dynamic_shapes={"image": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def make_cnn_pt2(out: Path) -> None:
    (out / "cnn.pt2").write_bytes(cnn_pt2_bytes())
    cnn_reference("cnn-pt2", out)


def make_cnn_pickle(out: Path) -> None:
    import torch

    _, body = torch_cnn()
    torch.save(body, out / "cnn.pt")
    cnn_reference("cnn-pickle", out)


def make_broken_pt2(out: Path) -> None:
    data = cnn_pt2_bytes()
    (out / "truncated.pt2").write_bytes(data[: len(data) // 2])


MISSING_MODULE = "modelship_missing_module"
MISSING_SOURCE = """\
import torch


class Scale(torch.nn.Module):
    def forward(self, image):
        return image * 2
"""


def make_pickle_missing_class(out: Path) -> None:
    import importlib

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{MISSING_MODULE}.py").write_text(MISSING_SOURCE)
        sys.path.insert(0, tmp)
        try:
            module = importlib.import_module(MISSING_MODULE)
            torch.save(module.Scale().eval(), out / "missing_class.pt")
        finally:
            sys.path.remove(tmp)
            sys.modules.pop(MISSING_MODULE, None)


# --- TensorFlow / Keras / TF Lite ----------------------------------------------------------


@functools.cache
def keras_mlp() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input(shape=(8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(features)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = keras.Model(features, probs, name="mlp")
    rng = np.random.default_rng(2)  # explicit weights, non-zero biases
    for layer in model.layers[1:]:
        layer.set_weights(
            [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()]
        )
    return model


def export_savedmodel(directory: Path) -> None:
    keras_mlp().export(str(directory), verbose=False)


def make_mlp_keras(out: Path) -> None:
    model = keras_mlp()
    model.save(out / "mlp.keras")
    x = mlp_inputs()
    write_samples(out, "mlp-keras", "features", x, model(x))


def make_mlp_savedmodel(out: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "mlp_savedmodel"
        export_savedmodel(directory)
        pack_dir(directory, out / "mlp_savedmodel.tar.gz", "mlp_savedmodel")
        serve = tf.saved_model.load(str(directory)).signatures["serving_default"]
        x = mlp_inputs()
        y = serve(features=tf.constant(x))["output_0"]
    write_samples(out, "mlp-savedmodel", "features", x, y)


def make_mlp_tflite(out: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "mlp_savedmodel"
        export_savedmodel(directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(directory))
        (out / "mlp.tflite").write_bytes(converter.convert())
    x = mlp_inputs()
    with warnings.catch_warnings(), quiet_stderr():  # deprecation notice, XNNPACK banner
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(out / "mlp.tflite"))
        (detail,) = interpreter.get_input_details()
        signature = list(detail["shape_signature"])
        if signature != [-1, 8]:
            raise RuntimeError(f"mlp.tflite input shape_signature is {signature}, not [-1, 8]")
        interpreter.resize_tensor_input(detail["index"], list(x.shape))
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner("serving_default")
        y = runner(features=x)["output_0"]
    write_samples(out, "mlp-tflite", "features", x, y)


def make_savedmodel_nosig(out: Path) -> None:
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
        def forward(self, features: Any) -> Any:
            return tf.matmul(features, self.w)

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
        def double(self, features: Any) -> Any:
            return 2.0 * tf.matmul(features, self.w)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "nosig_savedmodel"
        tf.saved_model.save(Affine(), str(directory), signatures={})
        found = list(tf.saved_model.load(str(directory)).signatures)
        if found:
            raise RuntimeError(f"nosig_savedmodel has signatures {found}")
        pack_dir(directory, out / "nosig_savedmodel.tar.gz", "nosig_savedmodel")


def make_tflite_custom_op(out: Path) -> None:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
    def erfinv(features: Any) -> Any:
        return tf.math.erfinv(tf.tanh(features))

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [erfinv.get_concrete_function()], erfinv
    )
    converter.allow_custom_ops = True  # Erfinv is no TF Lite builtin: kept as a custom op
    (out / "custom_op.tflite").write_bytes(converter.convert())


KINDS: dict[str, Callable[[Path], None]] = {
    "cnn-pt2": make_cnn_pt2,
    "cnn-pickle": make_cnn_pickle,
    "mlp-keras": make_mlp_keras,
    "mlp-savedmodel": make_mlp_savedmodel,
    "mlp-tflite": make_mlp_tflite,
    "broken-pt2": make_broken_pt2,
    "pickle-missing-class": make_pickle_missing_class,
    "savedmodel-nosig": make_savedmodel_nosig,
    "tflite-custom-op": make_tflite_custom_op,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("kinds", nargs="+", choices=sorted(KINDS), metavar="KIND")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for kind in dict.fromkeys(args.kinds):
        KINDS[kind](args.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
