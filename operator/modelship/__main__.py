"""``python -m modelship``: run the operator with settings from MODELSHIP_* variables."""

from __future__ import annotations

import logging
import os

import kopf

from modelship import handlers  # noqa: F401  (registers the handlers)
from modelship.settings import Settings


def main() -> None:
    settings = Settings()  # fail fast, before connecting, when the settings are wrong
    logging.basicConfig(
        level=os.environ.get("MODELSHIP_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every handled watch event at INFO; at scale that costs more CPU than the work.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
    )


if __name__ == "__main__":
    main()
