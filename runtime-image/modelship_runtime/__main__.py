"""``python -m modelship_runtime <build|serve> ...``: one image, two programs.

Each subcommand imports its program lazily, so the builder never loads the server and the server
never loads skl2onnx.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelship_runtime")
    parser.add_argument("command", choices=["build", "serve"], help="build: build an artifact "
                        "from a plan (Job); serve: run the inference server")  # fmt: skip
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    ns = parser.parse_args(argv)
    if ns.command == "build":
        from modelship_runtime.builder.cli import job_main

        return job_main(ns.args)
    from modelship_runtime.serve.cli import main as serve_main

    return int(serve_main(ns.args) or 0)


if __name__ == "__main__":
    sys.exit(main())
