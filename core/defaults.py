"""Numbers several parts share: the orbit cameras' field of view and distance (the authors' values)."""

from __future__ import annotations

__all__ = ["DEFAULT_FOVY", "DEFAULT_RADIUS"]

#: Vertical field of view of every orbit camera, degrees (Zero123's training renders).
DEFAULT_FOVY = 49.1
#: Camera distance from the origin of the stages' orbit views.
DEFAULT_RADIUS = 2.0
