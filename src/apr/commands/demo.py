"""`apr demo`: show spawn/join on a few problems at once, on a fresh machine.

With a trained default model (models/default, looked up in the current directory and in
the repository this package sits in; or --model DIR) it solves the first validation problems
with the model on CPU, showing each spawn/join tree and the checker's verdict; without one it
shows the symbolic APR solver's threads and checks every answer.
"""

from __future__ import annotations

import random
from pathlib import Path

from rich.console import Console

from apr.arithmetic_labels import EXACT, LABEL
from apr.checker import check
from apr.commands.options import HelpFormatter, add_config_options, non_negative_int, positive_int
from apr.commands.trees import record_tree, solver_tree
from apr.countdown import TaskConfig, generate
from apr.errors import UserError
from apr.rng import derive_seed
from apr.runtime_config import RuntimeConfig, default_context
from apr.search import AprConfig, solve_apr


def solver_demo(n: int, seed: int, console: Console) -> int:
    cfg = AprConfig(budget_prefix=True)
    for i, p in enumerate(generate(n, seed, TaskConfig())):
        thread, _ = solve_apr(p.nums, p.target, cfg, random.Random(derive_seed(seed, i)))
        v = check(p.nums, p.target, thread.text())
        console.print(solver_tree(thread, f"problem {p.nums} -> {p.target}"))
        verdict = f"[green]correct[/] {' , '.join(v.path)}" if v.correct else f"[red]{v.reason}[/]"
        console.print(f"  checker: {verdict}; children: {thread.count_descendants()}\n")
    return 0


def find_default_model() -> Path | None:
    """models/default in the current directory, else in the repository this file sits in
    (an editable install); an installed wheel has no models folder and gets None."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        d = root / "models" / "default"
        if (d / "config.json").is_file():
            return d
    return None


def model_demo(model_dir: Path, n: int, console: Console, pool: int = 16, child_budget: int | None = None,
               arithmetic: str = "model") -> int:
    """Solve the first `pool` validation problems with the model on CPU (greedy), report how
    many it solved, and show n thread trees (spawned children under their parent): solved
    problems first, then unsolved ones, each labelled with the checker's verdict.
    `arithmetic` exact: the engine writes the results and goal tests (an ablation; the header says so)."""
    from apr.engine.spec import EngineSpec, make_engine
    from apr.datasets import default_problems, load_problems
    from apr.model_folder import load_model_info
    from apr.runtime import Runtime

    info = load_model_info(model_dir)
    problems = load_problems(default_problems(str(model_dir), info.task), max(n, pool))
    cfg = RuntimeConfig(child_budget=child_budget, context=min(default_context(info), 4096),  # bounded on CPU
                        max_in_flight=len(problems), arithmetic=arithmetic).resolve(info)
    mode = f", {LABEL} (the engine writes every operation's result and goal test)" if arithmetic == EXACT else ""
    console.print(f"[bold]Model {model_dir} ({info.method}, preset {info.preset}) on CPU, greedy{mode}, "
                  f"{len(problems)} validation problems:[/]")
    with make_engine(EngineSpec(model=str(model_dir), max_slots=64, context=cfg.context, device="cpu")) as engine:
        records = sorted(Runtime(engine, cfg).run(problems), key=lambda r: r.index)
    solved = [r for r in records if r.correct]
    shown = (solved + [r for r in records if not r.correct])[:n]
    console.print(f"[bold]solved {len(solved)} of {len(records)}[/]; showing {sum(r.correct for r in shown)} "
                  f"solved and {sum(not r.correct for r in shown)} unsolved:\n")
    for r in shown:
        console.print(f"[bold]problem {r.nums} -> {r.target}[/]")
        console.print(record_tree(r))
        verdict = f"[green]correct[/] {', '.join(r.answer)}" if r.correct else f"[red]incorrect[/]: {r.reason}"
        forced = f" ({r.forced_tokens} forced)" if r.arithmetic == EXACT else ""
        console.print(f"  checker: {verdict}; children {r.children}, total tokens {r.total_tokens}{forced}, "
                      f"sequential tokens {r.sequential_tokens}, {r.latency_s:.1f} s\n")
    return 0


# Options of one demo, with their defaults: given to the other demo they are refused.
MODEL_DEMO_OPTIONS, SOLVER_DEMO_OPTIONS = {"pool": 16, "child_budget": None}, {"seed": 0}


def cmd_demo(args) -> int:
    if args.model and args.solver:
        raise UserError("give --model (the model demo) or --solver (the solver demo), not both")
    if args.model and not (Path(args.model) / "config.json").is_file():
        raise UserError("not a model folder (no config.json)", args.model)
    console = Console()
    model = Path(args.model) if args.model else (None if args.solver else find_default_model())
    unused = SOLVER_DEMO_OPTIONS if model is not None else MODEL_DEMO_OPTIONS
    for name, default in unused.items():
        if getattr(args, name) != default:
            demo = f"the model demo ({model})" if model is not None else "the solver demo (no model)"
            raise UserError(f"--{name.replace('_', '-')} does not apply to {demo}")
    if model is not None:
        return model_demo(model, args.n, console, args.pool, args.child_budget, args.arithmetic)
    if args.arithmetic == EXACT:
        raise UserError("`arithmetic` exact needs a model (the symbolic solver's arithmetic is exact already)",
                        fields=("arithmetic",))
    console.print("[bold]No trained model found (models/default): showing the symbolic APR solver's threads.[/]")
    return solver_demo(args.n, args.seed, console)


def register(sub) -> None:
    p = sub.add_parser("demo", help="start here: solve a few problems, show their threads",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n", type=positive_int, default=3, help="thread trees to show")
    p.add_argument("--pool", type=positive_int, default=MODEL_DEMO_OPTIONS["pool"],
                   help="validation problems to solve (model demo)")
    add_config_options(p, RuntimeConfig, names=("child_budget", "arithmetic"))
    p.add_argument("--seed", type=non_negative_int, default=SOLVER_DEMO_OPTIONS["seed"],
                   help="solver demo: seed of the problems drawn")
    p.add_argument("--model", metavar="DIR", help="model folder (default: models/default when it exists)")
    p.add_argument("--solver", action="store_true", help="show the symbolic solver even when a model exists")
    p.set_defaults(func=cmd_demo)
