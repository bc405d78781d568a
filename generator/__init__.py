"""Per-scale next-scale-prediction generators with explicit state, pruning and FLOPs accounting."""

from generator.config import GeneratorConfig, SamplingConfig, TokenizerConfig, TransformerConfig
from generator.guidance import GuidanceFn, LimitedIntervalGuidance, NoGuidance, ScalarGuidance, guidance_from_cfg
from generator.sampler import GenerationState, NextScaleGenerator, StepReport, validate_ratio
from generator.schedules import (FastVARSchedule, OriginalSchedule, PruningSchedule, RatioListSchedule,
                                 TailPatternSchedule, WidthRatioSchedule, parse_schedule, schedule_ratios)

__all__ = [
    "GeneratorConfig", "SamplingConfig", "TokenizerConfig", "TransformerConfig",
    "GuidanceFn", "LimitedIntervalGuidance", "NoGuidance", "ScalarGuidance", "guidance_from_cfg",
    "GenerationState", "NextScaleGenerator", "StepReport", "validate_ratio",
    "FastVARSchedule", "OriginalSchedule", "PruningSchedule", "RatioListSchedule", "TailPatternSchedule",
    "WidthRatioSchedule", "parse_schedule", "schedule_ratios",
]
