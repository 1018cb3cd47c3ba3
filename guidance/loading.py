"""Resolve a model given as a local folder or a Hugging Face id to a local folder.

The Hub cache is honoured: a cached snapshot is used without touching the network; otherwise the
snapshot is downloaded. When that is impossible (offline, no network, unknown id) we stop with a
one-line :class:`core.errors.UserError` naming the id, the cache folder and the config key that points
at a local copy. Nothing here executes code from the model repository.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.errors import UserError

__all__ = ["resolve_model", "hub_cache_dir"]

log = logging.getLogger(__name__)


def hub_cache_dir(cache_dir: str | Path | None = None) -> str:
    """The Hugging Face hub cache folder in effect (``cache_dir`` or ``HF_HUB_CACHE``/``HF_HOME``)."""
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_model(
    model: str | Path,
    config_key: str = "model.path",
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Local folder for ``model`` (a folder path or a Hub id such as ``ashawkey/stable-zero123-diffusers``).

    ``local_files_only``: True never uses the network; None follows ``HF_HUB_OFFLINE``.
    ``allow_patterns``: file patterns to download (e.g. skip READMEs or ``.bin`` duplicates).
    Raises :class:`UserError` (one line) when the model is neither a folder nor obtainable.
    """
    text = os.path.expanduser(str(model))
    p = Path(text)
    if p.is_dir():
        return p
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise UserError(f"model folder {text!r} does not exist; set {config_key}=/path/to/folder")

    from huggingface_hub import constants, snapshot_download

    cache = hub_cache_dir(cache_dir)
    offline = bool(constants.HF_HUB_OFFLINE) if local_files_only is None else local_files_only
    try:
        # Cache first: no network round trip when the snapshot is already there.
        return Path(
            snapshot_download(text, cache_dir=cache_dir, local_files_only=True, allow_patterns=allow_patterns)
        )
    except Exception as exc:  # LocalEntryNotFoundError and friends: not cached (completely)
        log.debug("no cached snapshot of %s: %s", text, exc)
    if not offline:
        try:
            log.info("downloading %s into %s", text, cache)
            return Path(snapshot_download(text, cache_dir=cache_dir, allow_patterns=allow_patterns))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            raise UserError(
                f"cannot download model {text!r} ({reason}) and it is not in the cache {cache}; "
                f"download it elsewhere and set {config_key}=/path/to/folder"
            ) from None
    raise UserError(
        f"model {text!r} is not in the Hugging Face cache {cache} and downloads are off (offline); "
        f"set {config_key}=/path/to/folder to use a local copy"
    )
