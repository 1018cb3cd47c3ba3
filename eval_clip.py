"""CLIP similarity between reference images and renders of their meshes (the paper's metric).

Protocol (the authors' ``scripts/cal_sim.py`` + ``clip_sim.py``, docs/method.md#clip-eval):

* The mesh is re-centred on its bounding-box centre and scaled so that its largest side is 1.8
  (what kiui's ``Mesh.load`` does by default, ``auto_size(bound=0.9)``; our own code here).
* 8 views at elevation 0 and azimuths 0, 45, ..., 315 (``np.linspace(0, 360, 8, endpoint=False)``),
  radius 3, fovy 49 degrees, 512 x 512, albedo (unlit) on a white background - the authors' values.
* Renders and the reference are turned into uint8 as the authors do (RGBA composited on white in
  float, then ``x * 255`` truncated), then encoded by CLIP's own preprocessing.
* Score of an object = mean over the 8 views of the cosine between the L2-normalised image
  embeddings of the reference and of the view. The paper's CLIP is ViT-bigG-14 trained on
  LAION-2B (``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``), which is open_clip's
  ``ViT-bigG-14`` / ``laion2b_s39b_b160k``.

Folder mode pairs by file stem: every image ``<name>.png`` (or .jpg/.jpeg/.webp) in ``--refs``
with ``<name>.glb`` in ``--meshes`` (else ``<name>.obj``). ``batch.py`` names outputs after the
input's stem, so ``--refs inputs/ --meshes <batch --out>`` pairs ``cat_rgba.png`` with
``cat_rgba.glb``. References without a mesh are reported as missing; meshes without a reference
(e.g. coarse ``*_mesh.glb``) are ignored.

Usage::

    python eval_clip.py --refs data/images --meshes logs/            # table + logs/clip_similarity.json
    python eval_clip.py --ref cat_rgba.png --mesh logs/cat_rgba.glb
    python eval_clip.py ... --pretrained /models/open_clip_bigG.bin    # offline: a local checkpoint
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from core.device import resolve_device
from core.errors import UserError, exit_code
from core.images import IMAGE_SUFFIXES
from pipeline.previews import MESH_SUFFIXES, load_renderable, normalize_renderable, render_views

__all__ = [
    "EvalProtocol",
    "ClipImageEncoder",
    "load_clip",
    "load_reference",
    "render_mesh_views",
    "clip_similarity",
    "pair_files",
    "evaluate",
    "main",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
]

log = logging.getLogger("eval_clip")

DEFAULT_MODEL = "ViT-bigG-14"
DEFAULT_PRETRAINED = "laion2b_s39b_b160k"


@dataclass(frozen=True)
class EvalProtocol:
    """Render settings of the evaluation (defaults: the authors' ``scripts/cal_sim.py``)."""

    n_views: int = 8  # azimuths 0, 360/n, ...
    elevation: float = 0.0  # degrees (DreamGaussian sign)
    radius: float = 3.0  # camera distance after normalisation
    fovy: float = 49.0  # degrees
    size: int = 512  # render resolution (pixels)
    bound: float = 0.9  # mesh normalised into [-bound, bound]^3 (kiui default)
    backend: str = "auto"  # mesh renderer backend

    def azimuths(self) -> list[float]:
        """Azimuths in degrees; the authors cast ``linspace(0, 360, n, endpoint=False)`` to int."""
        return [float(int(a)) for a in np.linspace(0, 360, self.n_views, endpoint=False)]


def _to_uint8_trunc(rgb: np.ndarray) -> np.ndarray:
    """Float ``[...,3]`` in [0,1] -> uint8 by truncation, as the authors' ``(x * 255).astype(uint8)``."""
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


class ClipImageEncoder:
    """An open_clip model's image tower with its evaluation preprocessing."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, device: torch.device, name: str) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.device = device
        self.name = name

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 images ``[B,H,W,3]`` (or a list of ``[H,W,3]``) -> L2-normalised embeddings float ``[B,D]`` (CPU)."""
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(np.asarray(im))) for im in images])
        dtype = next(self.model.parameters()).dtype
        feats = self.model.encode_image(batch.to(self.device, dtype)).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu()


