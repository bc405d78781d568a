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
from embedded.flops import decoder_flops, prefill_flops, schedule_flops, schedule_flops_many, step_flops
from embedded.text import tokenize
from embedded.tokenizer import DECODE_NUMERICS, MultiScaleVQTokenizer, next_scale_input
from embedded.transformer import BranchContext, NextScaleTransformer
from generator.guidance import GuidanceFn, ScalarGuidance
from generator.protocol import (BatchStepReport, StateProgress, StepReport, check_prompts_and_seeds, combine_reports,
                                per_image_decisions, scale_seed, validate_ratio, whole_batch_codes, image_fingerprint)
from generator.pruning import PruningPlan, area_resample, row_token_counts, select_batch_rows

__all__ = ["GenerationState", "NextScaleGenerator", "StateProgress", "StepReport", "check_prompts_and_seeds",
           "scale_seed", "validate_ratio"]


@dataclass
class GenerationState(StateProgress):
    """Everything one batch generation carries between scales. Owned by the caller.

    scale_index: the next scale to run (== num_scales when finished). f_hat_BChw: accumulated
    codes at latent resolution. codes: per-scale index maps (B, p, p) (None for skipped / not yet
    run; a list of per-image (p, p) maps or None when only some images ran that scale: ``codes[k][b]``
    reads image b either way). last_entropy_B: mean entropy (nats) of each image's last sampled
    scale's guided token distributions (NaN for an image that has sampled none yet in a mixed batch).
    reports: per scale, a StepReport, or a BatchStepReport when the images did different things.
    """

    prompts: list[str]
    seeds: list[int]
    num_scales: int
    f_hat_BChw: torch.Tensor
    cond: BranchContext
    uncond: BranchContext
    scale_index: int = 0
    codes: list = field(default_factory=list)
    last_entropy_B: torch.Tensor | None = None
    reports: list = field(default_factory=list)
    flops_prefill: float = 0.0

    def copy(self) -> "GenerationState":
        """Independent continuation point (tensors are never modified in place)."""
        return GenerationState(list(self.prompts), list(self.seeds), self.num_scales, self.f_hat_BChw,
                               self.cond.copy(), self.uncond.copy(), self.scale_index, list(self.codes),
                               self.last_entropy_B, list(self.reports), self.flops_prefill)




ROW_BATCHING = ("pad", "group")


