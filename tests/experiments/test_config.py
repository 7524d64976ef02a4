"""Configs: every YAML under configs/ loads (full and --quick); bad input fails with a clear message."""

from pathlib import Path

import pytest

from impresslearn.experiments import ConfigError, config_from_dict, expand, load_config
from impresslearn.experiments._config import parse_override, resolve_dict

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
SWEEP_CONFIGS = [p for p in CONFIGS if "accounting" not in p.name]


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
