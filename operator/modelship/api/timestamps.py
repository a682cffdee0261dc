"""Kubernetes timestamps: the one place they are parsed and formatted.

``metav1.Time`` (conditions, Events) is RFC 3339 in whole seconds; ``metav1.MicroTime`` (Lease
renew and acquire times) carries microseconds. Both are written in UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """``metav1.Time``: ``2026-12-01T08:39:28Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime) -> str:
    """``metav1.MicroTime``: ``2026-12-01T08:39:28.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    """A timestamp written by Kubernetes (or by us); None when absent or not one."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one timestamp to another; None when either is missing or malformed."""
    a, b = parse_time(start), parse_time(end)
    return None if a is None or b is None else (b - a).total_seconds()