class NextScaleGenerator:
    """The embedded next-scale generator behind the step-wise API used by the env and scripts.

    row_batching: how a step with per-image ratios runs the images that keep different numbers of
    tokens: "pad" (default; one forward, kept tokens padded to the largest count, padded keys masked)
    or "group" (one forward per kept count). Both give the same images (tests/test_batched_steps.py);
    ``benchmarks/bench_batched.py`` measures which is faster.
    """

    backend = "tiny"

    def __init__(self, tokenizer: MultiScaleVQTokenizer, transformer: NextScaleTransformer,
                 guidance: GuidanceFn | None = None, sampling: SamplingConfig | None = None,
                 device: str | torch.device = "cpu", row_batching: str = "pad") -> None:
        if row_batching not in ROW_BATCHING:
            raise ValueError(f"row_batching must be one of {ROW_BATCHING}, got {row_batching!r}")
        self.row_batching = row_batching
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
        return image_fingerprint(f"tiny:{self.transformer.cfg.to_dict()}:{self.guidance!r}:{self.sampling!r}",
                                 decode=DECODE_NUMERICS, device=self.device.type)

    def schedule_flops(self, ratios: list[float], unconditional: list[bool] | None = None) -> list[float]:
        """Per-scale FLOPs of one image for a list of ratios (analytic, no generation)."""
        if unconditional is None:
            unconditional = [self.uses_unconditional(k) for k in range(self.num_scales)]
        return schedule_flops(self.transformer.cfg, self.tokenizer.cfg, [validate_ratio(r) for r in ratios], unconditional)

    def schedule_flops_many(self, ratios_BN, unconditional=None, per_scale: bool = False):
        """Transformer FLOPs of B ratio lists at once (``embedded.flops.schedule_flops_many``): the (B,)
        totals, or with ``per_scale`` the (B, num_scales) per-scale FLOPs, exactly ``schedule_flops`` of
        each row, without a Python loop per schedule. ``unconditional``: per scale, or (B, num_scales)."""
        if unconditional is None:
            unconditional = [self.uses_unconditional(k) for k in range(self.num_scales)]
        return schedule_flops_many(self.transformer.cfg, self.tokenizer.cfg, ratios_BN, unconditional, per_scale)

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
    def step(self, state: GenerationState, ratio, drop_unconditional=False) -> StepReport | BatchStepReport:
        """Run scale ``state.scale_index``; advances the state.

        ratio: one pruning ratio for every image, or one per image (``0 <= r < 1`` prunes a fraction
        r of the tokens, ``r >= 1`` skips the scale). drop_unconditional: skip the unconditional
        guidance branch at this scale (its logits are then the conditional ones), halving the scale's
        compute; a bool, or one per image. Images that decided differently run in one forward pass
        (kept tokens padded to the largest count, padded keys masked); an image that skips gets no
        codes and no KV entries. Returns one StepReport if every image did the same, else a
        BatchStepReport with one per image (FLOPs per image, as if generated alone).
        """
        if state.finished:
            raise IndexError(f"all {state.num_scales} scales are already generated; start a new generation")
        B = state.batch
        ratios, drops = per_image_decisions(ratio, drop_unconditional, B)
        k, n = state.scale_index, state.num_scales
        side = self.scale_sides[k]
        counts = row_token_counts(side * side, ratios)
        cond_rows = [b for b in range(B) if counts[b] > 0]
        if not cond_rows:
            return state.record_skip(side, side, ratios)
        needs_uncond = self.guidance.needs_unconditional(k, n)
        uses_uncond = [counts[b] > 0 and needs_uncond and not drops[b] for b in range(B)]
        reports = self._step_reports(state, k, side, ratios, counts, uses_uncond)
        f_in = next_scale_input(state.f_hat_BChw, side) if k > 0 else None
        x_shared = self.transformer.embed_scale_input(k, f_in, state.cond.sos_B1D) if k > 0 else None
        scale = _ScaleStep(k, n, side, B, counts, uses_uncond, cond_rows, x_shared)
        guided = self._guided_logits(state, scale)
        idx_BL, entropy_B = self._sample(guided, [state.seeds[b] for b in cond_rows], k)
        self._accumulate(state, scale, idx_BL.view(len(cond_rows), side, side), entropy_B)
        report = combine_reports(reports)
        state.reports.append(report)
        state.scale_index += 1
        return report

    def _step_reports(self, state: GenerationState, k: int, side: int, ratios: list[float], counts: list[int],
                      uses_uncond: list[bool]) -> list[StepReport]:
        """Per image, what scale k costs it alone (its own kept count and KV lengths; FLOPs)."""
        cfg, tok = self.transformer.cfg, self.tokenizer.cfg
        L = side * side
        kv_c = state.cond.kv_lengths_rows()
        kv_u = state.uncond.kv_lengths_rows() if any(uses_uncond) else None
        reports = []
        for b in range(len(counts)):
            if counts[b] == 0:
                reports.append(StepReport(k, side, side, L, ratios[b], 0, True, False, 0.0))
                continue
            n_keep = None if counts[b] >= L else counts[b]
            lens = [list(kv_c[b])] + ([list(kv_u[b])] if uses_uncond[b] else [])
            reports.append(StepReport(k, side, side, L, ratios[b], counts[b], False, uses_uncond[b],
                                      step_flops(cfg, tok, k, n_keep, lens)))
        return reports

    def _guided_logits(self, state: GenerationState, scale: "_ScaleStep") -> torch.Tensor:
        """Forward the running images on both CFG branches, commit the branches' new KV and pruning
        caches to ``state``, and return the guided logits (R, L, V) of ``scale.cond_rows`` in order.

        row_batching "pad": every image that runs in one forward (kept tokens padded to the largest
        count); "group": one forward per kept count (no padded queries, more, smaller calls)."""
        cond_rows, counts = scale.cond_rows, scale.counts
        if self.row_batching == "group":
            by_count: dict[int, list[int]] = {}
            for b in cond_rows:
                by_count.setdefault(counts[b], []).append(b)
            groups = list(by_count.values())
        else:
            groups = [cond_rows]
        parts_c, parts_u, guided_parts = [], [], []
        for g_rows in groups:
            g_unc = [b for b in g_rows if scale.uses_uncond[b]]
            (ran_c, cond_logits), (ran_u, uncond_logits) = self._forward_group(state, scale, g_rows, g_unc)
            parts_c.append((g_rows, ran_c))
            if g_unc:
                parts_u.append((g_unc, ran_u))
            guided_parts.append(self._guide(scale, g_rows, g_unc, cond_logits, uncond_logits))
        state.cond = _commit_branch(scale, state.cond, parts_c)
        if parts_u:
            state.uncond = _commit_branch(scale, state.uncond, parts_u)
        if len(groups) == 1:
            return guided_parts[0]
        order = [b for g in groups for b in g]  # back to the order of cond_rows
        perm = torch.tensor([order.index(b) for b in cond_rows], device=guided_parts[0].device)
        return torch.cat(guided_parts, 0).index_select(0, perm)

    def _forward_group(self, state: GenerationState, scale: "_ScaleStep", g_rows: list[int], g_unc: list[int]):
        """One group's conditional rows ``g_rows`` and unconditional rows ``g_unc``: ((cond branch after
        the scale, cond logits), (uncond branch after, uncond logits)); the latter are None without
        ``g_unc``. Both branches run in one forward when their KV lengths match."""
        cond_sel = state.cond.select(g_rows)
        if g_unc and state.cond.kv_lengths() == state.uncond.kv_lengths():
            logits, both = self._forward_rows(scale, BranchContext.cat(cond_sel, state.uncond.select(g_unc)),
                                              g_rows + g_unc)  # one forward
            Rg = len(g_rows)
            return (both.rows(0, Rg), logits[:Rg]), (both.rows(Rg, both.batch), logits[Rg:])
        cond_logits, ran_c = self._forward_rows(scale, cond_sel, g_rows)
        uncond_logits, ran_u = None, None
        if g_unc:
            uncond_logits, ran_u = self._forward_rows(scale, state.uncond.select(g_unc), g_unc)
        return (ran_c, cond_logits), (ran_u, uncond_logits)

    def _forward_rows(self, scale: "_ScaleStep", ctx: BranchContext, rows: list[int]
                      ) -> tuple[torch.Tensor, BranchContext]:
        """Forward the listed images (rows of the original batch) on a (possibly stacked) context:
        (logits (R, L, V), the context after this scale with its KV and pruning cache updated)."""
        tr, side, B, x_shared = self.transformer, scale.side, scale.batch, scale.x_shared
        if x_shared is None:
            x = tr.embed_scale_input(0, None, ctx.sos_B1D)
        elif rows == list(range(B)) * (ctx.batch // B):
            x = x_shared if ctx.batch == B else x_shared.repeat(ctx.batch // B, 1, 1)
        else:
            x = x_shared.index_select(0, torch.tensor(rows, device=x_shared.device))
        row_counts = [scale.counts[b] for b in rows]
        L = side * side
        unpruned = [c >= L for c in row_counts]
        plan = PruningPlan(side=side, counts=None if all(unpruned) else row_counts, record=any(unpruned))
        if plan.prunes:
            cache = ctx.prune
            plan.source = lambda key: cache.resampled(key, (side, side), tr.cfg.width, x.dtype, x.device,
                                                      _resample_square)
        logits, new_kv, new_masks = tr.forward_scale(x, ctx, plan)
        out = ctx.copy()
        out.kv, out.kv_mask = new_kv, new_masks
        recorded_rows = [j for j, u in enumerate(unpruned) if u]
        if recorded_rows:
            rec = plan.recorded
            if len(recorded_rows) < len(rows):
                t = torch.tensor(recorded_rows, device=x.device)
                rec = {key: v.index_select(0, t) for key, v in rec.items()}
            out.prune = ctx.prune.updated(recorded_rows, rec, (side, side))
        return logits, out

    def _guide(self, scale: "_ScaleStep", g_rows: list[int], g_unc: list[int], cond_logits: torch.Tensor,
               uncond_logits: torch.Tensor | None) -> torch.Tensor:
        """Guided logits of one group's rows: CFG on the rows in ``g_unc``, conditional alone on the others."""
        k, n = scale.k, scale.n
        if len(g_unc) in (0, len(g_rows)):
            return self.guidance(cond_logits, uncond_logits, k, n)
        # some images dropped the unconditional branch: guide the others only
        pos = {b: j for j, b in enumerate(g_rows)}
        with_u = torch.tensor([pos[b] for b in g_unc], device=cond_logits.device)
        guided = cond_logits.clone()
        guided.index_copy_(0, with_u, self.guidance(cond_logits.index_select(0, with_u), uncond_logits, k, n))
        without = torch.tensor([j for j, b in enumerate(g_rows) if not scale.uses_uncond[b]], device=cond_logits.device)
        guided.index_copy_(0, without, self.guidance(cond_logits.index_select(0, without), None, k, n))
        return guided

    def _accumulate(self, state: GenerationState, scale: "_ScaleStep", idx_Bss: torch.Tensor,
                    entropy_B: torch.Tensor) -> None:
        """Add the sampled codes (R, p, p) of ``scale.cond_rows`` to ``state``: f_hat, codes, entropy."""
        k, B, cond_rows = scale.k, scale.batch, scale.cond_rows
        contribution = self._contribution(idx_Bss)
        if len(cond_rows) == B:
            state.f_hat_BChw = state.f_hat_BChw + contribution
            state.codes[k] = idx_Bss
            state.last_entropy_B = entropy_B
            return
        rows_t = torch.tensor(cond_rows, device=contribution.device)
        state.f_hat_BChw = state.f_hat_BChw.index_copy(0, rows_t, state.f_hat_BChw.index_select(0, rows_t) + contribution)
        per_image: list = [None] * B
        for j, b in enumerate(cond_rows):
            per_image[b] = idx_Bss[j]
        state.codes[k] = per_image
        prev = state.last_entropy_B
        if prev is None:  # NaN = "no scale sampled yet" for images that have not run one
            prev = torch.full((B,), float("nan"), dtype=entropy_B.dtype, device=entropy_B.device)
        state.last_entropy_B = prev.index_copy(0, rows_t.to(prev.device), entropy_B)

    def _contribution(self, idx_Bss: torch.Tensor) -> torch.Tensor:
        """Each image's contribution to f_hat, computed one image at a time: the tokenizer's phi
        convolution picks its algorithm by batch size (oneDNN), so a batched call is not bitwise the
        per-image one; this way an image's accumulated codes depend on its own codes only, whatever
        batch it is generated in (and its observation features with them)."""
        if idx_Bss.shape[0] == 1:
            return self.tokenizer.scale_contribution(idx_Bss)
        return torch.cat([self.tokenizer.scale_contribution(idx_Bss[b:b + 1]) for b in range(idx_Bss.shape[0])], 0)

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
        idx = whole_batch_codes(state, scale_index)
        if idx is None:
            return None
        return self.tokenizer.decode(self.tokenizer.scale_contribution(idx))

    @torch.no_grad()
    def scale_latents(self, state: GenerationState, scale_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scale k's codes in latent space: (contribution at latent resolution (B, C, h, w), the code
        vectors at the scale's own resolution (B, C, p, p)); None if the scale was skipped."""
        idx = whole_batch_codes(state, scale_index)
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



def _resample_square(cached_BSD: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    return area_resample(cached_BSD, from_hw[0], to_hw[0])


@dataclass(frozen=True)
class _ScaleStep:
    """What one ``step`` decided for its scale, shared by its sub-steps. counts: tokens each image keeps
    (0 = skips, side * side = unpruned); uses_uncond: per image, whether it runs the unconditional
    branch; cond_rows: the images that run; x_shared: the scale's embedded input (B, L, D) from the
    accumulated codes (None at scale 0, whose input is the start token)."""

    k: int
    n: int
    side: int
    batch: int
    counts: list[int]
    uses_uncond: list[bool]
    cond_rows: list[int]
    x_shared: torch.Tensor | None


def _commit_branch(scale: _ScaleStep, branch: BranchContext, parts: list[tuple[list[int], BranchContext]]
                   ) -> BranchContext:
    """The branch after this scale, from the forwards that ran some of its rows (``parts``: (rows of
    the batch, the context that forward returned)); unpruned rows record their pruning cache."""
    if len(parts) == 1 and parts[0][0] == list(range(scale.batch)):
        return parts[0][1]
    merged = branch.merged(parts)
    prune = branch.prune
    L = scale.side * scale.side
    for rows, ran in parts:
        recorded = [j for j, b in enumerate(rows) if scale.counts[b] >= L]
        if recorded:
            prune = prune.updated([rows[j] for j in recorded], select_batch_rows(ran.prune.tensors, recorded),
                                  (scale.side, scale.side))
    merged.prune = prune
    return merged
