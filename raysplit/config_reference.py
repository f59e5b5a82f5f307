"""docs/config.md, generated from the config schema (config_schema.py): every field's dotted name, type, default,
allowed values and description, then a guide to bringing one's own data. Regenerate after a schema change:

    python -m raysplit.config_reference docs/config.md

(tests/test_reference_and_figures.py fails while the file differs from what this module renders.)
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

from raysplit import config_schema
from raysplit.config_schema import DESCRIPTIONS, ExperimentConfig

NoneType = type(None)


def description(cls: type, name: str) -> str | None:
    """A field's sentence, from DESCRIPTIONS ("Class.field"; a subclass falls back to its bases')."""
    for klass in cls.__mro__:
        text = DESCRIPTIONS.get(f"{klass.__name__}.{name}")
        if text:
            return text
    return None


def type_text(tp) -> str:
    """A type in words a YAML writer reads: ``Optional[int]`` -> ``int or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is NoneType:
        return "null"
    if dataclasses.is_dataclass(tp):
        return "section (below)"
    if _item_section(tp):
        return "list of sections (below)"
    if origin is typing.Literal:
        return "string"
    if origin is typing.Union:
        return " or ".join(type_text(a) for a in args if a is not NoneType) + (" or null" if NoneType in args else "")
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if tp is list:
        return "list"
    if tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _literal(tp) -> tuple | None:
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    for a in typing.get_args(tp) if typing.get_origin(tp) is typing.Union else ():
        if typing.get_origin(a) is typing.Literal:
            return typing.get_args(a) + ((None,) if NoneType in typing.get_args(tp) else ())
    return None


def allowed_text(f: dataclasses.Field, tp) -> str:
    if f.metadata.get("allowed"):
        return f.metadata["allowed"] + (" (or null)" if NoneType in typing.get_args(tp) else "")
    values = _literal(tp)
    if values:
        return ", ".join("null" if v is None else str(v) for v in values)
    if tp is bool:
        return "true, false"
    return ""


def default_value(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def default_text(value) -> str:
    if dataclasses.is_dataclass(value):
        return ""                     # its fields are listed in a table of their own
    return json.dumps(value)          # null, true, "iid", [1, 8, 8], {} : as YAML reads them


def rows(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, list[tuple[str, str, str, str, str]]]]:
    """[(section, [(dotted name, type, default, allowed, description)])], the top level first, then each section
    depth first, in the schema's order."""
    hints = typing.get_type_hints(cls, vars(config_schema))
    own, nested = [], []
    for f in dataclasses.fields(cls):
        tp, value, name = hints[f.name], default_value(f), prefix + f.name
        own.append((name, type_text(tp), default_text(value), allowed_text(f, tp), description(cls, f.name) or ""))
        if dataclasses.is_dataclass(tp):
            nested += rows(tp, name + ".")
        elif _item_section(tp):                          # a list of sections: vertical.holders[].name
            nested += rows(_item_section(tp), name + "[].")
    return [(prefix.rstrip(".") or "top level", own), *nested]


def _item_section(tp) -> type | None:
    args = typing.get_args(tp) if typing.get_origin(tp) is list else ()
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def _cell(text: str) -> str:
    # | would end the cell and <name> would be read as an HTML tag
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


HEADER = """\
# Config reference

Every field of an experiment config (raysplit/config_schema.py), with its type, default, allowed values and
meaning. A YAML config sets any of them by its dotted name's path (`data: {num_clients: 100}`); `--set
data.num_clients=100` overrides one on the command line; `raysplit validate --print CONFIG` shows a config with
every field resolved. Names of models, data sets, topologies, algorithms, codecs and plug-ins are checked against
their registries when the config is validated.

This page is generated from the schema: `python -m raysplit.config_reference docs/config.md` (do not edit it by
hand; tests/test_reference_and_figures.py fails when it is out of date or a field has no description).
"""

