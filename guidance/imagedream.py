"""ImageDream (image + optional text -> 4 consistent views) behind the :class:`guidance.denoiser.Denoiser` interface.

Loads the diffusers folder layout of ``ashawkey/imagedream-ipmv-diffusers`` (checkpoints.md 2.1) without
remote code: each component folder is loaded by its own class, whatever library ``model_index.json``
names (it says ``mv_unet`` for the UNet, a module shipped with the repo that we never import):
``unet`` -> our :class:`guidance.mv_unet.MultiViewUNetModel`, ``vae`` -> ``AutoencoderKL``,
``text_encoder``/``tokenizer`` -> ``CLIPTextModel``/``CLIPTokenizer``, ``image_encoder``/``feature_extractor``
-> ``CLIPVisionModel``/``CLIPImageProcessor``; the scheduler config is read as JSON.

Conditioning (checkpoints.md 2.4-2.6, spec 2.2):

* reference (once): CLIP ``hidden_states[-2]`` ``[1,257,1280]`` through the UNet's Resampler ->
  16 image-prompt tokens (uncond: the Resampler applied to zeros, not zero tokens); ``ip_img`` = VAE
  posterior sample x 0.18215 (uncond: zeros); text tokens of the prompt and of the negative prompt
  (uncond = the negative prompt, encoded like the prompt).
* per group of 4 views: 5 frames, the 5th a placeholder whose latent the UNet overwrites with ``ip_img``
  and whose camera is the zero 16-vector; its prediction is dropped. The self-attention of every
  transformer runs jointly over the 5 frames, so groups must be complete.
* CFG batch ``[uncond; cond]`` (the authors' order); any number of groups in one network call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from core.cameras import Cameras, imagedream_embedding
from core.errors import UserError
from guidance.components import (
    DTYPES,  # noqa: F401 - re-exported
    clip_pixels,
    frozen,
    load_diffusers,
    load_transformers,
    open_pipeline,
    reference_pixels,
    resolve_dtype,
    use_safetensors,
)
from guidance.cuda_graphs import GraphRunner
from guidance.denoiser import Denoiser, NoiseSource, TorchNoise
from guidance.mv_unet import MultiViewUNetModel
from guidance.schedule import DDIMSchedule

__all__ = [
    "ImageDreamCond",
    "ImageDreamDenoiser",
    "NEGATIVE_PROMPT",
    "REQUIRED_COMPONENTS",
    "FRAMES",
]

log = logging.getLogger(__name__)

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
VIEWS = 4
#: Frames per sample seen by the UNet: the 4 views plus the reference slot.
FRAMES = VIEWS + 1


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


def load_mv_unet(folder: Path, dtype: torch.dtype) -> MultiViewUNetModel:
    """Load ``unet/`` strictly: every checkpoint tensor must be consumed and every parameter present."""
    try:
        unet, info = MultiViewUNetModel.from_pretrained(
            folder, torch_dtype=dtype, use_safetensors=use_safetensors(folder), output_loading_info=True
        )
    except ValueError as exc:  # diffusers reports shape mismatches this way
        raise UserError(f"{folder} does not match MultiViewUNetModel: {str(exc).splitlines()[0]}") from None
    problems = {
        k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if problems:
        detail = "; ".join(f"{k}: {len(v)} e.g. {list(v)[:3]}" for k, v in problems.items())
        raise UserError(f"{folder} does not match MultiViewUNetModel ({detail})")
    return unet


class ImageDreamDenoiser(Denoiser):
    """ImageDream as a SIR denoiser: 4 views per group (+ the reference frame), CFG ``[uncond; cond]``."""

    def __init__(
        self,
        model: str | Path = "ashawkey/imagedream-ipmv-diffusers",
        device: str | torch.device = "cuda",
        dtype: str | torch.dtype = "fp16",
        prompt: str = "",
        negative_prompt: str = NEGATIVE_PROMPT,
        ref_latent: str = "sample",
        cuda_graph: bool = False,
        grouping: str = "auto",
        channels_last: bool = True,
        config_key: str = "model.path",
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
    ) -> None:
        """Load from a folder or Hub id. ``ref_latent``: ``sample`` (the authors) or ``mode`` for ``ip_img``.

        ``grouping``: how views form groups of 4 (``auto`` | ``consecutive`` | ``interleaved``, see
        :meth:`group_order`).
        """
        super().__init__()
        from diffusers import AutoencoderKL
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

        self.device = torch.device(device)
        self.dtype = dtype = resolve_dtype(dtype, self.device, key="model.dtype")
        if ref_latent not in ("sample", "mode"):
            raise UserError(f"model.ref_latent={ref_latent!r} must be 'sample' or 'mode'")
        self.ref_latent_mode = ref_latent
        if grouping not in ("auto", "consecutive", "interleaved"):
            raise UserError(f"grouping={grouping!r} must be auto, consecutive or interleaved")
        self.grouping = grouping
        root = open_pipeline(
            model,
            REQUIRED_COMPONENTS,
            "ImageDream",
            config_key=config_key,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        self.root = root

        self.unet = frozen(load_mv_unet(root / "unet", dtype), self.device)
        if int(self.unet.config.ip_dim) <= 0:
            raise UserError(f"{root / 'unet'} has ip_dim=0: an MVDream (text-only) UNet, not ImageDream")
        self.vae = load_diffusers(AutoencoderKL, root / "vae", dtype, self.device)
        self.text_encoder = load_transformers(CLIPTextModel, root / "text_encoder", dtype, self.device)
        self.image_encoder = load_transformers(CLIPVisionModel, root / "image_encoder", dtype, self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        self.feature_extractor = CLIPImageProcessor.from_pretrained(root / "feature_extractor")
        self.schedule = DDIMSchedule.from_file(root / "scheduler" / "scheduler_config.json")

        if channels_last and self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_size = int(self.unet.config.image_size)
        self.latent_channels = int(self.unet.config.out_channels)
        self.image_size = self.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.views_per_group = VIEWS
        self._runner = GraphRunner(self._unet_call, self.device, cuda_graph, name="ImageDream UNet")

        self.ref_elevation = 0.0
        self.ref_latent: torch.Tensor | None = None  # [1,C,h,w] scaled
        self.ip_tokens: torch.Tensor | None = None  # [2,ip_dim,D]: [uncond; cond]
        self.text: torch.Tensor | None = None  # [2,77,D]: [negative; prompt]
        self.set_prompt(prompt, negative_prompt)

    # ------------------------------------------------------------------ text / reference
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
        return self.text_encoder(ids)[0].to(self.dtype)

    def set_prompt(self, prompt: str = "", negative_prompt: str | None = None) -> None:
        """Encode the prompt and negative prompt (None keeps the current negative prompt)."""
        if negative_prompt is not None:
            self.negative_prompt = negative_prompt
        self.prompt = prompt or ""
        self.text = self.encode_text([self.negative_prompt, self.prompt])

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
        x = reference_pixels(rgb, self.image_size, self.device)
        pix = clip_pixels(self.feature_extractor, x)
        hidden = self.image_encoder(pix.to(self.device, self.dtype), output_hidden_states=True).hidden_states[
            -2
        ]
        feats = torch.cat([torch.zeros_like(hidden), hidden], dim=0)  # [2,T,W]: zeros are the uncond prompt
        self.ip_tokens = self.unet.embed_image(feats)  # [2,ip_dim,D]
        post = self.vae.encode((2 * x - 1).to(self.dtype)).latent_dist
        lat = post.mean.float()
        if self.ref_latent_mode == "sample":
            lat = lat + post.std.float() * (noise or TorchNoise()).randn(lat.shape, self.device)
        self.ref_latent = lat * self.scaling_factor  # ImageDream's ip_img IS scaled (unlike zero123)
        self.ref_elevation = float(elevation)

    # ------------------------------------------------------------------ VAE
    @torch.no_grad()
    def encode(self, images: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        """Pixels float ``[B,3,S,S]`` in [0,1] -> scaled float32 latents ``[B,C,h,w]`` (sample if ``noise``)."""
        x = (2 * images.to(self.device, torch.float32) - 1).to(self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        post = self.vae.encode(x).latent_dist
        lat = post.mean.float()
        if noise is not None:
            lat = lat + post.std.float() * noise.randn(lat.shape, self.device)
        return lat * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled float32 latents ``[B,C,h,w]`` -> images float32 ``[B,3,S,S]`` in [0,1]."""
        z = (latents / self.scaling_factor).to(self.dtype)
        img = self.vae.decode(z, return_dict=False)[0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ conditioning
    def camera_vectors(self, cams: Cameras) -> torch.Tensor:
        """Per-group camera inputs float32 ``[G*5,16]``: 4 consecutive views' vectors, then a zero row per group."""
        B = len(cams)
        if B % VIEWS:
            raise ValueError(f"ImageDream needs groups of {VIEWS} views, got {B}")
        cam = imagedream_embedding(cams).to(self.device, torch.float32).view(B // VIEWS, VIEWS, 16)
        cam = torch.cat([cam, torch.zeros_like(cam[:, :1])], dim=1)  # [G,5,16]
        return cam.reshape(-1, 16)

    def group_order(self, cams: Cameras) -> torch.Tensor | None:
        """View indices ``[B]`` listing group 0's 4 views, then group 1's, ...; None = as given.

        ImageDream was trained on 4 views 90 degrees apart. ``grouping``: ``consecutive`` takes views
        4g..4g+3; ``interleaved`` takes g, g+G, g+2G, g+3G (90 degrees apart for B evenly spaced views in
        azimuth order, e.g. 8 views 45 degrees apart); ``auto`` picks whichever keeps the azimuth gaps
        inside the groups closer to 90 degrees (consecutive on ties, so 4 views stay as they are).
        """
        B = len(cams)
        G = B // VIEWS
        if G <= 1 or self.grouping == "consecutive":
            return None
        inter = torch.arange(B).view(VIEWS, G).t().reshape(-1)
        if self.grouping == "interleaved":
            return inter

        def spread(order: torch.Tensor) -> float:
            az = torch.sort(cams.azimuth.detach().cpu().double()[order].view(G, VIEWS) % 360.0, dim=1).values
            gaps = torch.diff(torch.cat([az, az[:, :1] + 360.0], dim=1), dim=1)
            return float((gaps - 90.0).abs().sum())

        return inter if spread(inter) < spread(torch.arange(B)) - 1e-6 else None

    @torch.no_grad()
    def prepare(self, cams: Cameras) -> ImageDreamCond:
        """``[uncond; cond]`` network inputs for the B = 4G cameras, grouped by :meth:`group_order`."""
        if self.ip_tokens is None or self.ref_latent is None or self.text is None:
            raise RuntimeError("call set_reference before prepare")
        if len(cams) % VIEWS:
            raise ValueError(f"ImageDream needs groups of {VIEWS} views, got {len(cams)}")
        order = self.group_order(cams)
        if order is not None:
            cams = cams[order]
            order = order.to(self.device)
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
        x5 = torch.cat([v, torch.zeros_like(v[:, :1])], dim=1).view(G * FRAMES, *x.shape[1:])
        if self.device.type == "cuda":
            x5 = x5.contiguous(memory_format=torch.channels_last)
        return x5

    @staticmethod
    def _drop_ref(eps: torch.Tensor, G: int) -> torch.Tensor:
        """``[5G,C,h,w]`` -> the 4 views' predictions ``[4G,C,h,w]`` (group order)."""
        return eps.view(G, FRAMES, *eps.shape[1:])[:, :VIEWS].reshape(G * VIEWS, *eps.shape[1:])

    @staticmethod
    def _ungroup(eps: torch.Tensor, cond: ImageDreamCond) -> torch.Tensor:
        """``[4G,C,h,w]`` in group order -> the caller's view order."""
        if cond.order is None:
            return eps
        return torch.empty_like(eps).index_copy_(0, cond.order, eps)

    @torch.no_grad()
    def eps_cfg(self, x: torch.Tensor, t: int, cond: ImageDreamCond, scale: float) -> torch.Tensor:
        """``eps_u + scale (eps_c - eps_u)`` float32 ``[B,C,h,w]``; one UNet call at batch ``2 * 5G``."""
        G = cond.groups
        x5 = self._frames(x, cond)
        inp = torch.cat([x5, x5], dim=0)
        # float32 timesteps: exact for every integer t, and the sinusoidal embedding is float32 anyway.
        tt = torch.full((inp.shape[0],), float(t), device=self.device, dtype=torch.float32)
        eps = self._runner(x=inp, t=tt, context=cond.context, camera=cond.camera, ip_img=cond.ip_img)
        self._count("cfg", inp.shape[0])
        N = G * FRAMES
        e_u, e_c = self._drop_ref(eps[:N], G), self._drop_ref(eps[N:], G)
        return self._ungroup(torch.lerp(e_u, e_c, scale) if scale != 1.0 else e_c, cond)

    @torch.no_grad()
    def eps_uncond(self, x: torch.Tensor, t: int, cond: ImageDreamCond) -> torch.Tensor:
        """Unconditional eps float32 ``[B,C,h,w]`` (negative prompt, Resampler(0), zero ip_img); batch ``5G``."""
        G = cond.groups
        N = G * FRAMES
        x5 = self._frames(x, cond)
        tt = torch.full((N,), float(t), device=self.device, dtype=torch.float32)
        eps = self._runner(
            x=x5, t=tt, context=cond.context[:N], camera=cond.camera[:N], ip_img=cond.ip_img[:G]
        )
        self._count("uncond", N)
        return self._ungroup(self._drop_ref(eps, G), cond)
