"""Experiment tracking on a finished run's files: a real MLflow store read back through MLflow's own
client (params, metrics, artifacts, nesting under the training run, a rerun that updates), a real
W&B offline run whose run file is parsed back, and a tracker that is down, which never fails a run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_report_store import MODEL, RUN_ID, _manifest, populate

from posttrain.contracts import ConvertOut, ReportOut, RunLayout, Variant, encode_outputs
from posttrain.pipeline import Config, RunContext, Runner, RunSpec, Stages
from posttrain.report import report_from_store
from posttrain.store import dumps
from posttrain.track import read_tracking

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

SETTINGS = {"quants": ["f16", "q8_0", "q4_k_m"], "tasks": ["mmlu", "gsm8k"], "data_dir": "/data/benchmarks",
            "limit": None, "per_subject": 60, "seed": 0, "baseline": "/models/smollm2-base"}


@pytest.fixture(autouse=True)
def _no_outside_tracking(monkeypatch, tmp_path):
    """Nothing from the developer's environment, nothing written outside tmp_path."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_DIR",
                 "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


def finished_run(home: Path, *, with_gguf_files: bool = False):
    """A run as the pipeline leaves it after its report step: store rows, compare.json, convert's
    manifest and outputs, the three reports."""
    store, run_dir = populate(home)
    variants = [dict(r) for r in store.query("SELECT quant, path, sha256, size_bytes FROM variants")]
    manifest_path = home / "gguf" / MODEL / "manifest.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(_manifest("e" * 64, variants)))
    if with_gguf_files:
        for v in variants:
            Path(v["path"]).write_bytes(b"GGUF" + v["quant"].encode() * 64)
    with store.connect() as db:
        db.execute("UPDATE runs SET config_json=? WHERE id=?", (dumps({**SETTINGS, "checkpoint": "/x"}), RUN_ID))
        db.execute("UPDATE steps SET outputs_json=? WHERE run_id=? AND name='convert'",
                   (dumps(encode_outputs(ConvertOut(
                       model_name=MODEL, manifest=manifest_path,
                       variants=tuple(Variant(path=Path(v["path"]), quant=v["quant"], sha256=v["sha256"],
                                              model_name=MODEL, size_bytes=v["size_bytes"]) for v in variants)))),
                    RUN_ID))
    report_from_store(store, RUN_ID, outcome="succeeded")
    return store, run_dir


@pytest.fixture(scope="module")
def _finished_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("finished") / "home"
    store, _ = finished_run(home, with_gguf_files=True)
    store.close()
    return home


@pytest.fixture()
def finished(_finished_home, tmp_path):
    """A fresh copy of the finished run for each test: (store, run_dir, home)."""
    from posttrain.store import Store

    home = tmp_path / "home"
    shutil.copytree(_finished_home, home)
    run_dir = home / "runs" / RUN_ID
    store = Store(home / "posttrain.db")
    with store.connect() as db:  # the copy's own paths
        db.execute("UPDATE runs SET run_dir=? WHERE id=?", (str(run_dir), RUN_ID))
        for table, column in (("variants", "path"), ("evals", "model_id"), ("steps", "outputs_json")):
            db.execute(f"UPDATE {table} SET {column}=replace({column}, ?, ?)", (str(_finished_home), str(home)))
    return store, run_dir, home


@pytest.fixture(scope="module")
def team_store(tmp_path_factory) -> str:
    """A training team's MLflow store (SQLite), made once: MLflow builds its schema in seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('team') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def track_step(store, run_dir: Path, home: Path, *, failed: str | None = None, **settings):
    """The pipeline's track step, called as the runner calls it after the report step."""
    config = Config(home=home, **settings)
    [step] = [s for s in Stages(config).steps() if s.name == "track"]
    run = dict(store.query("SELECT * FROM runs WHERE id=?", (RUN_ID,))[0])
    spec = RunSpec(run_id=RUN_ID, checkpoint=run["checkpoint"], run_dir=run_dir)
    status = {"report": ("done", None)} | ({failed: ("failed", "it broke")} if failed else {})
    ctx = RunContext(spec, store, {"report": ReportOut(html=RunLayout(run_dir).report_html, md=RunLayout(run_dir).report_md,
                                                        json=RunLayout(run_dir).report_json)},
                     status, threading.Event())
    return step, step.run(ctx)


def mlflow_runs(uri: str, experiment_id: str | None = None):
    client = MlflowClient(tracking_uri=uri)
    if experiment_id is None:
        experiment_id = client.get_experiment_by_name("posttrain").experiment_id
    return client, client.search_runs([experiment_id])


