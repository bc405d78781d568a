"""The page's view of one click (``app.py`` maps it onto Gradio components): the form's inputs as
schedule requests, the comparison as pictures and Markdown, or the error message the command-line
tools print for the same input. Nothing here imports gradio, so all of it is tested without a browser."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agents.schedule import RunError
from explorer.comparison import KIND_TITLES, Comparison, ScheduleRequest
from explorer.render import intermediates_strip, scales_chart, upscale
from explorer.session import Explorer

def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the answer (the command-line tools print the same text and exit 2)."""
    from generator.weights_io import WeightsError
    from rewards import ClipWeightsUnavailable, LpipsUnavailable

    return (ValueError, RunError, FileNotFoundError, WeightsError, ClipWeightsUnavailable, LpipsUnavailable)


@dataclass
class PageView:
    """Everything the page shows after one click. ``error`` set: nothing else is shown."""

    error: str | None = None
    table_md: str = ""
    #: per schedule kind shown: (final image upscaled, caption with its FLOPs fraction and SSIM)
    finals: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    #: per schedule kind shown: (title Markdown, intermediates strip, per-scale chart, metrics Markdown)
    details: dict[str, tuple[str, np.ndarray, np.ndarray, str]] = field(default_factory=dict)
    comparison: Comparison | None = None


def requests_from_form(named: list[str], widths_text: str, agent_dir: str, agent_which: str = "best",
                       budget: float | None = None) -> list[ScheduleRequest]:
    """The page's inputs as schedule requests: ``named`` holds kinds or titles of fastvar / tail; an empty
    width string or run directory means that column is not wanted."""
    by_title = {v: k for k, v in KIND_TITLES.items()}
    requests = []
    for n in named or []:
        kind = by_title.get(n, n)
        if kind not in ("original", "fastvar", "tail"):
            raise ValueError(f"unknown schedule {n!r}; allowed: {', '.join(KIND_TITLES[k] for k in ('fastvar', 'tail'))}")
        requests.append(ScheduleRequest(kind))
    if widths_text and widths_text.strip():
        requests.append(ScheduleRequest("widths", widths_text.strip()))
    if agent_dir and agent_dir.strip():
        requests.append(ScheduleRequest("agent", agent_dir.strip(), budget=budget, which=agent_which or "best"))
    return requests


def page_view(explorer: Explorer, prompt: str, seed, named: list[str], widths_text: str = "", agent_dir: str = "",
              agent_which: str = "best", budget: float | None = None, image_px: int = 192) -> PageView:
    """One click of "Run": the comparison as pictures and Markdown, or the error message the CLIs give.
    An unexpected exception (a bug) becomes a message too; the page never shows a traceback."""
    try:
        requests = requests_from_form(named, widths_text, agent_dir, agent_which, budget)
        comparison = explorer.compare(prompt, seed, requests)
    except expected_errors() as e:
        return PageView(error=f"error: {e}")
    except Exception as e:  # noqa: BLE001 - a bug: say so in words, the server log keeps the traceback
        import traceback

        traceback.print_exc()
        return PageView(error=f"unexpected error (a bug, please report it; the server log has the traceback): "
                              f"{type(e).__name__}: {e}")
    view = PageView(table_md=comparison.table_markdown(), comparison=comparison)
    for o in comparison.outcomes:
        caption = f"{o.label}: {o.flops_fraction:.3f} of the FLOPs, SSIM {o.ssim:.3f}"
        view.finals[o.request.kind] = (upscale(o.image_HW3, image_px), caption)
        view.details[o.request.kind] = (f"### {o.label}", intermediates_strip(o.scales), scales_chart(o), o.metrics_markdown())
    return view


def agent_form_state(run_dir: str) -> tuple[str, tuple[float, float] | None]:
    """(what the page says about the run directory typed so far, its budget range or None)."""
    if not run_dir or not run_dir.strip():
        return "no trained agent (type a run directory, e.g. runs/selector_s0)", None
    try:
        info = Explorer.agent_info(run_dir)
    except expected_errors() as e:
        return f"error: {e}", None
    return info.describe(), info.budget_range
