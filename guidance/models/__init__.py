"""The built-in denoisers, one module each; every module registers its model with :func:`guidance.registry.register`.

The registry imports every module here on first use, so adding a model means adding a module (plus
a config and a test); nothing else lists the models. Modules must not import diffusers or
transformers at module level.
"""
