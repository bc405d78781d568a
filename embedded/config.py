"""Configuration dataclasses for the embedded next-scale generator.

Sizes are chosen so that the whole model (tokenizer + transformer) generates one 64x64 image with
classifier-free guidance in tens of milliseconds on a 2-core CPU, while keeping Infinity's key
property: the last two scales hold most of the tokens (here 100 of 155, 65%).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TokenizerConfig:
    """Multi-scale residual VQ tokenizer (VAR-style).

    image_size: pixels per side of the (square) RGB image.
    latent_channels: channels of the continuous latent and of each codebook vector.
    codebook_size: number of codebook entries shared by all scales.
    scales: side length of each scale's token map, coarse to fine; the last one equals the latent
        resolution (image_size / 2**len(channel_mult[1:])).
    base_channels, channel_mult: conv encoder/decoder widths; each entry after the first halves
        the resolution.
    phi_mix: how much of the shared 3x3 "phi" refinement conv is mixed into each upsampled scale
        contribution (VAR's quant_resi); 0 disables it.
    """

    image_size: int = 64
    latent_channels: int = 32
    codebook_size: int = 512
    scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 4, 4, 8)
    num_res_blocks: int = 1
    phi_mix: float = 0.5

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.channel_mult) - 1)

    def __post_init__(self) -> None:
        if self.scales[-1] != self.latent_size:
            raise ValueError(
                f"the last scale ({self.scales[-1]}) must equal the latent size "
                f"{self.latent_size} (= image_size {self.image_size} / 2**{len(self.channel_mult) - 1})"
            )
        if list(self.scales) != sorted(set(self.scales)) or self.scales[0] < 1:
            raise ValueError(f"scales must be strictly increasing positive ints, got {self.scales}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TransformerConfig:
    """Text-conditional next-scale transformer.

    width, depth, num_heads: transformer size (head dim = width / num_heads).
    mlp_ratio: hidden width of each MLP relative to `width`.
    text_buckets: size of the hashed embedding table for open_clip BPE ids (id mod buckets);
        keeps the text encoder small while accepting any prompt the open_clip tokenizer accepts.
    text_depth, text_context: layers and token length of the prompt encoder.
    prune_layers: half-open [first, last) range of blocks that run cached token pruning.
        None means "proportional to FastVAR's blocks 3..27 of 32", i.e. round(3*d/32) to
        round(28*d/32) for depth d.
    """

    width: int = 192
    depth: int = 6
    num_heads: int = 6
    mlp_ratio: float = 4.0
    text_buckets: int = 4093
    text_depth: int = 2
    text_context: int = 48
    codebook_size: int = 512
    latent_channels: int = 32
    scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    prune_layers: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        first, last = self.pruned_block_range
        if not 0 <= first <= last <= self.depth:
            raise ValueError(f"prune_layers {self.prune_layers} must satisfy 0 <= first <= last <= depth={self.depth}")

    @property
    def pruned_block_range(self) -> tuple[int, int]:
        if self.prune_layers is not None:
            return tuple(self.prune_layers)  # type: ignore[return-value]
        return round(3 * self.depth / 32), round(28 * self.depth / 32)

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn from the (guided) logits at every scale.

    temperature: softmax temperature (> 0). top_k: keep the k most likely codes (0 = all).
    """

    temperature: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no top-k), got {self.top_k}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild the embedded generator's modules."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        tok = dict(d["tokenizer"])
        tok["scales"] = tuple(tok["scales"])
        tok["channel_mult"] = tuple(tok["channel_mult"])
        tr = dict(d["transformer"])
        tr["scales"] = tuple(tr["scales"])
        if tr.get("prune_layers") is not None:
            tr["prune_layers"] = tuple(tr["prune_layers"])
        return cls(TokenizerConfig(**tok), TransformerConfig(**tr))

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.to_dict(), "transformer": self.transformer.to_dict()}
