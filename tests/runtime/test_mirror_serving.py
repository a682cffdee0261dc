"""A stable server process mirroring to a canary server process on 127.0.0.1, under a bounded
load: the canary gets the mirrored requests, the stable's metrics compare the answers, and the
canary going away costs clients nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import modelfactory
import numpy as np
import pytest

from conftest import ServerProcess
from modelship_runtime.serve.mirror import input_sha256
from polling import wait_for

pytestmark = pytest.mark.slow

Start = Callable[..., ServerProcess]
CLIENTS = 4


def sample(server: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(server.metrics_url, timeout=5).text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def outcomes(server: ServerProcess) -> dict[str, float]:
    return {
        o: sample(server, "modelship_mirror_requests_total", outcome=o)
        for o in ("compared", "dropped", "failed")
    }


def settled(server: ServerProcess, total: int) -> Callable[[], dict[str, float] | None]:
    """A check: the outcome counts once ``total`` sampled requests are all counted."""

    def check() -> dict[str, float] | None:
        counts = outcomes(server)
        return counts if sum(counts.values()) == total else None

    return check


def rows(index: int) -> np.ndarray:
    return np.random.default_rng(index).normal(size=(2, modelfactory.FEATURES)).astype(np.float32)


def body(index: int) -> dict[str, Any]:
    x = rows(index)
    return {
        "id": f"req-{index}",
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.reshape(-1).tolist()}],
    }  # fmt: skip


def load(server: ServerProcess, requests: int, during: Callable[[int], None] | None = None) -> None:
    """``requests`` infer calls from CLIENTS concurrent clients; every answer must be a 200 with
    the stable model's outputs. ``during(n)`` runs in client 0 after its n-th request."""
    failures: list[str] = []

    def client(offset: int) -> None:
        with httpx.Client(base_url=server.rest, timeout=10) as http:
            for n, index in enumerate(range(offset, requests, CLIENTS)):
                reply = http.post("/v2/models/model/infer", json=body(index))
                if reply.status_code != 200:
                    failures.append(f"{index}: {reply.status_code} {reply.text}")
                    continue
                got = np.asarray(reply.json()["outputs"][0]["data"]).reshape(2, -1)
                want = modelfactory.reference(rows(index))["probabilities"]
                if not np.allclose(got, want, atol=1e-5):
                    failures.append(f"{index}: wrong answer")
                if during is not None and offset == 0:
                    during(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


def mirroring(canary: ServerProcess, share: str = "1") -> tuple[str, ...]:
    return (
        "--revision", "stable-1", "--mirror-url", canary.rest, "--mirror-share", share,
        "--mirror-revision", "canary-2",
    )  # fmt: skip


def test_a_faithful_canary_agrees_on_every_mirrored_request(
    start_server: Start, mlp_artifact: Path
) -> None:
    canary = start_server(mlp_artifact, "--revision", "canary-2")
    stable = start_server(mlp_artifact, *mirroring(canary))
    load(stable, 200)
    counts = wait_for(settled(stable, 200), "every sampled request to be counted")
    assert counts["failed"] == 0
    assert counts["compared"] >= 100  # 4 clients against a queue of 64: few, if any, drop
    # The canary saw exactly the requests the stable compared, and nothing else.
    assert canary.metric("modelship_requests_total") == counts["compared"]
    assert sample(stable, "modelship_mirror_cosine_count", canary="canary-2") == counts["compared"]
    mean = sample(stable, "modelship_mirror_cosine_sum") / counts["compared"]
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert sample(stable, "modelship_mirror_top1_agreements_total") == 2 * counts["compared"]
    assert sample(stable, "modelship_mirror_top1_rows_total") == 2 * counts["compared"]
    assert sample(stable, "modelship_mirror_max_abs_error_bucket", le="1e-05") == counts["compared"]
    status = httpx.get(f"{stable.rest}/v2/mirror").json()
    assert status["enabled"]
    assert status["canary"] == "canary-2"
    assert status["output"] == "probabilities"
    assert status["mismatches"] == []
    assert httpx.get(f"{canary.rest}/v2/mirror").json() == {"enabled": False}


def test_a_perturbed_canary_shows_lower_agreement_and_mismatching_examples(
    start_server: Start, mlp_artifact: Path, tmp_path: Path
) -> None:
    canary = start_server(modelfactory.perturbed_mlp(tmp_path / "perturbed"))
    stable = start_server(mlp_artifact, *mirroring(canary, "0.5"))
    load(stable, 200)
    counts = wait_for(
        lambda: (c := outcomes(stable))["compared"] >= 40 and c,
        "the sampled requests to be compared",
    )
    assert counts["failed"] == 0
    assert counts["compared"] + counts["dropped"] < 160  # about half were sampled
    mean = sample(stable, "modelship_mirror_cosine_sum") / sample(
        stable, "modelship_mirror_cosine_count"
    )
    assert 0.3 < mean < 0.99
    agreements = sample(stable, "modelship_mirror_top1_agreements_total")
    assert agreements < sample(stable, "modelship_mirror_top1_rows_total")
    examples = httpx.get(f"{stable.rest}/v2/mirror").json()["mismatches"]
    assert 1 <= len(examples) <= 8
    for example in examples:
        index = int(example["id"].removeprefix("req-"))
        assert example["input_sha256"] == input_sha256({"input": rows(index)})
        assert example["cosine"] < 0.99 or example["top1_agreement"] < 1
        assert "inputs" not in example


def test_the_canary_going_away_mid_load_costs_clients_nothing(
    start_server: Start, mlp_artifact: Path
) -> None:
    canary = start_server(mlp_artifact)
    stable = start_server(mlp_artifact, *mirroring(canary), "--mirror-timeout-s", "0.5")
    before: dict[str, float] = {}

    def kill_canary(n: int) -> None:
        if n == 40:
            wait_for(lambda: outcomes(stable)["compared"] > 0, "mirroring to start")
            before.update(outcomes(stable))
            canary.proc.kill()
            canary.proc.wait()

    load(stable, 600, during=kill_canary)  # every client request answered correctly
    after = wait_for(settled(stable, 600), "every sampled request to be counted")
    assert after["failed"] + after["dropped"] > before["failed"] + before["dropped"]
    assert after["failed"] > 0
    assert sample(stable, "modelship_requests_total", code="200") == 600
    assert stable.metric("modelship_requests_total") == 600
    assert stable.stop(timeout=10) == 0  # the drain does not wait for mirrors
