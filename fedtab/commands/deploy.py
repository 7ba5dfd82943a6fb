"""Deployment commands: ``fedtab coordinator`` and ``fedtab site`` (one process per institution).

Thin wrappers over ``fedtab.deploy.runner``; see the README section "Deploying across institutions".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedtab.commands.common import PolicyOpt, ReplaceOpt, check_output_folder, check_output_file, command, stderr, stdout
from fedtab.errors import ConfigError


def register(app: typer.Typer) -> None:
    command(app, "coordinator")(coordinator_cmd)
    from fedtab.commands.keys import add_site_group

    add_site_group(app, site_cmd)  # 'fedtab site --config site.toml' and 'fedtab site keygen PATH'
    command(app, "trial-keys")(trial_keys_cmd)
    command(app, "trial-data")(trial_data_cmd)


def coordinator_cmd(
    config: Path = typer.Argument(..., metavar="CONFIG", show_default=False,
                                  help="Consortium configuration (TOML): sites and their public keys, model, "
                                       "privacy, training, seed (docs: Configuration)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Model file to write (e.g. model.fedtab)."),
    superlink: Optional[str] = typer.Option(None, "--superlink", metavar="HOST:PORT",
                                            help="Join a running SuperLink instead of starting one."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this output."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST", help="Address the started SuperLink listens on."),
    port: int = typer.Option(9093, "--port", metavar="PORT",
                             help="Port of the started SuperLink (one port for all its APIs)."),
    ssl_certfile: Optional[Path] = typer.Option(None, "--ssl-certfile", metavar="FILE",
                                                help="SuperLink TLS certificate (PEM)."),
    ssl_keyfile: Optional[Path] = typer.Option(None, "--ssl-keyfile", metavar="FILE",
                                               help="SuperLink TLS private key (PEM)."),
    ssl_ca_certfile: Optional[Path] = typer.Option(None, "--ssl-ca-certfile", metavar="FILE",
                                                   help="CA certificate (PEM) that signed it; the sites verify the "
                                                        "SuperLink with it."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS (loopback experiments only)."),
    round_timeout: float = typer.Option(600.0, "--round-timeout", metavar="SECONDS",
                                        help="Seconds to wait for a site's reply."),
    release: Optional[Path] = typer.Option(None, "--release", metavar="DIR",
                                           help="After training, evaluate at the sites and apply the release gate "
                                                "(--policy); write report, audit record and (if released) the "
                                                "synthetic table in this folder. Exit code 10 if refused."),
    policy: Optional[Path] = PolicyOpt,
    wait_for_sites: Optional[float] = typer.Option(
        None, "--wait-for-sites", metavar="SECONDS", min=1.0,
        help="How long to wait for every site to connect; then the job goes on with the sites connected if "
             "they are at least training.min_sites. Default: --round-timeout."),
) -> None:
    """Start (or join) a Flower SuperLink and train the consortium's model across the connected sites.

    Everything that can be checked here is checked before any process starts: the configuration, its
    schema file and settings, the public keys, the TLS files, the policy, the output paths."""
    from fedtab.deploy.runner import TLSFiles, check_coordinator, run_coordinator

    tls_files = (ssl_certfile, ssl_keyfile, ssl_ca_certfile)
    if any(tls_files) and not all(tls_files):
        raise ConfigError("give all three of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, or none")
    tls = TLSFiles(*tls_files) if all(tls_files) else None
    console = stderr()
    _, _, synth, job = check_coordinator(config, tls=tls, insecure=insecure, policy=policy)
    check_output_file(output, replace=True, what="model file")
    if release is not None:
        check_output_folder(release, what="release folder")
    if synth.model == "auto":
        console.print(f"model: {job.model} (chosen: {synth.model_choice_.reason})")

    def on_round(r: dict) -> None:
        console.print(f"round {r['round']} done in {r['seconds']:.1f} s")

    status = run_coordinator(config, output, superlink=superlink, resume=resume, port=port, host=host, tls=tls,
                             insecure=insecure, round_timeout=round_timeout, on_round=on_round,
                             release_dir=release, policy=policy, join_timeout=wait_for_sites,
                             on_event=lambda text: console.print(text, markup=False))
    from fedtab.federation.agreement import name_sites

    stdout().print(f"model written to {status['output']} (trained by {name_sites(status.get('sites', []))})")
    verdict = status.get("verdict")
    if verdict is not None:
        _report_verdict(verdict)


def _report_verdict(verdict: dict) -> None:
    from fedtab.errors import ReleaseRefusedError
    from fedtab.release import Check, Verdict
    from fedtab.commands.release import print_verdict

    checks = tuple(Check(*c) for c in verdict["checks"])
    print_verdict(Verdict(released=verdict["released"], checks=checks))
    stdout().print(f"report, audit record{' and synthetic table' if verdict['released'] else ''}: "
                   f"{verdict['release_dir']}")
    if not verdict["released"]:
        failed = "\n".join(f"  - {c.message}" for c in checks if not c.passed)
        raise ReleaseRefusedError(f"the release gate refused the synthetic table; nothing was released:\n{failed}")


def site_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE",
                                          help="This site's site.toml (docs: Configuration, site.toml)."),
) -> None:
    """Serve this site: its table stays here; a Flower SuperNode connects it to the coordinator.

    'fedtab site keygen PATH' makes the site's key pair here (only PATH.pub goes to the coordinator)."""
    from fedtab.deploy.runner import run_site

    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise ConfigError("Missing option '--config': give this site's site.toml (or run 'fedtab site keygen PATH' "
                          "to make its key pair).")

    run_site(config, on_event=lambda message: stderr().print(message, markup=False))


