"""Compare mode, first stage: every argument checked and resolved before any model is built or any
image is generated.

``resolve_plan`` turns a :class:`CompareRequest` (the command line, typed) into a :class:`ComparePlan`:
the runs (their configs and model files on disk, one generator and one quality weighting between them),
the test and search items (prompt files, grammar, duplicates, overlap), the budgets (syntax,
duplicates, each absolute budget in (0, 1]) and the output
and cache paths. It builds no generator and no metric model. Budgets given as a multiple of FastVAR's
FLOPs ("0.8fastvar") need the generator's FLOPs model for their value: ``agent_rows`` checks those as
soon as the generator exists, still before the first image.

A budget (in (0, 1]) outside a budget-conditioned run's trained range is not an error: that run's agent
row there is "n/a" (no image is generated for it, ``AgentRow.na`` says why), while FastVAR, the best
static schedule, the oracles and the random schedule are still computed at the budget itself (issue
#24: near-lossless budgets such as 0.95 beside the trained ones).

Every failure is a ``ValueError`` / ``FileNotFoundError`` / ``RunError`` naming the flag, the value
given and what is allowed (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUDGETS = ("fastvar", "0.8fastvar", "0.6fastvar")
DEFAULT_GRID_RATIOS = (0.0, 0.25, 0.5, 0.75)
BUDGET_TOLERANCE = 1e-9   # a budget this close outside a run's trained range still counts as inside


# ---- what was asked ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemRequest:
    """Prompts and seeds asked for: the first ``num_prompts`` prompts of ``source`` (a split, train | val
    | test, or a prompts file), each with every seed in ``seeds``; ``flag`` names them in errors."""

    source: str
    num_prompts: int
    seeds: tuple[int, ...]
    flag: str = "--prompts"
    seeds_flag: str = "--seeds"


@dataclass(frozen=True)
class GenerationSettings:
    """How each method's images are made: ``batch_size`` images together, the first ``latency_images``
    items timed again alone at batch 1 (as deployed), locally or sharded over ``workers`` Ray actors."""

    batch_size: int = 100
    latency_images: int = 24
    workers: int | None = None


@dataclass(frozen=True)
class StaticSearchSettings:
    """The static baselines: the grid of pruning ratios per controllable scale (each also with the CFG
    branch dropped, plus skip), local refinement rounds, the per-prompt oracle over the
    ``oracle_candidates`` best grid schedules (0 = all) and the per-item results cache."""

    enabled: bool = True
    grid_ratios: tuple[float, ...] = DEFAULT_GRID_RATIOS
    refine_rounds: int = 3
    oracle: bool = True
    oracle_candidates: int = 32
    cache_dir: Path | None = Path("results") / "cache"


@dataclass(frozen=True)
class CompareRequest:
    """Everything compare mode was asked, unchecked. ``runs`` empty = the latest finished run under
    ``runs_dir``; ``budget`` / ``budgets``: ``--budget B`` / ``--budgets B ...`` (fractions of the unpruned
    transformer FLOPs or multiples of FastVAR's, ``"0.8fastvar"``), None when not given."""

    runs: tuple[Path, ...] = ()
    runs_dir: Path = Path("runs")
    test: ItemRequest = ItemRequest("test", 100, (0, 1, 2))
    search: ItemRequest = ItemRequest("val", 100, (0,), flag="--search-prompts", seeds_flag="--search-seeds")
    static: StaticSearchSettings = StaticSearchSettings()
    generation: GenerationSettings = GenerationSettings()
    budget: float | None = None
    budgets: tuple[str, ...] | None = None
    judge_weights: Path | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    out: Path | None = None
    json: Path | None = None
    grid_prompts: int = 6


# ---- what will be compared --------------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    """A train.py run: its directory, its row label (the folder name, with its parent where names
    clash), its saved config and environment config, and the first scale its agent controls."""

    path: Path
    label: str
    config: dict
    env: object                 # envs.config.EnvConfig
    first_controllable: int


@dataclass(frozen=True)
class BudgetSpec:
    """One ``--budgets`` token: a fraction of the unpruned transformer FLOPs, or (``of_fastvar``) a
    multiple of FastVAR's fraction."""

    token: str
    value: float
    of_fastvar: bool

    def fraction(self, fastvar_fraction: float) -> float:
        """The budget as a fraction of the unpruned transformer FLOPs."""
        return self.value * fastvar_fraction if self.of_fastvar else self.value