def test_mlflow_local_store_holds_params_metrics_tags_and_artifacts(finished, tmp_path):
    store, run_dir, home = finished
    report = json.loads(RunLayout(run_dir).report_json.read_text())
    step, out = track_step(store, run_dir, home, track=["mlflow"])

    [outcome] = out.trackers
    assert outcome.ok, outcome
    client, [run] = mlflow_runs(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    assert outcome.run == run.info.run_id and run.info.status == "FINISHED"

    params = run.data.params
    assert params["checkpoint_sha256"] == "e" * 64 and params["baseline"] == "/models/smollm2-base"
    assert params["quants"] == "f16,q8_0,q4_k_m" and params["tasks"] == "mmlu,gsm8k"
    assert params["seed"] == "0" and params["per_subject"] == "60" and params["n_shot"] == "0"
    assert params["toolchain/llama_cpp_python"] == "0.3.36" and params["version/lm-eval_evaluations"] == "0.4.13"

    metrics = run.data.metrics
    [q4] = [e for e in report["evals"] if e["label"] == f"{MODEL}-Q4_K_M" and e["task"] == "mmlu"]
    assert metrics[f"score/{MODEL}-Q4_K_M/mmlu/acc"] == pytest.approx(q4["value"])
    assert metrics[f"score/{MODEL}-Q4_K_M/mmlu/acc/ci_low"] == pytest.approx(q4["ci"][0])
    assert metrics[f"score/{MODEL}-Q4_K_M/mmlu/acc/ci_high"] == pytest.approx(q4["ci"][1])
    gsm = [c for c in report["compare"]["comparisons"] if c["task"] == "gsm8k" and c["filter"] == "strict-match"]
    for c in gsm:
        base = f"compare/{c['new_label']}/gsm8k/exact_match/strict-match"
        assert metrics[f"{base}/diff"] == pytest.approx(c["diff"]["mean"])
        assert metrics[f"{base}/diff_ci_low"] == pytest.approx(c["diff"]["ci"][0])
        assert metrics[f"{base}/p"] == pytest.approx(c["test"]["p_value"])
        assert metrics[f"{base}/p_adjusted"] == pytest.approx(c["p_adjusted"])
    assert metrics["variant/Q4_K_M/size_bytes"] == 105_472_096
    assert metrics["variant/Q4_K_M/kld_vs_f16"] == pytest.approx(0.1186)
    assert metrics["variant/Q8_0/eval_tokens_per_s"] == pytest.approx(4000 / 12.5)
    assert metrics["step/compare/wall_s"] == pytest.approx(61.5)

    tags = run.data.tags
    assert tags["posttrain.run_id"] == RUN_ID and tags["posttrain.status"] == "succeeded"
    assert tags["posttrain.verdict"] == report["summary"]["status"]
    assert "mlflow.parentRunId" not in tags

    names = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert names == ["compare.json", "manifest.json", "report.html", "report.json", "report.md"]  # no GGUF
    sent = json.loads(Path(client.download_artifacts(run.info.run_id, "report.json", str(tmp_path))).read_text())
    assert sent["compare"] == report["compare"]

    # The report now says where the run is tracked; the step is reused only while that holds.
    md = RunLayout(run_dir).report_md.read_text()
    assert "| mlflow | tracked |" in md and run.info.run_id in md
    assert step.verify(out)


def test_nested_under_the_training_run_and_a_rerun_updates_the_same_run(finished, team_store, tmp_path,
                                                                          monkeypatch):
    import mlflow

    from posttrain.demo import train_demo_model
    from posttrain.integrations import PosttrainCallback

    store, run_dir, home = finished
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sft-runs")
    MlflowClient(tracking_uri=team_store).create_experiment("sft-runs",
                                                            artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment("sft-runs")
    callback = PosttrainCallback(home=home, mode="enqueue", checkpoint=tmp_path / "train" / "final_model")
    with mlflow.start_run(run_name="sft") as training:
        ck = train_demo_model(tmp_path / "train", steps=2, early_step=1, callback=callback, threads=1, quiet=True)
    # posttrain started elsewhere (a watcher, another shell): only the callback's note knows the run.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    assert callback.handoff.mode == "skipped"  # no watcher here; the note is left all the same

    with store.connect() as db:
        db.execute("UPDATE runs SET checkpoint=? WHERE id=?", (str(ck.final), RUN_ID))
    _, out = track_step(store, run_dir, home, track=["mlflow"])
    assert out.trackers[0].ok, out
    _, runs = mlflow_runs(team_store, training.info.experiment_id)
    [child] = [r for r in runs if r.info.run_id != training.info.run_id]
    assert child.data.tags["mlflow.parentRunId"] == training.info.run_id
    assert not (home / "mlruns").exists()

    # The same posttrain run again, now failed, from a shell where the training job's MLFLOW_RUN_ID is
    # set, with the GGUF files asked for: the same MLflow run, updated.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_store)
    monkeypatch.setenv("MLFLOW_RUN_ID", training.info.run_id)
    _, again = track_step(store, run_dir, home, failed="evaluate", track=["mlflow"], track_artifacts=["gguf"])
    assert again.trackers[0].ok and "updated run" in again.trackers[0].note, again
    client, runs = mlflow_runs(team_store, training.info.experiment_id)
    [updated] = [r for r in runs if r.info.run_id != training.info.run_id]
    assert updated.info.run_id == child.info.run_id == again.trackers[0].run
    assert updated.data.tags["mlflow.parentRunId"] == training.info.run_id
    assert updated.data.tags["posttrain.status"] == "failed" and updated.info.status == "FAILED"
    gguf = sorted(a.path for a in client.list_artifacts(updated.info.run_id, "gguf"))
    assert gguf == [f"gguf/{MODEL}-{q}.gguf" for q in ("F16", "Q4_K_M", "Q8_0")]


def _wandb_records(run_file: Path):
    """The records of a W&B run file: W&B's header, then LevelDB-log blocks of protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_the_same_record(finished):
    from posttrain.track._wandb import wandb_run_id

    store, run_dir, home = finished
    report = json.loads(RunLayout(run_dir).report_json.read_text())
    _, out = track_step(store, run_dir, home, track=["wandb"])
    [outcome] = out.trackers
    assert outcome.ok, outcome
    [run_file] = (home / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")
    assert str(run_file.parent) == outcome.where

    records = _wandb_records(run_file)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == wandb_run_id(RUN_ID) == outcome.run and run.display_name == RUN_ID
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["checkpoint_sha256"] == "e" * 64 and config["quants"] == "f16,q8_0,q4_k_m"
    summary = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    [q4] = [e for e in report["evals"] if e["label"] == f"{MODEL}-Q4_K_M" and e["task"] == "mmlu"]
    assert summary[f"score/{MODEL}-Q4_K_M/mmlu/acc"] == pytest.approx(q4["value"])
    assert summary["posttrain.verdict"] == report["summary"]["status"]
    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "posttrain-report"
    assert sorted(m.path for m in artifact.manifest.contents) == [
        "compare.json", "manifest.json", "report.html", "report.json", "report.md"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def receiver():
    """A real HTTP server on 127.0.0.1 that keeps the notifications apprise posts to it (json://)."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"json://127.0.0.1:{server.server_address[1]}/", bodies
    server.shutdown()
    server.server_close()


def test_a_tracker_that_is_down_is_retried_noted_and_never_fails_the_run(finished, receiver, monkeypatch):
    store, run_dir, home = finished
    url, notifications = receiver
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    config = Config(home=home, track=["mlflow"], retries=2, retry_backoff_s=0.1, notify={"urls": [url]})
    keep = ("report", "track", "notify")
    # The pipeline's own report, track and notify steps, through the runner, on the finished run.
    steps = [dataclasses.replace(s, depends_on=tuple(d for d in s.depends_on if d in keep))
             for s in Stages(config).steps() if s.name in keep]
    spec = RunSpec(run_id=RUN_ID, checkpoint="/train/out/checkpoint-1200", run_dir=run_dir)
    result = Runner(store, steps).run(spec)

    assert result.status == "succeeded"
    track = next(s for s in result.steps if s.name == "track")
    assert track.status == "skipped" and track.error.startswith("skipped: not tracked in mlflow (")
    [outcome] = read_tracking(run_dir)
    assert not outcome["ok"] and outcome["attempts"] == 2
    assert "Connection refused" in outcome["error"] or "ConnectionError" in outcome["error"], outcome
    md = RunLayout(run_dir).report_md.read_text()
    assert "| mlflow | not tracked |" in md
    assert json.loads(RunLayout(run_dir).report_json.read_text())["tracking"][0]["ok"] is False

    [message] = notifications
    assert "Not tracked in mlflow: MlflowException: API request to" in message["message"]


def test_an_unknown_tracker_is_refused_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "posttrain", "run", str(tmp_path), "--track", "mlfow",
                           "--home", str(tmp_path / "home")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 1
    assert "track: 'mlfow' is not a tracker (one of: mlflow, wandb)" in proc.stderr


def test_mlflow_run_id_in_the_environment_comes_before_the_callbacks_note(tmp_path, monkeypatch):
    from posttrain.track import find_parent, record_parent

    ckpt = tmp_path / "train" / "final_model"
    assert find_parent(tmp_path / "home", ckpt) is None
    monkeypatch.chdir(tmp_path)
    record_parent(tmp_path / "home", ckpt, "noted", "sqlite:///mlflow.db")
    noted = find_parent(tmp_path / "home", ckpt)
    # A relative store is pinned to where training ran: posttrain reads it from elsewhere.
    assert (noted.run_id, noted.tracking_uri) == ("noted", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert find_parent(tmp_path / "home", tmp_path / "other" / "final_model") is None
    monkeypatch.setenv("MLFLOW_RUN_ID", "from-env")
    assert find_parent(tmp_path / "home", ckpt).run_id == "from-env"