def trial_keys_cmd(
    out: Path = typer.Argument(..., metavar="DIR", show_default=False,
                               help="Folder for the keys and certificates (created if missing)."),
    site: list[str] = typer.Option(..., "--site", metavar="NAME", help="A site name (repeat for each site)."),
    host: list[str] = typer.Option(["127.0.0.1", "localhost"], "--host", metavar="HOST",
                                   help="A name or IP address the SuperLink's certificate is valid for (repeat "
                                        "for several)."),
) -> None:
    """Make a self-signed CA, a SuperLink certificate and one SuperNode key per site (trials only).

    Every site's private key is made here, at the coordinator: that is for a trial. In a consortium
    each site runs 'fedtab site keygen PATH' and sends only PATH.pub."""
    from fedtab.config import check_site_names
    from fedtab.deploy.pki import make_node_key, make_tls, node_key_files, tls_files
    from fedtab.signing import check_new_files

    problems = check_site_names(site)
    if problems:  # a name becomes a file name: '../evil' would write outside OUT
        raise ConfigError("--site: " + "; ".join(problems))
    check_output_folder(out, what="keys folder")
    check_new_files([*tls_files(out), *(f for name in site for f in node_key_files(out, name))])  # none written yet
    pki = make_tls(out, hosts=tuple(host))
    console = stdout()
    console.print(f"CA certificate: {pki.ca_certfile}\nSuperLink certificate: {pki.certfile}\n"
                  f"SuperLink key: {pki.keyfile}")
    for name in site:
        private, public = make_node_key(out, name)
        console.print(f"site '{name}': private key {private} (stays at the site), public key {public}")


def trial_data_cmd(
    out: Path = typer.Argument(..., metavar="DIR", show_default=False,
                               help="Folder for the files (created if missing)."),
    replace: bool = ReplaceOpt,
) -> None:
    """Write the bundled heart tables (one CSV per hospital) and their schema, for a trial deployment.

    The deployment guide's walk-through runs on these files (docs/deployment.md).
    heart_schema.json is the consortium's declared schema: public clinical ranges, not observed values."""
    from fedtab.datasets import HEART_SITES, heart_site_path
    from fedtab.schema import atomic_write_bytes

    files = {f"heart_{s}.csv": heart_site_path(s) for s in HEART_SITES}
    files["heart_schema.json"] = heart_site_path(HEART_SITES[0]).parent / "heart_schema.json"
    check_output_folder(out, what="trial data folder")
    for name in files:  # every file checked before any is written
        check_output_file(Path(out) / name, replace=replace, what="trial data file")
    console = stdout()
    for name, source in files.items():
        atomic_write_bytes(Path(out) / name, source.read_bytes())
        console.print(f"{Path(out) / name}")
