"""MVDream (text -> 4 consistent views) behind the Denoiser interface (``guidance=mvdream``).

Loads the diffusers folder layout of ``ashawkey/mvdream-sd2.1-diffusers`` without remote code
(``shared/reference/checkpoints.md`` 2.7): ``unet`` -> our :class:`guidance.mv_unet.MultiViewUNetModel`
(the ImageDream config without ``ip_dim``: no Resampler, no image-prompt keys, no extra frame),
``vae`` -> :mod:`guidance.nets.vae`, ``text_encoder``/``tokenizer`` -> :mod:`guidance.nets.clip_text` /
:mod:`guidance.nets.clip_tokenizer` (pure torch, no diffusers/transformers); the scheduler config is
read as JSON. There is no image encoder: the model is text-conditioned
(its spec says ``conditioning="text"``), so a run has no input image and no reference view.

Conditioning:

* text (once per prompt): CLIP last hidden states of the prompt and of the negative prompt
  (uncond = the negative prompt, encoded like the prompt), re-encoded only when either changes.
* per group of 4 views: the views' cameras as the 16-vectors of
  :func:`guidance.models.imagedream.imagedream_embedding` (MVDream and ImageDream share the camera
  convention); the self-attention of every transformer runs jointly over the 4 frames, so groups
  must be complete.
* CFG batch ``[uncond; cond]`` (the authors' order); any number of groups in one network call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.cameras import Cameras
from core.errors import UserError
from guidance.denoiser import NoiseSource
from guidance.latent_diffusion import pipeline_options
from guidance.models.imagedream import NEGATIVE_PROMPT, imagedream_embedding, load_mv_unet, load_text_encoders
from guidance.multiview import VIEWS, MultiViewTextDenoiser, group_order, ungroup
from guidance.options import prompt_options
from guidance.registry import get

__all__ = [
    "MVDreamCond",
    "MVDreamDenoiser",
    "group_order",
    "DEFAULT_ID",
    "REQUIRED_COMPONENTS",
    "VIEWS",
]

DEFAULT_ID = "ashawkey/mvdream-sd2.1-diffusers"
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class MVDreamCond:
    """Network inputs for B = 4G views, ``[uncond; cond]``: ``camera [2B,16]``, ``context [2B,77,D]``.

    The uncond half is the first ``B`` rows. ``order [B]``: the caller's view index of each group
    slot (group g = slots 4g..4g+3), None when it is the identity.
    """

    camera: torch.Tensor
    context: torch.Tensor
    order: torch.Tensor | None = None


class MVDreamDenoiser(MultiViewTextDenoiser):
    """MVDream as a SIR denoiser: groups of 4 views, text CFG ``[negative; prompt]``."""

    pipeline_name = "MVDream"
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

        ``grouping``: how views form groups of 4 (``auto`` | ``consecutive`` | ``interleaved``, see
        :func:`group_order`).
        """
        super().__init__(model, prompt, negative_prompt, grouping, **kwargs)

    def _load_unet(self, folder: Path) -> Any:
        unet = load_mv_unet(folder, self.dtype, self.device)
        if int(unet.config.ip_dim) > 0:
            raise UserError(f"{folder} has ip_dim={unet.config.ip_dim}: an ImageDream UNet, not MVDream")
        return unet

    def _load_encoders(self, root: Path) -> None:
        self.text_encoder, self.tokenizer = load_text_encoders(root, self.dtype, self.device)

    def set_reference(
        self, rgb: torch.Tensor, elevation: float, noise: NoiseSource | None = None, prompt: str | None = None
    ) -> None:
        """MVDream takes no image: ``rgb`` and ``noise`` are ignored, ``elevation`` recorded; ``prompt`` re-encodes the text."""
        if prompt is not None:
            self.set_prompt(prompt)
        self.ref_elevation = float(elevation)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def prepare(self, cams: Cameras) -> MVDreamCond:
        """``[uncond; cond]`` network inputs for the B = 4G cameras, grouped by :func:`group_order`."""
        if self.text is None:
            raise RuntimeError("call set_prompt before prepare")
        B = len(cams)
        cams, order = self.group_views(cams)
        cam = imagedream_embedding(cams).to(self.device, self.dtype)  # [B,16], group order
        context = self.text.repeat_interleave(B, dim=0)  # [2B,77,D]: negative rows first
        return MVDreamCond(camera=torch.cat([cam, cam], dim=0), context=context, order=order)

    def _unet_call(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        """One UNet evaluation on prepared inputs (rows frame-major per group of 4)."""
        return self.unet(x, t, context, camera=camera, num_frames=VIEWS)

    def _grouped(self, x: torch.Tensor, cond: MVDreamCond) -> torch.Tensor:
        """Latents ``[B,C,h,w]`` (caller's order) -> group order, UNet dtype."""
        if x.shape[0] * 2 != cond.camera.shape[0]:
            raise ValueError(
                f"latent batch {x.shape[0]} does not match the {cond.camera.shape[0] // 2} prepared views"
            )
        if cond.order is not None:
            x = x[cond.order]
        return self._nhwc(x.to(self.dtype))

    @torch.no_grad()
    def eps_cfg(self, x: torch.Tensor, t: int, cond: MVDreamCond, scale: float) -> torch.Tensor:
        """``eps_u + scale (eps_c - eps_u)`` float32 ``[B,C,h,w]``; one UNet call at batch ``2B``."""
        B = x.shape[0]
        xg = self._grouped(x, cond)
        inp = torch.cat([xg, xg], dim=0)
        eps = self._runner(x=inp, t=self._timesteps(2 * B, t), context=cond.context, camera=cond.camera)
        self._count("cfg", 2 * B)
        e_u, e_c = eps[:B].float(), eps[B:].float()
        return ungroup(torch.lerp(e_u, e_c, scale) if scale != 1.0 else e_c, cond.order)

    @torch.no_grad()
    def eps_uncond(self, x: torch.Tensor, t: int, cond: MVDreamCond) -> torch.Tensor:
        """Unconditional eps float32 ``[B,C,h,w]`` (the negative prompt); one call at batch ``B``."""
        B = x.shape[0]
        eps = self._runner(
            x=self._grouped(x, cond),
            t=self._timesteps(B, t),
            context=cond.context[:B],
            camera=cond.camera[:B],
        )
        self._count("uncond", B)
        return ungroup(eps.float(), cond.order)


def load(cfg: Any, device: torch.device) -> MVDreamDenoiser:
    """``MVDreamDenoiser`` from ``model.*`` (+ ``model.negative_prompt``) and ``prompt``."""
    return MVDreamDenoiser(device=device, **prompt_options(cfg), **pipeline_options(cfg, DEFAULT_ID))


SPEC = get("mvdream")  # declared in guidance/models/__init__.py (BUILTIN)