def load_clip(
    model_name: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    precision: str = "fp32",
    model_config: str | os.PathLike | None = None,
    cache_dir: str | None = None,
) -> ClipImageEncoder:
    """Build an open_clip model once: ``pretrained`` is a tag, a local checkpoint file, or ``none`` (random).

    ``model_config``: a JSON file with an open_clip architecture (``embed_dim``, ``vision_cfg``,
    ``text_cfg``) registered under its file stem, so ``model_name`` can name it (tests use a tiny one).
    ``model_name`` may also be ``local-dir:/folder`` or ``hf-hub:org/repo`` (open_clip schemas).
    Raises :class:`UserError` when weights cannot be fetched or do not fit the model.
    """
    import open_clip

    if model_config is not None:
        model_config = Path(model_config)
        if not model_config.is_file():
            raise UserError(f"--model-config {model_config}: no such file")
        open_clip.add_model_config(model_config)
    if pretrained is not None and pretrained.lower() in ("", "none"):
        pretrained = None
        log.warning(
            "CLIP %s with RANDOM weights (--pretrained none): scores are meaningless except in tests",
            model_name,
        )
    dev = resolve_device(device)
    has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
    if not has_schema and open_clip.get_model_config(model_name.replace("/", "-")) is None:
        raise UserError(
            f"unknown open_clip model '{model_name}' (see open_clip.list_models(), or pass "
            f"--model-config FILE.json for a custom architecture)"
        )
    if pretrained is not None and not has_schema and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise UserError(
                f"--pretrained '{pretrained}' is neither a file nor a tag of {model_name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
    if pretrained is not None and not has_schema:
        if os.path.isfile(pretrained):
            _check_checkpoint_file(pretrained, model_name)
        else:
            _check_hub_weights(
                open_clip.get_pretrained_cfg(model_name, pretrained), model_name, pretrained, cache_dir
            )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=None if has_schema else pretrained,
            device=dev,
            precision=precision,
            cache_dir=cache_dir,
        )
    # open_clip wraps download errors in RuntimeError; a checkpoint of another model gives KeyError.
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if pretrained is not None and os.path.isfile(pretrained):
            raise UserError(f"cannot load CLIP checkpoint {pretrained} into {model_name}: {first}") from e
        raise _offline_hint(model_name, str(pretrained), first) from e
    name = f"{model_name}/{pretrained}" if pretrained else model_name
    return ClipImageEncoder(model, preprocess, dev, name)


