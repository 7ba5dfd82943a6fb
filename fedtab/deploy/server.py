"""The coordinator's side inside Flower's ServerApp process: run the federation, checkpoint, save.

Files in ``workdir`` (the coordinator's own disk): ``checkpoint.fedtab`` (after every round, atomic),
``status.json`` (``running`` / ``done`` / ``failed`` with the error), read by ``fedtab coordinator``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedtab.schema import atomic_write_text

CHECKPOINT = "checkpoint.fedtab"
STATUS = "status.json"
NODES = "nodes.json"  # node id -> site name, bound by the registered public keys (runner.bind_nodes)


def write_status(workdir: Path, attempt: str, state: str, **info) -> None:
    """``attempt`` names the coordinator run that reads it (a ServerApp orphaned by a killed
    coordinator may still write here; the resumed coordinator ignores it)."""
    atomic_write_text(workdir / STATUS, json.dumps({"state": state, "attempt": attempt, **info}))


def run_server(grid, *, config: str, output: str, workdir: str, resume: bool, round_timeout: float,
               attempt: str = "", release_dir: str = "", policy: str = "", join_timeout: float = 0.0) -> None:
    from fedtab.deploy.checkpoint import load_checkpoint, save_checkpoint
    from fedtab.deploy.consortium import consortium_job, load_consortium
    from fedtab.errors import FederationError
    from fedtab.federation.agreement import name_sites
    from fedtab.federation.coordinator import run_federation
    from fedtab.federation.flower_app import FlowerTransport

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    rounds: list[dict] = []
    events: list[str] = []  # the phases as they happen: 'fedtab coordinator' prints each new one

    def note(text: str) -> None:
        events.append(text)
        write_status(wd, attempt, "running", rounds=rounds, events=events)

    write_status(wd, attempt, "running")
    try:
        cfg, _ = load_consortium(config)
        synth, job = consortium_job(cfg)  # validated settings -> JobSpec (as `fedtab train` builds) + min_sites
        resume_state = load_checkpoint(wd / CHECKPOINT, job) if resume else None
        t0 = time.perf_counter()
        # A resumed run waits for the sites that were still training (a site lost earlier may stay away).
        expected = len(resume_state.active_sites) if resume_state is not None else len(cfg.sites)
        bound = ({int(k): v for k, v in json.loads((wd / NODES).read_text()).items()} if (wd / NODES).is_file()
                 else None)  # no keys in the consortium configuration: the names the sites state
        transport = FlowerTransport(grid, expected_sites=expected, timeout=round_timeout,
                                    min_sites=cfg.training.min_sites, join_timeout=join_timeout or round_timeout,
                                    on_wait=lambda n, k: note(f"waiting for sites: {n} of {k} connected"),
                                    names_by_node=bound)
        for reason in transport.refused:
            note(f"refused: {reason}")
        unknown = sorted(set(transport.sites) - set(cfg.sites))
        if unknown:
            raise FederationError(f"SuperNodes for {name_sites(unknown)} joined, but the consortium config names "
                                  f"only {name_sites(sorted(cfg.sites))}")
        absent = sorted(set(cfg.sites) - set(transport.sites))
        note(f"connected: {name_sites(transport.sites)}"
             + (f"; {name_sites(absent)} did not connect or were refused, going on without them "
                f"(training.min_sites = {cfg.training.min_sites})" if absent and resume_state is None else ""))

        def on_round(state) -> None:
            save_checkpoint(wd / CHECKPOINT, state, job)
            rounds.append({"round": state.rounds_done, "seconds": state.history[-1].seconds})
            write_status(wd, attempt, "running", rounds=rounds, events=events)

        def progress(event: str, info: dict) -> None:
            if event == "phase":
                note(str(info.get("name")))

        result = run_federation(transport, job, resume=resume_state, on_round=on_round, progress=progress)
        synth._set_result(result, job)
        synth.save(output)
        note(f"model written to {output}")
        verdict = None
        if result.ledgers_last_seen:
            note(f"{name_sites(list(result.ledgers_last_seen))} did not answer at the end: the model file holds "
                 "the last ledger seen before each dropped out")
        finished = sorted(set(result.ledgers) - set(result.ledgers_last_seen))  # the sites still there
        if release_dir:
            note(f"evaluation at {name_sites(finished)}: each draws the table and decides every "
                 "check against its own rows")
            verdict = _release(transport, synth, cfg, sites=finished, release_dir=release_dir,
                               policy=policy, model_path=output)
        acknowledged = transport.end()
        note(f"the job is over: the {len(transport.sites)} connected sites were told to stop "
             f"({len(acknowledged)} acknowledged)")
        write_status(wd, attempt, "done", output=output, rounds=rounds, seconds=time.perf_counter() - t0,
                     sites=finished, verdict=verdict, events=events)
    except BaseException as e:  # the sites keep serving: a coordinator run with --resume continues the job
        write_status(wd, attempt, "failed", error=str(e), error_class=type(e).__name__,
                     exit_code=int(getattr(e, "exit_code", 9)), events=events)
        raise


def _release(transport, synth, cfg, *, sites: list[str], release_dir: str, policy: str, model_path: str) -> dict:
    """Evaluation at the sites that trained, over the same Flower connection, then the release gate.

    Returns the verdict as a dict (for the status file); the report, audit record and (if released)
    the synthetic table are in ``release_dir``.
    """
    from fedtab.assess import evaluate_on, gate_and_write, sampling_settings
    from fedtab.errors import ReleaseRefusedError

    sampling = sampling_settings(synth, n=None, seed=cfg.seed, quantile_map=cfg.sampling.quantile_map)
    ev = evaluate_on(transport, synth, sampling, target=cfg.target, policy=policy or None, sites=sites)
    table = synth.sample_typed(sampling["n"], seed=sampling["seed"], quantile_map=sampling["quantile_map"])
    try:
        result = gate_and_write(synth, table, ev, release_dir, policy=policy or None, model_path=model_path)
    except ReleaseRefusedError as refused:
        result = refused.result
    return {"released": result.verdict.released, "release_dir": str(release_dir),
            "checks": [[c.name, c.value, c.threshold, c.passed, c.message] for c in result.verdict.checks]}
