"""Command line of the jobs: `python jobs/<job>.py [--config X.yaml] [--run-dir D] [--preset P] [k=v ...]`.

Before Ray starts, the config is validated and `preflight` checks everything it names (files,
rows, tokenizers, judge labels, the run directory): each problem is one line and exit code 2,
within seconds. Re-running into a run directory that holds a checkpoint resumes it, and a change
of a key that makes that unsafe (model, loss, K, ...) is refused the same way. A built-in model
is built next, still before Ray. Under `ray job submit` (RAY_ADDRESS set) or with `--address`,
the job joins that cluster; otherwise it starts a local Ray with `cluster.num_cpus` logical CPUs.
With `monitoring.console: quiet` (the default) library output goes to `<run>/logs/` and the
terminal shows the console (`monitoring.console`); the driver keeps `<run>/driver.json` alive
for `apo-pipeline status`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path

from apo_pipeline.config import JOB_CONFIGS, BaseJobConfig, ConfigError, load_config
from apo_pipeline.config.schema import LOCAL_NUM_CPUS
from apo_pipeline.loops.stop import RunStopped
from apo_pipeline.monitoring.actor_logs import driver_output_to, job_runtime_env
from apo_pipeline.monitoring.console import Console, ConsoleHandler, activate, active, announce, clock
from apo_pipeline.monitoring.run_state import DriverRecord
from apo_pipeline.monitoring.status import ROUNDS_KEY
from apo_pipeline.preflight import preflight
from apo_pipeline.storage.rundir import RunDir

CONFIG_DIR = Path(__file__).resolve().parents[1] / "jobs" / "configs"
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
log = logging.getLogger("apo_pipeline")
LOOP_MODULES = {"onmcpo": "apo_pipeline.loops.onmcpo", "apo": "apo_pipeline.loops.apo", "mcpo": "apo_pipeline.loops.mcpo"}


def parse_args(job: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"jobs/{job}.py", description=f"Run the {job} loop.")
    p.add_argument("--config", help=f"YAML config (default: jobs/configs/{job}.yaml)")
    p.add_argument("--run-dir", help=f"run directory (default: runs/{job})")
    p.add_argument("--preset", help="preset name (jobs/configs/presets/<job>-<name>.yaml) or a YAML path")
    p.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS, else cluster.address, else a local Ray); sets cluster.address")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied last")
    return p.parse_args(argv)


def resolve_preset(job: str, preset: str | None) -> Path | None:
    if preset is None:
        return None
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = CONFIG_DIR / "presets" / f"{job}-{preset}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem.removeprefix(f"{job}-") for p in (CONFIG_DIR / "presets").glob(f"{job}-*.yaml"))
        raise ConfigError(f"--preset: no preset {preset!r} for {job}; known: {', '.join(known) or 'none'}")
    return candidate


def resolve_config(job: str, args: argparse.Namespace) -> BaseJobConfig:
    """Defaults -> config file -> preset -> overrides; raises ConfigError naming the key."""
    config_file = Path(args.config) if args.config else CONFIG_DIR / f"{job}.yaml"
    address = joined_address(args.address)  # set before validation: a joined cluster is not held to the local CPUs
    overrides = [*args.overrides, *([f"cluster.address={address}"] if address else [])]
    return load_config(JOB_CONFIGS[job], config_file, overrides, resolve_preset(job, args.preset))


def joined_address(address: str | None) -> str | None:
    """The Ray cluster the job joins: `--address`, else RAY_ADDRESS (`ray job submit` sets it), else
    None (then `cluster.address`, or a new local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: BaseJobConfig, address: str | None, log_dir: Path | None = None) -> str | None:
    """Join the job's cluster if there is one, else start a local Ray (dashboard on 127.0.0.1).

    `log_dir` (quiet console): actor output goes to files there, not to this terminal
    (`monitoring.actor_logs`). Returns the dashboard URL (None without a dashboard).
    """
    import ray

    address = joined_address(address) or cfg.cluster.address
    common = {"namespace": f"apo-{cfg.name}", "runtime_env": job_runtime_env(log_dir), "log_to_driver": log_dir is None}
    if address:
        ctx = ray.init(address=address, **common)
    else:
        ctx = ray.init(
            address="local",  # a new local Ray, never one some `ray start` left running
            num_cpus=cfg.cluster.num_cpus or LOCAL_NUM_CPUS,
            num_gpus=cfg.cluster.num_gpus if cfg.cluster.use_gpu else 0,
            dashboard_host="127.0.0.1",
            include_dashboard=True,
            **common,
        )
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def prepare_model(cfg: BaseJobConfig) -> Path:
    """Resolve model.path before Ray starts: a built-in model is built here on first use (the tiny
    model's warm-up shows its progress), so the actors find it cached."""
    from apo_pipeline.task import resolve_model

    start = time.time()
    path = resolve_model(cfg.model.path, seed=cfg.seed)
    if path.stat().st_mtime >= start:  # written just now: it was built, not found in the cache
        announce(f"built {cfg.model.path} in {time.time() - start:.0f} s (cached for the next runs): {path}")
    return path


