"""The backend-neutral layer: the per-scale generation protocol, schedules, pruning plan, guidance.

Everything that drives a generator (env, agents, evaluation, ``generate.py``) imports from here; the
backends (``embedded``, ``infinity_backend``) implement :class:`generator.protocol.PerScaleGenerator`
and are built by name through :mod:`generator.backends`.
"""

from generator.guidance import GuidanceFn, LimitedIntervalGuidance, NoGuidance, ScalarGuidance, guidance_from_cfg
from generator.protocol import (BatchStepReport, GenerationProgress, MixedBatchError, PerScaleGenerator, StepReport,
                                check_prompts_and_seeds, per_image_decisions, validate_ratio)
from generator.schedules import (FastVARSchedule, OriginalSchedule, PruningSchedule, RatioListSchedule,
                                 TailPatternSchedule, WidthRatioSchedule, parse_schedule, run_schedule,
                                 schedule_ratios)

__all__ = [
    "GuidanceFn", "LimitedIntervalGuidance", "NoGuidance", "ScalarGuidance", "guidance_from_cfg",
    "BatchStepReport", "GenerationProgress", "MixedBatchError", "PerScaleGenerator", "StepReport",
    "check_prompts_and_seeds", "per_image_decisions", "validate_ratio",
    "FastVARSchedule", "OriginalSchedule", "PruningSchedule", "RatioListSchedule", "TailPatternSchedule",
    "WidthRatioSchedule", "parse_schedule", "run_schedule", "schedule_ratios",
]

