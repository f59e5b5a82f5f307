"""Bad input, fuzzed: every shipped config (experiments/*.yaml, experiments/paper/*.yaml) broken in many ways
(wrong types, out-of-range values, deleted entries, cross-field conflicts, broken config text) and broken data
files (Fashion-MNIST archives and IDX files, MedMNIST arrays, sample-id files, data roots, output paths).

Every case must be refused before anything starts: exit code 2, stderr exactly one line starting
``raysplit: error:`` (naming the field, the bad value and what is allowed), no traceback, nothing written.
The cases are generated deterministically (a fixed seed) and run in-process through ``raysplit.cli.main``
(``raysplit validate`` runs the same checks as the start of ``run``, and starts no Ray); a handful run
through a subprocess, as a user would.
"""
from __future__ import annotations

import copy
import dataclasses
import gzip
import random
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysplit import cli, config, data

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "experiments" / "paper").glob("*.yaml"))
SEED = 20240611
OUT = "<the test's output directory>"
ERROR = re.compile(r"^raysplit: error: \S")
VALIDATED = re.compile(r"^raysplit: error: \S+\.ya?ml: |^raysplit: error: /\S+: ")


# --------------------------------------------------------------------------- the harness

def shrink(raw: dict) -> dict:
    """The shipped config on tiny synthetic data of the same shape (validating it takes milliseconds)."""
    raw = copy.deepcopy(raw)
    d = raw.setdefault("data", {})
    if isinstance(d, dict) and d.get("dataset", "fashion_mnist") == "fashion_mnist":
        clients = d.get("num_clients", 10)
        samples = max(128, clients) if isinstance(clients, int) and not isinstance(clients, bool) else 128
        d.update(dataset="synthetic", synthetic_shape=[1, 28, 28], synthetic_classes=10, synthetic_samples=samples)
        d.pop("train_samples", None)
    if isinstance(raw.get("runtime"), dict):
        raw["runtime"].pop("address", None)
    return raw


