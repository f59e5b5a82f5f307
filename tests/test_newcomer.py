"""What a new user meets first: every command's -h, options in any order, validate's one line per config,
long commands writing where the user is, the terminal output of a run, the Python API and its README example."""
import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from raysplit import cli, console

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "quickstart_synthetic.yaml"


@pytest.mark.parametrize("argv", [["costs", "-h"], ["costs", "--help"], ["costs", "tables", "-h"], ["plot", "-h"],
                                  ["plot", "--help"], ["codecs", "-h"], ["validate", "-h"], ["run", "-h"],
                                  ["compare", "-h"], ["sweep", "-h"], ["-h"], ["--version"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0
    if argv == ["--version"]:
        assert out.strip() == f"raysplit {_pyproject_version()}"
    else:
        assert out.startswith(f"usage: raysplit {' '.join(a for a in argv[:-1])}".rstrip()), out


@pytest.mark.parametrize("argv", [["plot", "--out", "figs", "R1", "R2"], ["plot", "R1", "--out", "figs", "R2"],
                                  ["plot", "R1", "R2", "--out", "figs"]])
def test_plot_takes_options_in_any_order(argv, monkeypatch, tmp_path):
    from analysis import plots

    calls = []
    monkeypatch.setattr(plots, "make_report",
                        lambda runs, out, networks=(): calls.append((runs, out, networks)) or {"report": tmp_path})
    assert cli.main(argv) == 0
    assert calls == [(["R1", "R2"], "figs", [])]          # no --network: the runs' own


def test_costs_tables_writes_to_the_current_directory_with_progress(monkeypatch, tmp_path, capsys):
    from analysis import paper_tables

    packaged = ROOT / "analysis" / "paper_tables.md"
    before = packaged.read_bytes()
    seen = []
    monkeypatch.setattr(paper_tables, "render", lambda progress=False: seen.append(progress) or "# tables\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["costs", "tables"]) == 0
    assert cli.main(["costs", "tables", "--quiet", "--out", "sub/t.md"]) == 0
    assert (tmp_path / "paper_tables.md").read_text() == "# tables\n" == (tmp_path / "sub" / "t.md").read_text()
    assert seen == [True, False]                   # a progress bar unless --quiet
    assert packaged.read_bytes() == before         # never the package's copy
    assert "wrote paper_tables.md" in capsys.readouterr().out


def test_validate_several_configs_one_line_each(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICK.read_text().replace("cut_layers: [pool1]", "cut_layers: [nope]"))
    code = cli.main(["validate", str(QUICK), str(bad), "--set", "training.rounds=1", str(QUICK)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.splitlines() == [f"ok: {QUICK} (splitnn, vanilla; 64 training samples over 2 clients; "
                                "segments: s0@client, s1@server)"] * 2
    assert len(err.splitlines()) == 1 and err.startswith(f"raysplit: error: {bad}: model.cut_layers: 'nope'")
    assert cli.main(["validate", str(QUICK)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert cli.main(["validate", "--print", str(QUICK)]) == 0
    assert "name: quickstart_synthetic" in capsys.readouterr().out


def test_validate_rejects_options_it_does_not_use(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["validate", str(QUICK), "--address", "auto"])
    assert e.value.code == 2 and "unrecognized arguments: --address" in capsys.readouterr().err


@pytest.fixture
def cli_logging():
    """console.setup() as the command line calls it, undone afterwards."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    console.setup()
    yield
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
    root.setLevel(saved[1])
    console._buffer = None


def test_ray_startup_lines_go_to_run_log_not_the_terminal(cli_logging, capsys, tmp_path):
    logging.getLogger("raysplit").info("party host ready: worker0 on vm (cpu)")
    logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
    logging.getLogger("raysplit").info("round 1/1: test_acc=0.5")
    err = capsys.readouterr().err
    assert "Token authentication" not in err and "host ready" not in err and "round 1/1: test_acc=0.5" in err
    log_file = logging.FileHandler(tmp_path / "run.log")
    console.replay_startup(log_file)
    log_file.close()
    text = (tmp_path / "run.log").read_text()
    assert "Token authentication" in text and "host ready: worker0" in text and "round 1/1" not in text


def test_run_lines_never_join_a_progress_bar(ray_session, cli_logging, capsys, tmp_path):
    from raysplit import config
    from raysplit.experiment import run

    result = run(config.load(QUICK, ["training.rounds=3"]), out_dir=tmp_path / "res", progress=True)
    err = capsys.readouterr().err
    for r in (1, 2, 3):
        line = re.search(rf"(.)(\d\d:\d\d:\d\d round {r}/3: test_acc=)", err, re.S)
        assert line and line.group(1) in "\r\n", err          # starts a line: never glued to a bar
    assert "(round 3: evaluating)" in err
    # the bar's count is the rounds done, shown with that round's accuracy
    acc = result.metrics["test_acc"]
    for r in (1, 2, 3):
        assert re.search(rf"\| {r}/3 \[[^\]]*test_acc={acc.iloc[r - 1]:.4f}\]", err), err
    assert "round 3/3" in (tmp_path / "res" / "run.log").read_text()


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_import_is_light_and_has_a_version():
    code = ("import sys, raysplit; print(raysplit.__version__); "
            "print(sorted(m for m in ('torch', 'ray', 'pandas', 'raysplit.experiment') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [_pyproject_version(), "[]"]


def readme_python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_verbatim(ray_session, tmp_path, monkeypatch, capsys):
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result.metrics, pd.DataFrame) and list(result.metrics["round"]) == [1, 2, 3]
    assert result.out_dir.parent == Path("results") and (tmp_path / result.out_dir / "metrics.csv").is_file()
    assert (result.metrics["num_clients"] == 4).all()
    assert f"raysplit {_pyproject_version()}" in capsys.readouterr().out


def test_console_setup_twice_does_not_stack_handlers(cli_logging):
    console.setup()
    ours = [h for h in logging.getLogger().handlers if isinstance(h, console.TqdmHandler)]
    assert len(ours) == 1
