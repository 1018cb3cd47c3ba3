"""Run a snippet in a fresh interpreter and see which heavy modules it imported (cold-start checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Modules a run must not import: seconds of every cold start.
HEAVY = ("diffusers", "transformers", "accelerate")


def imported_after(
    code: str, modules: tuple[str, ...] = HEAVY, timeout: float = 300
) -> tuple[list[str], str]:
    """Run ``code`` with ``python -c`` at the repository root (it must succeed); returns the names of
    ``modules`` left in ``sys.modules`` (sorted) and the snippet's own stdout."""
    probe = f"\nimport json as _j, sys as _s\nprint(_j.dumps(sorted(m for m in {modules!r} if m in _s.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code + probe], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-2000:]
    *lines, last = out.stdout.strip().splitlines()
    return json.loads(last), "\n".join(lines)
