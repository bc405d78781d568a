"""Rendering scenes of the grammar to images (deterministic by seed, 2x supersampled)."""

from __future__ import annotations

import numpy as np

from domain.grammar import (BACKGROUND_COLOURS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, caption, parse_caption,
                            sample_scene)

_SUPERSAMPLE = 2


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


def sample_scenes(seed: int, n: int, size: int = 64) -> list[tuple[Scene, int]]:
    """The n (scene, render seed) pairs ``sample_batch(seed, n, size)`` renders, in its order."""
    rng = np.random.default_rng([seed, n, size])
    out = []
    for _ in range(n):
        sc = sample_scene(rng)
        out.append((sc, int(rng.integers(2**31))))
    return out


def sample_batch(seed: int, n: int, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """n random (image, caption) pairs from the whole grammar; deterministic in (seed, n)."""
    imgs = np.empty((n, size, size, 3), np.uint8)
    caps = []
    for i, (sc, render_seed) in enumerate(sample_scenes(seed, n, size)):
        imgs[i] = render(sc, render_seed, size)
        caps.append(caption(sc))
    return imgs, caps


def render_prompt(prompt: str, seed: int, size: int = 64) -> np.ndarray:
    """A ground-truth image for a prompt of the grammar."""
    return render(parse_caption(prompt), seed, size)


