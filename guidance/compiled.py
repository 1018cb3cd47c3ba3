"""``model.compile``: the UNet and the VAE coders through ``torch.compile`` (fused kernels), under CUDA graphs.

Inductor fuses the GroupNorm+SiLU and elementwise chains the eager networks launch one by one;
the compiled code is then captured by :class:`guidance.cuda_graphs.GraphRunner` as before. The
first call of each shape compiles: about 100 s per process on an H200, which Inductor's on-disk
cache did not remove in a second process (README, GPU notes), so it pays in long-lived processes.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["compile_networks"]


def compile_networks(den: Any) -> None:
    """Replace the forward of ``den.unet`` and of the VAE's encoder and decoder by compiled ones.

    The fused GroupNorm kernel (:mod:`guidance.nets.fused_norm`) is turned off first: Inductor fuses
    torch's GroupNorm+SiLU itself, and the exact path is what it was measured on.
    """
    from guidance.nets.fused_norm import set_fused_norm

    for net in (den.unet, den.vae):
        set_fused_norm(net, False)
    den.fused_norm = False
    for module in (den.unet, den.vae.encoder, den.vae.decoder):
        module.forward = torch.compile(module.forward, dynamic=False, fullgraph=False)
