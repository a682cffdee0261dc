"""Conformance of every REST and gRPC endpoint, with unmodified tritonclient and raw HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import modelfactory
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from conftest import REPO, ServerProcess

pytestmark = pytest.mark.slow

X = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
EXPECTED = modelfactory.reference(X)


def infer_body(**overrides: object) -> dict[str, object]:
    tensor = {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": X.ravel().tolist()}
    tensor.update(overrides)
    return {"inputs": [tensor]}


# --- REST --------------------------------------------------------------------------------


def test_rest_health_and_metadata(server: ServerProcess) -> None:
    get = lambda path: httpx.get(server.rest + path)  # noqa: E731
    assert get("/v2/health/live").status_code == 200
    assert get("/v2/health/ready").json() == {"ready": True}
    assert get("/v2").json() == {
        "name": "modelship",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    meta = get("/v2/models/model").json()
    assert meta == get("/v2/models/model/versions/1").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    assert get("/v2/models/model/ready").json() == {"ready": True}
    assert get("/v2/models/model/versions/1/ready").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/model/infer", "/v2/models/model/versions/1/infer"])
def test_rest_json_infer(server: ServerProcess, path: str) -> None:
    body = infer_body()
    body["id"] = "req-7"
    response = httpx.post(server.rest + path, json=body)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["id"] == "req-7"
    assert document["model_name"] == "model"
    assert document["model_version"] == "1"
    outputs = {o["name"]: o for o in document["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 10]
    assert outputs["probabilities"]["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 10),
        EXPECTED["probabilities"],
        rtol=1e-5,
        atol=1e-6,
    )
    assert outputs["label"] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [3],
        "data": EXPECTED["label"].tolist(),
    }


def test_rest_nested_json_data_and_requested_output(server: ServerProcess) -> None:
    body = infer_body(data=X.tolist())
    body["outputs"] = [{"name": "label"}]
    document = httpx.post(server.rest + "/v2/models/model/infer", json=body).json()
    assert [o["name"] for o in document["outputs"]] == ["label"]
    assert document["outputs"][0]["data"] == EXPECTED["label"].tolist()


def test_rest_binary_request_and_response_raw(server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": X.nbytes},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    response = httpx.post(
        server.rest + "/v2/models/model/infer",
        content=header + X.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:length])
    probabilities, label = document["outputs"]
    assert probabilities["parameters"] == {"binary_data_size": 3 * 10 * 4}
    assert "data" not in probabilities
    values = np.frombuffer(response.content[length:], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(values, EXPECTED["probabilities"], rtol=1e-5, atol=1e-6)
    assert label["data"] == EXPECTED["label"].tolist()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http(server: ServerProcess, binary: bool) -> None:
    client = thttp.InferenceServerClient(server.rest.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("model")
    assert client.is_model_ready("model", "1")
    assert client.get_server_metadata()["name"] == "modelship"
    assert client.get_model_metadata("model")["platform"] == "onnxruntime_onnx"
    tensor = thttp.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    outputs = [
        thttp.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")
    ]
    result = client.infer("model", [tensor], outputs=outputs, model_version="1", request_id="r1")
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), EXPECTED["probabilities"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(result.as_numpy("label"), EXPECTED["label"])
    assert result.get_response()["id"] == "r1"
    client.close()


def test_tritonclient_grpc(server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(server.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("model")
    assert client.is_model_ready("model", "1")
    assert client.get_server_metadata().name == "modelship"
    meta = client.get_model_metadata("model", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    tensor = tgrpc.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer("model", [tensor], model_version="1", request_id="g1")
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), EXPECTED["probabilities"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(result.as_numpy("label"), EXPECTED["label"])
    assert result.get_response().id == "g1"
    only = client.infer("model", [tensor], outputs=[tgrpc.InferRequestedOutput("label")])
    assert only.as_numpy("probabilities") is None
    np.testing.assert_array_equal(only.as_numpy("label"), EXPECTED["label"])
    client.close()


def test_proto_matches_the_standard_field_numbers() -> None:
    """Our hand-written proto is wire-compatible with the one tritonclient ships."""
    script = (
        "import json\n"
        "from modelship_runtime.serve.proto import open_inference_pb2 as pb\n"
        "def walk(d, p):\n"
        "    out = {p + f.name: [f.number, f.type, f.is_repeated] for f in d.fields}\n"
        "    for n in d.nested_types:\n"
        "        out.update(walk(n, p + n.name + '.'))\n"
        "    return out\n"
        "fields = {}\n"
        "for name, d in pb.DESCRIPTOR.message_types_by_name.items():\n"
        "    fields.update(walk(d, name + '.'))\n"
        "service = pb.DESCRIPTOR.services_by_name['GRPCInferenceService']\n"
        "methods = [m.name for m in service.methods]\n"
        "print(json.dumps({'fields': fields, 'methods': methods}))\n"
    )
    ours = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, cwd=REPO, text=True
        ).stdout
    )
    from tritonclient.grpc import service_pb2 as standard

    assert ours["methods"] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    service = standard.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert set(ours["methods"]) <= {m.name for m in service.methods}
    for path, (number, kind, repeated) in ours["fields"].items():
        message, *nested, field = path.split(".")
        descriptor = standard.DESCRIPTOR.message_types_by_name[message]
        for name in nested:
            descriptor = descriptor.nested_types_by_name[name]
        theirs = descriptor.fields_by_name[field]
        assert (theirs.number, theirs.type, theirs.is_repeated) == (number, kind, repeated), path


# --- bad input -----------------------------------------------------------------------------

BAD_REST = [
    ("unknown model", "/v2/models/nope/infer", infer_body(), 404, "model 'nope' is not served"),
    ("unknown version", "/v2/models/model/versions/9/infer", infer_body(), 404, "no version '9'"),
    ("wrong tensor name", None, infer_body(name="pixels"), 400, "unknown input 'pixels'"),
    (
        "wrong dtype",
        None,
        infer_body(datatype="FP64"),
        400,
        "input 'input' has datatype FP64 but the model expects FP32",
    ),
    (
        "wrong shape",
        None,
        infer_body(shape=[3, 32, 2]),
        400,
        "input 'input' has shape [3, 32, 2] but the model expects [-1, 64]",
    ),
    (
        "count mismatch",
        None,
        infer_body(shape=[4, 64]),
        400,
        "input 'input': shape [4, 64] needs 256 values but 'data' holds 192",
    ),
    (
        "strings for FP32",
        None,
        infer_body(data=["a"] * 192),
        400,
        "input 'input': datatype FP32 needs numbers, got strings",
    ),
    (
        "floats for INT",
        None,
        {"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1.5]}]},
        400,
        "input 'input': datatype INT8 needs integer values",
    ),
    (
        "unknown datatype",
        None,
        infer_body(datatype="FLOAT"),
        400,
        "input 'input': unknown datatype 'FLOAT'",
    ),
    ("negative dim", None, infer_body(shape=[-1, 64]), 400, "non-negative integers"),
    ("ragged data", None, infer_body(data=[[1.0, 2.0], [3.0]]), 400, "not a rectangular list"),
    ("no inputs", None, {"inputs": []}, 400, "non-empty 'inputs'"),
    (
        "missing data",
        None,
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]},
        400,
        "input 'input' has neither 'data' nor a binary_data_size",
    ),
    (
        "unknown output",
        None,
        {**infer_body(), "outputs": [{"name": "logits"}]},
        400,
        "unknown output 'logits'",
    ),
    ("wrong method", "GET /v2/models/model/infer", None, 405, "use POST"),
    ("no route", "/v3/infer", infer_body(), 404, "no endpoint /v3/infer"),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "message"), BAD_REST, ids=[c[0] for c in BAD_REST]
)
def test_rest_bad_input(
    server: ServerProcess, case: str, path: str | None, body: object, status: int, message: str
) -> None:
    path = path or "/v2/models/model/infer"
    if path.startswith("GET "):
        response = httpx.get(server.rest + path[4:])
    else:
        response = httpx.post(server.rest + path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def post_raw(server: ServerProcess, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(server.rest + "/v2/models/model/infer", content=content, headers=headers)


def test_rest_malformed_json(server: ServerProcess) -> None:
    response = post_raw(server, b'{"inputs": [')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert post_raw(server, b"[1, 2]").status_code == 400


def test_rest_truncated_binary(server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": X.nbytes},
                }
            ]
        }
    ).encode()
    response = post_raw(
        server, header + X.tobytes()[:100], **{"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 400
    assert "input 'input': binary_data_size is 768 but only 100 bytes" in response.json()["error"]
    response = post_raw(server, header[:10], **{"Inference-Header-Content-Length": "500"})
    assert response.status_code == 400
    assert "JSON header is truncated" in response.json()["error"]
    wrong = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 100},
                }
            ]
        }
    ).encode()
    response = post_raw(
        server, wrong + X.tobytes()[:100], **{"Inference-Header-Content-Length": str(len(wrong))}
    )
    assert response.status_code == 400
    assert "input 'input': shape [3, 64] of FP32 needs 768 bytes" in response.json()["error"]


def test_rest_oversized_payload(server: ServerProcess) -> None:
    response = post_raw(server, b"x" * (2 * 1024 * 1024))
    assert response.status_code == 413
    assert "exceeds the limit of 1048576 bytes" in response.json()["error"]


def test_grpc_bad_input_same_messages(server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(server.grpc)

    def infer(model: str, name: str, datatype: str, shape: list[int], data: np.ndarray) -> str:
        tensor = tgrpc.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [tensor])
        return f"{info.value.status()} {info.value.message()}"

    assert infer("nope", "input", "FP32", [3, 64], X).startswith(
        "StatusCode.NOT_FOUND model 'nope' is not served"
    )
    assert infer("model", "pixels", "FP32", [3, 64], X).startswith(
        "StatusCode.INVALID_ARGUMENT unknown input 'pixels'"
    )
    assert infer("model", "input", "FP64", [3, 64], X.astype(np.float64)) == (
        "StatusCode.INVALID_ARGUMENT input 'input' has datatype FP64 but the model expects FP32"
    )
    assert infer("model", "input", "FP32", [3, 32, 2], X.reshape(3, 32, 2)) == (
        "StatusCode.INVALID_ARGUMENT input 'input' has shape [3, 32, 2] but the model expects "
        "[-1, 64] (-1 = any size)"
    )
    big = np.zeros((5000, 64), dtype=np.float32)  # 1.3 MB > the 1 MiB limit
    assert infer("model", "input", "FP32", [5000, 64], big).startswith(
        "StatusCode.RESOURCE_EXHAUSTED"
    )
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_grpc_truncated_raw_contents(server: ServerProcess) -> None:
    """A raw buffer shorter than the shape needs: INVALID_ARGUMENT naming the tensor."""
    client = tgrpc.InferenceServerClient(server.grpc)
    tensor = tgrpc.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(X[:2])
    tensor.set_shape([3, 64])  # now the raw buffer is a third too short
    with pytest.raises(InferenceServerException) as info:
        client.infer("model", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input': shape [3, 64] of FP32 needs 768 bytes" in info.value.message()
    client.close()


def test_metrics_after_traffic(server: ServerProcess) -> None:
    httpx.post(server.rest + "/v2/models/model/infer", json=infer_body())
    httpx.post(server.rest + "/v2/models/whatever/infer", json=infer_body())
    text = httpx.get(server.metrics_url).text
    # The test server is not told a revision: the label is there, empty.
    assert 'modelship_requests_total{code="200",model="model",protocol="rest",revision=""}' in text
    assert (
        'modelship_requests_total{code="404",model="_unknown",protocol="rest",revision=""}' in text
    )
    assert 'modelship_requests_total{code="200",model="model",protocol="grpc",revision=""}' in text
    assert "modelship_request_duration_seconds_bucket{" in text
    assert 'modelship_requests_in_flight{model="model",revision=""} 0.0' in text
    assert 'modelship_input_drift_score{input="input",model="model",revision=""}' in text
    assert server.metric("modelship_requests_total") >= 2
    assert "5" not in {
        line.split('code="')[1][0]
        for line in text.splitlines()
        if line.startswith("modelship_requests_total{")
    }, "no request may end in a 5xx"


# --- HTTP transport edge cases (the built-in server) ----------------------------------------


def raw_exchange(
    server: ServerProcess, payload: bytes, until: bytes = b"}", responses: int = 1
) -> bytes:
    """Send raw bytes; read until ``responses`` complete answers ending in ``until`` (or EOF)."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while not (data.endswith(until) and data.count(b"\r\n\r\n{") >= responses):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_http_pipelining_chunked_and_expect_continue(server: ServerProcess) -> None:
    body = json.dumps(infer_body()).encode()
    request = (
        b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw_exchange(server, request + health + request, until=b"}]}", responses=3)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b'{"live":true}') < answer.rindex(b'"model_name"')
    chunked = (
        b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
        + f"{len(body[:100]):x}\r\n".encode() + body[:100] + b"\r\n"
        + f"{len(body[100:]):x}\r\n".encode() + body[100:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    answer = raw_exchange(server, chunked, until=b"}]}")
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_http_malformed_request_gets_400(server: ServerProcess) -> None:
    answer = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert httpx.get(server.rest + "/v2/health/live").status_code == 200


def test_uvicorn_transport_serves_the_same_protocol(mlp_artifact: Path, start_server: Any) -> None:
    srv: ServerProcess = start_server(mlp_artifact, "--http-server", "uvicorn")
    response = httpx.post(srv.rest + "/v2/models/model/versions/1/infer", json=infer_body())
    assert response.status_code == 200
    assert response.json()["outputs"][1]["data"] == EXPECTED["label"].tolist()
    bad = httpx.post(srv.rest + "/v2/models/model/infer", json=infer_body(name="pixels"))
    assert bad.status_code == 400
    assert "unknown input 'pixels'" in bad.json()["error"]
