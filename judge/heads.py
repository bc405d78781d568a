"""What the judge reads off an image: the grid cells, the class names of its heads, the attributes it checks.

The judge's network (``judge.model``) has one output head per entry below, and its scoring
(``judge.checks``) checks a prompt's attributes by the same names, so both read them from here.
"""

from __future__ import annotations

from domain import BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES

#: the attributes a prompt is checked on, in report order (``judge.checks``)
ATTRIBUTES = ("position", "shape", "colour", "texture", "size", "background")
CELLS: tuple[str, ...] = tuple(POSITIONS)  # the 3x3 grid, row-major from the top left
#: the object heads, per grid cell: name -> class names (index = class id)
OBJECT_HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES,
                                            "size": tuple(SIZES)}
#: the background heads, per image: name -> class names (index = class id)
BACKGROUND_HEADS: dict[str, tuple[str, ...]] = {"bg_kind": BACKGROUNDS, "bg_colour": tuple(BACKGROUND_COLOURS)}