@dataclass(frozen=True)
class BudgetRequest:
    """The budgets every budget-conditioned run is evaluated at; ``explicit``: given with --budget /
    --budgets (then every run must be budget-conditioned)."""

    specs: tuple[BudgetSpec, ...]
    explicit: bool

    @property
    def tokens(self) -> list[str]:
        return [s.token for s in self.specs]


@dataclass(frozen=True)
class ItemSets:
    """The (prompt, seed) items: ``test`` (scored) from ``test_prompts``, ``search`` (the static
    schedule is chosen on them) from ``search_prompts``."""

    test_source: str
    test_prompts: list[str]
    seeds: list[int]
    test: list[tuple[str, int]]
    search_source: str
    search: list[tuple[str, int]]


@dataclass(frozen=True)
class AgentRow:
    """One agent row of the table: ``name`` ("rl:LABEL", "rl:LABEL@0.300" when several budgets), its
    run and the FLOPs budget it is given (None for a run that is not budget-conditioned). ``na``: why the
    agent has no images at this budget ("budget 0.95 outside the trained range [0.25, 0.6]"), None where
    it is run; the row's static, oracle and random baselines are computed at the budget either way."""

    name: str
    run: RunInfo
    budget: float | None
    na: str | None = None

    @property
    def note(self) -> str:
        return f"{self.run.path}" + ("" if self.budget is None else f", budget {self.budget:.3f}")


def agent_suffix(agent_name: str, num_agents: int) -> str:
    """What a baseline row made for one agent ("random", "best_static", "oracle") appends to its name:
    nothing with one agent, else ":LABEL[@BUDGET]" (the agent's name without "rl:")."""
    return "" if num_agents == 1 else f":{agent_name[3:]}"


@dataclass(frozen=True)
class ComparePlan:
    """A checked request with everything resolved that needs no model: ``first_controllable`` is the
    first scale the static grid controls, ``domain_prompts`` whether the prompts are the procedural
    domain's (checked against its grammar, scored by DomainEval), ``out`` the output folder."""

    request: CompareRequest
    runs: tuple[RunInfo, ...]
    items: ItemSets
    budgets: BudgetRequest
    first_controllable: int
    domain_prompts: bool
    out: Path


# ---- checks -----------------------------------------------------------------------------------------

def check_request(request: CompareRequest) -> None:
    """The counts and lists of compare mode (ValueError naming the flag, its value and what is allowed)."""
    from rewards.stats import check_unique
    from generator.checks import check_non_negative, check_positive

    check_positive("--num-prompts", request.test.num_prompts)
    check_positive("--search-num-prompts", request.search.num_prompts)
    check_non_negative("--refine-rounds", request.static.refine_rounds)
    check_positive("--batch-size", request.generation.batch_size)
    check_non_negative("--latency-images", request.generation.latency_images)
    check_non_negative("--oracle-candidates", request.static.oracle_candidates)
    for items in (request.test, request.search):
        check_unique(f"seeds in {items.seeds_flag} {' '.join(map(str, items.seeds))}", list(items.seeds))
    ratios = request.static.grid_ratios
    for r in ratios:
        if not 0.0 <= r < 0.9:
            raise ValueError(f"--grid-ratios must be pruning ratios in [0, 0.9) (skip is always in the grid), got {r:g}")
    if len(set(ratios)) != len(ratios):
        raise ValueError(f"--grid-ratios lists a ratio twice: {' '.join(f'{r:g}' for r in ratios)}")
    check_non_negative("--grid-prompts", request.grid_prompts)
    if request.generation.workers is not None:
        check_positive("--workers", request.generation.workers)
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError('--workers needs Ray, which is not installed: pip install -e ".[ray]"')


