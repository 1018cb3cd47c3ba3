"""The networks of the latent-diffusion checkpoints in pure torch (no diffusers, no transformers at run time).

Each module builds one network from its component folder's ``config.json`` with the checkpoint's
parameter names and loads the weights strictly (:mod:`guidance.nets.weights`):
:mod:`~guidance.nets.sd_unet` (SD 1.x/2.x UNet), :mod:`~guidance.nets.vae` (SD VAE),
:mod:`~guidance.nets.clip_vision` (CLIP vision tower + image processor). Importing this package imports
none of them.
"""
