"""The composition root's promises: a config is loaded and checked once per run and once per sweep trial,
plug-ins are built once per run, and a party host is given the segments of the roles it hosts, nothing else."""
import pytest
import yaml

from conftest import small_config
from raysplit import catalog, cli, config, experiment
from raysplit.engine import SEGMENTS
from raysplit.errors import ConfigError
from raysplit.graph import CLIENT
from raysplit.hosts import Hosts
from raysplit.plugins import Plugin

BUILT: list[str] = []


class CountedPlugin(Plugin):
    """A plug-in that counts its constructions in the process that builds it (used as test_composition_root:...)."""

    def __init__(self, tag: str = ""):
        BUILT.append(tag)


class SegmentNames:
    """A program that reports the segment modules it was installed with."""

    def __init__(self, host, modules):
        self.names = sorted(modules)

    def names_installed(self) -> list[str]:
        return self.names


@pytest.mark.parametrize("topology,cuts,expected", [
    ("vanilla", ["pool1"], {"worker0": ["s0"], "server": ["s1"]}),
    ("u_shaped", ["pool1", "relu3"], {"worker0": ["s0", "s2"], "server": ["s1"]}),
])
def test_a_host_is_installed_with_the_segments_of_its_roles_only(ray_session, topology, cuts, expected):
    plan = experiment.prepare(small_config(f"topology={topology}", f"model.cut_layers={cuts}"))
    hosts = Hosts.start(plan)
    try:
        hosts.install(SEGMENTS, dict.fromkeys(hosts.all, SegmentNames))
        own = {name: hosts.get(hosts.call(h, SEGMENTS, "names_installed")) for name, h in hosts.named.items()}
        hosts.install("whole", dict.fromkeys(hosts.all, SegmentNames), segments="all")
        whole = {name: hosts.get(hosts.call(h, "whole", "names_installed")) for name, h in hosts.named.items()}
    finally:
        hosts.stop()
    assert own == expected
    assert whole == {name: sorted(plan.modules) for name in expected}
    assert {s.name for s in plan.topology.segments if s.owner == CLIENT} == set(expected["worker0"])


def test_a_run_loads_its_config_once_and_builds_its_plugins_once(raysplit_here, tmp_path, monkeypatch):
    raw = config.to_dict(small_config("training.rounds=1"))
    loads = []
    real_load = config.load
    monkeypatch.setattr(config, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    checks = []
    real_check = catalog.check
    monkeypatch.setattr(catalog, "check", lambda cfg: checks.append(cfg.name) or real_check(cfg))
    path = tmp_path / "c.yaml"
    raw["plugins"] = [{"name": "test_composition_root:CountedPlugin", "tag": "x"}]
    path.write_text(yaml.safe_dump(raw))
    BUILT.clear()
    done = raysplit_here("run", str(path), "--out", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(loads) == 1 and checks == ["test"]
    assert BUILT == ["x"]                # built once on the driver; the hosts unpickle copies of it


def test_a_sweep_loads_each_setting_once_and_its_trial_none(ray_session, tmp_path, monkeypatch):
    from ray import tune

    from raysplit import sweep as sweep_mod

    monkeypatch.chdir(tmp_path)          # the trial changes to the sweep's directory, as Tune's would
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(small_config("training.rounds=1"))))
    base = config.load(path)
    loads = []
    real_load = config.load
    monkeypatch.setattr(config, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    trials = sweep_mod.plan_trials(str(path), [], {"training.lr": [0.05, 0.1]}, tmp_path / "sw", base=base)
    assert len(loads) == 2 and [t.cfg.training.lr for t in trials] == [0.05, 0.1]
    reported = []
    monkeypatch.setattr(tune, "report", reported.append)
    sweep_mod._trainable(trials, str(path), str(tmp_path))({"trial": 1})
    assert len(loads) == 2 and reported[0]["error"] == ""


def test_config_loading_knows_no_registry_and_the_catalog_checks_names(tmp_path):
    """config.py stays below the registries: an unknown name passes its loader and is refused by the catalog
    (as every run's prepare and raysplit.load_config call it), naming the field."""
    cfg = config.from_dict({"data": {"dataset": "no_such_set"}})
    with pytest.raises(ConfigError, match=r"^data.dataset: 'no_such_set' .*registered datasets"):
        catalog.check(cfg)
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: no_such_model}\n")
    import raysplit

    with pytest.raises(ConfigError, match=r"^model.name: 'no_such_model'"):
        raysplit.load_config(path)
    assert cli.main(["validate", str(path)]) == 2
