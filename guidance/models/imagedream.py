"""ImageDream (image + optional text -> 4 consistent views) behind the Denoiser interface (``guidance=imagedream``).

Loads the diffusers folder layout of ``ashawkey/imagedream-ipmv-diffusers`` without remote code and
without diffusers/transformers: each component folder is loaded by our own pure-torch class, whatever
library ``model_index.json`` names (it says ``mv_unet`` for the UNet, a module shipped with the repo that
we never import): ``unet`` -> :class:`guidance.mv_unet.MultiViewUNetModel`, ``vae`` ->
:mod:`guidance.nets.vae`, ``text_encoder``/``tokenizer`` -> :mod:`guidance.nets.clip_text` /
:mod:`guidance.nets.clip_tokenizer`, ``image_encoder``/``feature_extractor`` -> :mod:`guidance.nets.clip_vision`
(a tower without projection); the scheduler config is read as JSON.

Conditioning:

* reference (once): CLIP ``hidden_states[-2]`` ``[1,257,1280]`` through the UNet's Resampler ->
  16 image-prompt tokens (uncond: the Resampler applied to zeros, not zero tokens); ``ip_img`` = VAE
  posterior sample x 0.18215 (uncond: zeros); text tokens of the prompt and of the negative prompt
  (uncond = the negative prompt, encoded like the prompt).
* per group of 4 views: 5 frames, the 5th a placeholder whose latent the UNet overwrites with ``ip_img``
  and whose camera is the zero 16-vector; its prediction is dropped. The views' cameras are the
  16-vectors of :func:`imagedream_embedding`. The self-attention of every transformer runs jointly
  over the 5 frames, so groups must be complete.
* CFG batch ``[uncond; cond]`` (the authors' order); any number of groups in one network call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.cameras import Cameras
from core.errors import UserError
from guidance.denoiser import NoiseSource
from guidance.latent_diffusion import pipeline_options
from guidance.multiview import VIEWS, MultiViewTextDenoiser, ungroup
from guidance.options import prompt_options
from guidance.registry import get

if TYPE_CHECKING:
    from guidance.mv_unet import MultiViewUNetModel
    from guidance.nets.clip_text import ClipTextModel
    from guidance.nets.clip_tokenizer import ClipTokenizer
    from guidance.nets.clip_vision import ClipVisionWithProjection

__all__ = [
    "ImageDreamCond",
    "ImageDreamDenoiser",
    "imagedream_embedding",
    "load_mv_unet",
    "load_text_encoders",
    "DEFAULT_ID",
    "NEGATIVE_PROMPT",
    "REQUIRED_COMPONENTS",
    "FRAMES",
]

DEFAULT_ID = "ashawkey/imagedream-ipmv-diffusers"
#: MicroDreamer's ``configs/imagedream.yaml`` negative prompt (MD @597e373, line 6).
NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
    "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
    "dehydrated, bad proportions"
)
REQUIRED_COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "tokenizer",
    "image_encoder",
    "feature_extractor",
    "scheduler",
)
#: Frames per sample seen by the UNet: the 4 views plus the reference slot.
FRAMES = VIEWS + 1


def imagedream_embedding(cams: Cameras) -> torch.Tensor:
    """ImageDream camera vectors ``[V,16]``: OpenGL c2w moved to its z-up world, unit translation.

    Rows (x, y, z) of the pose become (x, -z, y); the translation is scaled to unit length; the
    4x4 matrix is flattened row-major.
    """
    c2w = cams.c2w[:, [0, 2, 1, 3], :].clone()
    c2w[:, 1] *= -1
    t = c2w[:, :3, 3]
    c2w[:, :3, 3] = t / (t.norm(dim=-1, keepdim=True) + 1e-8)
    return c2w.reshape(len(cams), 16)


@dataclass
class ImageDreamCond:
    """Network inputs for G groups, all ``[uncond; cond]`` with ``N = G * 5`` rows per half.

    ``camera [2N,16]``, ``context [2N,77+ip,D]`` (text tokens followed by image-prompt tokens),
    ``ip_img [2G,C,h,w]``; the uncond half is the first ``N`` (resp. ``G``) rows. ``order [4G]``: the
    caller's view index of each group slot (group g = slots 4g..4g+3), None when it is the identity.
    """

    camera: torch.Tensor
    context: torch.Tensor
    ip_img: torch.Tensor
    groups: int
    order: torch.Tensor | None = None


def load_mv_unet(folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> MultiViewUNetModel:
    """Load ``unet/`` strictly (see :func:`guidance.mv_unet.load_mv_unet`): a one-line UserError on any mismatch."""
    from guidance.mv_unet import load_mv_unet as load

    return load(folder, dtype, device)


def load_text_encoders(
    root: Path, dtype: torch.dtype, device: torch.device
) -> tuple[ClipTextModel, ClipTokenizer]:
    """The CLIP text tower of ``root/text_encoder`` (frozen, ``dtype`` on ``device``) and ``root/tokenizer``."""
    from guidance.nets.clip_text import load_clip_text
    from guidance.nets.clip_tokenizer import ClipTokenizer

    return load_clip_text(root / "text_encoder", dtype, device), ClipTokenizer.from_folder(root / "tokenizer")


class ImageDreamDenoiser(MultiViewTextDenoiser):
    """ImageDream as a SIR denoiser: 4 views per group (+ the reference frame), CFG ``[uncond; cond]``."""

    pipeline_name = "ImageDream"
    required_components = REQUIRED_COMPONENTS
    latent_size_key = "image_size"

    def __init__(
        self,
        model: str | Path = DEFAULT_ID,
        prompt: str = "",
        negative_prompt: str = NEGATIVE_PROMPT,
        grouping: str = "auto",
        **kwargs: Any,
    ) -> None:
        """Load from a folder or Hub id; ``kwargs``: see :class:`LatentDiffusionDenoiser`.

        ``ref_latent`` (``sample`` | ``mode``) is ``ip_img``. ``grouping``: how views form groups of 4
        (``auto`` | ``consecutive`` | ``interleaved``, see :func:`guidance.multiview.group_order`).
        """
        super().__init__(model, prompt, negative_prompt, grouping, **kwargs)
        self.ip_tokens: torch.Tensor | None = None  # [2,ip_dim,D]: [uncond; cond]

    def _load_unet(self, folder: Path) -> Any:
        unet = load_mv_unet(folder, self.dtype, self.device)
        if int(unet.config.ip_dim) <= 0:
            raise UserError(f"{folder} has ip_dim=0: an MVDream (text-only) UNet, not ImageDream")
        return unet

    def _load_encoders(self, root: Path) -> None:
        from guidance.nets.clip_vision import load_clip_vision

        self.text_encoder, self.tokenizer = load_text_encoders(root, self.dtype, self.device)
        self.image_encoder: ClipVisionWithProjection = load_clip_vision(
            root / "image_encoder", self.dtype, self.device, projection=False
        )

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def set_reference(
        self, rgb: torch.Tensor, elevation: float, noise: NoiseSource | None = None, prompt: str | None = None
    ) -> None:
        """Image conditioning of ``rgb`` float ``[3,H,W]`` in [0,1] (on white), computed once.

        ``elevation`` is only recorded: ImageDream's cameras are absolute poses, the reference frame
        has no camera. ``noise``: the posterior-sample draw of ``ip_img`` (default: global RNG).
        ``prompt``: re-encode the text prompt as well.
        """
        if prompt is not None:
            self.set_prompt(prompt)
        x, pix = self._reference_inputs(rgb)
        hidden = self.image_encoder.hidden_state(pix, -2)  # [1,257,1280]: the 2nd-to-last layer's output
        feats = torch.cat([torch.zeros_like(hidden), hidden], dim=0)  # [2,T,W]: zeros are the uncond prompt
        self.ip_tokens = self.unet.embed_image(feats)  # [2,ip_dim,D]
        # ImageDream's ip_img IS scaled (unlike zero123's concat latent)
        self.ref_latent = self._reference_latent(x, noise) * self.scaling_factor
        self.ref_elevation = float(elevation)

    # ------------------------------------------------------------------ conditioning
    def camera_vectors(self, cams: Cameras) -> torch.Tensor:
        """Per-group camera inputs float32 ``[G*5,16]``: 4 consecutive views' vectors, then a zero row per group."""
        B = len(cams)
        if B % VIEWS:
            raise ValueError(f"ImageDream needs groups of {VIEWS} views, got {B}")
        cam = imagedream_embedding(cams).to(self.device, torch.float32).view(B // VIEWS, VIEWS, 16)
        cam = torch.cat([cam, torch.zeros_like(cam[:, :1])], dim=1)  # [G,5,16]
        return cam.reshape(-1, 16)

    @torch.no_grad()
    def prepare(self, cams: Cameras) -> ImageDreamCond:
        """``[uncond; cond]`` network inputs for the B = 4G cameras, grouped by :meth:`group_views`."""
        if self.ip_tokens is None or self.ref_latent is None or self.text is None:
            raise RuntimeError("call set_reference before prepare")
        cams, order = self.group_views(cams)
        cam = self.camera_vectors(cams).to(self.dtype)
        G = cam.shape[0] // FRAMES
        N = G * FRAMES
        ctx = torch.cat([self.text, self.ip_tokens.to(self.dtype)], dim=1)  # [2,77+ip,D]
        context = ctx.repeat_interleave(N, dim=0)  # [2N,...]: uncond rows first
        ref = self.ref_latent.to(self.dtype).expand(G, -1, -1, -1)
        ip_img = torch.cat([torch.zeros_like(ref), ref], dim=0)
        return ImageDreamCond(
            camera=torch.cat([cam, cam], dim=0), context=context, ip_img=ip_img, groups=G, order=order
        )

    def _unet_call(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        camera: torch.Tensor,
        ip_img: torch.Tensor,
    ) -> torch.Tensor:
        """One UNet evaluation on prepared inputs; the context already holds the image-prompt tokens."""
        ip_dim = int(self.unet.config.ip_dim)
        return self.unet(
            x,
            t,
            context[:, :-ip_dim],
            camera=camera,
            num_frames=FRAMES,
            ip_tokens=context[:, -ip_dim:],
            ip_img=ip_img,
        )

    def _frames(self, x: torch.Tensor, cond: ImageDreamCond) -> torch.Tensor:
        """Latents ``[4G,C,h,w]`` (caller's order) -> ``[5G,C,h,w]`` grouped, UNet dtype, zero 5th frame per group."""
        G = cond.groups
        if x.shape[0] != G * VIEWS:
            raise ValueError(f"latent batch {x.shape[0]} does not match the {G} prepared groups")
        if cond.order is not None:
            x = x[cond.order]
        v = x.to(self.dtype).view(G, VIEWS, *x.shape[1:])
        # The zero latent is a placeholder: the UNet writes ip_img there.
        return self._nhwc(torch.cat([v, torch.zeros_like(v[:, :1])], dim=1).view(G * FRAMES, *x.shape[1:]))

    @staticmethod
    def _drop_ref(eps: torch.Tensor, G: int) -> torch.Tensor:
        """``[5G,C,h,w]`` -> the 4 views' predictions ``[4G,C,h,w]`` (group order)."""
        return eps.view(G, FRAMES, *eps.shape[1:])[:, :VIEWS].reshape(G * VIEWS, *eps.shape[1:])

    @torch.no_grad()
    def eps_cfg(self, x: torch.Tensor, t: int, cond: ImageDreamCond, scale: float) -> torch.Tensor:
        """``eps_u + scale (eps_c - eps_u)`` float32 ``[B,C,h,w]``; one UNet call at batch ``2 * 5G``."""
        G = cond.groups
        x5 = self._frames(x, cond)
        inp = torch.cat([x5, x5], dim=0)
        eps = self._runner(
            x=inp,
            t=self._timesteps(inp.shape[0], t),
            context=cond.context,
            camera=cond.camera,
            ip_img=cond.ip_img,
        )
        self._count("cfg", inp.shape[0])
        N = G * FRAMES
        e_u, e_c = self._drop_ref(eps[:N], G), self._drop_ref(eps[N:], G)
        return ungroup(torch.lerp(e_u, e_c, scale) if scale != 1.0 else e_c, cond.order)

    @torch.no_grad()
    def eps_uncond(self, x: torch.Tensor, t: int, cond: ImageDreamCond) -> torch.Tensor:
        """Unconditional eps float32 ``[B,C,h,w]`` (negative prompt, Resampler(0), zero ip_img); batch ``5G``."""
        G = cond.groups
        N = G * FRAMES
        x5 = self._frames(x, cond)
        eps = self._runner(
            x=x5,
            t=self._timesteps(N, t),
            context=cond.context[:N],
            camera=cond.camera[:N],
            ip_img=cond.ip_img[:G],
        )
        self._count("uncond", N)
        return ungroup(self._drop_ref(eps, G), cond.order)


def load(cfg: Any, device: torch.device) -> ImageDreamDenoiser:
    """``ImageDreamDenoiser`` from ``model.*`` (+ ``model.negative_prompt``) and the prompt (``prompt`` or the caption file)."""
    return ImageDreamDenoiser(device=device, **prompt_options(cfg), **pipeline_options(cfg, DEFAULT_ID))


SPEC = get("imagedream")  # declared in guidance/models/__init__.py (BUILTIN)
