"""Command line of the jobs: `python jobs/<job>.py [--config X.yaml] [--run-dir D] [--preset P] [k=v ...]`.

The config is validated before Ray is imported, so a bad key fails in about a second; re-running
into an existing run directory resumes it, and a change of a key that makes that unsafe
(model, loss, K, ...) is refused the same way. Under
`ray job submit` (RAY_ADDRESS set) or with `--address`, the job joins that cluster; otherwise it
starts a local Ray with `cluster.num_cpus` logical CPUs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from apo_pipeline.config import JOB_CONFIGS, BaseJobConfig, ConfigError, load_config
from apo_pipeline.config.schema import LOCAL_NUM_CPUS
from apo_pipeline.loops.resume import check_resume_config, read_saved_config
from apo_pipeline.task.model_spec import ModelSourceError, check_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "jobs" / "configs"
LOOP_MODULES = {"onmcpo": "apo_pipeline.loops.onmcpo", "apo": "apo_pipeline.loops.apo", "mcpo": "apo_pipeline.loops.mcpo"}


def parse_args(job: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"jobs/{job}.py", description=f"Run the {job} loop.")
    p.add_argument("--config", help=f"YAML config (default: jobs/configs/{job}.yaml)")
    p.add_argument("--run-dir", help=f"run directory (default: runs/{job})")
    p.add_argument("--preset", help="preset name (jobs/configs/presets/<job>-<name>.yaml) or a YAML path")
    p.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS, else a local Ray); sets cluster.address")
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
    overrides = [*args.overrides, *([f"cluster.address={args.address}"] if args.address else [])]
    return load_config(JOB_CONFIGS[job], config_file, overrides, resolve_preset(job, args.preset))


def init_ray(cfg: BaseJobConfig, address: str | None) -> None:
    """Join the job's cluster if there is one, else start a local Ray (dashboard on 127.0.0.1)."""
    import ray

    address = address or cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    if address:
        ray.init(address=address, namespace=f"apo-{cfg.name}", runtime_env=runtime_env)
    else:
        ray.init(
            address="local",  # a new local Ray, never one some `ray start` left running
            num_cpus=cfg.cluster.num_cpus or LOCAL_NUM_CPUS,
            num_gpus=cfg.cluster.num_gpus if cfg.cluster.use_gpu else 0,
            namespace=f"apo-{cfg.name}",
            dashboard_host="127.0.0.1",
            include_dashboard=True,
            runtime_env=runtime_env,
        )


def run_job(job: str, argv: list[str] | None = None) -> int:
    """Entry point of jobs/<job>.py; returns the process exit code (2 = bad config)."""
    args = parse_args(job, argv)
    run_dir = Path(args.run_dir or Path("runs") / job).resolve()
    try:
        cfg = resolve_config(job, args)
        saved = read_saved_config(run_dir / "config.yaml")
        if saved is not None:
            check_resume_config(saved, cfg)
        check_model(cfg.model.path, "model.path")
        if cfg.judge.backend == "llm" and cfg.judge.model:
            check_model(cfg.judge.model, "judge.model")
    except (ConfigError, ModelSourceError) as exc:
        print(f"{job}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    loop = importlib.import_module(LOOP_MODULES[job])
    import ray

    from apo_pipeline.loops.recovery import RunStopped, run_with_recovery

    init_ray(cfg, args.address)
    try:
        run_with_recovery(loop.run, cfg, run_dir)
    except RunStopped as exc:  # a deliberate stop (e.g. the judge ranked no prompt of a round): one line
        print(f"{job}: stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0