def read_budget(token: str) -> BudgetSpec:
    """``0.3`` (a fraction of the unpruned transformer FLOPs), ``fastvar`` or ``0.8fastvar`` (a multiple
    of FastVAR's fraction; ``0.8xfastvar`` too)."""
    t = str(token).strip().lower()
    try:
        if t.endswith("fastvar"):
            return BudgetSpec(str(token), float(t[: -len("fastvar")].rstrip("x*") or "1"), True)
        return BudgetSpec(str(token), float(t), False)
    except ValueError:
        raise ValueError(f"--budgets: {token!r} is not a budget (a fraction such as 0.3, 'fastvar' or a multiple "
                         f"such as '0.8fastvar')") from None


def parse_budget(token: str, fastvar_fraction: float) -> float:
    """A ``--budgets`` token as a fraction of the unpruned transformer FLOPs (see ``read_budget``)."""
    return read_budget(token).fraction(fastvar_fraction)


def budget_request(budget: float | None, budgets: tuple[str, ...] | None) -> BudgetRequest:
    """The budgets asked for (default: FastVAR's FLOPs and 0.8x, 0.6x of them), each read, none twice
    (a duplicate across kinds, ``0.3`` and a multiple of FastVAR's that comes to 0.3, is found by
    ``agent_rows``)."""
    if budget is not None and budgets is not None:
        raise ValueError("--budget and --budgets cannot be combined (--budget B is --budgets B)")
    explicit = budget is not None or budgets is not None
    tokens = list(budgets) if budgets is not None else ([str(budget)] if budget is not None else list(DEFAULT_BUDGETS))
    specs = tuple(read_budget(t) for t in tokens)
    if len({(s.of_fastvar, round(s.value, 6)) for s in specs}) != len(specs):
        raise ValueError(f"--budgets lists a budget twice: {' '.join(tokens)}")
    return BudgetRequest(specs, explicit)


def check_budget_value(token: str, budget: float) -> None:
    """A budget is a fraction of the unpruned transformer FLOPs in (0, 1] (ValueError naming the token)."""
    if not (budget == budget and 0.0 < budget <= 1.0 + BUDGET_TOLERANCE):
        given = "" if token == f"{budget:g}" else f" ({token})"
        raise ValueError(f"--budgets: budget {budget:.4f}{given} is outside (0, 1]: a budget is a fraction of the "
                         "unpruned transformer FLOPs")


def outside_range(budget: float, run: RunInfo) -> str | None:
    """Why ``run``'s agent is n/a at ``budget`` ("budget 0.95 outside the trained range [0.25, 0.6]"), or
    None where the budget lies in the range it was trained on."""
    lo, hi = run.env.budget_range
    if lo - BUDGET_TOLERANCE <= budget <= hi + BUDGET_TOLERANCE:
        return None
    return f"budget {budget:.3g} outside the trained range [{lo:g}, {hi:g}]"


def check_budgets_fit_runs(budgets: BudgetRequest, runs: tuple[RunInfo, ...]) -> None:
    """Explicit budgets need budget-conditioned runs; an absolute budget must lie in (0, 1] (multiples of
    FastVAR's are checked by ``agent_rows``, which knows FastVAR's fraction). One outside a run's trained
    range is allowed: that run's agent row is n/a there (``agent_rows``)."""
    for spec in budgets.specs:
        if not spec.of_fastvar:
            check_budget_value(spec.token, spec.value)
    for run in runs:
        if run.env.budget_range is None and budgets.explicit:
            raise ValueError(f"--budget/--budgets given but {run.path} is not budget-conditioned (trained without "
                             "--budget-range)")


