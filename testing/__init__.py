"""Test-only helpers: tiny random checkpoints in the real Hub layouts, tiny configs of every denoiser, a toy denoiser.

Tests and benches import this package; the product packages never do.
"""
