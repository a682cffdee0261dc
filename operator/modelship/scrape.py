"""Reading the runtime pods' /metrics for canary analysis (``analysis.source: pods``), and
the stable pods' mirroring report (``GET /v2/mirror``: their newest mismatching examples).

The operator talks to each ready pod directly (pod IP, metrics port), in parallel, with a short
timeout: a pod that does not answer is skipped this interval and its baseline stays, so the
next interval counts what it served in both.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from modelship.api.serving import METRICS_PORT

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Target:
    pod: str
    """A stable identity of the pod (its uid)."""
    ip: str
    revision: str
    name: str = ""


class MetricsReader(Protocol):
    """Where analysis reads pod metrics: a Prometheus source can follow the same shape."""

    def read(self, targets: Sequence[Target]) -> dict[str, str]:
        """The /metrics text of each target that answered, by pod."""
        ...


class PodScraper:
    def __init__(
        self, port: int = METRICS_PORT, timeout: float = SCRAPE_TIMEOUT_S, path: str = "/metrics"
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.path = path

    def _get(self, target: Target) -> str | None:
        url = f"http://{target.ip}:{self.port}{self.path}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return str(response.read().decode())
        except OSError as e:
            log.info("scraping %s (%s) failed: %s", target.pod, url, e)
            return None

    def read(self, targets: Sequence[Target]) -> dict[str, str]:
        if not targets:
            return {}
        with ThreadPoolExecutor(min(len(targets), 16), thread_name_prefix="scrape") as pool:
            texts = list(pool.map(self._get, targets))
        return {t.pod: text for t, text in zip(targets, texts, strict=True) if text is not None}