def agent_rows(runs: tuple[RunInfo, ...], budgets: BudgetRequest, fastvar_fraction: float) -> list[AgentRow]:
    """Every agent row: a budget-conditioned run once per budget, any other run once. ``fastvar_fraction``:
    FastVAR's transformer FLOPs fraction on this generator. A budget outside (0, 1], or twice, is an error
    naming it; one outside a run's trained range gives that run an n/a row (``AgentRow.na``)."""
    wanted = [s.fraction(fastvar_fraction) for s in budgets.specs]
    for spec, b in zip(budgets.specs, wanted):
        check_budget_value(spec.token, b)
    if len({round(b, 6) for b in wanted}) != len(wanted):
        raise ValueError(f"--budgets lists a budget twice: {' '.join(budgets.tokens)}")
    rows = []
    for run in runs:
        if run.env.budget_range is None:
            if budgets.explicit:
                raise ValueError(f"--budget/--budgets given but {run.path} is not budget-conditioned (trained without "
                                 "--budget-range)")
            rows.append(AgentRow(f"rl:{run.label}", run, None))
            continue
        for b in wanted:
            rows.append(AgentRow(f"rl:{run.label}" + ("" if len(wanted) == 1 else f"@{b:.3f}"), run, b,
                                 na=outside_range(b, run)))
    return rows


def check_rows_reachable(rows: list[AgentRow], floor_fraction) -> None:
    """Every n/a row's budget can be met by some schedule with its run's levers: ``floor_fraction(run)`` is
    the transformer FLOPs fraction with every controllable scale skipped (the static and random baselines
    are computed at the budget itself; an in-range budget is at or above it by training's own check)."""
    for row in rows:
        if row.na is None:
            continue
        floor = float(floor_fraction(row.run))
        if row.budget < floor - BUDGET_TOLERANCE:
            raise ValueError(f"--budgets: budget {row.budget:.4f} is below {floor:.4f}, the cheapest schedule on "
                             f"{row.run.path}'s controllable scales (every one skipped): no schedule can meet it")


def every_finished_run(runs_dir: Path) -> list[Path]:
    """Every finished train.py run directly under ``runs_dir``, oldest first: compare mode's default, so the
    learners trained side by side (``train.py``, ``--algo ppo``, ``--algo ppo-residual``, lossless runs) land
    in one table."""
    from agents.schedule import finished_runs

    cands = finished_runs(runs_dir)
    if not cands:
        raise FileNotFoundError(f"no finished train.py run under {runs_dir}/ (train one with `python train.py`, "
                                f"or pass --run DIR)")
    return cands


def resolve_runs(run_dirs: tuple[Path, ...], runs_dir: Path, static_search: bool,
                 same_quality: bool = True) -> tuple[RunInfo, ...]:
    """The runs to compare (default: every finished run under ``runs_dir``), each a finished train.py run; they
    must share the generator, its CFG scale, the quality weights (unless not ``same_quality``: the
    iso-quality tool judges them by DomainEval alone) and, for the static search, the first controllable
    scale. QUALITY is the budget objective's for every run (``RewardConfig.budget_quality``)."""
    from agents.schedule import RunError, read_run_config, served_file
    from envs.config import EnvConfig

    paths = list(run_dirs) or every_finished_run(runs_dir)
    if len(set(map(str, paths))) != len(paths):
        raise ValueError(f"--run lists the same run twice: {[str(r) for r in paths]}")
    names = [p.name for p in paths]  # the run's folder name, with its parent where names clash
    runs = []
    for p in paths:
        cfg = read_run_config(p)
        if served_file(p) is None:
            raise RunError(f"{p / 'best_model.zip'} is missing (did training finish? checkpoints are in "
                           f"{p / 'checkpoints'})")
        label = p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        runs.append(RunInfo(p, label, cfg, EnvConfig.from_dict(cfg["env"]),
                            cfg["observation_layout"]["first_controllable_scale"]))
    keys = {(r.env.generator, repr(r.env.cfg_scale)) for r in runs}  # repr: Infinity's cfg may be a per-scale list
    if len(keys) > 1:
        raise ValueError(f"runs were trained on different generators / CFG scales {sorted(keys)}: evaluate them separately")
    firsts = {r.first_controllable for r in runs}
    if len(firsts) > 1 and static_search:
        raise ValueError(f"runs control different scales (first controllable scale {sorted(firsts)}): evaluate them "
                         "separately (each gets a static baseline with the same levers)")
    quality_keys = {tuple((k, r.env.reward.to_dict()[k]) for k in ("clip_weight", "ssim_weight", "lpips_weight",
                                                                    "psnr_weight", "psnr_cap_db"))
                    for r in runs}
    if len(quality_keys) > 1 and same_quality:
        raise ValueError(f"runs weigh the quality terms differently {sorted(quality_keys)}: evaluate them separately")
    return tuple(runs)


