"""The cluster path as the README gives it: a real head (`ray start --head`), a job submitted with
`ray job submit ... -- raysplit run ... --address auto --out ABSOLUTE`, its results directory read back.

Needs `ray[default]` (the `cluster` extra: the dashboard's job server); skipped without it. The head runs
with its own --temp-dir, ports and token, in its own process group, and is stopped by killing that group
(never `ray stop`, which would stop other Ray instances on the machine)."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytest.importorskip("aiohttp", reason="needs ray[default] for `ray job submit`: pip install -e '.[cluster]'")
pytest.importorskip("ray.dashboard.modules.job.sdk", reason="needs ray[default]: pip install -e '.[cluster]'")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes_under(temp_dir: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if temp_dir.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def head():
    """A one-node Ray cluster with a dashboard (job server); yields (dashboard URL, environment for clients)."""
    temp_dir = tempfile.mkdtemp(prefix="rs-head-", dir="/tmp")     # short: Ray's socket paths have a length limit
    gcs, dash, nm, om, agent, agent_grpc, rt_env, metrics, client = free_ports(9)
    low = 20000 + (os.getpid() % 200) * 100
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs}",
           "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
           f"--metrics-export-port={metrics}", f"--min-worker-port={low}", f"--max-worker-port={low + 99}",
           "--disable-usage-stats"]
    try:
        import ray.util.client.server  # noqa: F401  (ray[client]: the head would take the default port 10001)
        cmd.append(f"--ray-client-server-port={client}")
    except ImportError:
        pass
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:                  # poll the job server until it answers (the head takes a while to start)
            assert proc.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            try:
                req = urllib.request.Request(f"{url}/api/version",
                                             headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
                urllib.request.urlopen(req, timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the head's dashboard did not come up within 180 s"
                time.sleep(0.5)
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
        for pid in _processes_under(temp_dir):      # anything of this head's that left the process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_runs_and_results_land_at_the_absolute_out(head, tmp_path):
    url, env = head
    out = tmp_path / "job-results"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(ROOT), "--",
           "raysplit", "run", "experiments/quickstart_synthetic.yaml", "--set", "training.rounds=1",
           "--address", "auto", "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"results: {out}" in p.stdout and "succeeded" in p.stdout
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["round"]) == [1] and m["client_flops"].iloc[0] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == "quickstart_synthetic" and summary["rounds"] == 1
