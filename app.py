"""The explorer page: what a pruning schedule or a trained agent does to one image, side by side.

    pip install -e ".[app]"
    python app.py                                   # http://127.0.0.1:7860: the embedded default, CPU, offline
    python app.py --run runs/selector_s0 --port 7861    # with a trained agent's run directory filled in
    python app.py --generator infinity --infinity-options opts.json \\
        --clip-model ViT-L-14 --clip-pretrained /path/to/ViT-L-14.pt

A prompt (typed in the domain's grammar, or picked from a split) and a seed; schedules: Original
(always: the reference), FastVAR, the seed's tail pattern, a "width:ratio,..." string and a trained
agent. For each: the image, the codes summed after every scale, each scale's ratio and FLOPs, total
FLOPs, latency, and SSIM / PSNR / CLIP (and DomainEval where it exists) vs Original. The page's logic
is the ``explorer`` package (tested without a browser); this file only lays it out with Gradio.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import sys
from pathlib import Path

# before gradio is imported: no usage statistics are sent (nothing may reach the network at run time)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULT_PROMPT = "a large red solid circle in the centre on a plain gray background"


def build_parser() -> argparse.ArgumentParser:
    from generator.backends import add_generator_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--run", default=None, metavar="RUN_DIR",
                    help="trained agent to fill in (default: the latest finished run under runs/, if any)")
    ap.add_argument("--latency-repeats", type=int, default=3,
                    help="latency = median of this many timed generations of each schedule, after one untimed warm-up run")
    ap.add_argument("--clip-model", default=None, help="open_clip model for the CLIP score (default: the shipped small CLIP, tiny only)")
    ap.add_argument("--clip-pretrained", default=None, help="its tag in the local cache or a checkpoint path")
    ap.add_argument("--no-judge", action="store_true", help="do not load the DomainEval judge even where it exists")
    add_generator_args(ap)
    return ap


def latest_run(runs_dir: Path = Path("runs")) -> str:
    """The most recently finished train.py run under ``runs_dir`` ("" if none)."""
    from agents.schedule import finished_runs

    runs = finished_runs(runs_dir)
    return str(runs[-1]) if runs else ""


def build_page(explorer, default_run: str = "", default_prompt: str = DEFAULT_PROMPT):
    """The Gradio Blocks of the page (not launched)."""
    import gradio as gr

    from domain.splits import SPLITS, load_prompts
    from explorer import KIND_TITLES, SCHEDULE_KINDS, agent_form_state, page_view

    widths = ", ".join(map(str, explorer.generator.scale_widths))
    example_widths = ",".join(f"{w}:{r}" for w, r in zip(explorer.generator.scale_widths[-3:], ("0.5", "1", "1")))
    with gr.Blocks(title="varprune explorer") as demo:
        gr.Markdown("## varprune explorer: what a pruning schedule does to one image\n"
                    f"Generator **{explorer.generator.backend}** · {explorer.generator.num_scales} scales "
                    f"(token-map widths {widths}) · ratio 0 ≤ r < 1 prunes a fraction r of a scale's tokens, "
                    "r ≥ 1 skips the scale · every metric is vs **Original**, the unpruned image of the same prompt and seed.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt (in the domain's grammar)", value=default_prompt, lines=2, elem_id="prompt")
                with gr.Row():
                    split = gr.Dropdown(list(SPLITS), value="test", label="…or pick from a split", elem_id="split", scale=1)
                    pick = gr.Dropdown(load_prompts("test"), value=None, label="prompt", elem_id="pick", scale=3)
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
            with gr.Column(scale=3):
                named = gr.CheckboxGroup([KIND_TITLES["fastvar"], KIND_TITLES["tail"]], value=[KIND_TITLES["fastvar"]],
                                         label="Schedules (Original always runs: it is the reference)", elem_id="named")
                widths_box = gr.Textbox(label=f"width:ratio schedule, widths {widths} (empty = none)",
                                        placeholder=example_widths, elem_id="widths")
                with gr.Row():
                    agent_dir = gr.Textbox(label="Trained agent: run directory (empty = none)", value=default_run,
                                           elem_id="agent", scale=3)
                    which = gr.Radio(["best", "final"], value="best", label="model", elem_id="which", scale=1)
                first_text, first_range = agent_form_state(default_run)
                agent_note = gr.Markdown(html.escape(first_text), elem_id="agent-note")
                budget = gr.Slider(*(first_range or (0.0, 1.0)), value=(first_range or (0.0, 1.0))[1], step=0.01,
                                   label="FLOPs budget (budget-conditioned agents)", visible=first_range is not None,
                                   elem_id="budget")
        run_btn = gr.Button("Run", variant="primary", elem_id="run")
        error = gr.HTML(visible=False, elem_id="error")
        gr.Markdown("\n\n".join(f"*note: {n}*" for n in explorer.notes), visible=bool(explorer.notes))
        finals = {}
        with gr.Row(equal_height=True):
            for kind in SCHEDULE_KINDS:
                finals[kind] = gr.Image(label=KIND_TITLES[kind], type="numpy", interactive=False, visible=False,
                                        elem_id=f"final-{kind}", buttons=[], height=220, min_width=180)
        table = gr.Markdown(elem_id="table", visible=False)
        slots = []
        for kind in SCHEDULE_KINDS:
            with gr.Row(visible=False, elem_id=f"row-{kind}") as row:
                with gr.Column(scale=5):
                    title = gr.Markdown(elem_id=f"title-{kind}")
                    gr.Markdown("codes summed after each scale (a skipped scale adds none):")
                    strip = gr.Image(show_label=False, type="numpy", interactive=False, elem_id=f"strip-{kind}", buttons=[])
                    metrics = gr.Markdown(elem_id=f"metrics-{kind}")
                with gr.Column(scale=3):
                    chart = gr.Image(show_label=False, type="numpy", interactive=False, elem_id=f"chart-{kind}", buttons=[])
            slots.append((kind, row, title, strip, chart, metrics))

        def on_split(name):
            return gr.update(choices=load_prompts(name), value=None)

        def on_pick(text):
            return gr.update() if not text else text

        def on_agent(run_dir):
            text, rng = agent_form_state(run_dir)
            text = html.escape(text)  # error messages quote '<kind> <colour>'-style placeholders
            if rng is None:
                return text, gr.update(visible=False)
            return text, gr.update(visible=True, minimum=rng[0], maximum=rng[1], value=rng[1])

        def on_run(prompt_text, seed_value, named_value, widths_text, run_dir, which_value, budget_value):
            _, rng = agent_form_state(run_dir)
            view = page_view(explorer, prompt_text, seed_value, named_value, widths_text, run_dir, which_value,
                             budget_value if rng is not None else None)
            shown = view.error is None
            out = [gr.update(value=error_html(view.error), visible=not shown),
                   gr.update(value=view.table_md, visible=shown)]
            for kind in SCHEDULE_KINDS:
                final = view.finals.get(kind)
                out.append(gr.update(visible=False, value=None) if final is None
                           else gr.update(visible=True, value=final[0], label=final[1]))
            for kind, *_ in slots:
                detail = view.details.get(kind)
                if detail is None:
                    out += [gr.update(visible=False), gr.update(), gr.update(), gr.update(), gr.update()]
                else:
                    title_md, strip_img, chart_img, metrics_md = detail
                    out += [gr.update(visible=True), title_md, strip_img, chart_img, metrics_md]
            return out

        split.change(on_split, split, pick)
        pick.change(on_pick, pick, prompt)
        agent_dir.change(on_agent, agent_dir, [agent_note, budget])
        outputs = [error, table] + [finals[k] for k in SCHEDULE_KINDS] + [c for _, *comps in slots for c in comps]
        run_btn.click(on_run, [prompt, seed, named, widths_box, agent_dir, which, budget], outputs)
    return demo


def error_html(message: str | None) -> str:
    """The message as the CLIs print it, in a red box (escaped: messages quote '<colour>'-style placeholders)."""
    if not message:
        return ""
    return ('<div style="border:1px solid #d32f2f;background:#fdecea;color:#b71c1c;padding:8px 12px;'
            f'border-radius:6px;white-space:pre-wrap;font-family:monospace">{html.escape(message)}</div>')


def page_theme():
    """Gradio's default look with system fonts: the default theme would fetch web fonts, and this page is offline."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print("error: the explorer page needs gradio: pip install -e \".[app]\"", file=sys.stderr)
        return 2
    from explorer import Explorer, expected_errors

    try:
        if not 1 <= args.port <= 65535:
            raise ValueError(f"--port must be in 1..65535, got {args.port}")
        if args.run is not None:  # a run that cannot be read is the same error generate.py --agent gives
            Explorer.agent_info(args.run)
        explorer = Explorer.build(args, args.clip_model, args.clip_pretrained, judge=not args.no_judge,
                                  latency_repeats=args.latency_repeats)
        run = latest_run() if args.run is None else args.run
    except expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_page(explorer, default_run=run)
    print(f"explorer on http://{args.host}:{args.port} (Ctrl+C stops it)")
    demo.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, theme=page_theme())
    return 0


if __name__ == "__main__":
    sys.exit(main())
