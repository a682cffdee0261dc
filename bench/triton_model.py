"""Triton's side of the serving benchmark: the Python-backend model that runs the ONNX file.

Not imported by the benchmark: ``bench/serving.py`` copies this file into each generated model
repository as ``model/1/model.py``; Triton's Python backend stub runs it with the interpreter of
the Triton venv (which has onnxruntime). The ONNX path and the session's thread settings come
from the ``parameters`` of the generated ``config.pbtxt``, so one file serves every case.

One session per model instance (the config asks for one instance). With dynamic batching Triton
hands ``execute`` every request of a batch at once: their inputs are joined along axis 0, run in
one call, and the outputs cut back into one response per request. Without batching each request
runs alone.
"""

import json

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        # The settings our server uses (modelship_runtime.serve.model.OnnxModel).
        spin = parameters["allow_spinning"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters["intra_op_threads"])
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self.session = ort.InferenceSession(
            parameters["onnx_model"], options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]
        self.batched = config["max_batch_size"] > 0

    def execute(self, requests):
        feeds = [
            {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.input_names
            }
            for request in requests
        ]
        if self.batched and len(feeds) > 1:
            rows = [feed[self.input_names[0]].shape[0] for feed in feeds]
            joined = {name: np.concatenate([f[name] for f in feeds]) for name in self.input_names}
            cuts = np.cumsum(rows)[:-1]
            outputs = self.session.run(self.output_names, joined)
            per_request = list(zip(*(np.split(array, cuts) for array in outputs), strict=True))
        else:
            per_request = [self.session.run(self.output_names, feed) for feed in feeds]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(array))
                    for name, array in zip(self.output_names, arrays, strict=True)
                ]
            )
            for arrays in per_request
        ]
