"""hack/docker-env.sh starts dockerd for the image scripts while they hold flock locks on open
descriptors. A daemon started there must not inherit them: it would hold the lock for its whole
life and the next image build, waiting for that lock, would wait forever (what happened to a CI
run on a machine where dockerd was not yet running: the second converter image never started)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

from polling import wait_for

ROOT = Path(__file__).resolve().parents[2]

# Takes the lock the way hack/build-base-image.sh does, starts a daemon, prints its pid.
SCRIPT = r"""
set -euo pipefail
source "$ROOT/hack/docker-env.sh"
exec 6>"$LOCK"
flock -n 6
start_detached "$LOG" sleep 300
echo "$!"
"""


def _exec_done(pid: int) -> bool:
    return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0")


def test_a_daemon_started_by_docker_env_does_not_hold_the_callers_locks(tmp_path: Path) -> None:
    lock, log = tmp_path / "build.lock", tmp_path / "daemon.log"
    env = {**os.environ, "ROOT": str(ROOT), "LOCK": str(lock), "LOG": str(log)}
    done = subprocess.run(
        ["bash", "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    daemon = int(done.stdout)
    try:
        wait_for(lambda: _exec_done(daemon), "the daemon to start", timeout=10)
        files = {os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in os.listdir(f"/proc/{daemon}/fd")}
        assert str(lock) not in files, f"the daemon inherited the lock: {sorted(files)}"
        assert str(log) in files
        # The script that took the lock has exited: a new build gets it at once.
        with lock.open("w") as again:
            fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.kill(daemon, signal.SIGTERM)
