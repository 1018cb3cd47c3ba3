"""Arguments of the oracle CPU demo shrunk to seconds (tests/data/oracle_tiny.yaml) on the shared spot mesh."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORACLE_TINY = ROOT / "tests" / "data" / "oracle_tiny.yaml"
SPOT = ROOT.parent / "shared" / "data" / "meshes" / "spot.obj"


def oracle_tiny_args(*overrides: str) -> list[str]:
    """``load_config`` / ``main.py`` arguments: the tiny oracle config on spot, then ``overrides`` (``key=value``)."""
    return ["--config", str(ORACLE_TINY), f"oracle.mesh={SPOT}", *overrides]
