"""A procedural captioned image domain: deterministic, unlimited, and deliberately heterogeneous.

Every caption describes 1-3 objects and a background, from a fixed grammar::

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
from pathlib import Path

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
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
SPLITS = ("train", "val", "test")
_SUPERSAMPLE = 2


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


# ---- rendering ----------------------------------------------------------------------------------
_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _GRIDS:
        y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
        _GRIDS[n] = (x, y)
    return _GRIDS[n]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    if shape == "cross":
        a, b = np.abs(dx), np.abs(dy)
        w = 0.34 * r
        return ((a <= w) & (b <= r)) | ((b <= w) & (a <= r))
    if shape == "triangle":  # pointing up, centred on its centroid
        h = 1.5 * r
        top = dy >= -r
        bottom = dy <= 0.5 * r
        side = np.abs(dx) <= (dy + r) / h * (0.87 * r * 2) / 2 * 1.15
        return top & bottom & side
    if shape == "star":
        ang = np.arctan2(dy, dx) + np.pi / 2
        lim = r * (0.55 + 0.45 * np.cos(5 * ang))
        return dx * dx + dy * dy <= lim * lim
    raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")


def _texture(texture: str, x: np.ndarray, y: np.ndarray, s: int) -> np.ndarray:
    """Where the secondary colour goes (bool), pattern period 4 px of the final image."""
    p = 4 * s
    if texture == "striped":
        return ((x + y) % p) < p / 2
    if texture == "dotted":
        cx, cy = x % p - p / 2, y % p - p / 2
        return cx * cx + cy * cy <= (p * 0.28) ** 2
    if texture == "checkered":
        return ((x // (p / 2)).astype(np.int32) + (y // (p / 2)).astype(np.int32)) % 2 == 1
    return np.zeros_like(x, dtype=bool)


def _secondary(colour: np.ndarray) -> np.ndarray:
    return np.where(colour.mean() > 140, colour * 0.3, np.minimum(255, colour * 0.35 + 150))


def render(scene: Scene, seed: int, size: int = 64) -> np.ndarray:
    """Scene -> uint8 (size, size, 3). ``seed`` drives position jitter and background noise only."""
    rng = np.random.default_rng(seed)
    s = _SUPERSAMPLE
    n = size * s
    x, y = _grid(n)
    bg = np.asarray(BACKGROUND_COLOURS[scene.background_colour], np.float32)
    img = np.empty((n, n, 3), np.float32)
    img[:] = bg
    if scene.background == "gradient":
        t = (y / n)[..., None]
        img = bg * (0.45 + 0.9 * t) + 30 * (1 - t)
    scale = size / 64.0
    for o in scene.objects:
        fx, fy = POSITIONS[o.position]
        cx = (fx * size + rng.uniform(-2, 2) * scale) * s
        cy = (fy * size + rng.uniform(-2, 2) * scale) * s
        r = SIZES[o.size] * scale * s
        dx, dy = x - cx, y - cy
        col = np.asarray(COLOURS[o.colour], np.float32)
        mask = _shape_mask(o.shape, dx, dy, r)
        if o.texture == "outlined":
            inner = _shape_mask(o.shape, dx, dy, max(r - 2.2 * s * max(scale, 0.5), 0.5))
            if o.shape == "ring":
                inner = _shape_mask("circle", dx, dy, r - 2.2 * s) & ~_shape_mask("circle", dx, dy, 0.55 * r + 2.2 * s)
            img[mask & ~inner] = col
        else:
            img[mask] = col
            sec = mask & _texture(o.texture, x, y, s)
            img[sec] = _secondary(col)
    out = img.reshape(size, s, size, s, 3).mean(axis=(1, 3))
    if scene.background == "noisy":
        covered = np.zeros((n, n), bool)
        for o in scene.objects:  # noise only on the background, objects stay clean
            fx, fy = POSITIONS[o.position]
            covered |= _shape_mask(o.shape, x - fx * n, y - fy * n, SIZES[o.size] * scale * s + 3 * s)
        bgmask = ~covered.reshape(size, s, size, s).any(axis=(1, 3))
        # 4 px blotches, bilinearly smoothed: busy, high-frequency texture at the token scale that a
        # tokenizer can still represent (i.i.d. per-pixel noise would only be averaged away)
        coarse = rng.normal(0, 30, (size // 4 + 1, size // 4 + 1, 3)).astype(np.float32)
        noise = _bilinear_up(coarse, size)
        out = out + bgmask[..., None] * noise
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _bilinear_up(coarse: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) -> (size, size, 3), bilinear, cell centres every size / (h - 1) pixels."""
    h = coarse.shape[0]
    t = np.linspace(0, h - 1, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int32), h - 2)
    f = (t - i0)[:, None, None]
    rows = coarse[i0] * (1 - f) + coarse[i0 + 1] * f
    fc = (t - i0)[None, :, None]
    return rows[:, i0] * (1 - fc) + rows[:, i0 + 1] * fc


def sample_batch(seed: int, n: int, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """n random (image, caption) pairs from the whole grammar; deterministic in (seed, n)."""
    rng = np.random.default_rng([seed, n, size])
    imgs = np.empty((n, size, size, 3), np.uint8)
    caps = []
    for i in range(n):
        sc = sample_scene(rng)
        imgs[i] = render(sc, int(rng.integers(2**31)), size)
        caps.append(caption(sc))
    return imgs, caps


def render_prompt(prompt: str, seed: int, size: int = 64) -> np.ndarray:
    """A ground-truth image for a prompt of the grammar."""
    return render(parse_caption(prompt), seed, size)


def detail_level(scene: Scene) -> float:
    """Heuristic in [0, 1] of how much fine detail a scene needs: small, textured objects on a
    noisy background score high; one large solid shape on a plain background scores low."""
    size_f = {"small": 1.0, "medium": 0.65, "large": 0.35}
    tex_f = {"solid": 0.1, "outlined": 0.6, "striped": 1.0, "dotted": 1.0, "checkered": 1.0}
    obj = float(np.mean([size_f[o.size] * tex_f[o.texture] for o in scene.objects]))
    bg = {"plain": 0.0, "gradient": 0.1, "noisy": 0.35}[scene.background]
    return float(np.clip(0.65 * obj + bg, 0.0, 1.0))


def load_prompts(split: str | Path) -> list[str]:
    """'train' | 'val' | 'test' (prompts/<split>.txt) or a path; one prompt per line."""
    path = PROMPTS_DIR / f"{split}.txt" if str(split) in SPLITS else Path(split)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found (use one of {', '.join(SPLITS)} or a path to a file)")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts")
    if any(not ln.strip() for ln in lines):
        raise ValueError(f"prompts file {path} has blank lines (line {[i + 1 for i, ln in enumerate(lines) if not ln.strip()][0]})")
    return prompts


def has_held_out(scene: Scene) -> bool:
    return any((o.shape, o.colour) in HELD_OUT_PAIRS for o in scene.objects)
