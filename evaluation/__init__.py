"""Evaluation of pruning schedules: per-image metrics, statistics, static-schedule search, reports."""
