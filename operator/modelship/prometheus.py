"""Asking Prometheus for canary analysis (``analysis.source: prometheus``).

Each query is an instant query (``POST /api/v1/query``) at the moment of the analysis, all of one
analysis in parallel, each with a short timeout that Prometheus is told too. An answer is a
number, no data, or why the query failed: an HTTP error (with Prometheus' own message for a
PromQL error), no answer in time, or a result that is not one number. Failures are answers,
never exceptions, so one failed query neither hides the others nor passes anything.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol

from modelship.domain.promql import Answer, Query

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 5.0


class QueryRunner(Protocol):
    """Where analysis gets PromQL answered."""

    def ask(self, queries: Sequence[Query], at: datetime) -> dict[str, Answer]:
        """The answer to each query, by name, evaluated at ``at``."""
        ...


def _one_number(body: Any) -> Answer:
    """The value of an API answer that is one number (or nothing)."""
    if not isinstance(body, dict) or "status" not in body:
        return Answer(error="the answer is not from the Prometheus HTTP API")
    if body["status"] != "success":
        return Answer(error=f"{body.get('errorType', 'error')}: {body.get('error', '')}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    sample: Any
    if kind == "scalar":
        sample = result
    elif kind == "vector":
        if not result:
            return Answer()
        if len(result) > 1:
            labels = ", ".join(json.dumps(r.get("metric", {}), sort_keys=True) for r in result[:3])
            return Answer(
                error=f"{len(result)} series ({labels}{', ...' if len(result) > 3 else ''}), "
                "not one: aggregate them, e.g. with sum(...)"
            )
        sample = result[0].get("value")
    else:
        return Answer(error=f"a {kind}, not one number: write an instant query")
    try:
        value = float(sample[1])  # a [time, "value"] pair
    except (TypeError, ValueError, IndexError, KeyError):
        return Answer(error=f"an unreadable sample {sample!r}")
    return Answer(None if math.isnan(value) else value)


class PrometheusClient:
    """Prometheus' HTTP API at ``url`` (e.g. ``http://prometheus.monitoring:9090``)."""

    def __init__(self, url: str, timeout: float = QUERY_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str, at: datetime) -> Answer:
        """One instant query; what went wrong is the answer's error."""
        form = urllib.parse.urlencode(
            {"query": promql, "time": f"{at.timestamp():.3f}", "timeout": f"{self.timeout:g}s"}
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v1/query",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _one_number(json.loads(response.read()))
        except urllib.error.HTTPError as e:
            # Prometheus answers a bad query with 400 (and one it cannot run with 422 or 503)
            # and says why in the JSON body.
            try:
                reason = _one_number(json.loads(e.read())).error
            except ValueError:
                reason = None
            said = f": {reason}" if reason else ""
            return Answer(error=f"HTTP {e.code} from {self.url}{said}")
        except TimeoutError:
            return Answer(error=f"no answer from {self.url} within {self.timeout:g} s")
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                return Answer(error=f"no answer from {self.url} within {self.timeout:g} s")
            return Answer(error=f"cannot reach {self.url}: {e.reason}")
        except (OSError, http.client.HTTPException) as e:
            return Answer(error=f"cannot reach {self.url}: {e!r}")
        except ValueError as e:
            return Answer(error=f"the answer of {self.url} is not JSON: {e}")

    def ask(self, queries: Sequence[Query], at: datetime) -> dict[str, Answer]:
        if not queries:
            return {}
        with ThreadPoolExecutor(min(len(queries), 8), thread_name_prefix="promql") as pool:
            answers = list(pool.map(lambda q: self.query(q.promql, at), queries))
        for query, answer in zip(queries, answers, strict=True):
            if answer.error is not None:
                log.info("prometheus query %s (%s) failed: %s", query.name, query.promql,
                         answer.error)  # fmt: skip
        return {q.name: a for q, a in zip(queries, answers, strict=True)}