def write_config(tmp_path: Path, raw, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def assert_refused(code: int, err: str, out_dir: Path | None = None, pattern: str | None = None) -> str:
    """Exit 2, stderr exactly one line (the error), no traceback, nothing written; returns the line."""
    # `raysplit validate` names the config first (it takes several): read the error after it
    lines = [VALIDATED.sub("raysplit: error: ", line) for line in err.splitlines()]
    assert code == 2, f"exit {code}; stderr: {err!r}"
    assert len(lines) == 1 and ERROR.match(lines[0]), f"stderr is not exactly one error line: {err!r}"
    assert "Traceback" not in err
    assert " is not allowed; expected " in lines[0] or "data." in lines[0] or "config" in lines[0], lines[0]
    if out_dir is not None:
        assert not out_dir.exists() and not list(out_dir.parent.glob(f".{out_dir.name}*"))
    if pattern is not None:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def validate_refuses(capsys, path: Path, *sets: str, out_dir: Path | None = None, pattern: str | None = None) -> str:
    capsys.readouterr()
    code = cli.main(["validate", str(path), *[a for s in sets for a in ("--set", s)]])
    captured = capsys.readouterr()
    return assert_refused(code, captured.err, out_dir, pattern)


# --------------------------------------------------------------------------- generated cases

def _field_types() -> dict[str, tuple[object, dict]]:
    """dotted config key -> (its type, its field metadata), for every leaf of the config dataclasses."""
    out = {}

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, key = hints[f.name], f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
            else:
                out[key] = (tp, dict(f.metadata))

    walk(config.ExperimentConfig, "")
    return out


FIELDS = _field_types()


def _base(tp):
    """X of Optional[X]."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def wrong_types(tp) -> list:
    """Values of a type the field does not take (and that no coercion turns into a valid one): null only
    where the field is not optional."""
    optional = typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)
    return [v for v in _wrong_types(tp) if not (optional and v is None)]


def _wrong_types(tp) -> list:
    tp = _base(tp)
    origin = typing.get_origin(tp)
    if tp is int:
        return ["many", 2.5, True, [1, 2], {"a": 1}]
    if tp is float:
        return ["fast", True, [0.1], {"a": 1}, float("nan"), float("inf")]
    if tp is bool:
        return ["yes", 1, [True], None]
    if tp is str:
        return [7, 2.5, [], {"a": 1}, True]
    if origin is typing.Literal:
        return ["nonsense", 3, [typing.get_args(tp)[0]], None]
    if origin is list:
        item = _base(typing.get_args(tp)[0])
        if item is int:
            return [{"a": 1}, ["x"], [1.5], [[1]]]
        if item is str:
            return [{"a": 1}, [1], [[]], [{"a": 1}]]
        if item is dict:
            return ["x", [1], [["a"]]]
        return [{"a": 1}, [1.5], [None], [[]], [{"a": 1}]]        # cut layers: names or positions
    if origin is dict or tp is dict:
        return ["x", [1], 3]
    return []


def out_of_range(key: str, tp, meta: dict) -> list:
    """Values of the right type outside what the field allows."""
    allowed = meta.get("allowed") or ""
    tp = _base(tp)
    if key == "seed":
        return [-1, 2 ** 40]
    if "an integer in" in allowed:
        return [0, -3, 10 ** 13]
    if allowed == "a number > 0":
        return [0, -1] if tp is int else [0.0, -1.5]
    if allowed == "a number >= 0":
        return [-1] if tp is int else [-0.5]
    if allowed.startswith("a number in (0, 1]"):
        return [0.0, 1.5, -0.2]
    if "custom resource" in allowed:
        return [{"CPU": 1}, {"node_a": -1}]
    return []


# cross-field and value cases every config can be given: (dotted key, value, what the error must name)
VALUE_CASES = [
    ("model.cut_layers", [99], r"model.cut_layers: \[?99"),
    ("model.cut_layers", ["²"], r"model.cut_layers: \[?'²'"),               # str.isdigit accepts it
    ("model.cut_layers", ["٣"], r"model.cut_layers: \[?'٣'"),               # so does int()
    ("model.cut_layers", ["nope"], r"model.cut_layers: \[?'nope'"),
    ("model.cut_layers", [], r"model.cut_layers: \[\]"),
    ("model.name", "no_such_net", r"model.name: 'no_such_net'"),
    ("data.dataset", "imagenet", r"data.dataset: 'imagenet'"),
    ("data.num_clients", 100000, r"data.num_clients: 100000 .*(at most|1 for topology vertical)"),
    ("data.synthetic_shape", [1, 2, 2], r"model.name: .*takes this data's inputs \[1, 2, 2\]|vertical.holders\[0\].rows: .*stop <= 2"),
    ("data.synthetic_shape", [0, 8, 8], r"data.synthetic_shape"),
    ("data.synthetic_shape", [1, 8], r"data.synthetic_shape"),
    ("data.synthetic_samples", 9_000_000, r"data.synthetic_samples: 9000000 .*1 GiB"),   # (made synthetic)
    ("algorithm", "gossip", r"algorithm: 'gossip'"),
    ("topology", "ring", r"topology: 'ring'"),
    ("plugins", [{"name": "no_such_plugin"}], r"plugins\[0\].name"),
    ("compression.activation", "zip", r"compression.activation: 'zip'"),
    ("imports", ["no.such.module"], r"imports\[0\]"),
    ("training.clients_per_round", 100000, r"training.clients_per_round"),
    ("unknown_key", 1, r"unknown_key: 1 .*a known key of the config"),
    ("training.learning_rate", 0.1, r"training.learning_rate"),
    ("runtime.address", "client", r"runtime.address: 'client' .*auto .*ray://host:port"),
]


def delete(raw: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node[p]
    del node[last]


def set_key(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def deletions(raw: dict) -> list[tuple[str, typing.Callable[[dict], None], str]]:
    """Deleting what a config cannot do without (deleting an optional key leaves a valid config: its default)."""
    out = []
    topo = raw.get("topology", "vanilla")
    cuts = raw.get("model", {}).get("cut_layers")
    if isinstance(cuts, list) and len(cuts) >= 2:
        out.append(("del model.cut_layers[-1]", lambda r: r["model"]["cut_layers"].pop(), r"model.cut_layers"))
    if topo in ("u_shaped", "extended", "multi_hop", "vertical"):
        # the default (one cut at pool2) does not fit these topologies' parties or this model
        if not (topo == "vertical" and raw["model"].get("name") == "fmnist_cnn"):
            out.append(("del model.cut_layers", lambda r: delete(r, "model.cut_layers"), r"model"))
    if topo == "vertical":
        out.append(("del vertical", lambda r: delete(r, "vertical"), r"vertical.holders: 0"))
        out.append(("del vertical.holders[1]", lambda r: r["vertical"]["holders"].pop(), r"vertical.holders: 1"))
        out.append(("del data.num_clients", lambda r: delete(r, "data.num_clients"), r"data.num_clients: 10"))
        out.append(("del vertical.holders[0].rows/columns",
                    lambda r: [r["vertical"]["holders"][0].pop(k, None) for k in ("rows", "columns")],
                    r"vertical.holders\[0\]"))
        out.append(("overlapping holders", lambda r: r["vertical"]["holders"].append(dict(r["vertical"]["holders"][0], name="copy")),
                    r"vertical.holders\[2\]: .*no other holder holds"))
        out.append(("fedavg on vertical", lambda r: set_key(r, "algorithm", "fedavg"),
                    r"algorithm: 'fedavg' .*can train topology vertical: splitnn"))
        out.append(("large_batch_sgd on vertical", lambda r: set_key(r, "algorithm", "large_batch_sgd"),
                    r"algorithm: 'large_batch_sgd' .*can train topology vertical"))
        out.append(("splitfed on vertical", lambda r: set_key(r, "algorithm", "splitfed"), r"schedule|algorithm"))
    if "multi_task" in raw:
        out.append(("del multi_task.groups[-1]", lambda r: r["multi_task"]["groups"].pop(), r"multi_task.groups"))
    # SplitFed: named, or split learning (the default algorithm) on the parallel schedule (FedAvg's parallel is not)
    if raw.get("algorithm") == "splitfed" or (raw.get("algorithm", "splitnn") == "splitnn" and raw.get("schedule") == "parallel"):
        out.append(("splitfed without clients", lambda r: r.update(topology="vertical", data=dict(r["data"], num_clients=1),
                                                                   vertical={"holders": [{"rows": [0, 14]}, {"rows": [14, 28]}]}),
                    r"schedule: 'parallel'"))
        out.append(("splitfed without a server", lambda r: r.update(topology="extended", parties=["client", "relay", "cloud"],
                                                                    model=dict(r["model"], cut_layers=["pool1", "relu3"])),
                    r"algorithm: 'splitfed' .*can train topology extended: splitnn, centralized, fedavg, "
                    r"large_batch_sgd[a-z_, ]* \(splitfed needs clients and a server"))
    if "population" in raw:   # a population config without what its section needs
        out.append(("population trace without its file", lambda r: r["population"].update(availability="trace"),
                    r"population.trace_file"))
        out.append(("population more clients a round than online", lambda r: set_key(
            r, "training.clients_per_round", r["data"]["num_clients"]), r"training.clients_per_round"))
    if raw.get("schedule") == "async" or "async_split" in raw.get("compare", {}).get("methods", []):
        # asynchronous rounds have no round to end, and their latest weights live with the fed server
        out.append(("async with a deadline", lambda r: r.update(schedule="async", population={"deadline_s": 5}),
                    r"population.deadline_s: 5.0 .*for async_split"))
        out.append(("async averaged at the server", lambda r: r.update(schedule="async", training=dict(
            r["training"], averaging_point="server")), r"training.averaging_point: 'server' .*fed_server for async_split"))
    return out


def cases_for(path: Path, per_kind: int = 6) -> list[tuple[str, dict, str | None]]:
    """(case id, broken raw config, pattern its error must match) for one shipped config, from the fixed seed."""
    rng = random.Random(f"{SEED}:{path.name}")
    base = dict(shrink(yaml.safe_load(path.read_text())), output_dir=OUT)
    out = []
    typed = sorted(k for k, (tp, _) in FIELDS.items() if wrong_types(tp))
    for key in rng.sample(typed, per_kind):
        value = rng.choice(wrong_types(FIELDS[key][0]))
        raw = copy.deepcopy(base)
        set_key(raw, key, value)
        out.append((f"type:{key}={value!r}", raw, re.escape(key.split(".")[0])))
    ranged = sorted(k for k, (tp, meta) in FIELDS.items() if out_of_range(k, tp, meta))
    for key in rng.sample(ranged, per_kind):
        value = rng.choice(out_of_range(key, *FIELDS[key]))
        raw = copy.deepcopy(base)
        set_key(raw, key, value)
        out.append((f"range:{key}={value!r}", raw, re.escape(key)))
    for key, value, pattern in rng.sample(VALUE_CASES, per_kind):
        raw = copy.deepcopy(base)
        if key.startswith("data.synthetic"):
            set_key(raw, "data.dataset", "synthetic")
        set_key(raw, key, value)
        out.append((f"value:{key}={value!r}", raw, pattern))
    for name, fn, pattern in deletions(base):
        raw = copy.deepcopy(base)
        fn(raw)
        out.append((name, raw, pattern))
    return out


CASES = [(p, *c) for p in SHIPPED for c in cases_for(p)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_shrunk_still_validate(tmp_path, path, capsys):
    """The fuzzing's starting points are valid: each case's error is the broken value's."""
    assert cli.main(["validate", str(write_config(tmp_path, shrink(yaml.safe_load(path.read_text()))))]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


@pytest.mark.parametrize("path,case,raw,pattern", CASES, ids=[f"{c[0].stem}:{c[1]}" for c in CASES])
def test_broken_config_is_refused(tmp_path, capsys, path, case, raw, pattern):
    out = tmp_path / "out"
    if raw.get("output_dir") == OUT:
        raw = dict(raw, output_dir=str(out))
    validate_refuses(capsys, write_config(tmp_path, raw), out_dir=out, pattern=pattern)


def test_the_fuzzing_covers_each_kind_for_each_config():
    kinds = {(p.stem, c.split(":")[0]) for p, c, _, _ in CASES}
    for p in SHIPPED:
        assert {(p.stem, k) for k in ("type", "range", "value")} <= kinds
    assert len(CASES) >= 20 * len(SHIPPED)


# --------------------------------------------------------------------------- broken config files

TEXTS = {
    "empty": b"",
    "only comments": b"# a config\n\n   # nothing else\n",
    "empty mapping": b"{}\n",
    "not utf-8": "name: caf\u00e9\n".encode("latin-1"),
    "binary": bytes(range(256)) * 4,
    "a list": b"- name: x\n- seed: 1\n",
    "a scalar": b"just words\n",
    "unclosed bracket": b"name: x\ndata: {dataset: synthetic\n",
    "tab indentation": b"data:\n\tdataset: synthetic\n",
    "undefined alias": b"a: *nothing\n",
    "nested too deeply": b"name: x\ndata: " + b"[" * 5000 + b"]" * 5000 + b"\n",
}


@pytest.mark.parametrize("name", TEXTS)
def test_broken_config_text_is_refused(tmp_path, capsys, name):
    path = tmp_path / "broken.yaml"
    path.write_bytes(TEXTS[name])
    validate_refuses(capsys, path, pattern=r"^raysplit: error: (config|[a-z_]+): ")


def test_truncated_shipped_configs_are_refused_or_valid(tmp_path, capsys):
    """A config cut off after any line is either still a valid config or refused cleanly (never a traceback),
    and one cut off mid-mapping is refused."""
    rng = random.Random(SEED)
    for path in SHIPPED:
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        for cut in sorted(rng.sample(range(len(lines)), 3)):
            case = tmp_path / f"{path.stem}-{cut}.yaml"
            head = "".join(lines[:cut])
            try:
                raw = yaml.safe_load(head)
            except yaml.YAMLError:
                raw = None
            # a readable head is validated on the synthetic data (fast); an unreadable one as it is
            case.write_text(yaml.safe_dump(shrink(raw), sort_keys=False) if isinstance(raw, dict) and raw else head)
            capsys.readouterr()
            code = cli.main(["validate", str(case)])
            err = capsys.readouterr().err
            assert "Traceback" not in err
            if code != 0:
                assert_refused(code, err)
        half = tmp_path / f"{path.stem}-half.yaml"
        half.write_text(text[: text.index("data:")] + "data:\n  dataset: [fashion\n")
        validate_refuses(capsys, half, pattern=r"config: .*valid YAML \(line")


def test_directory_as_config(tmp_path, capsys):
    validate_refuses(capsys, tmp_path, pattern=r"config: .*an existing YAML file")


# --------------------------------------------------------------------------- data files

def idx(array: np.ndarray) -> bytes:
    """An IDX file (as Fashion-MNIST ships them) of uint8 ``array``."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fashion_files(n_train=12, n_test=6, labels_train=None) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte": idx(rng.integers(0, 255, (n_train, 28, 28))),
            "train-labels-idx1-ubyte": idx(rng.integers(0, 10, n_train if labels_train is None else labels_train)),
            "t10k-images-idx3-ubyte": idx(rng.integers(0, 255, (n_test, 28, 28))),
            "t10k-labels-idx1-ubyte": idx(rng.integers(0, 10, n_test))}


FMNIST = ["--set", "data.num_clients=2"]


def run_fashion(capsys, tmp_path, root, *sets):
    out = tmp_path / "res"
    capsys.readouterr()
    code = cli.main(["run", str(ROOT / "experiments" / "vanilla_fmnist.yaml"), "--set", f"data.root={root}",
                     *FMNIST, *[a for s in sets for a in ("--set", s)], "--out", str(out), "--quiet"])
    return assert_refused(code, capsys.readouterr().err, out)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other format"])
def test_broken_fashion_mnist_archives(tmp_path, monkeypatch, capsys, damage):
    debian = tmp_path / "debian"
    debian.mkdir()
    files = fashion_files()
    for name, content in files.items():
        (debian / f"{name}.gz").write_bytes(gzip.compress(content))
    target = debian / "train-labels-idx1-ubyte.gz"
    packed = target.read_bytes()
    target.write_bytes({"garbage": bytes(range(200)), "truncated": packed[: len(packed) // 2], "empty": b"",
                        "other format": b"PK\x03\x04" + packed[4:]}[damage])
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    line = run_fashion(capsys, tmp_path, root)
    assert re.search(r"data.dataset: fashion_mnist archive .*train-labels-idx1-ubyte.gz is corrupt or truncated", line)
    assert not list(root.rglob("*.tmp"))                          # no half-written file left behind


@pytest.mark.parametrize("damage,pattern", [
    ("fewer labels", r"disagree: train-images holds 12 images .*11 labels"),
    ("truncated images", r"unreadable"),
    ("bad header", r"unreadable"),
    ("labels out of range", r"labels outside 0..9"),
])
def test_broken_fashion_mnist_files(tmp_path, monkeypatch, capsys, damage, pattern):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    files = fashion_files(labels_train=11 if damage == "fewer labels" else None)
    if damage == "truncated images":
        files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-100]
    if damage == "bad header":
        files["t10k-labels-idx1-ubyte"] = b"\x07\x07" + files["t10k-labels-idx1-ubyte"][2:]
    if damage == "labels out of range":
        files["t10k-labels-idx1-ubyte"] = idx(np.full(6, 12))
    for name, content in files.items():
        (raw / name).write_bytes(content)
    assert re.search(pattern, run_fashion(capsys, tmp_path, tmp_path / "root"))


def test_data_root_that_is_a_file(tmp_path, capsys):
    root = tmp_path / "root"
    root.write_text("not a folder")
    line = run_fashion(capsys, tmp_path, root)
    assert re.search(r"data.root: '.*root' .*a directory .*\(this is a file\)", line)


def test_data_root_under_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", Path("/usr/share/datasets/fashion-mnist"))
    (tmp_path / "file").write_text("x")
    if not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")
    line = run_fashion(capsys, tmp_path, tmp_path / "file" / "root")
    assert re.search(r"data.root: ", line)


MEDMNIST = {  # name -> arrays of the .npz, and what the error says
    "images of rank 2": (dict(train_images=np.zeros((4, 28)), train_labels=np.zeros((4, 1)),
                              test_images=np.zeros((2, 28, 28)), test_labels=np.zeros((2, 1))), r"train_images of shape \[4, 28\]"),
    "no samples": (dict(train_images=np.zeros((0, 28, 28)), train_labels=np.zeros((0, 1)),
                        test_images=np.zeros((2, 28, 28)), test_labels=np.zeros((2, 1))), r"at least one"),
    "fewer labels": (dict(train_images=np.zeros((4, 28, 28)), train_labels=np.zeros((3, 1)),
                          test_images=np.zeros((2, 28, 28)), test_labels=np.zeros((2, 1))), r"one label per image"),
    "negative labels": (dict(train_images=np.zeros((4, 28, 28)), train_labels=-np.ones((4, 1)),
                             test_images=np.zeros((2, 28, 28)), test_labels=np.zeros((2, 1))), r"integers >= 0"),
    "5 channels": (dict(train_images=np.zeros((4, 28, 28, 5)), train_labels=np.zeros((4, 1)),
                        test_images=np.zeros((2, 28, 28, 5)), test_labels=np.zeros((2, 1))), r"\(n, H, W, 1 or 3\)"),
    "missing array": (dict(train_images=np.zeros((4, 28, 28))), r"is not a MedMNIST .npz"),
    "string labels": (dict(train_images=np.zeros((4, 28, 28)), train_labels=np.array(["a", "b", "c", "d"]),
                           test_images=np.zeros((2, 28, 28)), test_labels=np.zeros((2, 1))), r"numeric"),
    "test shape differs": (dict(train_images=np.zeros((4, 28, 28)), train_labels=np.zeros((4, 1)),
                                test_images=np.zeros((2, 14, 14)), test_labels=np.zeros((2, 1))), r"one shape"),
}


@pytest.mark.parametrize("name", [*MEDMNIST, "not an npz", "empty file", "a directory"])
def test_broken_medmnist_files(tmp_path, capsys, name):
    path = tmp_path / "set.npz"
    if name in MEDMNIST:
        np.savez(path, **MEDMNIST[name][0])
        pattern = MEDMNIST[name][1]
    elif name == "a directory":
        path.mkdir()
        pattern = r"does not exist"
    else:
        path.write_bytes(b"" if name == "empty file" else b"hello, world" * 10)
        pattern = r"is not a MedMNIST .npz"
    validate_refuses(capsys, ROOT / "experiments" / "vanilla_fmnist.yaml", "data.dataset=medmnist",
                     f"data.medmnist_file={path}", "data.num_clients=2",
                     pattern=r"^raysplit: error: data.medmnist_file: .*" + pattern)


VERTICAL = ROOT / "experiments" / "vertical_breast_cancer.yaml"


@pytest.mark.parametrize("content,pattern", [
    (b"", r"\(it holds none\)"),
    (b"# only a comment\n\n", r"\(it holds none\)"),
    (b"\xff\xfe\x00\x01binary", r"not a text file"),
    (b"1\n2\nthree\n", r"line 3 is 'three'"),
    (b"1.5\n", r"line 1 is '1.5'"),
    (b"1 2\n", r"line 1 is '1 2'"),
    (b"\xd9\xa3\n", r"line 1 is '\u0663'"),                  # an Arabic-Indic 3: not an ASCII digit
    (b"0\n1\n1\n", r"an id repeats"),
    (b"0\n99999\n", r"it holds 99999"),
    (b"-1\n", r"it holds -1"),
    (b"1" * 400 + b"\n", r"it holds 1111"),
])
def test_broken_sample_id_files(tmp_path, capsys, content, pattern):
    ids = tmp_path / "ids.txt"
    ids.write_bytes(content)
    holders = f"vertical.holders=[{{name: a, columns: [0, 10], sample_ids: {ids}}}, {{name: b, columns: [10, 30]}}]"
    validate_refuses(capsys, VERTICAL, holders, "vertical.label_holder=a",
                     pattern=r"^raysplit: error: vertical.holders\[0\].sample_ids: .*one integer per line .*" + pattern)
    # numpy's "input contained no data" warning and the like must not reach stderr either (checked above)


def test_sample_id_file_that_is_a_directory(tmp_path, capsys):
    holders = f"vertical.holders=[{{name: a, columns: [0, 10], sample_ids: {tmp_path}}}, {{name: b, columns: [10, 30]}}]"
    validate_refuses(capsys, VERTICAL, holders, "vertical.label_holder=a", pattern=r"\(no such file\)")


# --------------------------------------------------------------------------- a user's data set, model, algorithm

def labels_out_of_range(cfg, seed):
    ds = data.synthetic(32, (1, 8, 8), 4, seed)
    ds.train_y[3] = 7
    return ds


def float_labels(cfg, seed):
    ds = data.synthetic(32, (1, 8, 8), 4, seed)
    ds.train_y = ds.train_y.astype(np.float32)
    return ds


def fewer_test_labels(cfg, seed):
    ds = data.synthetic(32, (1, 8, 8), 4, seed)
    ds.test_y = ds.test_y[:-1]
    return ds


def no_test_samples(cfg, seed):
    ds = data.synthetic(32, (1, 8, 8), 4, seed)
    ds.test_x, ds.test_y = ds.test_x[:0], ds.test_y[:0]
    return ds


def wide_net(input_shape, num_classes):
    """A model with too few outputs for the data's classes."""
    from collections import OrderedDict

    from torch import nn
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc1", nn.Linear(64, 8)), ("fc2", nn.Linear(8, 2))]))


@pytest.mark.parametrize("sets,pattern", [
    (["data.dataset=test_bad_input:labels_out_of_range"], r"data.dataset: .*train labels that are classes of the model, in 0..3 .*got labels 0..7"),
    (["data.dataset=test_bad_input:float_labels"], r"data.dataset: .*int64 train_y"),
    (["data.dataset=test_bad_input:fewer_test_labels"], r"data.dataset: .*as many test labels as test samples"),
    (["data.dataset=test_bad_input:no_test_samples"], r"data.dataset: .*at least one"),
    (["model.name=test_bad_input:wide_net", "model.cut_layers=[fc1]"],
     r"model.name: .*head s1 \(task y\) gives a score for each of the 4 classes"),
    (["model.name=mlp", "model.cut_layers=[flatten]"], r"model.cut_layers: \['flatten'\] .*segment s0, held by client, would hold only flatten"),
    (["topology=multi_hop", "model.cut_layers=[pool1, relu2, pool2]"], r"segment s2, held by hop2, would hold only pool2"),
    (["topology=extended", "parties=[client, relay, cloud]", "model.cut_layers=[pool1, relu3]", "handoff=server"],
     r"handoff: 'server' .*peer: topology extended has no party named server .*client, relay, cloud"),
])
def test_user_data_and_models_that_cannot_train(tmp_path, capsys, sets, pattern):
    base = tmp_path / "base.yaml"
    write_config(tmp_path, {"name": "t", "data": {"dataset": "synthetic", "num_clients": 2, "synthetic_samples": 32},
                            "model": {"name": "fmnist_cnn", "cut_layers": ["pool1"]}}, "base.yaml")
    validate_refuses(capsys, base, *sets, pattern=pattern)


class OnlyVanilla:
    """A user's algorithm that declares the one topology it can train (used as test_bad_input:OnlyVanilla)."""

    @classmethod
    def supports_topology(cls, topology):
        return None if topology.name == "vanilla" else "trains only the vanilla topology"


def test_an_algorithm_declares_the_topologies_it_supports(tmp_path, capsys):
    path = write_config(tmp_path, {"name": "t", "algorithm": "test_bad_input:OnlyVanilla", "topology": "u_shaped",
                                   "data": {"dataset": "synthetic", "num_clients": 2, "synthetic_samples": 32},
                                   "model": {"cut_layers": ["pool1", "relu3"]}})
    validate_refuses(capsys, path, pattern=r"algorithm: 'test_bad_input:OnlyVanilla' .*can train topology u_shaped: "
                                           r"splitnn, splitfed, async_split, centralized, fedavg, large_batch_sgd[a-z_, ]* "
                                           r"\(test_bad_input:OnlyVanilla trains only the vanilla topology\)")
    capsys.readouterr()
    assert cli.main(["validate", str(path), "--set", "topology=vanilla", "--set", "model.cut_layers=[pool1]"]) == 0


def test_the_probe_leaves_the_seeded_modules_and_random_state_alone(monkeypatch):
    """prepare's forward and backward pass changes neither the initial weights nor the torch random stream."""
    import torch

    from conftest import small_config
    from raysplit import experiment

    cfg = small_config("model.name=test_bad_input:dropout_net", "model.cut_layers=[drop]")
    plan = experiment.prepare(cfg)
    after_probe = torch.rand(3)
    monkeypatch.setattr(experiment, "check_trainable", lambda *a: None)
    unprobed = experiment.prepare(cfg)
    assert torch.equal(after_probe, torch.rand(3))
    for name, m in plan.modules.items():
        assert all(p.grad is None for p in m.parameters())
        for a, b in zip(m.state_dict().values(), unprobed.modules[name].state_dict().values()):
            assert torch.equal(a, b)


def dropout_net(input_shape, num_classes):
    """A model whose forward pass draws random numbers."""
    from collections import OrderedDict

    from torch import nn
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc1", nn.Linear(64, 16)), ("drop", nn.Dropout(0.5)),
                                      ("fc2", nn.Linear(16, num_classes))]))