BRING_YOUR_OWN_DATA = """\
## Bring your own data

raysplit has three ways in for data of your own; none needs raysplit to be edited.

**1. Image arrays in an .npz file** (`data.dataset: medmnist`). The MedMNIST loader reads any `.npz` holding
`train_images`, `train_labels`, `test_images` and `test_labels`: images of shape (n, H, W) or (n, H, W, 1 or 3)
with values 0..255, labels one integer >= 0 per image. A folder of image files is turned into such arrays
with a few lines of Pillow or torchvision. For example (the model must fit the image size: `fmnist_cnn` takes
28x28 single-channel images):

```sh
python - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
np.savez("/tmp/my_images.npz",
         train_images=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), train_labels=rng.integers(0, 2, (200, 1)),
         test_images=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), test_labels=rng.integers(0, 2, (50, 1)))
PY
raysplit validate experiments/quickstart_synthetic.yaml --set data.dataset=medmnist \\
    --set data.medmnist_file=/tmp/my_images.npz --set model.cut_layers=[pool2]
```

**2. A loader of your own** (tabular CSV or Parquet, image folders, anything): a function `(data config,
seed) -> raysplit.data.Dataset` registered under a name with `@DATASETS.register("name")` in a module of yours,
which the config lists under `imports:` (a module in the config file's folder is found), or named directly as
`data.dataset: package.module:loader`. A `Dataset` holds `train_x` and `test_x` as float32 arrays of shape
(n, features) for tabular data or (n, channels, height, width) for images, `train_y` and `test_y` as int64
class ids, and `num_classes`; an optional `train_owner` (the client of each training sample) enables
`data.partition: natural`. The loader may read its own settings from the data config (`root`, for one). For
a CSV file of numeric columns with the class in its last column, beside the config (here scikit-learn's
breast-cancer table, written as a CSV: `python -c "from sklearn.datasets import load_breast_cancer as b;
b(as_frame=True).frame.to_csv('my_table.csv', index=False)"`):

```python
# my_csv.py
from pathlib import Path

import numpy as np
import pandas as pd

from raysplit.data import DATASETS, Dataset


@DATASETS.register("my_csv")
def my_csv(cfg, seed):
    table = pd.read_csv(Path(__file__).with_name("my_table.csv"))     # pd.read_parquet for Parquet
    x = table.iloc[:, :-1].to_numpy(np.float32)
    y = table.iloc[:, -1].to_numpy(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n_test = len(y) // 5
    return Dataset("my_csv", x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes=int(y.max()) + 1)
```

```yaml
# my_csv.yaml
name: my_csv
imports: [my_csv]
data: {dataset: my_csv, num_clients: 2}
model: {name: mlp, cut_layers: [relu1]}
training: {rounds: 2, batch_size: 16}
```

Then `raysplit validate my_csv.yaml` checks it (the loader runs, the model is built and cut) and `raysplit run
my_csv.yaml` trains it. docs/examples/my_lab.yaml (with its package docs/examples/my_lab/) registers a data set,
a model, a topology, an algorithm and a plug-in the same way: `raysplit run docs/examples/my_lab.yaml`.

**3. Vertically partitioned data** (`topology: vertical`): each holder in `vertical.holders` holds some
feature `columns` (tabular) or image `rows`/`columns` of the same samples, and optionally a `sample_ids` file
(one training-sample id per line; every holder must list the same ids, which index the training set your
loader returns). experiments/vertical_breast_cancer.yaml splits breast-cancer Wisconsin's 30 measurements
between two clinics; the same config runs on your own loader's data set with `--set data.dataset=...`.
"""


def render() -> str:
    out = [HEADER]
    for section, fields in rows():
        out += [f"## {section}", ""]
        if section != "top level":
            doc = DESCRIPTIONS.get(f"{_parent_class(section)}.{section.rpartition('.')[2].removesuffix('[]')}")
            if doc:
                out += [doc, ""]
        out += ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        out += [f"| `{_cell(n)}` | {_cell(t)} | {_cell(_code(d))} | {_cell(a)} | {_cell(m)} |"
                for n, t, d, a, m in fields]
        out.append("")
    out.append(BRING_YOUR_OWN_DATA)
    return "\n".join(out)


def _parent_class(section: str) -> str:
    """The class holding the section's field: ExperimentConfig for data, RuntimeConfig for runtime.worker."""
    cls = ExperimentConfig
    for part in section.split(".")[:-1]:
        tp = typing.get_type_hints(cls, vars(config_schema))[part.removesuffix("[]")]
        cls = _item_section(tp) or tp
    return cls.__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv:
        Path(argv[0]).write_text(text)
        print(f"wrote {argv[0]}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
