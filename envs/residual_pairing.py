"""The paired reward's other half: the frontier schedule's image of the same prompt and seed.

Generated only for an episode that leaves the frontier, and from where it leaves it: before the first
scale whose decision differs from the frontier's, the generation state is copied (``state.copy()``; both
continue from the shared prefix) and, at the episode's end, the copy runs the frontier's remaining
decisions. In a batch, the images that deviate at the same scale share one copy; in it every other image
skips its remaining scales, which costs nothing (``PerScaleGenerator.step``: a skipped image gets no
forward pass). The frontier's quality terms are cached per (prompt, seed, frontier schedule, generator):
the budget enters only through the schedule it selects, and the quality terms do not depend on it.
"""

from __future__ import annotations

import torch

from envs.residual_core import SKIP

#: "paired": quality minus the frontier's (CLIP term of the difference capped at 0); "absolute": quality
REWARD_MODES = ("paired", "absolute")


def residual_outcome(reward_config, mode: str, terms: dict, frontier: dict | None,
                     first_deviation: int | None) -> tuple[float, dict]:
    """(episode reward, info entries) of a residual episode from its quality terms and the frontier's
    (None: the episode kept the frontier everywhere, its image is the frontier's and the paired reward is
    exactly 0.0)."""
    quality = float(terms["quality_reward"])
    if frontier is None:
        frontier_quality, paired = quality, 0.0
    else:
        frontier_quality, paired = float(frontier["quality_reward"]), reward_config.paired_quality(terms, frontier)
    reward = paired if mode == "paired" else quality
    return reward, dict(terms, quality=quality, frontier_quality=frontier_quality, paired_reward=paired,
                        first_deviation=first_deviation, terminal_reward=reward)


class FrontierPairing:
    """Per image of a batch: where its episode first left the frontier, and the frontier's quality terms.

    cache: {(prompt, seed, schedule, generator fingerprint): terms}, shared between envs if given.
    """

    def __init__(self, core, reward_fn, cache: dict | None = None) -> None:
        self.core, self.reward_fn = core, reward_fn
        self.cache = {} if cache is None else cache
        self.fingerprint = core.generator.fingerprint()

    def start(self, prompts: list[str], seeds: list[int], schedules: list) -> None:
        self.keys = [(p, int(s), sched, self.fingerprint) for p, s, sched in zip(prompts, seeds, schedules)]
        self.schedules = list(schedules)
        self.first_deviation: list[int | None] = [None] * len(prompts)
        self._forks: list[tuple[object, list[int]]] = []

    def before_step(self, state, decisions: list[tuple[float, bool]]) -> None:
        """Call before ``generator.step(state, decisions)``: record first deviations, and copy the state
        for the images whose frontier terms are neither cached nor already being made."""
        k = state.scale_index
        pending = {self.keys[b] for _, members in self._forks for b in members}
        members = []
        for b, dec in enumerate(decisions):
            if self.first_deviation[b] is not None or dec == self.core.frontier_decision(self.schedules[b], k):
                continue
            self.first_deviation[b] = k
            if self.keys[b] not in self.cache and self.keys[b] not in pending:
                members.append(b)
                pending.add(self.keys[b])
        if members:
            self._forks.append((state.copy(), members))

    def frontier_terms(self, references: torch.Tensor, reference_clips: list | None, prompts: list[str]) -> list[dict | None]:
        """After the episodes' last scale: per image, the frontier image's quality terms (None for an image
        that never left the frontier: its own image is the frontier's). ``references``: (B, 3, H, W)
        unpruned images of the batch; ``reference_clips``: their CLIP scores (or None)."""
        g = self.core.generator
        made, images = [], []
        for fork, members in self._forks:
            while not fork.finished:
                k = fork.scale_index
                decs = [self.core.frontier_decision(self.schedules[b], k) if b in members else (SKIP, False)
                        for b in range(fork.batch)]
                g.step(fork, [r for r, _ in decs], drop_unconditional=[d for _, d in decs])
            out = g.decode(fork)
            images += [out[b:b + 1] for b in members]
            made += members
        self._forks = []
        if made:
            refs = torch.cat([references[b:b + 1] for b in made]).to(images[0].device)
            clips = None if reference_clips is None else [reference_clips[b] for b in made]
            used = [self.core.schedule_fraction(self.schedules[b]) for b in made]
            scored = self.reward_fn.terminal_batch(torch.cat(images), refs, [prompts[b] for b in made], used,
                                                   reference_clips=clips)
            for b, (_, terms) in zip(made, scored):
                self.cache[self.keys[b]] = terms
        return [None if d is None else self.cache[self.keys[b]] for b, d in enumerate(self.first_deviation)]
