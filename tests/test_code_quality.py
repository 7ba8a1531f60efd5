"""The codebase stays ruff- and mypy-clean, and ruff's security rules (bandit's
S-rules: no eval/exec, no shell=True, no os.system, no hard-coded binds to
secrets...) hold everywhere outside the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", "bgmock_twin", "tests", "grafana")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run(str(BIN / "mypy"), "bgmock_twin")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_shell_or_eval_in_the_package() -> None:
    result = _run(str(BIN / "ruff"), "check", "--select", "S102,S307,S602,S604,S605,S606",
                  "--no-cache", "bgmock_twin")
    assert result.returncode == 0, result.stdout
