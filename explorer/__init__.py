"""The explorer page's logic (``app.py`` lays it out with Gradio): one prompt and seed, several pruning
schedules side by side, compared with Original. A layer above ``evaluation``; nothing here imports gradio.

- ``explorer.comparison``: the requests and results (schedule columns, per-scale rows, Markdown tables);
- ``explorer.session``: :class:`Explorer`, which builds the generator, checks inputs and runs schedules;
- ``explorer.render``: the pictures (enlarged images, summed-codes strip, per-scale charts);
- ``explorer.page``: one click of the page as a :class:`PageView`, or the CLIs' error message.
"""

from explorer.comparison import (KIND_TITLES, SCHEDULE_KINDS, SEED_MAX, Comparison, ScaleRow, ScheduleOutcome,
                                 ScheduleRequest, format_psnr, latency_note)
from explorer.page import PageView, agent_form_state, expected_errors, page_view, requests_from_form
from explorer.render import intermediates_strip, scales_chart, upscale
from explorer.session import AgentInfo, Explorer, agent_budget_range, judge_or_none

__all__ = [
    "KIND_TITLES", "SCHEDULE_KINDS", "SEED_MAX", "Comparison", "ScaleRow", "ScheduleOutcome", "ScheduleRequest",
    "format_psnr", "latency_note",
    "PageView", "agent_form_state", "expected_errors", "page_view", "requests_from_form",
    "intermediates_strip", "scales_chart", "upscale",
    "AgentInfo", "Explorer", "agent_budget_range", "judge_or_none",
]
