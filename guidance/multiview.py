"""What the multi-view text-conditioned models (ImageDream, MVDream) share: groups of 4 views and text.

Both were trained on 4 views 90 degrees apart whose frames attend to each other, so a batch of B = 4G
views is reordered into G groups (:func:`group_order`) and the predictions put back in the caller's
order (:func:`ungroup`). Both encode a prompt and a negative prompt with CLIP's text tower
(:meth:`MultiViewTextDenoiser.set_prompt`), once per prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.cameras import Cameras
from core.errors import UserError
from guidance.latent_diffusion import LatentDiffusionDenoiser

__all__ = ["GROUPINGS", "VIEWS", "MultiViewTextDenoiser", "group_order", "ungroup"]

#: Views per group (the frames that attend to each other).
VIEWS = 4
GROUPINGS = ("auto", "consecutive", "interleaved")


def group_order(azimuth: torch.Tensor, grouping: str = "auto") -> torch.Tensor | None:
    """View indices ``[B]`` listing group 0's 4 views, then group 1's, ...; None = as given.

    ``azimuth [B]`` in degrees. ``consecutive`` takes views 4g..4g+3; ``interleaved`` takes g, g+G,
    g+2G, g+3G (90 degrees apart for B evenly spaced views in azimuth order, e.g. 8 views 45 degrees
    apart); ``auto`` picks whichever keeps the azimuth gaps inside the groups closer to 90 degrees
    (consecutive on ties, so 4 views stay as they are).
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


def ungroup(eps: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """``[B,C,h,w]`` in group order -> the caller's view order (``order`` from :func:`group_order`)."""
    if order is None:
        return eps
    return torch.empty_like(eps).index_copy_(0, order, eps)


class MultiViewTextDenoiser(LatentDiffusionDenoiser):
    """A latent-diffusion model over groups of 4 views with a CLIP text prompt and negative prompt.

    Subclasses load ``self.text_encoder`` (:class:`guidance.nets.clip_text.ClipTextModel`) and
    ``self.tokenizer`` (:class:`guidance.nets.clip_tokenizer.ClipTokenizer`) in ``_load_encoders``.
    ``self.text`` is ``[2,77,D]``: ``[negative; prompt]``.
    """

    views_per_group = VIEWS

    def __init__(
        self, model: str | Path, prompt: str, negative_prompt: str, grouping: str, **kwargs: Any
    ) -> None:
        """``grouping``: how views form groups of 4 (see :func:`group_order`); ``kwargs``: the base's."""
        if grouping not in GROUPINGS:
            raise UserError(f"grouping={grouping!r} must be auto, consecutive or interleaved")
        self.grouping = grouping
        super().__init__(model, **kwargs)
        self.text: torch.Tensor | None = None
        self.text_encodes = 0  # how often the text encoder ran (once per prompt)
        self.prompt = ""
        self.negative_prompt = negative_prompt
        self.set_prompt(prompt, negative_prompt)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> CLIP last hidden states ``[len(texts), 77, D]`` (after the final LayerNorm)."""
        ids = self.tokenizer(texts).to(self.device)  # [N,77]: bos, tokens, eos, padding
        self.text_encodes += 1
        return self.text_encoder(ids).to(self.dtype)

    def set_prompt(self, prompt: str = "", negative_prompt: str | None = None) -> None:
        """Encode the prompt and negative prompt (None keeps the current one); a no-op when both are unchanged."""
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        prompt = prompt or ""
        if self.text is not None and prompt == self.prompt and negative == self.negative_prompt:
            return  # text embeddings are computed once per prompt
        self.prompt, self.negative_prompt = prompt, negative
        self.text = self.encode_text([negative, prompt])

    def group_views(self, cams: Cameras) -> tuple[Cameras, torch.Tensor | None]:
        """``cams`` (B = 4G views) in group order, and the order (on the device; None = as given)."""
        if len(cams) % VIEWS:
            raise ValueError(f"{self.pipeline_name} needs groups of {VIEWS} views, got {len(cams)}")
        order = group_order(cams.azimuth, self.grouping)
        if order is None:
            return cams, None
        return cams[order], order.to(self.device)
