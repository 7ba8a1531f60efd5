"""Where the Helm chart lives, for every test that renders it."""

from __future__ import annotations

from pathlib import Path

CHART = Path(__file__).resolve().parent.parent.parent / "helm" / "bgmock-twin"