def resolve_items(test: ItemRequest, search: ItemRequest, grammar: bool, static_search: bool) -> ItemSets:
    """Test and search items; with ``grammar`` every prompt must be in the procedural domain's grammar;
    a prompt in both sets is an error when the static schedule is searched (it must be chosen on
    prompts it is not scored on)."""
    from domain import load_prompts
    from evaluation.grid_evaluation import check_items

    prompts = load_prompts(test.source)[: test.num_prompts]
    items = check_items(prompts, list(test.seeds), f"{test.flag} {test.source}", grammar=grammar)
    search_prompts = load_prompts(search.source)[: search.num_prompts]
    val_items = check_items(search_prompts, list(search.seeds), f"{search.flag} {search.source}", grammar=grammar)
    overlap = sorted(set(prompts) & set(search_prompts))
    if overlap and static_search:
        raise ValueError(f"{len(overlap)} prompt(s) are both test and search prompts (e.g. {overlap[0]!r}): the static "
                         "baseline must be chosen on prompts it is not scored on")
    return ItemSets(test.source, prompts, list(test.seeds), items, search.source, val_items)


def check_paths(out: Path, json_path: Path | None, cache_dir: Path | None, judge_weights: Path | None) -> None:
    """Output folder, JSON file and cache folder must not be the other kind of thing already; given
    judge weights must exist (None where not used)."""
    for flag, path in (("--out", out), ("--cache-dir", cache_dir)):
        if path is not None and path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {path} is a file; it must be a folder (or not exist yet)")
    if json_path is not None and json_path.is_dir():
        raise ValueError(f"--json {json_path} is a folder; it must be a file name")
    if judge_weights is not None and not judge_weights.is_file():
        raise FileNotFoundError(f"--judge-weights {judge_weights} not found (a DomainEval judge weights file; "
                                "leave it out for the shipped one)")


def resolve_plan(request: CompareRequest) -> ComparePlan:
    """Check every argument of compare mode and resolve runs, items, budgets and paths: no generator,
    no metric model, no image. Raises naming the bad value."""
    check_request(request)
    budgets = budget_request(request.budget, request.budgets)
    runs = resolve_runs(request.runs, request.runs_dir, request.static.enabled)
    domain_prompts = runs[0].env.generator == "tiny"  # the procedural domain: prompts must be in its grammar
    items = resolve_items(request.test, request.search, domain_prompts, request.static.enabled)
    check_budgets_fit_runs(budgets, runs)
    out = request.out or Path("results") / ("eval_" + "+".join(r.path.name for r in runs))
    check_paths(out, request.json, request.static.cache_dir if request.static.enabled else None,
                request.judge_weights if domain_prompts else None)
    first = min(r.first_controllable for r in runs)  # (several only with --no-static-search)
    return ComparePlan(request, runs, items, budgets, first, domain_prompts, out)