def start_job(job: str, cfg: BaseJobConfig, run: RunDir, address: str | None, quiet: bool) -> Path:
    """Build the model if needed, start Ray and run the loop (restoring it after actor deaths)."""
    prepare_model(cfg)
    loop = importlib.import_module(LOOP_MODULES[job])
    import ray

    from apo_pipeline.loops.recovery import run_with_recovery

    live = active()
    if live is not None:
        live.wait("starting Ray, the vLLM engine(s), the judge and the DeepSpeed rank(s)")
    url = init_ray(cfg, address, log_dir=run.logs_dir if quiet else None)
    if url:
        announce(f"Ray dashboard: {url}")
    try:
        return run_with_recovery(loop.run, cfg, run.root)
    finally:
        ray.shutdown()


def run_quiet(job: str, cfg: BaseJobConfig, run: RunDir, address: str | None) -> int:
    """`monitoring.console: quiet`: the driver's own output to logs/driver.log, actors' to
    logs/<actor>.log; the terminal shows the console's progress and summary lines and, on failure,
    one line (the traceback is in driver.log)."""
    driver_log = run.logs_dir / "driver.log"
    start = time.monotonic()
    with driver_output_to(driver_log) as terminal:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)
        live = Console(terminal, rounds=rounds_of(cfg))
        handler = ConsoleHandler(live)
        log.addHandler(handler)
        activate(live)
        live.line(f"{job}: run directory {run.root} (logs: {run.logs_dir}/; apo-pipeline status {run.root})")
        try:
            with DriverRecord(run):
                final = start_job(job, cfg, run, address, quiet=True)
            live.line(f"{job}: finished in {clock(time.monotonic() - start)}; final policy in {final}")
            return 0
        except KeyboardInterrupt:
            live.line(f"{job}: interrupted; run the same command again to resume from the last checkpoint")
            return 130
        except RunStopped as exc:  # a deliberate stop (e.g. the judge ranked no prompt of a round)
            live.line(f"{job}: stopped: {exc}")
            return 1
        except Exception as exc:
            logging.exception("the job failed")  # the root logger: driver.log only
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            live.line(f"{job}: failed: {type(exc).__name__}: {first} (traceback in {driver_log})")
            return 1
        finally:
            activate(None)
            log.removeHandler(handler)
            live.shutdown()


def rounds_of(cfg: BaseJobConfig) -> int | None:
    """Segments (OnMC-PO), iterations (APO) or epochs (MC-PO) of the job."""
    key = ROUNDS_KEY.get(getattr(cfg, "job", ""), ("", ""))[1]
    return getattr(getattr(cfg, "loop", None), key, None)


def run_job(job: str, argv: list[str] | None = None) -> int:
    """Entry point of jobs/<job>.py; returns the process exit code (2 = bad config or input,
    1 = the job failed, 130 = interrupted)."""
    args = parse_args(job, argv)
    run = RunDir(Path(args.run_dir or Path("runs") / job).resolve())
    try:
        cfg = resolve_config(job, args)
    except ConfigError as exc:
        print(f"{job}: {exc}", file=sys.stderr)
        return 2
    problems = preflight(cfg, run.root)
    for problem in problems:
        print(f"{job}: {problem}", file=sys.stderr)
    if problems:
        return 2
    if cfg.monitoring.console == "quiet":
        return run_quiet(job, cfg, run, args.address)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        with DriverRecord(run):
            start_job(job, cfg, run, args.address, quiet=False)
    except RunStopped as exc:
        print(f"{job}: stopped: {exc}", file=sys.stderr)
        return 1
    return 0
