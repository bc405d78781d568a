"""Rewards: CLIP score (open_clip), SSIM/PSNR/LPIPS vs the unpruned image, FLOPs saved."""

from rewards.clip_score import ClipScorer, ClipWeightsUnavailable
from rewards.reference import ReferenceCache
from rewards.reward import RewardConfig, RewardFunction
from rewards.similarity import LpipsMetric, LpipsUnavailable, psnr, ssim

__all__ = ["ClipScorer", "ClipWeightsUnavailable", "LpipsMetric", "LpipsUnavailable", "ReferenceCache",
           "RewardConfig", "RewardFunction", "psnr", "ssim"]
