"""The procedural captioned image domain: a grammar of scenes, a renderer and the fixed prompt splits.

This is data, not a generator: the embedded model, the small CLIP and the DomainEval judge are all
trained on it, and the RL splits in ``prompts/`` are drawn from it.
"""

from domain.grammar import (BACKGROUND_COLOURS, BACKGROUNDS, COLOURS, HELD_OUT_PAIRS, POSITION_PHRASES, POSITIONS,
                            SHAPES, SIZES, TEXTURES, ObjectSpec, Scene, caption, detail_level, has_held_out,
                            parse_caption, sample_scene)
from domain.render import render, render_prompt, sample_batch, sample_scenes
from domain.splits import PROMPTS_DIR, SPLITS, load_prompts

__all__ = [
    "BACKGROUND_COLOURS", "BACKGROUNDS", "COLOURS", "HELD_OUT_PAIRS", "POSITION_PHRASES", "POSITIONS", "SHAPES",
    "SIZES", "TEXTURES", "ObjectSpec", "Scene", "caption", "detail_level", "has_held_out", "parse_caption",
    "sample_scene", "render", "render_prompt", "sample_batch", "sample_scenes", "PROMPTS_DIR", "SPLITS", "load_prompts",
]
