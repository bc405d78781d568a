"""Step-wise generation with an explicit state: one call per scale.

    gen = NextScaleGenerator(tokenizer, transformer, guidance=ScalarGuidance(3.0))
    state = gen.start(["a large red solid circle in the centre on a plain gray background"], seeds=[0])
    while not state.finished:
        report = gen.step(state, ratio=schedule.ratio(state.scale_index, state.num_scales, state))
    images = gen.decode(state)          # (B, 3, 64, 64) in [0, 1]

A ratio ``0 <= r < 1`` runs FastVAR's cached token pruning on a fraction r of the scale's tokens;
``r >= 1`` skips the scale (no forward pass, nothing added to the KV cache, no codes). Every random
draw of scale k comes from a generator seeded by (seed, k), so pruning or skipping one scale never
shifts the noise of another: a pruned image differs from its unpruned reference only through the
pruning itself. The protocol this implements is documented in :mod:`generator.protocol`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from embedded.config import SamplingConfig
from embedded.flops import decoder_flops, prefill_flops, schedule_flops, step_flops
from embedded.text import tokenize
from embedded.tokenizer import MultiScaleVQTokenizer, next_scale_input
from embedded.transformer import BranchContext, NextScaleTransformer
from generator.guidance import GuidanceFn, ScalarGuidance
from generator.protocol import StateProgress, StepReport, check_prompts_and_seeds, scale_seed, validate_ratio
from generator.pruning import PruningPlan, tokens_kept

__all__ = ["GenerationState", "NextScaleGenerator", "StateProgress", "StepReport", "check_prompts_and_seeds",
           "scale_seed", "validate_ratio"]


@dataclass
class GenerationState(StateProgress):
    """Everything one batch generation carries between scales. Owned by the caller.

    scale_index: the next scale to run (== num_scales when finished). f_hat_BChw: accumulated
    codes at latent resolution. codes: per-scale index maps (None for skipped / not yet run).
    last_entropy_B: mean entropy (nats) of the last sampled scale's guided token distributions.
    """

    prompts: list[str]
    seeds: list[int]
    num_scales: int
    f_hat_BChw: torch.Tensor
    cond: BranchContext
    uncond: BranchContext
    scale_index: int = 0
    codes: list[torch.Tensor | None] = field(default_factory=list)
    last_entropy_B: torch.Tensor | None = None
    reports: list[StepReport] = field(default_factory=list)
    flops_prefill: float = 0.0

    def copy(self) -> "GenerationState":
        """Independent continuation point (tensors are never modified in place)."""
        return GenerationState(list(self.prompts), list(self.seeds), self.num_scales, self.f_hat_BChw,
                               self.cond.copy(), self.uncond.copy(), self.scale_index, list(self.codes),
                               self.last_entropy_B, list(self.reports), self.flops_prefill)




class NextScaleGenerator:
    """The embedded next-scale generator behind the step-wise API used by the env and scripts."""

    backend = "tiny"

    def __init__(self, tokenizer: MultiScaleVQTokenizer, transformer: NextScaleTransformer,
                 guidance: GuidanceFn | None = None, sampling: SamplingConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        if tuple(tokenizer.cfg.scales) != tuple(transformer.cfg.scales):
            raise ValueError(f"tokenizer scales {tokenizer.cfg.scales} != transformer scales {transformer.cfg.scales}")
        self.tokenizer = tokenizer.eval().to(device)
        self.transformer = transformer.eval().to(device)
        self.guidance = guidance if guidance is not None else ScalarGuidance(3.0)
        self.sampling = sampling if sampling is not None else SamplingConfig()
        self.device = torch.device(device)
        self._uncond_cache: dict[int, BranchContext] = {}

    # ---- description --------------------------------------------------------------------------
    @property
    def scale_sides(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.cfg.scales)

    @property
    def scale_widths(self) -> tuple[int, ...]:
        """Token-map width per scale (the keys of "width:ratio" schedule strings)."""
        return self.scale_sides

    @property
    def num_scales(self) -> int:
        return len(self.scale_sides)

    @property
    def image_size(self) -> int:
        return self.tokenizer.cfg.image_size

    @property
    def max_entropy(self) -> float:
        """Entropy (nats) of a uniform token distribution: normalises ``last_entropy_B``."""
        return math.log(self.tokenizer.cfg.codebook_size)

    def accumulated_codes(self, state: GenerationState) -> torch.Tensor:
        """The latent code map accumulated so far, (B, C, h, w) (backend-neutral observation input)."""
        return state.f_hat_BChw

    def fingerprint(self) -> str:
        """Identifies what images this generator makes (for reference caches and run configs)."""
        return f"tiny:{self.transformer.cfg.to_dict()}:{self.guidance!r}:{self.sampling!r}"

    def schedule_flops(self, ratios: list[float], unconditional: list[bool] | None = None) -> list[float]:
        """Per-scale FLOPs of one image for a list of ratios (analytic, no generation)."""
        if unconditional is None:
            unconditional = [self.uses_unconditional(k) for k in range(self.num_scales)]
        return schedule_flops(self.transformer.cfg, self.tokenizer.cfg, [validate_ratio(r) for r in ratios], unconditional)

    def uses_unconditional(self, scale_index: int) -> bool:
        """Whether the guidance runs the unconditional branch at this scale (unless a step drops it)."""
        return self.guidance.needs_unconditional(scale_index, self.num_scales)

    def flops_full(self) -> float:
        """FLOPs of one unpruned image (prefill + every scale), the denominator of FLOPs fractions."""
        return prefill_flops(self.transformer.cfg) + sum(self.schedule_flops([0.0] * self.num_scales))

    def flops_fraction(self, ratios: list[float], unconditional: list[bool] | None = None) -> float:
        """Whole-image FLOPs of a ratio list (prefill included) as a fraction of ``flops_full()``."""
        used = prefill_flops(self.transformer.cfg) + sum(self.schedule_flops(ratios, unconditional))
        return used / self.flops_full()

    def decode_flops(self) -> float:
        """FLOPs of the tokenizer's decoder for one image (analytic, ``embedded.flops.decoder_flops``;
        tests check it against FlopCounterMode). Not part of ``flops_full()``."""
        return decoder_flops(self.tokenizer.cfg)

    def text_flops(self) -> float:
        """0: the prompt encoder is part of the transformer here and ``flops_full()`` already counts
        it in the prefill (``embedded.flops.prompt_encoder_flops``, once per CFG branch)."""
        return 0.0

    # ---- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, prompts: list[str] | str, seeds: list[int] | int) -> GenerationState:
        prompts, seeds = check_prompts_and_seeds(prompts, seeds)
        ids, mask = tokenize(list(prompts), self.transformer.cfg.text_context)
        cond = self.transformer.prefill(ids.to(self.device), mask.to(self.device))
        uncond = self._unconditional(len(prompts))
        C, s = self.tokenizer.cfg.latent_channels, self.tokenizer.cfg.latent_size
        return GenerationState(
            prompts=list(prompts), seeds=[int(x) for x in seeds], num_scales=self.num_scales,
            f_hat_BChw=torch.zeros(len(prompts), C, s, s, device=self.device), cond=cond, uncond=uncond,
            codes=[None] * self.num_scales, flops_prefill=prefill_flops(self.transformer.cfg),
        )

    def _unconditional(self, batch: int) -> BranchContext:
        # the empty prompt, encoded once per batch size and shared (contexts are never mutated)
        if batch not in self._uncond_cache:
            ids, mask = tokenize([""] * batch, self.transformer.cfg.text_context)
            self._uncond_cache[batch] = self.transformer.prefill(ids.to(self.device), mask.to(self.device))
        return self._uncond_cache[batch].copy()

    @torch.no_grad()
    def step(self, state: GenerationState, ratio: float, drop_unconditional: bool = False) -> StepReport:
        """Run scale ``state.scale_index`` with pruning ratio ``ratio``; advances the state.

        drop_unconditional: skip the unconditional guidance branch at this scale (its logits are
        then the conditional ones), halving the scale's compute.
        """
        if state.finished:
            raise IndexError(f"all {state.num_scales} scales are already generated; start a new generation")
        r = validate_ratio(ratio)
        k, n = state.scale_index, state.num_scales
        side = self.scale_sides[k]
        L = side * side
        use_uncond = self.guidance.needs_unconditional(k, n) and not drop_unconditional
        if r >= 1.0:
            return state.record_skip(side, side, r)

        n_keep = tokens_kept(L, r)
        n_keep = None if n_keep >= L else n_keep
        branches = [state.cond, state.uncond] if use_uncond else [state.cond]
        flops = step_flops(self.transformer.cfg, self.tokenizer.cfg, k, n_keep, [list(b.kv_lengths()) for b in branches])

        tr = self.transformer
        f_in = next_scale_input(state.f_hat_BChw, side) if k > 0 else None
        x_shared = tr.embed_scale_input(k, f_in, state.cond.sos_B1D) if k > 0 else None

        def run(ctx: BranchContext) -> tuple[torch.Tensor, BranchContext]:
            x = x_shared if x_shared is not None else tr.embed_scale_input(0, None, ctx.sos_B1D)
            if x.shape[0] != ctx.batch:
                x = x.repeat(ctx.batch // x.shape[0], 1, 1)
            plan = PruningPlan(side=side, n_keep=n_keep, cache=ctx.prune_cache, cached_side=ctx.prune_cache_side,
                               record=n_keep is None)
            if n_keep is not None and ctx.prune_cache_side is None:
                # no earlier unpruned scale ran on this branch: pruned slots get a zero update
                plan.cache = _zero_cache(tr, ctx.batch, x.device)
                plan.cached_side = 1
            logits, new_kv = tr.forward_scale(x, ctx, plan)
            out = ctx.copy()
            out.kv = new_kv
            if plan.record:
                out.prune_cache, out.prune_cache_side = plan.recorded, side
            return logits, out

        B = state.batch
        if (use_uncond and state.cond.kv_lengths() == state.uncond.kv_lengths()
                and state.cond.prune_cache_side == state.uncond.prune_cache_side):
            logits, both = run(BranchContext.cat(state.cond, state.uncond))  # one batched forward
            cond_logits, uncond_logits = logits[:B], logits[B:]
            state.cond, state.uncond = both.rows(0, B), both.rows(B, 2 * B)
        else:
            cond_logits, state.cond = run(state.cond)
            uncond_logits = None
            if use_uncond:
                uncond_logits, state.uncond = run(state.uncond)

        guided = self.guidance(cond_logits, uncond_logits, k, n)
        idx_BL, entropy_B = self._sample(guided, state.seeds, k)
        idx_Bss = idx_BL.view(B, side, side)
        state.f_hat_BChw = state.f_hat_BChw + self.tokenizer.scale_contribution(idx_Bss)
        state.codes[k] = idx_Bss
        state.last_entropy_B = entropy_B
        report = StepReport(k, side, side, L, r, L if n_keep is None else n_keep, False, use_uncond, flops)
        state.reports.append(report)
        state.scale_index += 1
        return report

    def _sample(self, logits_BLV: torch.Tensor, seeds: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_BLV.float() / self.sampling.temperature
        if self.sampling.top_k:
            kth = logits.topk(min(self.sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        logp = torch.log_softmax(logits, -1).nan_to_num(neginf=0.0)
        entropy_B = -(probs * logp).sum(-1).mean(-1)
        rows = []
        for b, seed in enumerate(seeds):
            g = torch.Generator(device=probs.device).manual_seed(scale_seed(seed, k))
            rows.append(torch.multinomial(probs[b], 1, generator=g)[:, 0])
        return torch.stack(rows), entropy_B

    # ---- images ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, state: GenerationState) -> torch.Tensor:
        """Decode the codes accumulated so far: (B, 3, H, W) float in [0, 1]."""
        return self.tokenizer.decode(state.f_hat_BChw)

    @torch.no_grad()
    def decode_scale(self, state: GenerationState, scale_index: int) -> torch.Tensor | None:
        """Decode scale k's own contribution alone (the seed's "rescale_codes"); None if skipped."""
        idx = state.codes[scale_index]
        if idx is None:
            return None
        return self.tokenizer.decode(self.tokenizer.scale_contribution(idx))

    @torch.no_grad()
    def scale_latents(self, state: GenerationState, scale_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scale k's codes in latent space: (contribution at latent resolution (B, C, h, w), the code
        vectors at the scale's own resolution (B, C, p, p)); None if the scale was skipped."""
        idx = state.codes[scale_index]
        if idx is None:
            return None
        return self.tokenizer.scale_contribution(idx), self.tokenizer.codebook(idx).permute(0, 3, 1, 2)

    @torch.no_grad()
    def generate(self, prompts: list[str] | str, seeds: list[int] | int, schedule=None,
                 ) -> tuple[torch.Tensor, GenerationState]:
        """Whole generation with a schedule (``generator.schedules``; None = unpruned)."""
        from generator.schedules import run_schedule

        state = run_schedule(self, self.start(prompts, seeds), schedule)
        return self.decode(state), state


def _zero_cache(tr: NextScaleTransformer, batch: int, device) -> dict:
    first, last = tr.cfg.pruned_block_range
    z = torch.zeros(batch, 1, tr.cfg.width, device=device)
    return {(i, s): z for i in range(first, last) for s in ("sa", "ca", "ffn")}
