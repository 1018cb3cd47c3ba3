"""MVDream (text -> 4 consistent views) behind the Denoiser interface (``guidance=mvdream``).

Loads the diffusers folder layout of ``ashawkey/mvdream-sd2.1-diffusers`` without remote code
(``shared/reference/checkpoints.md`` 2.7): ``unet`` -> our :class:`guidance.mv_unet.MultiViewUNetModel`
(the ImageDream config without ``ip_dim``: no Resampler, no image-prompt keys, no extra frame),
``vae`` -> ``AutoencoderKL``, ``text_encoder``/``tokenizer`` -> ``CLIPTextModel``/``CLIPTokenizer``;
the scheduler config is read as JSON. There is no image encoder: the model is text-conditioned
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
from guidance.components import frozen, load_transformers
from guidance.denoiser import NoiseSource
from guidance.latent_diffusion import LatentDiffusionDenoiser, pipeline_options
from guidance.models.imagedream import NEGATIVE_PROMPT, imagedream_embedding, load_mv_unet
from guidance.options import prompt_options
from guidance.registry import DenoiserSpec, register

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
#: Views per sample (MVDream has no reference frame).
VIEWS = 4
GROUPINGS = ("auto", "consecutive", "interleaved")


def group_order(azimuth: torch.Tensor, grouping: str = "auto") -> torch.Tensor | None:
    """View indices ``[B]`` listing group 0's 4 views, then group 1's, ...; None = as given.

    ``azimuth [B]`` in degrees. MVDream was trained on 4 views 90 degrees apart. ``consecutive``
    takes views 4g..4g+3; ``interleaved`` takes g, g+G, g+2G, g+3G (90 degrees apart for B evenly
    spaced views in azimuth order); ``auto`` picks whichever keeps the azimuth gaps inside the
    groups closer to 90 degrees (consecutive on ties).
    """
    B = int(azimuth.shape[0])
    G = B // VIEWS
    if G <= 1 or grouping == "consecutive":
        return None
    inter = torch.arange(B).view(VIEWS, G).t().reshape(-1)
    if grouping == "interleaved":
        return inter
    az = azimuth.detach().cpu().double() % 360.0

    def spread(order: torch.Tensor) -> float:
        a = torch.sort(az[order].view(G, VIEWS), dim=1).values
        gaps = torch.diff(torch.cat([a, a[:, :1] + 360.0], dim=1), dim=1)
        return float((gaps - 90.0).abs().sum())

    return inter if spread(inter) < spread(torch.arange(B)) - 1e-6 else None


@dataclass
class MVDreamCond:
    """Network inputs for B = 4G views, ``[uncond; cond]``: ``camera [2B,16]``, ``context [2B,77,D]``.

    The uncond half is the first ``B`` rows. ``order [B]``: the caller's view index of each group
    slot (group g = slots 4g..4g+3), None when it is the identity.
    """

    camera: torch.Tensor
    context: torch.Tensor
    order: torch.Tensor | None = None


class MVDreamDenoiser(LatentDiffusionDenoiser):
    """MVDream as a SIR denoiser: groups of 4 views, text CFG ``[negative; prompt]``."""

    pipeline_name = "MVDream"
    required_components = REQUIRED_COMPONENTS
    latent_size_key = "image_size"
    views_per_group = VIEWS

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
        if grouping not in GROUPINGS:
            raise UserError(f"grouping={grouping!r} must be auto, consecutive or interleaved")
        self.grouping = grouping
        super().__init__(model, **kwargs)
        self.text: torch.Tensor | None = None  # [2,77,D]: [negative; prompt]
        self.text_encodes = 0  # how often the text encoder ran (once per prompt)
        self.prompt = ""
        self.negative_prompt = negative_prompt
        self.set_prompt(prompt, negative_prompt)

    def _load_unet(self, folder: Path) -> Any:
        unet = frozen(load_mv_unet(folder, self.dtype), self.device)
        if int(unet.config.ip_dim) > 0:
            raise UserError(f"{folder} has ip_dim={unet.config.ip_dim}: an ImageDream UNet, not MVDream")
        return unet

    def _load_encoders(self, root: Path) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        self.text_encoder = load_transformers(CLIPTextModel, root / "text_encoder", self.dtype, self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> CLIP last hidden states ``[len(texts), 77, D]`` (after the final LayerNorm)."""
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        self.text_encodes += 1
        return self.text_encoder(ids)[0].to(self.dtype)

    def set_prompt(self, prompt: str = "", negative_prompt: str | None = None) -> None:
        """Encode the prompt and negative prompt (None keeps the current one); a no-op when both are unchanged."""
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        prompt = prompt or ""
        if self.text is not None and prompt == self.prompt and negative == self.negative_prompt:
            return  # text embeddings are computed once per prompt
        self.prompt, self.negative_prompt = prompt, negative
        self.text = self.encode_text([negative, prompt])

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
        if B % VIEWS:
            raise ValueError(f"MVDream needs groups of {VIEWS} views, got {B}")
        order = group_order(cams.azimuth, self.grouping)
        if order is not None:
            cams = cams[order]
            order = order.to(self.device)
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

    @staticmethod
    def _ungroup(eps: torch.Tensor, cond: MVDreamCond) -> torch.Tensor:
        """``[B,C,h,w]`` in group order -> the caller's view order, float32."""
        eps = eps.float()
        if cond.order is None:
            return eps
        return torch.empty_like(eps).index_copy_(0, cond.order, eps)

    @torch.no_grad()
    def eps_cfg(self, x: torch.Tensor, t: int, cond: MVDreamCond, scale: float) -> torch.Tensor:
        """``eps_u + scale (eps_c - eps_u)`` float32 ``[B,C,h,w]``; one UNet call at batch ``2B``."""
        B = x.shape[0]
        xg = self._grouped(x, cond)
        inp = torch.cat([xg, xg], dim=0)
        eps = self._runner(x=inp, t=self._timesteps(2 * B, t), context=cond.context, camera=cond.camera)
        self._count("cfg", 2 * B)
        e_u, e_c = eps[:B].float(), eps[B:].float()
        return self._ungroup(torch.lerp(e_u, e_c, scale) if scale != 1.0 else e_c, cond)

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
        return self._ungroup(eps, cond)


def load(cfg: Any, device: torch.device) -> MVDreamDenoiser:
    """``MVDreamDenoiser`` from ``model.*`` (+ ``model.negative_prompt``) and ``prompt``."""
    return MVDreamDenoiser(device=device, **prompt_options(cfg), **pipeline_options(cfg, DEFAULT_ID))


SPEC = register(
    DenoiserSpec(
        name="mvdream",
        section="model",
        load=load,
        needs_input=False,
        conditioning="text",
        description="MVDream: 4 consistent views per call from a text prompt (text to 3D)",
    )
)
