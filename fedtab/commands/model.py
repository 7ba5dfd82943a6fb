"""Model commands: ``fedtab train``, ``fedtab sample`` and ``fedtab demo``.

Thin wrappers over ``fedtab.api``: they parse options, show progress on stderr (a bar per round with
the losses and the largest epsilon spent by any site) and print where their outputs are.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedtab.commands.common import check_output_file, check_output_folder, command, stderr, stdout
from fedtab.errors import ConfigError

TRANSPORT_HELP = "inprocess (all sites in this process) or flower (Flower's simulation engine)."
TransportOpt = typer.Option("inprocess", "--transport", help=TRANSPORT_HELP,
                            click_type=click.Choice(["inprocess", "flower"]))


def register(app: typer.Typer) -> None:
    command(app, "train")(train_cmd)
    command(app, "sample")(sample_cmd)
    command(app, "demo")(demo_cmd)


@contextlib.contextmanager
def round_progress(enabled: bool = True):
    """A rich progress bar fed by the coordinator's progress events."""
    if not enabled:
        yield None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}"), console=stderr(), transient=False)
    state: dict = {}

    def on_event(event: str, info: dict) -> None:
        if event == "phase":
            if info["name"] == "training":
                state["task"] = bar.add_task("training rounds", total=info["rounds"], info="")
            else:
                bar.console.print(f"[bold]{info['name']}[/bold]")
        elif event == "round" and "task" in state:
            eps = max(info["epsilon"].values())
            eps_text = "non-DP" if eps == float("inf") else f"max epsilon {eps:.3f}"
            losses = " ".join(f"{k} {v:.3f}" for k, v in info["losses"].items())
            bar.update(state["task"], completed=info["round"], info=f"loss {losses} | {eps_text}" if losses else eps_text)

    with bar:
        yield on_event


def train_cmd(
    config: Path = typer.Argument(..., help="Run configuration (TOML): sites, model, privacy, training, seed."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write (e.g. model.fedtab)."),
    transport: str = TransportOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a federated synthesizer across the sites named in CONFIG and write the model file."""
    from fedtab.api import FederatedSynthesizer
    from fedtab.config import load_config

    cfg = load_config(config)
    check_output_file(output, replace=True, what="model file")  # before any site is asked
    with round_progress(not quiet) as on_event:
        synth = FederatedSynthesizer.from_config(cfg, transport=transport, progress=on_event)
        synth.fit({name: src for name, src in cfg.sites.items()})
    path = synth.save(output)
    _print_ledger(synth)
    choice = getattr(synth, "model_choice_", None)
    if choice is not None:  # the configuration named no model: say which was chosen, and why
        stdout().print(f"model: {choice.model} (chosen: {choice.reason})")
    stdout().print(f"model written to {path}")


def sample_cmd(
    model: Path = typer.Argument(..., help="A model file written by 'fedtab train'."),
    n: int = typer.Option(..., "-n", "--rows", help="Number of synthetic rows (at least 1; the ceiling depends on "
                                                   "this machine's memory and is named when exceeded)."),
    output: str = typer.Option(..., "--output", "-o", help="Output .csv, .csv.gz or .parquet file, or SQL URL."),
    table: Optional[str] = typer.Option(None, "--table", "-t", help="Table name, for a database URL."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed (default: the model's seed)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing output."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Match every column's marginal to the one the sites agreed on "
                                        "(post-processing, no privacy cost; default on)."),
    quantile_map: bool = typer.Option(False, "--quantile-map",
                                      help="Also map numerical columns onto the agreed distributions "
                                           "(helps tiny DP sites; can hurt columns with point masses)."),
    relabel: Optional[bool] = typer.Option(None, "--relabel/--no-relabel",
                                           help="For a model trained with a target: draw the target again from "
                                                "its two-way tables, or keep the generator's and rake onto them "
                                                "(default: redraw, unless a non-DP model is conditioned on the target)."),
) -> None:
    """Sample N synthetic rows from a model file."""
    import connectors
    from fedtab.api import load

    if n < 1:
        raise ConfigError(f"The '-n' option must be a whole number >= 1. Got {n} instead.")
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"The '--seed' option must be a whole number in [0, 2**32). Got {seed} instead.")
    check_output_file(output, replace=replace, what="synthetic table")
    synth = load(model)
    frame = synth.sample(n, seed=seed, calibrate=calibrate, quantile_map=quantile_map, relabel=relabel)
    connectors.write_table(frame, output, table=table, if_exists="replace" if replace else "fail")
    stdout().print(f"{len(frame)} synthetic rows written to {output}")


def demo_cmd(
    out: Path = typer.Option(Path("fedtab-demo"), "--out", help="Folder for the demo's outputs."),
    epsilon: float = typer.Option(1.0, "--epsilon", help="Privacy budget per hospital (preprocessing included)."),
    rounds: int = typer.Option(10, "--rounds", help="Federated rounds."),
    rows: Optional[int] = typer.Option(None, "--rows", min=1, help="Synthetic rows to sample (default: as many as the hospitals' training rows)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of what may be public: initial weights, "
                             "holdout split, sampling (the DP noise is secret, never seeded)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run the whole flow on the bundled UCI Heart Disease data (4 real hospitals, CC BY 4.0)."""
    from fedtab.demo import run_demo

    check_output_folder(out, what="demo's output folder")
    with round_progress(not quiet) as on_event:
        result = run_demo(out, epsilon=epsilon, rounds=rounds, rows=rows, seed=seed, progress=on_event)
    _print_ledger(result.synthesizer)
    console = stdout()
    console.print("[bold]fedtab demo finished[/bold]: 4 hospitals trained a DP-CTGAN without pooling rows.")
    for label, path in result.outputs.items():
        console.print(f"  {label}: {path}")
    from fedtab.commands.release import print_verdict
    from fedtab.demo import site_reports_dir

    console.print(f"  each hospital's own report (its figures; not for publication): {site_reports_dir(out)}/<hospital>")
    print_verdict(result.verdict)
    if not result.verdict.released:
        console.print("The gate refused this table: nothing was released; the public report says which checks "
                      "failed where, each hospital's own report why.")


def _print_ledger(synth) -> None:
    from rich.table import Table

    t = Table(title="privacy ledger (per site)")
    for col in ("site", "budget", "epsilon spent", "releases"):
        t.add_column(col)
    for site, ledger in synth.privacy_ledger.items():
        budget = "non-DP" if ledger.epsilon_budget is None else f"{ledger.epsilon_budget:g}"
        spent = "exact (non-DP)" if not ledger.is_dp else f"{ledger.epsilon:.4f}"
        t.add_row(site, budget, spent, str(len(ledger.entries)))
    stderr().print(t)
