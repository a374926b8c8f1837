"""The environment record every run writes beside its config (run_info.json): which code, on what.

A loss curve is only comparable to another when you know the commit, the library versions and the
hardware that produced it (modded-nanogpt logs all of these for the same reason).
"""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from scratchlm.paths import repo_root


def run_info(argv: list[str] | None = None) -> dict[str, Any]:
    """Code version, package versions, host and command line of this process, JSON-ready."""
    import scratchlm

    argv = list(sys.argv if argv is None else argv)
    sha, dirty = git_state()
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(argv),
        "argv": argv,
        "cwd": os.getcwd(),
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": {
            "scratchlm": scratchlm.__version__,
            "python": platform.python_version(),
            "torch": _version("torch"),
            "numpy": _version("numpy"),
        },
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cuda_device": cuda_device(),
    }


def _version(package: str) -> str | None:
    # Read from the installed metadata, not by importing: importing torch costs seconds, and a
    # tokenizer-only run should not pay that to write one line of JSON.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cuda_device() -> str | None:
    """Name of CUDA device 0 if this process has torch loaded and CUDA available, else None.

    Only asks when torch is already imported: a run that uses the GPU has imported it, and one that
    has not did not run on the GPU, so importing torch here would only add seconds.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken driver must not fail the run that is only logging it
        return None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the checkout, or (None, None) outside git."""
    root = repo_root()
    if root is None or not (root / ".git").exists():
        return None, None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None, None
        # --no-optional-locks: never take .git/index.lock, which would race a commit being made meanwhile.
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                cwd=root, capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return sha.stdout.strip() or None, dirty
    except (OSError, subprocess.TimeoutExpired):  # no git binary, or a hung filesystem
        return None, None
