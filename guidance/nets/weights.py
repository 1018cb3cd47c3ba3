"""Build a network on the ``meta`` device and fill it from the weights of a component folder.

A component folder (``unet/``, ``vae/``, ``image_encoder/``, ...) holds ``config.json`` and the weights:
``diffusion_pytorch_model.safetensors`` / ``model.safetensors`` (or safetensors shards), else a single
``.bin``. Tensors are read straight onto the target device and cast to the target dtype there; the
module is never materialised with random weights. Any mismatch between the file and the module
(missing or unexpected keys, shapes) is a one-line :class:`ModelFolderError` (a UserError).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import torch
from torch import nn

from core.errors import UserError

__all__ = [
    "ModelFolderError",
    "read_config",
    "check_config",
    "config_namespace",
    "weight_files",
    "read_weights",
    "load_module",
]

M = TypeVar("M", bound=nn.Module)


class ModelFolderError(UserError, ValueError):
    """A component folder that does not hold what its config says (one line, names the folder).

    A UserError for direct callers; also a ValueError, so that loaders which wrap architecture and
    weight errors (``pipeline.setup``) add the config key that points at the folder.
    """


#: The standard single-file names (diffusers, transformers) tried before shards.
_STANDARD = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_STANDARD_BIN = ("diffusion_pytorch_model.bin", "pytorch_model.bin")


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; UserError when it is missing or not JSON."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{folder} has no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc})") from None


def check_config(
    cfg: Mapping[str, Any],
    folder: Path,
    fixed: Mapping[str, tuple[Any, ...]],
    used: Iterable[str],
    ignored: Iterable[str] = (),
) -> None:
    """Raise a one-line UserError naming the first key of ``cfg`` this implementation does not support.

    ``fixed``: keys whose value must be one of the listed ones (when present); ``used``: keys the
    network reads; ``ignored``: keys that do not change the computation. Keys starting with ``_``
    (``_class_name``, ``_diffusers_version``) are metadata. Any other key is unsupported unless its
    value is null, false or empty (``{}``, ``[]``): folders saved by another library version carry
    the keys of features that version knows, switched off (a feature that is on changes the network,
    so it is refused).
    """
    known = set(fixed) | set(used) | set(ignored)
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        off = value is None or value is False or (isinstance(value, (dict, list)) and not value)
        if key not in known and not off:
            raise ModelFolderError(
                f"{folder}/config.json: key {key!r}={value!r} is not supported by this loader"
            )
        if key in fixed and value not in fixed[key]:
            allowed = " or ".join(repr(v) for v in fixed[key])
            raise ModelFolderError(f"{folder}/config.json: {key}={value!r} is not supported (only {allowed})")


def config_namespace(cfg: Mapping[str, Any]) -> SimpleNamespace:
    """``cfg`` as attributes (``net.config.in_channels``), the way diffusers models expose theirs."""
    return SimpleNamespace(**dict(cfg))


def _indexed(folder: Path, ext: str) -> list[Path] | None:
    """The shards named by ``folder``'s ``*.<ext>.index.json`` (standard name first), or None without one.

    An index is how diffusers and transformers describe sharded weights: only the files of its
    ``weight_map`` are read, so stray files next to them (another variant) are not mixed in.
    """
    standard = [folder / f"{name.rsplit('.', 1)[0]}.{ext}.index.json" for name in _STANDARD + _STANDARD_BIN]
    found = [p for p in standard if p.is_file()] or sorted(folder.glob(f"*.{ext}.index.json"))
    if not found:
        return None
    index = found[0]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFolderError(f"{index} is not a weight index ({type(exc).__name__}: {exc})") from None
    if not names or not all(isinstance(n, str) for n in names):
        raise ModelFolderError(f"{index}: weight_map names no files")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ModelFolderError(f"{index} names shard(s) that are not there: {', '.join(missing[:3])}")
    return [folder / n for n in names]


def weight_files(folder: Path) -> list[Path]:
    """The weight files of ``folder``: one standard safetensors file, else the shards of an index,
    else all safetensors files, else one standard ``.bin``, the shards of a ``.bin`` index, or one ``.bin``."""
    folder = Path(folder)
    for name in _STANDARD:
        if (folder / name).is_file():
            return [folder / name]
    shards = _indexed(folder, "safetensors") or sorted(folder.glob("*.safetensors"))
    if shards:
        return shards
    for name in _STANDARD_BIN:
        if (folder / name).is_file():
            return [folder / name]
    indexed = _indexed(folder, "bin")
    if indexed:
        return indexed
    bins = sorted(folder.glob("*.bin"))
    if len(bins) == 1:
        return bins
    raise ModelFolderError(f"{folder} has no weights (*.safetensors or one *.bin)")


def _read_file(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors of one weight file; safetensors go straight to ``device``, ``.bin`` through a CPU mmap."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(device))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError) as exc:
        # safetensors raises SafetensorError (an Exception subclass) for truncated files.
        raise ModelFolderError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":
            raise ModelFolderError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
        raise


def read_weights(folder: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """All tensors of ``folder`` on ``device``, floating ones cast to ``dtype``."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        for key, value in _read_file(path, device).items():
            if key in state:
                raise ModelFolderError(f"{folder}: tensor {key!r} appears in more than one weight file")
            value = value.to(device)
            state[key] = value.to(dtype) if value.is_floating_point() else value
    return state


def _mismatch(
    folder: Path, expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
) -> str | None:
    """One line naming the first missing/unexpected keys and shape mismatches, or None when they agree."""
    parts = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} {list(got[k].shape)} in the file vs {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatch", shapes),
    ):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_module(
    build: Callable[[], M],
    folder: Path,
    dtype: torch.dtype,
    device: str | torch.device,
    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> M:
    """``build()`` on the meta device, filled strictly from ``folder``'s weights; eval mode, no gradients.

    ``adapt``: maps the file's tensors to the module's key layout before the strict check (e.g. the
    prefixed and unprefixed layouts of transformers files). Raises a one-line UserError naming
    ``folder`` and the first offending keys when the weights do not match the module built from its
    config.
    """
    device = torch.device(device)
    with torch.device("meta"):
        module = build()
    state = read_weights(folder, dtype, device)
    if adapt is not None:
        state = adapt(state)
    expected = module.state_dict()
    problem = _mismatch(folder, expected, state)
    if problem:
        raise ModelFolderError(
            f"{folder}: weights do not match {type(module).__name__} of its config.json ({problem})"
        )
    module.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the file: the networks here have none, and this keeps it so.
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(module).__name__}: tensors not loaded from {folder}: {left[:3]}")
    return module.eval().requires_grad_(False)
