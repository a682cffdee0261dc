"""``python -m modelship_runtime serve``: flags override MODELSHIP_* environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from modelship.api.serving import ENV_PREFIX, env_name
from modelship_runtime.serve.settings import ServeSettings

# Before numpy loads: its BLAS pool would spin up a thread per core that competes with
# onnxruntime's own pool and the event loop (the server does no large linear algebra itself).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_BOOLEAN = {name for name, f in ServeSettings.model_fields.items() if f.annotation is bool}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelship_runtime serve",
        description="Serve an ONNX artifact over the Open Inference Protocol (REST and gRPC). "
        f"Every flag also reads {ENV_PREFIX}<FLAG_IN_CAPITALS> (dashes as underscores); "
        "flags win.",
    )
    for name, field in ServeSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" [env {env_name(name)}]"
        if name in _BOOLEAN:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)  # fmt: skip
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    return parser


def parse_settings(argv: Sequence[str]) -> ServeSettings:
    args = _parser().parse_args(list(argv))
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return ServeSettings(**overrides)


def download(settings: ServeSettings) -> None:
    """Init-container mode: fetch <artifact_uri>/<digest>/ into model_dir via the store API."""
    from modelship.api.artifact import ArtifactStore
    from modelship.api.v1alpha1 import S3Settings
    from modelship_runtime.store import open_store

    if not settings.artifact_uri or not settings.artifact_digest:
        raise SystemExit(
            f"downloading needs both --artifact-uri ({env_name('artifact_uri')}, e.g. "
            f"s3://bucket/prefix) and --artifact-digest ({env_name('artifact_digest')}, "
            "sha256:<64 hex>)"
        )
    s3 = None
    if settings.artifact_s3_endpoint or settings.artifact_s3_region:
        s3 = S3Settings(endpoint=settings.artifact_s3_endpoint, region=settings.artifact_s3_region)
    store = open_store(ArtifactStore(uri=settings.artifact_uri, s3=s3))
    manifest = store.download(settings.artifact_digest, settings.model_dir)
    logging.getLogger("modelship_runtime.serve").info(
        "downloaded %s (%s, %d bytes) into %s",
        manifest.digest, manifest.variant, manifest.size_bytes, settings.model_dir,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.artifact_uri:
        try:
            download(settings)
        except Exception as exc:
            print(f"download failed: {exc}", file=sys.stderr)
            return 1
        if settings.download_only:
            return 0
    elif settings.download_only:
        print("--download-only needs --artifact-uri and --artifact-digest", file=sys.stderr)
        return 2

    from modelship_runtime.serve.app import serve
    from modelship_runtime.serve.artifact import ArtifactError

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is in the runtime extra
        runner = asyncio.Runner()
    try:
        with runner:
            return runner.run(serve(settings))
    except ArtifactError as exc:
        print(str(exc), file=sys.stderr)
        return 1