# --------------------------------------------------------------------------- output paths

def test_output_path_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "res"
    path = write_config(tmp_path, shrink(yaml.safe_load((ROOT / "experiments" / "vanilla_fmnist.yaml").read_text())))
    capsys.readouterr()
    code = cli.main(["run", str(path), "--out", str(out), "--quiet", "--set", "data.num_clients=2"])
    line = assert_refused(code, capsys.readouterr().err)
    assert re.search(r"output_dir: '.*file/res' .*a path under directories \(.*file is a file\)", line)
    assert (tmp_path / "file").read_text() == "x"


def test_output_path_that_is_a_file_or_not_empty(tmp_path, capsys):
    path = write_config(tmp_path, shrink(yaml.safe_load((ROOT / "experiments" / "vanilla_fmnist.yaml").read_text())))
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("y")
    for out in (tmp_path / "file", tmp_path / "full"):
        capsys.readouterr()
        code = cli.main(["run", str(path), "--out", str(out), "--quiet", "--set", "data.num_clients=2"])
        assert re.search(r"output_dir: .*does not exist yet or is empty", assert_refused(code, capsys.readouterr().err))
    assert (tmp_path / "full" / "keep.txt").read_text() == "y"


# --------------------------------------------------------------------------- as a user would: a subprocess

