"""One way to make a boto3 S3 client, shared by source fetching and the artifact store.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the
Secret named in the spec, mounted as env, or the pod's ambient identity); the endpoint from the
spec, else AWS_ENDPOINT_URL, else AWS S3.
"""

from __future__ import annotations

import os
from typing import Any

from modelship.api.v1alpha1 import S3Settings
from modelship_runtime.io_settings import IOSettings


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/part`` -> (bucket, "key/part")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI; write it as s3://bucket/key")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket; write it as s3://bucket/key")
    return bucket, key.strip("/")


def make_client(settings: S3Settings | None, io: IOSettings | None = None) -> Any:
    """A boto3 S3 client for the store or source described by ``settings``."""
    import boto3  # boto3 takes ~0.3 s to import; only S3 users pay for it.
    from botocore.config import Config

    io = io or IOSettings()
    endpoint = (settings.endpoint if settings else None) or os.environ.get("AWS_ENDPOINT_URL")
    region = (settings.region if settings else None) or os.environ.get("AWS_REGION", "us-east-1")
    config = Config(
        connect_timeout=io.http_timeout_s,
        read_timeout=io.http_timeout_s,
        retries={"max_attempts": io.http_attempts, "mode": "standard"},
        # S3-compatible stores (MinIO, SeaweedFS, Ceph) rarely have wildcard DNS for buckets.
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=config,
        verify=str(io.ca_bundle) if io.ca_bundle else None,
    )
