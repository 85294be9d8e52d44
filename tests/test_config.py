"""Bad configs give a clear error naming the field; every shipped config loads."""

from pathlib import Path

import pytest

from algd_runtime.learn.config import ConfigError, TrainConfig, config_from_dict, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    if path.stem != "smoke":
        assert cfg.task == path.stem  # configs/<task>.yaml is the task's config


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("Safety")], ids=lambda p: p.name)
def test_every_safety_gymnasium_config_has_a_cpu_and_the_paper_preset(path):
    cpu, paper = load_config(path, preset="cpu"), load_config(path, preset="paper")
    assert paper.updates_per_step == 10 and paper.algo.precision == "fp32" and paper.preset == "paper"
    assert cpu.updates_per_step == 3 and cpu.total_steps == 30000 and cpu.algo.dual == "episode_cost"
    assert cpu.preset == "cpu"
    assert cpu.algo.critic_hidden == paper.algo.critic_hidden  # the preset changes the schedule, not the networks
    assert load_config(path) == cpu and load_config(path, {"device": "cuda"}).preset == "paper"


def test_a_preset_is_chosen_by_name_and_overrides_win(tmp_path):
    p = write(tmp_path, "task: PointHazard-v0\nupdates_per_step: 10\npresets:\n  cpu:\n    about: small\n"
                        "    updates_per_step: 1\n    algo: {precision: bf16}\n  paper: {}\n")
    cfg = load_config(p, {"updates_per_step": 3})
    assert cfg.preset == "cpu" and cfg.updates_per_step == 3 and cfg.algo.precision == "bf16"
    assert load_config(p, preset="paper").updates_per_step == 10
    with pytest.raises(ConfigError, match=r"preset: expected one of cpu, paper \(.*c.yaml\), got 'gpu'"):
        load_config(p, preset="gpu")
    with pytest.raises(ConfigError, match="preset: .* has no presets to pick 'cpu' from"):
        load_config(write(tmp_path, "task: PointHazard-v0\n"), preset="cpu")


def test_there_is_a_config_per_listed_task():
    names = {p.stem for p in CONFIGS}
    for task in ("SafetyPointGoal1-v0", "SafetyPointButton1-v0", "SafetyCarButton1-v0", "SafetyPointPush1-v0",
                 "SafetyHopperVelocity-v1", "SafetyHalfCheetahVelocity-v1", "SafetyAntVelocity-v1",
                 "SafetyHumanoidVelocity-v1", "PointHazard-v0", "smoke"):
        assert task in names


def test_unknown_key_names_the_field_and_lists_known(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "task: PointHazard-v0\nalgo:\n  learning_rate: 0.1\n"))
    msg = str(e.value)
    assert "algo.learning_rate: unknown key" in msg and "lr" in msg and "c.yaml" in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"total_step: unknown key"):
        load_config(write(tmp_path, "total_step: 100\n"))


@pytest.mark.parametrize("text, pattern", [
    ("algo:\n  lr: fast\n", r"algo\.lr: expected a number, got 'fast'"),
    ("total_steps: 1.5\n", r"total_steps: expected an integer, got 1.5"),
    ("save_replay: 1\n", r"save_replay: expected true or false, got 1"),
    ("algo: 3\n", r"algo: expected a mapping"),
    ("shift: [1, 2]\n", r"shift: expected a mapping"),
    ("algo:\n  variant: ddim\n", r"algo\.variant: expected one of \['vesde', 'ddpm'\], got 'ddim'"),
    ("algo:\n  gamma: 1.5\n", r"algo\.gamma: expected a value in \(0, 1\]"),
    ("algo:\n  batch_size: 0\n", r"algo\.batch_size: expected a value > 0"),
    ("device: tpu\n", r"device: expected one of \['cpu', 'cuda'\]"),
    ("num_envs: 4\ntotal_steps: 1001\n", r"total_steps: expected a multiple of num_envs \(4\), got 1001"),
    ("algo:\n  episode_dual_clip: -1\n", r"algo\.episode_dual_clip: expected a value >= 0"),
])
def test_wrong_type_or_value_names_the_field(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


def test_unknown_task_lists_known_tasks(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "task: SafetyDoggoGoal9-v0\n"))
    assert "task: unknown task 'SafetyDoggoGoal9-v0'" in str(e.value)
    assert "PointHazard-v0" in str(e.value) and "SafetyPointGoal1-v0" in str(e.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "algo: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_ints_are_accepted_for_floats_and_overrides_apply(tmp_path):
    cfg = load_config(write(tmp_path, "algo:\n  lr: 1\n"), {"seed": 7})
    assert cfg.algo.lr == 1.0 and isinstance(cfg.algo.lr, float) and cfg.seed == 7
    assert config_from_dict(cfg.to_dict()) == cfg  # round trip through the checkpoint form


def test_a_key_given_twice_is_refused_in_configs_io_files_and_params_files(tmp_path, monkeypatch):
    """Issue 20: the last one won, silently."""
    import yaml as _yaml

    from algd_runtime.deploy.adapters import load_io
    from algd_runtime.learn.config import ConfigError, load_config

    (tmp_path / "c.yaml").write_text("task: PointHazard-v0\ntotal_steps: 100\nalgo:\n  batch_size: 32\n  batch_size: 64\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML: the key 'batch_size' is given twice \(lines 4 and 5\)"):
        load_config(tmp_path / "c.yaml")
    io = (Path(__file__).resolve().parents[1] / "config" / "io" / "vector.yaml").read_text()
    (tmp_path / "io.yaml").write_text(io + "steps_ahead: 2\nsteps_ahead: 9\n")
    with pytest.raises(ValueError, match=r"io: .*io.yaml is not valid YAML: the key 'steps_ahead' is given twice"):
        load_io(str(tmp_path / "io.yaml"))
    from algd_runtime.ros.entry import _params_files_problem

    (tmp_path / "p.yaml").write_text("/**/controller:\n  ros__parameters:\n    cost_limit: 5.0\n    cost_limit: 50.0\n")
    assert "the key 'cost_limit' is given twice (lines 3 and 4)" in _params_files_problem(
        ["algd-controller", "--ros-args", "--params-file", str(tmp_path / "p.yaml")])
    assert _yaml.safe_load((tmp_path / "p.yaml").read_text())["/**/controller"]["ros__parameters"]["cost_limit"] == 50.0
