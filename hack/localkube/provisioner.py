"""A host-path volume provisioner for the ``local-path`` StorageClass of the local node.

It watches PersistentVolumeClaims of that class and answers each with a PersistentVolume backed
by a directory under ``--root``, pre-bound to the claim; when a claim is deleted, the released
volume and its directory go too. The PV controller in kube-controller-manager does the binding,
exactly as with any external provisioner.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

STORAGE_CLASS = "local-path"
PROVISIONER = "modelship.io/local-path"


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def _volume(claim: Any, root: Path, node: str) -> client.V1PersistentVolume:
    name = f"pvc-{claim.metadata.uid}"
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # pods run as arbitrary non-root users
    return client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(
            name=name, annotations={"pv.kubernetes.io/provisioned-by": PROVISIONER}
        ),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": claim.spec.resources.requests.get("storage", "1Gi")},
            access_modes=claim.spec.access_modes,
            persistent_volume_reclaim_policy="Delete",
            storage_class_name=STORAGE_CLASS,
            host_path=client.V1HostPathVolumeSource(path=str(path), type="Directory"),
            claim_ref=client.V1ObjectReference(
                kind="PersistentVolumeClaim",
                namespace=claim.metadata.namespace,
                name=claim.metadata.name,
                uid=claim.metadata.uid,
            ),
            node_affinity=client.V1VolumeNodeAffinity(
                required=client.V1NodeSelector(
                    node_selector_terms=[
                        client.V1NodeSelectorTerm(
                            match_expressions=[
                                client.V1NodeSelectorRequirement(
                                    key="kubernetes.io/hostname", operator="In", values=[node]
                                )
                            ]
                        )
                    ]
                )
            ),
        ),
    )


def _provision(core: client.CoreV1Api, claim: Any, root: Path, node: str) -> None:
    if claim.spec.storage_class_name != STORAGE_CLASS or claim.spec.volume_name:
        return
    try:
        core.create_persistent_volume(_volume(claim, root, node))
        where = f"{claim.metadata.namespace}/{claim.metadata.name}"
        print(f"provisioned pvc-{claim.metadata.uid} for {where}", flush=True)
    except client.ApiException as error:
        if error.status != 409:
            raise


def _reclaim(core: client.CoreV1Api, volume: Any, root: Path) -> None:
    annotations = volume.metadata.annotations or {}
    if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
        return
    if volume.status and volume.status.phase == "Released":
        shutil.rmtree(root / volume.metadata.name, ignore_errors=True)
        try:
            core.delete_persistent_volume(volume.metadata.name)
        except client.ApiException as error:
            if error.status != 404:
                raise
        print(f"reclaimed {volume.metadata.name}", flush=True)


def _watch_volumes(core: client.CoreV1Api, root: Path) -> None:
    while True:
        for event in watch.Watch().stream(core.list_persistent_volume, timeout_seconds=300):
            if event["type"] in ("ADDED", "MODIFIED"):
                _reclaim(core, event["object"], root)


def serve(kubeconfig: str, root: Path, node: str) -> None:
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    threading.Thread(target=_watch_volumes, args=(core, root), daemon=True).start()
    while True:
        claims = core.list_persistent_volume_claim_for_all_namespaces
        for event in watch.Watch().stream(claims, timeout_seconds=300):
            if event["type"] in ("ADDED", "MODIFIED"):
                _provision(core, event["object"], root, node)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    serve(args.kubeconfig, args.root, args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
