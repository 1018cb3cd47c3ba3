"""The networks of the latent-diffusion checkpoints in pure torch (no diffusers, no transformers at run time).

Each module builds one network from its component folder's ``config.json`` with the checkpoint's
parameter names and loads the weights strictly (:mod:`guidance.nets.weights`):
:mod:`~guidance.nets.sd_unet` (SD 1.x/2.x UNet), :mod:`~guidance.nets.vae` (SD VAE),
:mod:`~guidance.nets.clip_vision` (CLIP vision tower + image processor), :mod:`~guidance.nets.clip_text`
(CLIP text tower) and :mod:`~guidance.nets.clip_tokenizer` (CLIP BPE tokenizer), the last three sharing
:mod:`~guidance.nets.clip_layers`. The multi-view UNet of ImageDream/MVDream is :mod:`guidance.mv_unet`.
Importing this package imports none of them.
"""
