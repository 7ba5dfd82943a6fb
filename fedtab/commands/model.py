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

from fedtab.commands.common import (QuietOpt, ReplaceOpt, SeedOpt, TableOpt, check_output_file, check_output_folder,
                                    check_seed, command, stderr, stdout)
from fedtab.commands.keys import TrustedKeyOpt
from fedtab.errors import ConfigError

TRANSPORT_HELP = ("How the simulated sites are run: inprocess (every site in this process) or flower (Flower's "
                  "simulation engine).")
TransportOpt = typer.Option("inprocess", "--transport", help=TRANSPORT_HELP,
                            click_type=click.Choice(["inprocess", "flower"]))
ConfigArg = typer.Argument(..., metavar="CONFIG", show_default=False,
                           help="Run configuration (TOML): sites, model, privacy, training, seed "
                                "(docs: Configuration).")
ModelArg = typer.Argument(..., metavar="MODEL", show_default=False, help="A model file written by 'fedtab train'.")


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
    config: Path = ConfigArg,
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE",
                                help="Model file to write (e.g. model.fedtab); replaced if it exists."),
    transport: str = TransportOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train a synthesizer across the sites named in CONFIG and write the model file.

    The seed is the configuration's 'seed' key: it fixes what may be public (initial weights, holdout
    split); the DP noise is secret and never seeded."""
    from fedtab.api import FederatedSynthesizer
    from fedtab.config import load_config

    cfg = load_config(config)
    check_output_file(output, replace=True, what="model file")  # before any site is asked
    with round_progress(not quiet) as on_event:
        synth = FederatedSynthesizer.from_config(cfg, transport=transport, progress=on_event)
        synth.fit({name: src for name, src in cfg.sites.items()})
    path = synth.save(output)
    if cfg.signing_key is not None:
        from fedtab.signing import fingerprint, load_signing_key

        stdout().print(f"model file signed by {fingerprint(load_signing_key(cfg.signing_key).public_key())}")
    _print_ledger(synth)
    choice = getattr(synth, "model_choice_", None)
    if choice is not None:  # the configuration named no model: say which was chosen, and why
        stdout().print(f"model: {choice.model} (chosen: {choice.reason})")
    stdout().print(f"model written to {path}")


def sample_cmd(
    model: Path = ModelArg,
    n: int = typer.Option(..., "-n", "--rows", metavar="N", help="Rows to draw (at least 1; the ceiling depends on "
                                                               "this machine's memory and is named when exceeded)."),
    output: str = typer.Option(..., "--output", "-o", metavar="FILE|URL",
                               help="Output .csv, .csv.gz or .parquet file, or a SQLAlchemy URL (with --table)."),
    table: Optional[str] = TableOpt,
    seed: Optional[int] = SeedOpt,
    replace: bool = ReplaceOpt,
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Match every column's marginal to the one the sites agreed on "
                                        "(post-processing, no privacy cost; default on)."),
    quantile_map: bool = typer.Option(False, "--quantile-map/--no-quantile-map",
                                      help="Map numerical columns onto the agreed marginals when sampling (helps "
                                           "tiny DP sites; can hurt columns with point masses). Default: off."),
    relabel: Optional[bool] = typer.Option(None, "--relabel/--no-relabel",
                                           help="For a model trained with a target: draw the target again from "
                                                "its two-way tables, or keep the generator's and rake onto them "
                                                "(default: redraw, unless a non-DP model is conditioned on the target)."),
    trusted_key: Optional[list[Path]] = TrustedKeyOpt,
) -> None:
    """Draw N synthetic rows from a model file (no site is asked, no privacy cost)."""
    import connectors
    from fedtab.commands.keys import load_model, trusted_keys

    if n < 1:
        raise ConfigError(f"The '-n' option must be a whole number >= 1. Got {n} instead.")
    check_seed(seed)
    trusted = trusted_keys(trusted_key)  # read (or refused) before any work
    check_output_file(output, replace=replace, what="synthetic table")
    synth = load_model(model, trusted)
    frame = synth.sample(n, seed=seed, calibrate=calibrate, quantile_map=quantile_map, relabel=relabel)
    connectors.write_table(frame, output, table=table, if_exists="replace" if replace else "fail")
    stdout().print(f"{len(frame)} synthetic rows written to {output}")


def demo_cmd(
    out: Path = typer.Option(Path("fedtab-demo"), "--out", metavar="DIR",
                             help="Folder for the demo's outputs (created if missing)."),
    epsilon: float = typer.Option(1.0, "--epsilon", metavar="EPSILON",
                                  help="Privacy budget per hospital (preprocessing included)."),
    rounds: int = typer.Option(10, "--rounds", metavar="N", help="Federated training rounds."),
    rows: Optional[int] = typer.Option(None, "-n", "--rows", min=1, metavar="N",
                                       help="Rows to draw (default: as many as the hospitals' training rows)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, metavar="SEED",
                             help="Job seed, in [0, 2**32): fixes what may be public (initial weights, holdout "
                                  "split, sampling); the DP noise is secret and never seeded."),
    quiet: bool = QuietOpt,
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
    for col in ("site", "budget", "epsilon spent", "releases", "ledger"):
        t.add_column(col)
    last_seen = set(getattr(synth, "ledgers_last_seen_", ()))
    for site, ledger in synth.privacy_ledger.items():
        budget = "non-DP" if ledger.epsilon_budget is None else f"{ledger.epsilon_budget:g}"
        spent = "exact (non-DP)" if not ledger.is_dp else f"{ledger.epsilon:.4f}"
        t.add_row(site, budget, spent, str(len(ledger.entries)),
                  "last seen before the site dropped out" if site in last_seen else "final")
    stderr().print(t)
    if last_seen:
        stderr().print(f"{len(last_seen)} site(s) dropped out before the job ended: their ledger here is the last one "
                       "their replies carried (every release of theirs in this model); a release whose reply never "
                       "arrived is only in the site's own ledger.")
