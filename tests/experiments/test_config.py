"""Configs: every YAML under configs/ loads (full and --quick); bad input fails with a clear message."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impresslearn.experiments import ConfigError, config_from_dict, expand, load_config
from impresslearn.experiments._config import parse_override, resolve_dict

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
# configs/ also holds the configs of benchmarks/frontier.py (their own format and tests); each
# says so in its run command, and is not an `impresslearn run` sweep.
SWEEP_CONFIGS = [p for p in CONFIGS if "accounting" not in p.name
                 and f"benchmarks/frontier.py configs/{p.name}" not in p.read_text()]


def minimal(**changes):
    data = {"name": "t", "scenario": {"name": "synthetic", "num_tasks": 6}, "model": {"name": "lenet300"},
            "basis": {"kinds": ["heterogeneous"], "counts": [2, 3]}, "num_new_tasks": 2}
    for key, value in changes.items():
        node = data
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def test_configs_directory_has_every_paper_experiment():
    names = {p.stem for p in CONFIGS}
    for required in ("fig2_rotated_mnist", "fig3_permuted_mnist", "fig4_split_cifar100", "fig5_split_imagenet",
                     "fig6_gn_permuted_mnist", "fig10_hybrid_split_cifar100", "table2_accounting",
                     "fmnist_permuted", "fmnist_rotated", "fmnist_gn250"):
        assert required in names


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("quick", [False, True])
def test_every_config_loads_and_expands(path, quick):
    config = load_config(path, quick=quick)
    runs = expand(config)
    assert runs, "a config must produce at least one run"
    if quick:
        assert len(runs) <= 10, "quick runs must stay tiny"


def test_paper_configs_sweep_the_paper_densities():
    for name in ("fig2_rotated_mnist", "fig3_permuted_mnist", "fig4_split_cifar100"):
        config = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
        assert config.densities == (0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3)
        assert len(config.seeds) == 3


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"densities": [0.0]}, "densities"),
        ({"densities": [1.5]}, "densities"),
        ({"seeds": [0, 0]}, "seeds: has duplicates"),
        ({"basis__kinds": ["shiny"]}, "unknown basis kind 'shiny'"),
        ({"basis__counts": [0]}, "basis.counts"),
        ({"alpha_train__optimizer": "lbfgs"}, "alpha_train.optimizer"),
        ({"mask_train__lr": -1}, "mask_train.lr"),
        ({"alpha_train__epochs": 1.5}, "alpha_train.epochs"),
        ({"model__init": "xavier"}, "model.init"),
        ({"scenario__num_tasks": 3}, "scenario.num_tasks: 3 tasks cannot hold 3 heterogeneous basis tasks"),
        ({"evaluate__gn": True, "evaluate__gn_num_tasks": 50}, "evaluate.gn_num_tasks"),
        ({"evaluate__basis_gn_kinds": ["random"]}, "basis-GN needs masks from distinct basis tasks"),
        ({"typo": 1}, "unknown top-level key(s) ['typo']"),
        ({"alpha_train__lamda": 0.1}, "alpha_train: unknown key(s) ['lamda']"),
        ({"basis__counts_by_kind": {"random": [5]}}, "'random' is not one of basis.kinds"),
    ],
)
def test_bad_values_raise_clear_errors(changes, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(**changes))
    assert message in str(info.value)


def test_missing_required_section():
    data = minimal()
    del data["model"]
    with pytest.raises(ConfigError, match="model: missing"):
        config_from_dict(data)


def test_overrides_and_quick(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: c\nscenario: {name: synthetic, num_tasks: 8}\nmodel: {name: lenet300}\n"
        "basis: {kinds: [heterogeneous], counts: [2, 4]}\nnum_new_tasks: 2\n"
        "quick: {basis.counts: [1], num_new_tasks: 1}\n")
    assert load_config(path).basis.counts == (2, 4)
    assert load_config(path, quick=True).basis.counts == (1,)
    c = load_config(path, overrides=["alpha_train.lr=0.05", "densities=[0.1, 0.3]", "scenario.train_subset=100"])
    assert c.alpha_train.lr == 0.05 and c.densities == (0.1, 0.3) and c.scenario.train_subset == 100
    # --set wins over quick
    assert load_config(path, ["basis.counts=[3]"], quick=True).basis.counts == (3,)
    with pytest.raises(ConfigError, match=r"c.yaml: alpha_train.lr"):
        load_config(path, overrides=["alpha_train.lr=fast"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("alpha_train.lr")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_set_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="name is not a section"):
        resolve_dict(minimal(), ["name.sub=1"])


def test_heterogeneous_sets_leave_room_for_new_tasks():
    config = config_from_dict(minimal(basis__kinds=["heterogeneous", "homogeneous"], basis__counts=[2, 3]))
    assert config.new_task_indices == (3, 4)  # after the largest heterogeneous set, same for every set


# ----------------------------------------------------------------------------- one TrainConfig


def _config_file(tmp_path, extra: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("name: c\nscenario: {name: synthetic, num_tasks: 4}\nmodel: {name: lenet300}\n"
                    "basis: {kinds: [heterogeneous], counts: [1]}\nnum_new_tasks: 1\n" + extra)
    return path


def test_the_yaml_phases_are_the_learners_train_config():
    import impresslearn
    from impresslearn.config import TrainConfig

    config = config_from_dict(minimal(alpha_train={"lr": 0.05, "epochs": 2, "batch_size": 32, "seed": 3}))
    assert impresslearn.TrainConfig is TrainConfig
    assert type(config.alpha_train) is TrainConfig and type(config.mask_train) is TrainConfig
    assert config.alpha_train == TrainConfig(lr=0.05, epochs=2, batch_size=32, seed=3)
    # every field the learner accepts is a key the YAML accepts, and nothing else
    assert set(config.to_dict()["alpha_train"]) == TrainConfig.field_names()


@pytest.mark.parametrize(
    "override, key",
    [
        ("alpha_train.momentum=5", "alpha_train.momentum"),
        ("mask_train.momentum=1.0", "mask_train.momentum"),
        ("alpha_train.lr=true", "alpha_train.lr"),
        ("mask_train.epochs=true", "mask_train.epochs"),
        ("mask_train.lr=.nan", "mask_train.lr"),
        ("alpha_train.seed=-1", "alpha_train.seed"),
        ("alpha_train.batch_size=0", "alpha_train.batch_size"),
        ("alpha_train.optimizer=[adam]", "alpha_train.optimizer"),
        ("scenario.seed=true", "scenario.seed"),
        ("scenario.seed=1.5", "scenario.seed"),
        ("basis.mixture_homogeneous=true", "basis.mixture_homogeneous"),
        ("num_new_tasks=true", "num_new_tasks"),
    ],
)
def test_bad_override_is_refused_before_anything_trains(tmp_path, capsys, override, key):
    from impresslearn.cli import main

    out = tmp_path / "out"
    code = main(["run", str(_config_file(tmp_path)), "--out", str(out), "--set", override, "--no-progress"])
    assert code == 2
    assert f"{key}:" in capsys.readouterr().err
    assert not out.exists(), "nothing may be written (or trained) for a refused config"


def test_max_runs_must_be_positive(tmp_path, capsys):
    from impresslearn.cli import main

    for bad in ("-1", "0", "two"):
        with pytest.raises(SystemExit) as info:
            main(["run", str(_config_file(tmp_path)), "--max-runs", bad])
        assert info.value.code == 2
        assert "--max-runs" in capsys.readouterr().err


def test_numpy_integers_are_accepted_and_stored_as_int():
    np = pytest.importorskip("numpy")
    from impresslearn.config import TrainConfig

    cfg = TrainConfig(epochs=np.int64(5), seed=np.uint32(7), batch_size=np.int16(64), lr=np.float32(0.5))
    assert (cfg.epochs, cfg.seed, cfg.batch_size) == (5, 7, 64)
    assert type(cfg.epochs) is int and type(cfg.seed) is int and type(cfg.lr) is float
    config = config_from_dict(minimal(scenario__seed=np.int64(3), seeds=[np.int64(0)], num_new_tasks=np.int64(2)))
    assert config.scenario.seed == 3 and type(config.scenario.seed) is int


def test_train_config_errors_name_the_field_and_are_value_and_type_errors():
    from impresslearn.config import TrainConfig

    with pytest.raises(ValueError, match=r"^momentum: must be < 1"):
        TrainConfig(momentum=1.0)
    with pytest.raises(TypeError, match=r"^epochs: must be an integer, got 2\.0"):
        TrainConfig(epochs=2.0)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lamda'\]"):
        TrainConfig.from_dict({"lamda": 0.1})
    with pytest.raises(ConfigError, match="^lr: must be > 0"):
        TrainConfig().replace(lr=0.0)


_REAL_BOUNDS = {"lr": (0.0, None, True), "momentum": (0.0, 1.0, False), "weight_decay": (0.0, None, False),
                "lam": (0.0, None, False)}
_INT_MIN = {"epochs": 1, "seed": 0, "batch_size": 1}


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(_REAL_BOUNDS) + sorted(_INT_MIN)),
       value=st.one_of(st.booleans(), st.none(), st.text(max_size=3), st.floats(allow_nan=True),
                       st.integers(-10**20, 10**20)))
def test_train_config_accepts_exactly_the_valid_values(field, value):
    """Generated values: a value is accepted iff it is valid, in Python and in YAML alike."""
    import math

    from impresslearn.config import MAX_SEED, TrainConfig

    if field in _INT_MIN:
        valid = (isinstance(value, int) and not isinstance(value, bool) and value >= _INT_MIN[field]
                 and (field != "seed" or value <= MAX_SEED))
    else:
        low, high, open_low = _REAL_BOUNDS[field]
        valid = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                 and (value > low if open_low else value >= low) and (high is None or value < high))
    if valid:
        stored = value if field in _INT_MIN else float(value)  # reals are stored as float
        assert getattr(TrainConfig(**{field: value}), field) == stored
        assert getattr(config_from_dict(minimal(alpha_train={field: value})).alpha_train, field) == stored
    else:
        with pytest.raises(ConfigError, match=f"^{field}: "):
            TrainConfig(**{field: value})
        with pytest.raises(ConfigError, match=f"^alpha_train.{field}: "):
            config_from_dict(minimal(alpha_train={field: value}))


# ----------------------------------------------------------------------------- files and names


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: b"name: c\n" + b)))
def test_any_bytes_as_config_give_a_config_or_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "junk.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


def test_binary_junk_config_is_a_config_error_on_the_command_line(tmp_path, capsys):
    from impresslearn.cli import main

    path = tmp_path / "junk.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    assert main(["run", str(path)]) == 2
    assert "junk.yaml: not a text file in UTF-8" in capsys.readouterr().err
    path.write_bytes(b"name: c\n\x00\x01\x02")
    assert main(["run", str(path)]) == 2
    assert "junk.yaml: not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/abs", "a\\b", "", " x", "x\n", "-rf", "a\x00b"])
def test_output_folder_name_must_be_one_plain_component(name):
    with pytest.raises(ConfigError, match="^name: "):
        config_from_dict(minimal(name=name))


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=12))
def test_an_accepted_name_stays_inside_the_output_root(name, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "runs"
    try:
        config = config_from_dict(minimal(name=name))
    except ConfigError:
        return
    target = (root / config.name).resolve()
    assert target.parent == root.resolve() and target.name == name


def test_set_name_dotdot_does_not_write_outside(tmp_path, capsys, monkeypatch):
    from impresslearn.cli import main

    monkeypatch.chdir(tmp_path)
    config = _config_file(tmp_path)
    assert main(["run", str(config), "--set", "name=..", "--no-progress"]) == 2
    assert "name: must be a single plain folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_accounting_config_name_is_checked_too(tmp_path, capsys):
    from impresslearn.cli import main

    path = tmp_path / "acc.yaml"
    path.write_text("kind: accounting\nname: ../escape\n"
                    "rows: [{dataset: D, model: lenet300, basis_size: 5, max_tasks: 3, kwargs: {num_classes: 10}}]\n")
    assert main(["run", str(path)]) == 2
    assert "name: must be a single plain folder name" in capsys.readouterr().err
