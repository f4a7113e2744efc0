"""Views: how a part lays out the positions of one axis into tiles.

A view lists the positions ``[start, stop)`` residue class by residue class (``p mod
period``), each class padded to ``class_tiles`` tiles, so a tile never straddles two classes
(docs/PLAN.md, "Views").  ``period == 1`` is the plain, identity layout.  The code lives in
:mod:`.runtime` (shared with generated kernel modules).
"""
from __future__ import annotations

from .runtime import IDENTITY, Geom, View, ViewKind

__all__ = ["View", "ViewKind", "IDENTITY", "Geom"]
