"""Typed configs: defaults, YAML + overrides, and one-line errors naming the key."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from apo_pipeline import launch
from apo_pipeline.config import (
    JOB_CONFIGS,
    APOConfig,
    ConfigError,
    OnMCPOConfig,
    dump_config,
    load_config,
    parse_override,
)
from apo_pipeline.launch import CONFIG_DIR, LOCAL_NUM_CPUS, parse_args, resolve_config, resolve_preset

REPO = Path(__file__).resolve().parents[2]


def error_of(cls, overrides, config_file=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cls, config_file, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_match_the_paper_setup():
    cfg = OnMCPOConfig()
    assert cfg.generation.temperatures == [0.6, 0.8, 1.0]
    assert cfg.generation.n_per_temperature == 2
    assert cfg.generation.num_candidates == 6
    assert cfg.loop.segments == 3
    assert APOConfig().loop.alpha == 0.3 and APOConfig().loop.iterations == 3


def test_overrides_are_typed_from_yaml():
    assert parse_override("learner.lr=0.5") == (["learner", "lr"], 0.5)
    assert parse_override("generation.temperatures=[0.5, 1.0]") == (["generation", "temperatures"], [0.5, 1.0])
    cfg = load_config(OnMCPOConfig, None, ["learner.lr=1e-5", "generation.temperatures=[0.5, 1.0]", "deterministic=true"])
    assert cfg.learner.lr == 1e-5 and cfg.generation.temperatures == [0.5, 1.0] and cfg.deterministic is True


def test_unknown_key_names_it_and_suggests():
    msg = error_of(OnMCPOConfig, ["generation.temperture=[1.0]"])
    assert "generation.temperture" in msg and "unknown key" in msg and "generation.temperatures" in msg


def test_unknown_top_level_section():
    assert "lerner" in error_of(OnMCPOConfig, ["lerner.lr=1"])


def test_wrong_type_names_key_and_value():
    msg = error_of(OnMCPOConfig, ["learner.lr=fast"])
    assert msg.startswith("config error: learner.lr:") and "fast" in msg


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["generation.temperatures=[1.0]", "generation.n_per_temperature=1"], "generation.n_per_temperature"),
        (["algorithm.num_negatives=6"], "algorithm.num_negatives"),
        (["algorithm.loss_options={gamma: 1.0}"], "algorithm.loss_options.gamma"),
        (["algorithm.loss=nope"], "algorithm.loss"),
        (["model.dtype=bfloat16"], "model.dtype"),
        (["cluster.use_gpu=true", "cluster.num_gpus=2", "cluster.learner_ranks=4"], "cluster.learner_ranks"),
        (["cluster.num_cpus=2", "cluster.learner_ranks=4"], "cluster.learner_ranks"),
        (["judge.backend=llm"], "judge.model"),
        (["generation.temperatures=[0.0, 1.0]"], "generation.temperatures"),
        (["algorithm.loss=bco", "algorithm.loss_options.bco_delta=0.1"], "algorithm.loss_options.bco_delta"),
        (["algorithm.loss_options.label_smoothing=0.7"], "algorithm.loss_options"),
        (["algorithm.loss=spo", "algorithm.loss_options.spo_regulariser=relu"], "algorithm.loss_options"),
        (["algorithm.cdpo_shape=step"], "algorithm.cdpo_shape"),
        (["algorithm.reference=start"], "algorithm.reference"),
    ],
)
def test_impossible_combinations_name_the_key(overrides, key):
    assert f"config error: {key}:" in error_of(OnMCPOConfig, overrides)


@pytest.mark.parametrize("alpha", ["1.0", "-0.1"])
def test_apo_alpha_outside_unit_interval(alpha):
    assert "config error: loop.alpha:" in error_of(APOConfig, [f"loop.alpha={alpha}"])


def test_apo_rejects_losses_it_does_not_take():
    assert "config error: algorithm.loss:" in error_of(APOConfig, ["algorithm.loss=simpo"])


def test_reference_defaults_initial_for_onmcpo_and_pi_t_for_apo():
    assert load_config(OnMCPOConfig, None, []).algorithm.reference == "initial"
    assert load_config(OnMCPOConfig, None, ["algorithm.reference=round"]).algorithm.reference == "round"
    assert load_config(APOConfig, None, []).algorithm.reference == "round"
    assert load_config(APOConfig, CONFIG_DIR / "apo.yaml", []).algorithm.reference == "round"
    assert "config error: algorithm.reference: iterative APO's reference is pi_t" in error_of(
        APOConfig, ["algorithm.reference=initial"])


def test_reference_from_engines_needs_the_round_start_reference():
    from apo_pipeline.config import MCPOConfig

    on = ["algorithm.reference_from_engines=true"]
    assert load_config(OnMCPOConfig, None, [*on, "algorithm.reference=round"]).algorithm.reference_from_engines
    assert load_config(APOConfig, None, on).algorithm.reference_from_engines  # APO's reference is pi_t
    assert "config error: algorithm.reference_from_engines: needs algorithm.reference: round" in error_of(OnMCPOConfig, on)
    assert "config error: algorithm.reference_from_engines: offline MC-PO" in error_of(MCPOConfig, on)


def test_onmcpo_total_steps_default_to_one_pass_and_keep_the_override():
    assert OnMCPOConfig().loop.total_steps is None  # the pipeline computes prompts / effective batch
    assert load_config(OnMCPOConfig, None, ["loop.total_steps=9"]).loop.total_steps == 9
    assert "config error: loop.total_steps:" in error_of(OnMCPOConfig, ["loop.total_steps=0"])


def test_default_local_ray_cpus_are_checked():
    over = [f"cluster.learner_ranks={LOCAL_NUM_CPUS}"]  # + 1 generation engine
    msg = error_of(OnMCPOConfig, over)
    assert msg.startswith(f"config error: cluster.learner_ranks: placement needs {LOCAL_NUM_CPUS + 1} CPUs")
    assert f"a local Ray gets {LOCAL_NUM_CPUS}" in msg
    load_config(OnMCPOConfig, None, [f"cluster.learner_ranks={LOCAL_NUM_CPUS - 1}"])  # exactly fits
    assert "placement needs 10 CPUs" in error_of(OnMCPOConfig, ["cluster.learner_ranks=4", "cluster.cpus_per_actor=2"])
    # the generation engines' TP ranks count, except when they share the learner's bundles
    assert "cluster.learner_ranks" in error_of(OnMCPOConfig, ["cluster.learner_ranks=4", "cluster.engine_tp=5"])
    load_config(OnMCPOConfig, None, ["cluster.learner_ranks=4", "cluster.engine_tp=5", "cluster.colocate=true"])
    # judge engines hold bundles only with the llm judge
    judges = ["cluster.learner_ranks=5", "cluster.judge_engines=2", "cluster.judge_tp=2"]
    load_config(OnMCPOConfig, None, judges)
    assert "placement needs 10 CPUs" in error_of(OnMCPOConfig, [*judges, "judge.backend=llm", "judge.model=/models/judge"])
    # another cluster, or a local Ray of a set size, is not held to the default
    load_config(OnMCPOConfig, None, [*over, "cluster.address=auto"])
    load_config(OnMCPOConfig, None, [*over, f"cluster.num_cpus={LOCAL_NUM_CPUS + 1}"])


def test_local_ray_gets_the_cpus_the_config_is_checked_against(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(init=lambda **kw: calls.append(kw)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    launch.init_ray(OnMCPOConfig(), None)
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == LOCAL_NUM_CPUS


def test_onmcpo_loss_defaults_to_rnce_for_several_negatives(tmp_path):
    assert load_config(OnMCPOConfig, None, []).algorithm.loss == "dpo"
    cfg = load_config(OnMCPOConfig, None, ["algorithm.num_negatives=2"])
    assert cfg.algorithm.loss == "rnce"
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(OnMCPOConfig, tmp_path / "config.yaml").algorithm.loss == "rnce"
    assert load_config(OnMCPOConfig, None, ["algorithm.num_negatives=2", "algorithm.loss=dpo"]).algorithm.loss == "dpo"
    (tmp_path / "ipo.yaml").write_text("algorithm:\n  loss: ipo\n")
    assert load_config(OnMCPOConfig, tmp_path / "ipo.yaml", ["algorithm.num_negatives=2"]).algorithm.loss == "ipo"
    assert load_config(APOConfig, None, ["algorithm.num_negatives=2"]).algorithm.loss == "dpo"  # OnMC-PO only


def test_rnce_accepts_several_negatives():
    cfg = load_config(OnMCPOConfig, None, ["algorithm.loss=rnce", "algorithm.num_negatives=3"])
    assert cfg.algorithm.num_negatives == 3


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    assert str(bad) in error_of(OnMCPOConfig, [], bad)
    assert "not found" in error_of(OnMCPOConfig, [], tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(OnMCPOConfig, None, ["seed=7", "learner.zero_stage=3"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(OnMCPOConfig, tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("job", sorted(JOB_CONFIGS))
def test_shipped_configs_and_smoke_presets_validate(job):
    cfg = load_config(JOB_CONFIGS[job], CONFIG_DIR / f"{job}.yaml", [], resolve_preset(job, "smoke"))
    assert cfg.job == job


def test_every_shipped_yaml_validates():
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        job = data.get("job") or next(j for j in JOB_CONFIGS if path.stem.startswith(j))
        load_config(JOB_CONFIGS[job], path)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="smoke"):
        resolve_preset("onmcpo", "nope")


def test_job_with_a_mistyped_key_fails_before_ray_starts(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "onmcpo.py"), f"--run-dir={tmp_path}", "learner.lrr=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "learner.lrr: unknown key" in proc.stderr and "learner.lr" in proc.stderr
    assert "Ray" not in proc.stderr and not any(tmp_path.iterdir())


def test_configuration_reference_is_current():
    from apo_pipeline.config.docs import render

    assert (REPO / "docs" / "configuration.md").read_text() == render(), "run `make docs-config`"


def test_address_flag_sets_cluster_address_and_skips_the_local_cpu_check():
    args = parse_args("onmcpo", ["--address", "ray://head:10001", "cluster.learner_ranks=16"])
    cfg = resolve_config("onmcpo", args)
    assert cfg.cluster.address == "ray://head:10001" and cfg.cluster.learner_ranks == 16
    with pytest.raises(ConfigError, match="cluster.learner_ranks"):
        resolve_config("onmcpo", parse_args("onmcpo", ["cluster.learner_ranks=16"]))


def test_ray_address_is_read_by_the_launcher_not_by_config_validation(monkeypatch):
    """Under `ray job submit` (RAY_ADDRESS set) the launcher records the joined cluster in
    cluster.address; the config's own validation never reads the environment."""
    over = [f"cluster.learner_ranks={LOCAL_NUM_CPUS}"]
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert "a local Ray gets" in error_of(OnMCPOConfig, over)
    cfg = resolve_config("onmcpo", parse_args("onmcpo", over))
    assert cfg.cluster.address == "ray://head:10001"
    assert resolve_config("onmcpo", parse_args("onmcpo", ["--address", "ray://other:1", *over])).cluster.address == "ray://other:1"
