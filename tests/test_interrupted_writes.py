"""Issue 22 finding 3: ``python main.py`` killed (SIGKILL) or interrupted (SIGINT) while it writes its
outputs leaves ``outdir`` with the old complete sets, or no complete set, never a report that
describes a mix of two runs; the next run removes the leftovers and writes a whole new set."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.outputs import STAGING_PREFIX, set_complete

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "data" / "oracle_tiny.yaml")
REPORTS = ("spot_report.json", "spot_final_report.json")

# Runs main.py with OutputSet.commit and its file moves slowed down and announced on stdout, so the
# test can signal the process at a known point of the write phase.
DRIVER = r"""
import os, sys, time, types
import core.outputs as outputs
import main

class SlowOs(types.ModuleType):
    def __getattr__(self, name):
        return getattr(os, name)

def replace(src, dst):
    os.replace(src, dst)
    print("MOVED", os.path.basename(dst), flush=True)
    time.sleep(0.5)

slow = SlowOs("os")
slow.replace = replace
outputs.os = slow
commit = outputs.OutputSet.commit

def announced(self, write_report):
    print("COMMIT", self.report_suffix, flush=True)
    time.sleep(0.5)
    return commit(self, write_report)

outputs.OutputSet.commit = announced
sys.exit(main.main(sys.argv[1:]))
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(outdir: Path) -> dict[str, str]:
    """name -> content hash of every visible file in ``outdir``."""
    return {p.name: _digest(p) for p in outdir.iterdir() if p.is_file() and not p.name.startswith(".")}


def _run(outdir: Path, seed: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "main.py", "--config", TINY, f"outdir={outdir}", f"seed={seed}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _run_until(outdir: Path, seed: int, stop_line: str, sig: int) -> subprocess.CompletedProcess:
    """Run the slowed driver and send ``sig`` when it prints ``stop_line``; returns the finished process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "--config", TINY, f"outdir={outdir}", f"seed={seed}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if line.strip() == stop_line:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    assert stop_line in seen, (seen, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "\n".join(seen) + out, err)


def _check_not_mixed(outdir: Path, old: dict[str, str]) -> None:
    """Every complete set in ``outdir`` is wholly the old run's or wholly another run's."""
    for rep in REPORTS:
        path = outdir / rep
        if not set_complete(path):
            continue
        listed = [Path(p).name for p in json.loads(path.read_text())["outputs"].values()]
        same = [old.get(n) == _digest(outdir / n) for n in listed]
        assert all(same) or not any(same), f"{rep} lists files of two runs: {dict(zip(listed, same))}"


@pytest.mark.slow
def test_kill_during_the_write_phase_never_leaves_a_mixed_set(tmp_path):
    outdir = tmp_path / "out"
    first = _run(outdir, seed=0)
    assert first.returncode == 0, first.stderr
    old = _snapshot(outdir)
    assert all(set_complete(outdir / r) for r in REPORTS)

    # 1. SIGKILL with stage 1's new files all staged, before its commit: the old sets are untouched.
    killed = _run_until(outdir, 1, "COMMIT _report.json", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert _snapshot(outdir) == old and all(set_complete(outdir / r) for r in REPORTS)
    assert [p for p in outdir.iterdir() if p.name.startswith(STAGING_PREFIX)]  # the dead run's litter

    # 2. SIGKILL in the middle of stage 1's moves: the old reports are gone first, so no set counts
    #    as complete, and no report describes files of two runs.
    killed = _run_until(outdir, 1, "MOVED spot_mesh.glb", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (outdir / REPORTS[0]).exists() and not (outdir / REPORTS[1]).exists()
    _check_not_mixed(outdir, old)
    # An atomic-write temporary of a dead process (pid of the killed run), as a kill inside a write leaves.
    tmp = outdir / f".spot_report.pid{_dead_pid()}.abc.tmp.json"
    tmp.write_text("{")

    # 3. The next run removes every leftover and writes two whole new sets.
    again = _run(outdir, seed=1)
    assert again.returncode == 0, again.stderr
    assert [p.name for p in outdir.iterdir() if p.name.startswith(".")] == []
    assert all(set_complete(outdir / r) for r in REPORTS)
    new = _snapshot(outdir)
    listed = set()
    for rep in REPORTS:
        listed |= {Path(p).name for p in json.loads((outdir / rep).read_text())["outputs"].values()}
    assert set(new) == listed  # nothing in outdir that no report lists
    assert new["spot.glb"] != old["spot.glb"] and new["spot_model.ply"] != old["spot_model.ply"]

    # 4. SIGINT at stage 1's commit: exit 130, one line, both sets as they were, staging removed.
    stopped = _run_until(outdir, 2, "COMMIT _report.json", signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and stopped.stderr.strip().splitlines()[-1] == "interrupted"
    assert [p.name for p in outdir.iterdir() if p.name.startswith(".")] == []
    assert _snapshot(outdir) == new and all(set_complete(outdir / r) for r in REPORTS)


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(proc.stdout)
    assert not os.path.exists(f"/proc/{pid}")
    return pid