def raysplit(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "raysplit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("name", ["empty", "not utf-8"])
def test_broken_config_file_from_the_command_line(tmp_path, name):
    path = tmp_path / "c.yaml"
    path.write_bytes(TEXTS[name])
    out = tmp_path / "res"
    p = raysplit("run", str(path), "--out", str(out), "--quiet")
    assert_refused(p.returncode, p.stderr, out, r"^raysplit: error: config: '.*c.yaml' is not allowed; expected a "
                                                r"(YAML mapping of config keys \(the file has none|YAML file of UTF-8 text)")


def test_too_many_cpus_for_a_local_ray_leaves_only_the_error_line(tmp_path):
    """More CPUs than this machine has, for a local Ray (whose size is the machine's): refused before Ray
    starts, so stderr has the error line and no raysplit INFO line (not even "starting a local Ray")."""
    out = tmp_path / "res"
    p = raysplit("run", "experiments/vanilla_fmnist.yaml", "--set", "data.dataset=synthetic", "--set",
                 "data.num_clients=2", "--set", "model.cut_layers=[pool1]", "--set", "runtime.server.num_cpus=64",
                 "--set", "runtime.address=null", "--out", str(out), "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    ours = [line for line in p.stderr.splitlines() if re.match(r"^(\d\d:\d\d:\d\d |raysplit)", line)]
    assert len(ours) == 1 and ours[0].startswith("raysplit: error: runtime"), p.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- the network model (issue 14)

NETWORK_CASES = [
    ("network.client.up_mbps=-20", r"network\.client\.up_mbps: -20\.0 is not allowed; expected a number > 0"),
    ("network.server.down_mbps=0", r"network\.server\.down_mbps: 0\.0 is not allowed; expected a number > 0"),
    ("network.client.latency_ms=-5", r"network\.client\.latency_ms: -5\.0 .*a number >= 0"),
    ("network.clinic={up_mbps: 5}", r"network\.clinic: .*a known key of network: client, server, others"),
    ("network.per_client.up_mbps=[10, 20]", r"network\.per_client\.up_mbps: \[10\.0, 20\.0\] .*data\.num_clients \(100\)"),
    ("network.client.flops_per_s=fast", r"network\.client\.flops_per_s: 'fast' .*a number > 0"),
    ("network.spread=-0.5", r"network\.spread: -0\.5 .*a number >= 0"),
]


@pytest.mark.parametrize("setting,pattern", NETWORK_CASES, ids=[c[0].split("=")[0] for c in NETWORK_CASES])
def test_bad_network_settings_are_refused(tmp_path, capsys, setting, pattern):
    raw = shrink(yaml.safe_load((ROOT / "experiments" / "paper" / "fig3_fmnist_100.yaml").read_text()))
    validate_refuses(capsys, write_config(tmp_path, raw), setting, pattern=pattern)


def test_exponent_without_a_dot_is_a_number_not_a_string():
    """PyYAML (YAML 1.1) reads `lr: 1e-3` as the string '1e-3': a float field takes it as the number;
    a word stays refused."""
    raw = yaml.safe_load("training: {lr: 1e-3, momentum: 0.9}")
    assert raw["training"]["lr"] == "1e-3"
    assert config.from_dict({"name": "x", **raw}).training.lr == 1e-3
    with pytest.raises(config.ConfigError, match="training.lr"):
        config.from_dict({"name": "x", "training": {"lr": "1e-3x"}})
