"""The built-in denoisers, one module each (its ``load(cfg, device)`` builds the model), declared here.

:data:`BUILTIN` is what the registry lists: reading it imports no model module and no torch, so
config validation stays light; a module is imported when its model is first built. Adding a model
means adding a module with its ``load``, its entry here, a config and a test. Modules must not import
diffusers or transformers at module level.
"""

from guidance.registry import DenoiserSpec, LazyLoad

BUILTIN = (
    DenoiserSpec(
        name="zero123",
        section="model",
        load=LazyLoad("guidance.models.zero123"),
        description="Stable Zero123 / Zero123-XL: one view per call, conditioned on the input image",
    ),
    DenoiserSpec(
        name="oracle",
        section="oracle",
        load=LazyLoad("guidance.models.oracle"),
        needs_input=False,
        description="a reference mesh rendered at the cameras plays a perfect denoiser (tests, benchmarks)",
    ),
    DenoiserSpec(
        name="imagedream",
        section="model",
        load=LazyLoad("guidance.models.imagedream"),
        description="ImageDream: 4 consistent views per call, conditioned on the input image and a prompt",
    ),
    DenoiserSpec(
        name="mvdream",
        section="model",
        load=LazyLoad("guidance.models.mvdream"),
        needs_input=False,
        conditioning="text",
        description="MVDream: 4 consistent views per call from a text prompt (text to 3D)",
    ),
)
