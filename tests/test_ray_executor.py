"""Evaluation shards on a real Ray cluster: three nodes on this machine over loopback (ray_cluster.py).

The cluster run must store the same items as the local run of the same selection, also when a node
dies in the middle of it (Ray retries its shards elsewhere).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from posttrain.store import Store  # noqa: E402
from test_evaluate_offline import write_hellaswag, write_mmlu_csv  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    write_hellaswag(root, n=8)
    write_mmlu_csv(root, n_test=4)
    return root


def _eval(model: Path, data_dir: Path, home: Path, *extra: str, env: dict | None = None,
          tasks: str = "hellaswag,mmlu") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", "eval", str(model), "--tasks", tasks,
                           "--data-dir", str(data_dir), "--home", str(home), *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def _items(home: Path) -> dict[str, list]:
    store = Store(home / "posttrain.db")
    out = {}
    for row in store.query("SELECT id, task FROM evals ORDER BY task"):
        out[row["task"]] = store.evals.items([row["id"]])
    return out


@pytest.fixture(scope="module")
def local_items(tiny_gguf, data_dir, tmp_path_factory) -> dict[str, list]:
    home = tmp_path_factory.mktemp("local")
    done = _eval(tiny_gguf["Q8_0"], data_dir, home)
    assert done.returncode == 0, done.stderr
    return _items(home)


def test_a_cluster_run_stores_the_same_items_as_the_local_run(cluster, tiny_gguf, data_dir, local_items, tmp_path):
    home = tmp_path / "home"
    done = _eval(tiny_gguf["Q8_0"], data_dir, home, "--executor", "ray", "--ray-address", cluster.address,
                 "--shard-docs", "3", env=cluster.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("3/3 shards (100 %)") == 2, done.stderr  # 8 HellaSwag docs in 3 shards, 8 MMLU in 3
    items = _items(home)
    assert set(items) == {"hellaswag", "mmlu"}
    assert len(items["hellaswag"]) == 16 and len(items["mmlu"]) == 8  # acc and acc_norm per HellaSwag doc
    assert items == local_items
    # The coordinator alone wrote the store: one evaluation per task, as a local run writes.
    assert Store(home / "posttrain.db").query("SELECT COUNT(*) AS n FROM evals")[0]["n"] == 2


def test_a_node_killed_mid_run_changes_nothing(cluster, tiny_gguf, data_dir, local_items, tmp_path):
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "posttrain", "eval", str(tiny_gguf["Q8_0"]), "--tasks", "hellaswag",
           "--data-dir", str(data_dir), "--home", str(home), "--executor", "ray", "--ray-address", cluster.address,
           "--shard-docs", "1", "--shared-dir", str(tiny_gguf["Q8_0"].parent)]  # read in place, not sent
    proc = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not cluster.running_units(2) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cluster.running_units(2), "no shard ever ran on the third node"
        cluster.raylet(2).kill()  # kill -9: the node dies with a shard in flight
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert _items(home) == {"hellaswag": local_items["hellaswag"]}


def test_a_private_cluster_has_no_dashboard_and_refuses_an_unauthenticated_client(tmp_path):
    # posttrain's own cluster (no --ray-address), in a child process so Ray stays out of this one.
    script = (
        "import json, subprocess, sys, urllib.request\n"
        "import ray\n"
        "from posttrain.executors import make_executor\n"
        "with make_executor('ray') as ex:\n"
        "    gcs = ray.get_runtime_context().gcs_address\n"
        "    env = {'PATH': '', 'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': 'not-the-token', 'HOME': sys.argv[1]}\n"
        "    st = subprocess.run([sys.argv[2], 'status', '--address', gcs], env=env, capture_output=True,\n"
        "                        text=True, timeout=120)\n"
        "    try:\n"
        "        urllib.request.urlopen('http://127.0.0.1:8265/api/version', timeout=5)\n"
        "        dashboard = True\n"
        "    except OSError:\n"
        "        dashboard = False\n"
        "    print(json.dumps({'rc': st.returncode, 'out': st.stdout + st.stderr, 'dashboard': dashboard,\n"
        "                      'nodes': len(ray.nodes())}))\n")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), ray_cli], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == 1 and not seen["dashboard"]
    assert seen["rc"] != 0 and "Authentication" in seen["out"], seen["out"][-2000:]


def test_a_unit_that_fails_three_times_fails_naming_its_node_and_error(cluster, tmp_path):
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from posttrain.executors import Unit, WorkFailed, make_executor\n"
        "def broken(log):\n"
        "    with open(log, 'a') as fh:\n"
        "        fh.write('attempt\\n')\n"
        "    raise ValueError('the shard data is unreadable')\n"
        "with make_executor('ray', ray_address=sys.argv[1]) as ex:\n"
        "    try:\n"
        "        list(ex.run([Unit('mmlu shard 1/1 of m', broken, (sys.argv[2],))]))\n"
        "    except WorkFailed as e:\n"
        "        print(e.one_line())\n")
    log = tmp_path / "attempts.log"
    done = subprocess.run([sys.executable, "-c", script, cluster.address, str(log)], capture_output=True, text=True,
                          timeout=300, env=cluster.env)
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray prints its own notes about the retries; the failure is the one line posttrain prints.
    line = next(text for text in done.stdout.splitlines() if "failed 3 time(s)" in text)
    assert line.startswith("mmlu shard 1/1 of m failed 3 time(s); last on node ")
    assert " node " in line and "ValueError: the shard data is unreadable" in line
    assert log.read_text().count("attempt") == 3
