"""The grammar of the procedural domain: vocabulary, scenes, captions and their inverse.

Deterministic, unlimited, and deliberately heterogeneous. Every caption describes 1-3 objects and a
background, from a fixed grammar::

    "a small blue striped square at the top left and a large red solid circle in the centre
     on a noisy navy background"

object  = a <size> <colour> <texture> <shape> <position phrase>
size    = small | medium | large                      (radius ~6 / 11 / 18 px on a 64 px canvas)
colour  = red | green | blue | yellow | orange | purple | white | cyan | pink
texture = solid | striped | dotted | checkered | outlined   (patterns with a 4 px period)
shape   = circle | square | triangle | star | ring | cross | diamond
position= 3x3 grid: top left, top, top right, left, centre, right, bottom left, bottom, bottom right
background = plain | gradient | noisy, in gray | beige | navy | brown | black

Why heterogeneous: a large solid shape on a plain background is almost entirely low-frequency and
survives heavy late-scale pruning; small textured objects on a noisy background live in the fine
scales and do not. That spread is what lets a per-prompt pruning schedule beat a fixed one.

The RL prompt splits (prompts/*.txt) hold out some (shape, colour) pairs: every test prompt has
an object with a held-out pair and no train/val prompt has one. The generator and CLIP are
pretrained on the whole grammar (``sample_batch``), like a foundation model that has seen
everything; the held-out split tests the *agent's* generalisation to unseen prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (240, 220, 40),
    "orange": (245, 140, 20), "purple": (150, 60, 190), "white": (245, 245, 245), "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
}
SIZES: dict[str, float] = {"small": 6.0, "medium": 11.0, "large": 18.0}
POSITIONS: dict[str, tuple[float, float]] = {  # (x, y) as fractions of the canvas
    "top left": (0.22, 0.22), "top": (0.5, 0.22), "top right": (0.78, 0.22),
    "left": (0.22, 0.5), "centre": (0.5, 0.5), "right": (0.78, 0.5),
    "bottom left": (0.22, 0.78), "bottom": (0.5, 0.78), "bottom right": (0.78, 0.78),
}
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "outlined")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noisy")
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128), "beige": (205, 190, 150), "navy": (25, 35, 90), "brown": (95, 65, 40),
    "black": (18, 18, 18),
}
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("circle", "purple"), ("square", "orange"), ("triangle", "cyan"), ("star", "green"),
    ("ring", "red"), ("cross", "yellow"), ("diamond", "white"), ("star", "pink"),
})


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    position: str
    texture: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]
    background: str
    background_colour: str


# ---- sampling and captions --------------------------------------------------------------------
def sample_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, 4))
    positions = rng.choice(len(POSITIONS), size=n, replace=False)
    pos_names = list(POSITIONS)
    objs = tuple(ObjectSpec(shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
                            size=list(SIZES)[rng.integers(len(SIZES))], position=pos_names[int(p)],
                            texture=TEXTURES[rng.integers(len(TEXTURES))]) for p in positions)
    return Scene(objs, BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
                 list(BACKGROUND_COLOURS)[rng.integers(len(BACKGROUND_COLOURS))])


def _object_phrase(o: ObjectSpec) -> str:
    return f"a {o.size} {o.colour} {o.texture} {o.shape} {POSITION_PHRASES[o.position]}"


def caption(scene: Scene) -> str:
    parts = [_object_phrase(o) for o in scene.objects]
    objs = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{objs} on a {scene.background} {scene.background_colour} background"


def _expect(word: str, allowed, what: str, text: str) -> str:
    if word not in allowed:
        raise ValueError(f"unknown {what} {word!r} in prompt {text!r}; allowed: {', '.join(allowed)}")
    return word


def parse_caption(text: str) -> Scene:
    """Inverse of ``caption``; ValueError naming the first word outside the grammar."""
    t = " ".join(text.strip().lower().split())
    head, sep, bg = t.rpartition(" on a ")
    if not sep or not bg.endswith(" background"):
        raise ValueError(f"prompt {text!r} must end with 'on a <plain|gradient|noisy> <colour> background'")
    bg_words = bg[: -len(" background")].split()
    if len(bg_words) != 2:
        raise ValueError(f"bad background phrase {bg!r} in {text!r}: expected '<kind> <colour> background'")
    kind = _expect(bg_words[0], BACKGROUNDS, "background", text)
    bcol = _expect(bg_words[1], list(BACKGROUND_COLOURS), "background colour", text)
    chunks = head.replace(" and ", ", ").split(", ")
    if not 1 <= len(chunks) <= 3:
        raise ValueError(f"prompt {text!r} must describe 1 to 3 objects, found {len(chunks)}")
    phrase_to_pos = {v: k for k, v in POSITION_PHRASES.items()}
    objs = []
    for ch in chunks:
        w = ch.split()
        if len(w) < 7 or w[0] != "a":
            raise ValueError(f"bad object phrase {ch!r} in {text!r}: expected 'a <size> <colour> <texture> <shape> <position>'")
        size = _expect(w[1], list(SIZES), "size", text)
        colour = _expect(w[2], list(COLOURS), "colour", text)
        texture = _expect(w[3], TEXTURES, "texture", text)
        shape = _expect(w[4], SHAPES, "shape", text)
        pos_phrase = " ".join(w[5:])
        if pos_phrase not in phrase_to_pos:
            raise ValueError(f"unknown position {pos_phrase!r} in {text!r}; allowed: {', '.join(POSITION_PHRASES.values())}")
        objs.append(ObjectSpec(shape, colour, size, phrase_to_pos[pos_phrase], texture))
    if len({o.position for o in objs}) != len(objs):
        raise ValueError(f"two objects share a position in {text!r}")
    return Scene(tuple(objs), kind, bcol)


def has_held_out(scene: Scene) -> bool:
    return any((o.shape, o.colour) in HELD_OUT_PAIRS for o in scene.objects)


def detail_level(scene: Scene) -> float:
    """Heuristic in [0, 1] of how much fine detail a scene needs: small, textured objects on a
    noisy background score high; one large solid shape on a plain background scores low."""
    size_f = {"small": 1.0, "medium": 0.65, "large": 0.35}
    tex_f = {"solid": 0.1, "outlined": 0.6, "striped": 1.0, "dotted": 1.0, "checkered": 1.0}
    obj = float(np.mean([size_f[o.size] * tex_f[o.texture] for o in scene.objects]))
    bg = {"plain": 0.0, "gradient": 0.1, "noisy": 0.35}[scene.background]
    return float(np.clip(0.65 * obj + bg, 0.0, 1.0))