def _offline_hint(model_name: str, pretrained: str, why: str) -> UserError:
    return UserError(
        f"cannot load CLIP weights '{model_name}' / '{pretrained}' ({why}); on an offline machine "
        f"download open_clip_pytorch_model.bin of that model elsewhere (for the default: Hugging Face "
        f"laion/CLIP-ViT-bigG-14-laion2B-39B-b160k) and pass --pretrained /path/to/that/file"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub's host does not answer within ``timeout`` s."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _check_hub_weights(cfg: dict, model_name: str, pretrained: str, cache_dir: str | None) -> None:
    """Fail at once (no download retries) when the tag's weights are neither cached nor reachable."""
    hub = (cfg or {}).get("hf_hub", "")
    if not hub:
        return  # a plain URL download: open_clip's own cache and error apply
    from huggingface_hub import try_to_load_from_cache

    repo, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if any(isinstance(try_to_load_from_cache(repo, n, cache_dir=cache_dir), str) for n in names):
        return
    if not _hub_reachable():
        raise _offline_hint(
            model_name, pretrained, f"not cached and the Hugging Face hub is unreachable: {repo}"
        )


def _check_checkpoint_file(path: str, model_name: str) -> None:
    """A local checkpoint must look like one (zip/pickle torch file or safetensors) before the model is built."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    is_zip = head.startswith(b"PK\x03\x04")
    is_pickle = head[:1] == b"\x80"
    is_safetensors = len(head) >= 9 and head[8:9] == b"{"
    if not (is_zip or is_pickle or is_safetensors):
        raise UserError(
            f"cannot load CLIP checkpoint {path} into {model_name}: not a PyTorch or safetensors file"
        )


def load_reference(path: str | os.PathLike) -> np.ndarray:
    """Reference image -> uint8 ``[H,W,3]``: RGBA composited on white in float, truncated (authors' code)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
                return _to_uint8_trunc(rgb)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: cannot read image ({e})") from e


def render_mesh_views(
    path: str | os.PathLike, protocol: EvalProtocol = EvalProtocol(), device: str = "auto"
) -> np.ndarray:
    """Load and normalise a mesh, render the protocol's views on white -> uint8 ``[V,H,W,3]``."""
    from core.cameras import orbit_cameras

    kind, mesh = load_renderable(path, resolve_device(device))
    if kind != "mesh":
        raise UserError(f"{path}: eval_clip needs a mesh (.glb/.obj)")
    mesh = normalize_renderable(kind, mesh, bound=protocol.bound)
    cams = orbit_cameras(
        protocol.elevation,
        protocol.azimuths(),
        radius=protocol.radius,
        fovy=protocol.fovy,
        height=protocol.size,
    )
    rgb = render_views(kind, mesh, cams, bg=(1.0, 1.0, 1.0), chunk=protocol.n_views, backend=protocol.backend)
    return _to_uint8_trunc(rgb.permute(0, 2, 3, 1).numpy())


def clip_similarity(
    encoder: ClipImageEncoder, ref: np.ndarray, views: np.ndarray
) -> tuple[float, list[float]]:
    """Mean and per-view cosine between a reference uint8 ``[H,W,3]`` and views uint8 ``[V,H,W,3]``; each in [-1,1]."""
    feats = encoder.encode([ref, *views])  # one batched forward for the reference and all views
    cos = (feats[1:] @ feats[0]).clamp(-1.0, 1.0)
    return float(cos.mean()), [float(c) for c in cos]


def pair_files(refs_dir: str | os.PathLike, meshes_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Pair ``refs_dir/<name>.<img>`` with ``meshes_dir/<name>.glb`` (else ``.obj``), sorted by name.

    Returns ``(pairs, missing)``: dicts with ``name``, ``ref``, ``mesh`` (missing: no ``mesh``).
    """
    refs_dir, meshes_dir = Path(refs_dir), Path(meshes_dir)
    for d, flag in ((refs_dir, "--refs"), (meshes_dir, "--meshes")):
        if not d.is_dir():
            raise UserError(f"{flag} {d}: not a folder")
    pairs, missing = [], []
    refs = sorted(p for p in refs_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for ref in refs:
        mesh = next(
            (
                meshes_dir / f"{ref.stem}{s}"
                for s in MESH_SUFFIXES
                if (meshes_dir / f"{ref.stem}{s}").is_file()
            ),
            None,
        )
        (pairs if mesh else missing).append(
            {"name": ref.stem, "ref": str(ref), **({"mesh": str(mesh)} if mesh else {})}
        )
    return pairs, missing


def evaluate(
    pairs: list[dict],
    encoder: ClipImageEncoder,
    protocol: EvalProtocol = EvalProtocol(),
    device: str = "auto",
    render_fn: Callable[[str, EvalProtocol], np.ndarray] | None = None,
    save_renders: str | os.PathLike | None = None,
) -> list[dict]:
    """Score each pair; returns one dict per object (``score`` in [-1,1], ``per_view``, ``seconds``).

    An object whose mesh cannot be loaded or rendered gets ``score: None`` and an ``error`` and does
    not stop the others. ``render_fn(mesh_path, protocol) -> uint8 [V,H,W,3]`` replaces the renderer
    (tests); ``save_renders`` writes each object's views as ``<name>_clip_views.png`` there.
    """
    from core.preview import preview_grid

    render_fn = render_fn or (lambda p, proto: render_mesh_views(p, proto, device))
    results = []
    for pair in pairs:
        t0 = time.perf_counter()
        rec = dict(pair)
        try:
            ref = load_reference(pair["ref"])
            views = render_fn(pair["mesh"], protocol)
            rec["score"], rec["per_view"] = clip_similarity(encoder, ref, views)
            if save_renders is not None:
                preview_grid(views, Path(save_renders) / f"{pair['name']}_clip_views.png", ncols=4)
        except Exception as e:  # one broken object must not hide the others' scores
            log.error("%s: %s", pair["name"], e)
            rec["score"], rec["per_view"], rec["error"] = None, [], f"{type(e).__name__}: {e}".splitlines()[0]
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(rec)
    return results


def format_table(results: list[dict], missing: list[dict]) -> str:
    """A plain-text table of per-object scores and the mean."""
    width = max([len(r["name"]) for r in results + missing] + [7])
    lines = [f"{'object':<{width}}  clip_sim", f"{'-' * width}  --------"]
    for r in results:
        lines.append(f"{r['name']:<{width}}  " + (f"{r['score']:.4f}" if r["score"] is not None else "error"))
    for m in missing:
        lines.append(f"{m['name']:<{width}}  missing")
    scores = [r["score"] for r in results if r["score"] is not None]
    lines.append(f"{'-' * width}  --------")
    lines.append(
        f"{'mean':<{width}}  "
        + (f"{sum(scores) / len(scores):.4f}" if scores else "n/a")
        + f"   ({len(scores)} objects)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description="CLIP similarity between reference images and 8 renders of their meshes."
    )
    src = p.add_argument_group("inputs (a folder pair or one pair)")
    src.add_argument("--refs", help="folder of reference images <name>.png")
    src.add_argument("--meshes", help="folder of meshes <name>.glb (or .obj), paired by name")
    src.add_argument("--ref", help="one reference image")
    src.add_argument("--mesh", help="its mesh (.glb or .obj)")
    p.add_argument("--json", default=None, help="result file (default: <meshes>/clip_similarity.json)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"open_clip model name (default {DEFAULT_MODEL})")
    p.add_argument(
        "--pretrained",
        default=DEFAULT_PRETRAINED,
        help=f"open_clip tag, a local checkpoint file, or 'none' (default {DEFAULT_PRETRAINED})",
    )
    p.add_argument(
        "--model-config", default=None, help="JSON file of a custom open_clip architecture (name = stem)"
    )
    p.add_argument("--cache-dir", default=None, help="download cache folder for the CLIP weights")
    p.add_argument("--precision", default="fp32", help="fp32 (the authors') | fp16 | bf16")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--backend", default="auto", help="mesh renderer backend: auto | nvdiffrast | torch")
    p.add_argument("--views", type=int, default=EvalProtocol.n_views, help="views per object (default 8)")
    p.add_argument("--size", type=int, default=EvalProtocol.size, help="render size (default 512)")
    p.add_argument("--radius", type=float, default=EvalProtocol.radius, help="camera distance (default 3)")
    p.add_argument(
        "--fovy", type=float, default=EvalProtocol.fovy, help="field of view in degrees (default 49)"
    )
    p.add_argument("--elevation", type=float, default=EvalProtocol.elevation, help="elevation (default 0)")
    p.add_argument("--save-renders", default=None, help="folder for a grid of each object's evaluated views")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; prints the table, writes the JSON; exit 0, or 2 on a user error."""
    args = build_parser().parse_args(argv)
    # open_clip logs its loading steps on the root logger at INFO: keep the root at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    return exit_code(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """The evaluation behind :func:`main`; raises UserError on a usage/setup error."""
    if args.refs or args.meshes:
        if not (args.refs and args.meshes) or args.ref or args.mesh:
            raise UserError("give --refs DIR and --meshes DIR together, or --ref IMG --mesh FILE")
        pairs, missing = pair_files(args.refs, args.meshes)
        json_path = Path(args.json) if args.json else Path(args.meshes) / "clip_similarity.json"
    elif args.ref and args.mesh:
        for f in (args.ref, args.mesh):
            if not Path(f).is_file():
                raise UserError(f"{f}: no such file")
        pairs, missing = [{"name": Path(args.ref).stem, "ref": args.ref, "mesh": args.mesh}], []
        json_path = (
            Path(args.json)
            if args.json
            else Path(args.mesh).with_name(f"{Path(args.mesh).stem}_clip_similarity.json")
        )
    else:
        raise UserError("give --refs DIR --meshes DIR, or --ref IMG --mesh FILE")
    if not pairs:
        raise UserError(
            f"no reference image in {args.refs} has a mesh of the same name in {args.meshes} "
            f"(pairing rule: <name>.png <-> <name>.glb)"
        )
    protocol = EvalProtocol(
        n_views=args.views,
        elevation=args.elevation,
        radius=args.radius,
        fovy=args.fovy,
        size=args.size,
        backend=args.backend,
    )
    encoder = load_clip(
        args.model, args.pretrained, args.device, args.precision, args.model_config, args.cache_dir
    )
    results = evaluate(pairs, encoder, protocol, device=args.device, save_renders=args.save_renders)
    print(format_table(results, missing))
    scores = [r["score"] for r in results if r["score"] is not None]
    report = {
        "model": args.model,
        "pretrained": args.pretrained,
        "protocol": {**asdict(protocol), "azimuths": protocol.azimuths(), "background": "white"},
        "mean": (sum(scores) / len(scores)) if scores else None,
        "count": len(scores),
        "objects": results,
        "missing": missing,
    }
    from core.fileio import atomic_write_text

    atomic_write_text(json_path, json.dumps(report, indent=2))
    print(f"wrote {json_path}")
    return 0 if all(r["score"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
