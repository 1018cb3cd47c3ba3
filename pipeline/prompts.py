"""Prompts of text-to-3D runs: output names made from a prompt, and a text file of prompts (batches, apps)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

__all__ = ["PromptItem", "prompt_slug", "prompt_items", "SLUG_MAX"]

#: Longest slug (characters): leaves room for suffixes such as ``_final_report.json`` in a file name.
SLUG_MAX = 60
# Names Windows refuses as file stems, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def prompt_slug(prompt: str, max_len: int = SLUG_MAX) -> str:
    """A file-name-safe ``save_path`` for ``prompt``: ``"A red Car!"`` -> ``"a_red_car"``.

    Accents are folded to ASCII, every run of other characters becomes one ``_``; only
    ``[a-z0-9_]`` remain, at most ``max_len`` of them (cut at a word boundary when there is one).
    A prompt with no usable character gives ``prompt``.
    """
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    if len(slug) > max_len:
        cut = slug[: max_len + 1]
        slug = cut.rsplit("_", 1)[0] if "_" in cut[1:] else slug[:max_len]
        slug = slug.strip("_")
    if not slug:
        return "prompt"
    return f"{slug}_" if slug in _RESERVED else slug


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a prompt file: its text, its output name (unique in the file) and its line number."""

    prompt: str
    save_path: str
    line: int


def prompt_items(path: str | Path, max_len: int = SLUG_MAX) -> list[PromptItem]:
    """The prompts of a UTF-8 text file, one per line; blank lines and ``#`` comment lines are skipped.

    Each item's ``save_path`` is :func:`prompt_slug` of its prompt, with ``_2``, ``_3``, ... added
    when an earlier line has the same slug, so a batch never overwrites its own outputs.
    Raises :class:`UserError` for a missing or unreadable file, or one without any prompt.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompt file {path}: {type(exc).__name__}") from None
    items: list[PromptItem] = []
    used: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        prompt = raw.strip()
        if not prompt or prompt.startswith("#"):
            continue
        base = prompt_slug(prompt, max_len)
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        items.append(PromptItem(prompt, name, number))
    if not items:
        raise UserError(f"prompt file {path} has no prompts (one per line; # starts a comment)")
    return items
