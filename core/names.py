"""File-name stems of outputs (``save_path``, batch item names): checked, or made safe.

A stem names files inside ``outdir`` only: it may not hold a path separator, a drive colon, a
control character, start with a dot (``.``, ``..``, hidden files, our staging folders) or be so
long that ``<stem>_final_report.json`` and the staging names built on it pass the 255-byte limit.
"""

from __future__ import annotations

import re

__all__ = ["MAX_STEM_BYTES", "safe_stem", "stem_problem"]

#: Longest stem in UTF-8 bytes: the longest name built on it (an atomic-write temporary of
#: ``<stem>_final_report.json``) adds about 50 bytes, and file systems allow 255.
MAX_STEM_BYTES = 180

_BAD_CHARS = re.compile(r"[/\\:\x00-\x1f\x7f]")


def stem_problem(name: str) -> str | None:
    """Why ``name`` is not a safe output stem (completes 'it ...'), or None when it is."""
    if not name or not name.strip():
        return "is empty"
    if "/" in name or "\\" in name:
        return "holds a path separator (outputs go into outdir; set outdir=... for the folder)"
    if ":" in name:
        return "holds ':' (a drive or stream name)"
    if _BAD_CHARS.search(name):
        return "holds a control character"
    if name.startswith("."):
        return "starts with '.' (hidden, or '..')"
    if name != name.strip():
        return "starts or ends with a space"
    if len(name.encode("utf-8")) > MAX_STEM_BYTES:
        return f"is longer than {MAX_STEM_BYTES} bytes"
    return None


def safe_stem(text: str, fallback: str = "output") -> str:
    """``text`` made a safe stem: bad characters become ``_``, leading dots/spaces go, long names are cut.

    ``safe_stem("../x")`` -> ``"_x"`` (the dots stay, but no separator), ``safe_stem(".hidden")`` ->
    ``"hidden"``, ``safe_stem("")`` -> ``fallback``.
    """
    stem = _BAD_CHARS.sub("_", text).strip().lstrip(". ").strip()
    data = stem.encode("utf-8")[:MAX_STEM_BYTES]
    stem = data.decode("utf-8", errors="ignore").strip()
    return stem if stem and stem_problem(stem) is None else fallback
