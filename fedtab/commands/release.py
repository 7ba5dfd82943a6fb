"""``fedtab evaluate`` and ``fedtab release``: federated evaluation and the release gate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedtab.commands.common import (PolicyOpt, QuietOpt, SeedOpt, SiteReportsOpt, check_output_file,
                                    check_output_folder, check_seed, command, stdout)
from fedtab.commands.keys import TrustedKeyOpt
from fedtab.commands.model import ConfigArg, ModelArg, TransportOpt, round_progress

TargetOpt = typer.Option(None, "--target", metavar="COLUMN",
                         help="Target column for the utility figures (default: the configuration's 'target').")
QuantileMapOpt = typer.Option(
    None, "--quantile-map/--no-quantile-map",
    help="Map numerical columns onto the agreed marginals when sampling (helps tiny DP sites; can hurt columns "
         "with point masses). Default: the configuration's sampling.quantile_map.")
RowsOpt = typer.Option(None, "-n", "--rows", min=1, metavar="N",
                       help="Rows each site draws. Default: the sites' total training rows, as they reported them "
                            "(noisy under DP).")


def _quantile_map(cfg, flag: bool | None) -> bool:
    """The --quantile-map flag, else the run configuration's [sampling] quantile_map."""
    return cfg.sampling.quantile_map if flag is None else flag


def register(app: typer.Typer) -> None:
    command(app, "evaluate")(evaluate_cmd)
    command(app, "release")(release_cmd)


def evaluate_cmd(
    model: Path = ModelArg,
    config: Path = ConfigArg,
    output: Path = typer.Option(Path("report.html"), "--output", "-o", metavar="FILE",
                                help="Public report to write (HTML; its JSON beside it); replaced if it exists."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", hidden=True,
                                            help="No longer accepted (sites score only tables they draw)."),
    rows: Optional[int] = RowsOpt,
    target: Optional[str] = TargetOpt,
    seed: Optional[int] = SeedOpt,
    transport: str = TransportOpt,
    quantile_map: Optional[bool] = QuantileMapOpt,
    policy: Optional[Path] = PolicyOpt,
    site_reports: Optional[Path] = SiteReportsOpt,
    trusted_key: Optional[list[Path]] = TrustedKeyOpt,
) -> None:
    """Score a model at every site and write the public report.

    Every site draws the same table from the model, scores it against its own rows and decides each
    check of the policy at home; only its verdicts leave it."""
    from fedtab.assess import evaluate, write_public
    from fedtab.commands.keys import load_model, trusted_keys
    from fedtab.config import load_config
    from fedtab.errors import ConfigError

    if synthetic is not None:
        raise ConfigError("--synthetic is no longer accepted: sites evaluate only tables they draw themselves from "
                          "the model they trained. Give --rows, --seed and --quantile-map instead; 'fedtab sample' "
                          "with the same settings draws the same table.")
    check_seed(seed)
    trusted = trusted_keys(trusted_key)  # read (or refused) before any work
    cfg = load_config(config)
    check_output_file(output, replace=True, what="public report")  # before any site is asked
    check_output_file(Path(output).with_suffix(".json"), replace=True, what="public figures")
    if site_reports is not None:
        check_output_folder(site_reports, what="site reports folder")
    synth = load_model(model, trusted)
    ev = evaluate(synth, dict(cfg.sites), n=rows, target=target or cfg.target, seed=seed, transport=transport,
                  ledger_dir=cfg.ledger_dir, quantile_map=_quantile_map(cfg, quantile_map), policy=policy,
                  report_dir=site_reports)
    verdict, html, js = write_public(synth, ev, output, policy=policy)
    print_verdict(verdict)
    stdout().print(f"public report: {html}\npublic figures: {js}")
    _where_site_reports(cfg, site_reports)


def release_cmd(
    config: Path = ConfigArg,
    policy: Optional[Path] = PolicyOpt,
    out: Path = typer.Option(Path("fedtab-release"), "--out", metavar="DIR",
                             help="Folder for the public report, audit record and (if released) the table."),
    model: Optional[Path] = typer.Option(None, "--model", metavar="FILE",
                                         help="Use this model file (written by 'fedtab train') instead of training."),
    rows: Optional[int] = RowsOpt,
    target: Optional[str] = TargetOpt,
    seed: Optional[int] = SeedOpt,
    transport: str = TransportOpt,
    quantile_map: Optional[bool] = QuantileMapOpt,
    site_reports: Optional[Path] = SiteReportsOpt,
    quiet: bool = QuietOpt,
    trusted_key: Optional[list[Path]] = TrustedKeyOpt,
) -> None:
    """Train (or load) a model and release its table only if every site passes every check.

    Every site draws the table from the model and decides each check at home; a refusal exits with
    code 10 and releases nothing."""
    from fedtab.api import FederatedSynthesizer
    from fedtab.assess import release
    from fedtab.commands.keys import load_model, trusted_keys
    from fedtab.config import load_config

    check_seed(seed)
    trusted = trusted_keys(trusted_key)  # read (or refused) before any work
    cfg = load_config(config)
    check_output_folder(out, what="release folder")  # before any site is asked
    if site_reports is not None:
        check_output_folder(site_reports, what="site reports folder")
    if model is not None:
        synth = load_model(model, trusted)
    else:
        with round_progress(not quiet) as on_event:
            synth = FederatedSynthesizer.from_config(cfg, transport=transport, progress=on_event).fit(dict(cfg.sites))
    result = release(synth, dict(cfg.sites), out, policy=policy, n=rows, target=target or cfg.target, seed=seed,
                     transport=transport, model_path=model, ledger_dir=cfg.ledger_dir,
                     quantile_map=_quantile_map(cfg, quantile_map), report_dir=site_reports,
                     signing_key=cfg.signing_key)
    print_verdict(result.verdict)
    for label, path in result.outputs.items():
        stdout().print(f"  {label}: {path}")
    _where_site_reports(cfg, site_reports)


def print_verdict(verdict) -> None:
    from rich.table import Table

    t = Table(title=f"release gate: {'RELEASED' if verdict.released else 'REFUSED'}")
    values = any(c.value is not None for c in verdict.checks)  # a site's own verdict has figures
    for c in ("check", *(("value",) if values else ()), "rule", "passed"):
        t.add_column(c)
    for c in verdict.checks:
        value = ("n/a" if c.value is None else f"{c.value:.3f}",) if values else ()
        t.add_row(c.name, *value, c.threshold, "yes" if c.passed else "NO")
    stdout().print(t)


def _where_site_reports(cfg, site_reports: Path | None) -> None:
    """Where each site's own report went (it holds figures from the site's rows: not for publication)."""
    where = (site_reports / "<site>" if site_reports is not None else
             None if cfg.ledger_dir is None else Path(cfg.ledger_dir) / "<site>" / "reports")
    if where is None:
        stdout().print("  each site's own report: not kept (give the configuration a 'ledger_dir', or --site-reports)")
    else:
        stdout().print(f"  each site's own report (its figures; not for publication): {where}")
