"""A stable server process mirroring to a canary server process on 127.0.0.1, as a plan file
(written the way the kubelet updates a ConfigMap volume) says: under a bounded load the canary
gets the mirrored requests and counts them apart from its clients', the stable's metrics compare
the answers, the canary going away costs clients nothing, the pair follows the plan as it
changes (the output drift gauges with it), and the golden set is replayed with no client traffic
at all."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import modelfactory
import numpy as np
import onnxruntime as ort
import pytest

from conftest import ServerProcess
from modelship.api.serving import MIRROR_HEADER, MIRROR_KEY, REPLAY_FILE
from modelship_runtime.serve.mirror import input_sha256
from modelship_runtime.serve.mirror_plan import NO_PLAN
from polling import wait_for

pytestmark = pytest.mark.slow

Start = Callable[..., ServerProcess]
CLIENTS = 4
FAITHFUL_PSI = 0.005
PERTURBED_PSI = 0.015
"""Output PSI bounds: a faithful canary's below the first, the perturbed one's above the second."""


def sample(server: ServerProcess, name: str, scrape: str | None = None, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (in ``scrape``, one
    /metrics text, when given: several figures of one moment)."""
    total = 0.0
    text = scrape if scrape is not None else httpx.get(server.metrics_url, timeout=5).text
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def gauge(server: ServerProcess, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``; None when there is none."""
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(server.metrics_url, timeout=5).text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def drift(server: ServerProcess, **labels: str) -> tuple[float | None, float | None]:
    """The output PSI and the values per side it rests on, for the pair and source named."""
    return (
        gauge(server, "modelship_mirror_output_psi", **labels),
        gauge(server, "modelship_mirror_output_values", **labels),
    )


def outcomes(server: ServerProcess, **labels: str) -> dict[str, float]:
    return {
        o: sample(server, "modelship_mirror_requests_total", outcome=o, **labels)
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


class PlanVolume:
    """A ConfigMap volume as the kubelet keeps it: ``mirror.json`` links through ``..data`` to
    a timestamped folder, and an update swaps the ``..data`` link at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.file = root / MIRROR_KEY

    def write(self, content: dict[str, Any] | str) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        folder = self.root / f"..{uuid.uuid4().hex}"
        folder.mkdir()
        (folder / MIRROR_KEY).write_text(text)
        swap = self.root / "..data_tmp"
        swap.symlink_to(folder.name)
        os.replace(swap, self.root / "..data")
        if not self.file.is_symlink():
            self.file.symlink_to(f"..data/{MIRROR_KEY}")

    def remove(self) -> None:
        """The ConfigMap deleted (the volume is optional): its files go."""
        self.file.unlink()


def plan(to: ServerProcess, **fields: Any) -> dict[str, Any]:
    return {"stable": "stable-1", "canary": "canary-2", "url": to.rest, "share": 1.0, **fields}


def following(volume: PlanVolume, revision: str = "stable-1") -> tuple[str, ...]:
    return (
        "--revision", revision, "--mirror-file", str(volume.file), "--mirror-poll-s", "0.1",
    )  # fmt: skip


def mirror_status(server: ServerProcess) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{server.rest}/v2/mirror", timeout=5).json()
    return status


def start_pair(
    start_server: Start,
    model_dir: Path,
    canary_dir: Path,
    tmp_path: Path,
    *args: str,
    **fields: Any,
) -> tuple[ServerProcess, ServerProcess]:
    """A canary and a stable mounting the same plan (share 1 unless told), mirroring once the
    stable has read it."""
    volume = PlanVolume(tmp_path / "plan")
    canary = start_server(canary_dir, *following(volume, "canary-2"))
    volume.write(plan(canary, **fields))
    stable = start_server(model_dir, *following(volume), *args)
    wait_for(lambda: mirror_status(stable)["enabled"], "the stable to follow the plan")
    return canary, stable


def test_a_faithful_canary_agrees_on_every_mirrored_request(
    start_server: Start, mlp_artifact: Path, tmp_path: Path
) -> None:
    canary, stable = start_pair(start_server, mlp_artifact, mlp_artifact, tmp_path)
    load(stable, 200)
    counts = wait_for(settled(stable, 200), "every sampled request to be counted")
    assert counts["failed"] == 0
    assert counts["compared"] >= 100  # 4 clients against a queue of 64: few, if any, drop
    # The canary answered exactly the requests the stable compared, counted apart from its
    # clients: the figures canary analysis reads saw none of them.
    assert (
        sample(canary, "modelship_mirror_served_total", source="live", code="200")
        == (counts["compared"])
    )
    assert canary.metric("modelship_requests_total") == 0
    assert canary.metric("modelship_request_duration_seconds_count") == 0
    assert (
        sample(stable, "modelship_mirror_cosine_count", canary="canary-2", source="live")
        == (counts["compared"])
    )
    mean = sample(stable, "modelship_mirror_cosine_sum") / counts["compared"]
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert sample(stable, "modelship_mirror_top1_agreements_total") == 2 * counts["compared"]
    assert sample(stable, "modelship_mirror_top1_rows_total") == 2 * counts["compared"]
    assert sample(stable, "modelship_mirror_max_abs_error_bucket", le="1e-05") == counts["compared"]
    assert sample(stable, "modelship_mirror_requests_total", source="replay") == 0
    # The same outputs, so the same distribution: PSI about 0 (not exactly, should batching
    # round differently on the two pods), on 20 values (2 rows of 10) per compared request.
    psi, values = drift(stable, canary="canary-2", source="live")
    assert values == 20 * counts["compared"]
    assert psi is not None
    assert psi < FAITHFUL_PSI
    assert drift(stable, source="replay") == (None, None)  # no replay, no replay series
    status = mirror_status(stable)
    assert status["enabled"]
    assert status["canary"] == "canary-2"
    assert status["output"] == "probabilities"
    assert status["mismatches"] == []
    assert status["replay"]["enabled"] is False
    canary_status = mirror_status(canary)
    assert canary_status["enabled"] is False
    assert "this pod is revision 'canary-2'" in canary_status["reason"]


def test_a_perturbed_canary_shows_lower_agreement_and_mismatching_examples(
    start_server: Start, mlp_artifact: Path, tmp_path: Path
) -> None:
    perturbed = modelfactory.perturbed_mlp(tmp_path / "perturbed")
    _, stable = start_pair(start_server, mlp_artifact, perturbed, tmp_path, share=0.5)
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
    # Its probabilities are distributed otherwise too: about 0.07 on these requests, above
    # 0.024 on any 40 or more of them (computed offline), far above a faithful canary's.
    psi, values = drift(stable, canary="canary-2", source="live")
    assert values is not None
    assert values >= 20 * 40
    assert psi is not None
    assert psi > PERTURBED_PSI > FAITHFUL_PSI
    examples = mirror_status(stable)["mismatches"]
    assert 1 <= len(examples) <= 8
    for example in examples:
        index = int(example["id"].removeprefix("req-"))
        assert example["source"] == "live"
        assert example["input_sha256"] == input_sha256({"input": rows(index)})
        assert example["cosine"] < 0.99 or example["top1_agreement"] < 1
        assert "inputs" not in example


def test_the_canary_going_away_mid_load_costs_clients_nothing(
    start_server: Start, mlp_artifact: Path, tmp_path: Path
) -> None:
    canary, stable = start_pair(
        start_server, mlp_artifact, mlp_artifact, tmp_path, "--mirror-timeout-s", "0.5"
    )
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


def test_mirroring_follows_the_plan_file_while_the_pod_serves(
    start_server: Start, mlp_artifact: Path, tmp_path: Path
) -> None:
    volume = PlanVolume(tmp_path / "plan")
    canary = start_server(mlp_artifact, *following(volume, "canary-2"))
    stable = start_server(mlp_artifact, *following(volume))
    assert mirror_status(stable) == {"enabled": False, "reason": NO_PLAN}

    def mirrored(pair: str, total: int) -> None:
        load(stable, 20)
        wait_for(
            lambda: outcomes(stable, canary=pair)["compared"] == total,
            f"{total} requests compared with canary '{pair}'",
        )

    volume.write(plan(canary))  # the ConfigMap appears
    wait_for(lambda: mirror_status(stable)["enabled"], "mirroring to start")
    mirrored("canary-2", 20)
    assert drift(stable, canary="canary-2")[1] == 20 * 20

    # A new canary: the old pair's mirror is closed, the new one's figures have their labels.
    volume.write(plan(canary, canary="canary-3", replay_interval_s=1))
    status = wait_for(
        lambda: (s := mirror_status(stable))["canary"] == "canary-3" and s, "the new pair"
    )
    assert status["requests"] == {"compared": 0, "dropped": 0, "failed": 0}
    # The old pair's drift gauge goes with its mirror, the new one has none before 100 values.
    assert drift(stable, canary="canary-2") == (None, None)
    assert drift(stable, canary="canary-3") == (None, None)
    assert status["replay"]["enabled"] is False  # an artifact built before golden sets
    assert "the artifact has no golden set" in status["replay"]["reason"]
    mirrored("canary-3", 20)
    assert outcomes(stable, canary="canary-2")["compared"] == 20
    psi, values = drift(stable, canary="canary-3", source="live")
    assert values == 20 * 20
    assert psi is not None
    assert psi < FAITHFUL_PSI

    def stopped(reason: str) -> Callable[[], bool]:
        return lambda: mirror_status(stable) == {"enabled": False, "reason": reason}

    for content, reason in (
        (plan(canary, stable="stable-0"), "this pod is revision 'stable-1'"),
        (plan(canary, share=1.5), "invalid plan: not a MirrorPlan: share: Input should be"),
        ("", NO_PLAN),
    ):
        volume.write(content)
        wait_for(lambda r=reason: r in mirror_status(stable).get("reason", ""), reason)
        assert mirror_status(stable)["enabled"] is False
        load(stable, 10)  # served, not mirrored
    volume.write(plan(canary))
    wait_for(lambda: mirror_status(stable)["enabled"], "mirroring to start again")
    volume.remove()
    wait_for(stopped(NO_PLAN), "mirroring to stop with the ConfigMap gone")
    assert drift(stable) == (None, None)
    assert outcomes(stable, canary="canary-3")["compared"] == 20
    assert sample(stable, "modelship_requests_total", code="200") == 20 + 20 + 3 * 10
    assert sum(outcomes(stable).values()) == 40
    assert mirror_status(canary)["enabled"] is False


@pytest.mark.parametrize("http_server", ["builtin", "uvicorn"])
def test_mirrored_requests_are_counted_apart_from_the_clients(
    start_server: Start, mlp_artifact: Path, http_server: str
) -> None:
    canary = start_server(mlp_artifact, "--revision", "canary-2", "--http-server", http_server)
    marks = [None] * 4 + ["live"] * 3 + ["replay"] * 2 + ["something-else"]
    with httpx.Client(base_url=canary.rest, timeout=10) as http:
        for index, mark in enumerate(marks):
            headers = {MIRROR_HEADER: mark} if mark else {}
            reply = http.post("/v2/models/model/infer", json=body(index), headers=headers)
            assert reply.status_code == 200, reply.text  # answered like any request
        wrong = http.post("/v2/models/other/infer", json=body(0), headers={MIRROR_HEADER: "live"})
        assert wrong.status_code == 404
    assert sample(canary, "modelship_requests_total") == 4
    assert sample(canary, "modelship_request_duration_seconds_count") == 4
    assert sample(canary, "modelship_requests_in_flight") == 0
    served = "modelship_mirror_served_total"
    assert sample(canary, served, source="live", code="200", revision="canary-2") == 4
    assert sample(canary, served, source="replay", code="200") == 2
    assert sample(canary, served, model="_unknown", source="live", code="404") == 1


def golden_rows() -> np.ndarray:
    return np.random.default_rng(11).normal(size=(4, modelfactory.FEATURES)).astype(np.float32)


def test_the_golden_set_is_replayed_without_any_client_traffic(
    start_server: Start, mlp_artifact: Path, tmp_path: Path
) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(mlp_artifact, artifact)
    np.savez(artifact / REPLAY_FILE, input=golden_rows())
    perturbed = modelfactory.perturbed_mlp(tmp_path / "perturbed")
    canary, stable = start_pair(
        start_server, artifact, perturbed, tmp_path, share=0.0, replay_interval_s=0.3,
        replay_samples=4,
    )  # fmt: skip
    # What both revisions answer for each golden row, computed here: numpy for the stable,
    # onnxruntime on the perturbed file for the canary.
    x = golden_rows()
    want_stable = modelfactory.reference(x)["probabilities"]
    session = ort.InferenceSession(str(perturbed / "model.onnx"))
    want_canary = session.run(["probabilities"], {"input": x})[0].astype(np.float64)
    cosines = np.sum(want_stable * want_canary, axis=1) / (
        np.linalg.norm(want_stable, axis=1) * np.linalg.norm(want_canary, axis=1)
    )
    agree = want_stable.argmax(axis=1) == want_canary.argmax(axis=1)
    assert cosines.min() < 0.99, "the perturbation must show"

    replayed = {"canary": "canary-2", "source": "replay"}

    def rounds() -> tuple[int, str] | None:
        """Full rounds replayed so far, once at least two are and none is half-way, with the
        scrape that says so (the next round may start any moment: read all figures there)."""
        scrape = httpx.get(stable.metrics_url, timeout=5).text
        count = sample(stable, "modelship_mirror_cosine_count", scrape, **replayed)
        return (int(count // 4), scrape) if count >= 8 and count % 4 == 0 else None

    done, scrape = wait_for(rounds, "two rounds of the golden set")
    cosine_sum = sample(stable, "modelship_mirror_cosine_sum", scrape, **replayed)
    assert cosine_sum == pytest.approx(done * cosines.sum(), abs=1e-4)
    assert sample(stable, "modelship_mirror_top1_rows_total", scrape, **replayed) == 4 * done
    assert sample(stable, "modelship_mirror_top1_agreements_total", scrape, **replayed) == (
        done * agree.sum()
    )
    assert outcomes(stable, **replayed)["failed"] == 0
    assert outcomes(stable, source="live") == {"compared": 0, "dropped": 0, "failed": 0}
    # Nobody's client: neither pod counts a client request, the canary counts replays.
    assert stable.metric("modelship_requests_total") == 0
    assert canary.metric("modelship_requests_total") == 0
    assert sample(canary, "modelship_mirror_served_total", source="replay") >= 4 * done

    status = mirror_status(stable)
    assert status["replay"]["enabled"] is True
    assert (status["replay"]["interval_s"], status["replay"]["samples"]) == (0.3, 4)
    assert status["replay"]["reason"] is None
    assert status["requests"] == {"compared": 0, "dropped": 0, "failed": 0}
    examples = status["mismatches"]
    assert examples
    for example in examples:
        index = int(example["id"].removeprefix("replay-"))
        assert example["source"] == "replay"
        assert example["input_sha256"] == input_sha256({"input": x[index : index + 1]})
        assert example["cosine"] == pytest.approx(cosines[index], abs=1e-5)
        assert example["top1_agreement"] == float(agree[index])
        assert example["max_abs_error"] == pytest.approx(
            np.abs(want_stable[index] - want_canary[index]).max(), abs=1e-5
        )
