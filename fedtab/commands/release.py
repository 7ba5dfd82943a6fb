"""``fedtab evaluate`` and ``fedtab release``: federated evaluation and the release gate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedtab.commands.common import command, stdout
from fedtab.commands.model import TRANSPORT_HELP, round_progress

TargetOpt = typer.Option(None, "--target", help="Target column for the utility figures (default: the config's).")
QuantileMapOpt = typer.Option(
    None, "--quantile-map/--no-quantile-map",
    help="Map numerical columns onto the agreed marginals when sampling (default: the configuration's "
         "[sampling] quantile_map).")


def _quantile_map(cfg, flag: bool | None) -> bool:
    """The --quantile-map flag, else the run configuration's [sampling] quantile_map."""
    return cfg.sampling.quantile_map if flag is None else flag


def register(app: typer.Typer) -> None:
    command(app, "evaluate")(evaluate_cmd)
    command(app, "release")(release_cmd)


def evaluate_cmd(
    model: Path = typer.Argument(..., help="A model file written by 'fedtab train'."),
    config: Path = typer.Argument(..., help="The run configuration naming the sites (TOML)."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML report to write (JSON beside it)."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Score this table instead of sampling."),
    rows: Optional[int] = typer.Option(None, "-n", "--rows", help="Rows to sample (default: the sites' total)."),
    target: Optional[str] = TargetOpt,
    seed: Optional[int] = typer.Option(None, "--seed"),
    transport: str = typer.Option("inprocess", "--transport", help=TRANSPORT_HELP),
    quantile_map: Optional[bool] = QuantileMapOpt,
) -> None:
    """Score a model's synthetic table at every site; only aggregate figures leave a site."""
    import connectors
    from evaluation.report import write_json, write_report
    from fedtab.api import load
    from fedtab.assess import evaluate
    from fedtab.config import load_config

    cfg = load_config(config)
    synth = load(model)
    table = connectors.read_table(synthetic, schema=synth.schema_) if synthetic else None
    ev = evaluate(synth, dict(cfg.sites), synthetic=table, n=rows, target=target or cfg.target, seed=seed,
                  transport=transport, ledger_dir=cfg.ledger_dir,
                  quantile_map=_quantile_map(cfg, quantile_map))
    ledger = {s: led.to_dict() for s, led in synth.privacy_ledger.items()}
    html = write_report(ev, output, ledger=ledger)
    js = write_json(ev, output.with_suffix(".json"), ledger=ledger)
    _print_figures(ev)
    stdout().print(f"report: {html}\nfigures: {js}")


def release_cmd(
    config: Path = typer.Argument(..., help="The run configuration (TOML): sites, model, privacy, training."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Release policy (TOML); default: the shipped one."),
    out: Path = typer.Option(Path("fedtab-release"), "--out", help="Folder for the outputs."),
    model: Optional[Path] = typer.Option(None, "--model", help="Use this model file instead of training."),
    rows: Optional[int] = typer.Option(None, "-n", "--rows", help="Rows to sample (default: the sites' total)."),
    target: Optional[str] = TargetOpt,
    seed: Optional[int] = typer.Option(None, "--seed"),
    transport: str = typer.Option("inprocess", "--transport", help=TRANSPORT_HELP),
    quantile_map: Optional[bool] = QuantileMapOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train (or load) a model, sample, evaluate at the sites, and release only if every check passes."""
    from fedtab.api import FederatedSynthesizer, load
    from fedtab.assess import release
    from fedtab.config import load_config

    cfg = load_config(config)
    if model is not None:
        synth = load(model)
    else:
        with round_progress(not quiet) as on_event:
            synth = FederatedSynthesizer.from_config(cfg, transport=transport, progress=on_event).fit(dict(cfg.sites))
    result = release(synth, dict(cfg.sites), out, policy=policy, n=rows, target=target or cfg.target, seed=seed,
                     transport=transport, model_path=model, ledger_dir=cfg.ledger_dir,
                     quantile_map=_quantile_map(cfg, quantile_map))
    print_verdict(result.verdict)
    for label, path in result.outputs.items():
        stdout().print(f"  {label}: {path}")


def print_verdict(verdict) -> None:
    from rich.table import Table

    t = Table(title=f"release gate: {'RELEASED' if verdict.released else 'REFUSED'}")
    for c in ("check", "value", "threshold", "passed"):
        t.add_column(c)
    for c in verdict.checks:
        t.add_row(c.name, "n/a" if c.value is None else f"{c.value:.3f}", c.threshold, "yes" if c.passed else "NO")
    stdout().print(t)


def _print_figures(ev) -> None:
    from rich.table import Table

    t = Table(title="evaluation (row-weighted over sites)")
    t.add_column("figure")
    t.add_column("value")
    for k, v in ev.figures.items():
        t.add_row(k, "n/a" if v is None else f"{v:.3f}")
    stdout().print(t)
