"""A real TensorBoard server on 127.0.0.1 reads what train.py wrote, a sweep and two single runs, as the README
starts it (--logdir outputs): runs, scalars and the HParams plugin."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_train

SWEEP = "multirun/sweep"  # under outputs/, as TensorBoard names a sweep's runs: <sweep dir>/<job>
RUNS = {f"{SWEEP}/reg.lambd=0": 0.0, f"{SWEEP}/reg.lambd=3": 3.0}  # run name (the swept key) -> λ
SINGLE = ("runs/reg.lambd=3/", "runs/job/")  # single runs: named by their overrides (or `job`), then their time
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (TensorBoard's --port 0 does not report the one it picks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict):
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """outputs/ of a working dir with a sweep and two single runs, one with an override and one without."""
    cwd = tmp_path_factory.mktemp("tb")
    run_train(["-m", "reg.lambd=0,3", "trainer.epochs=5", f"hydra.sweep.dir=outputs/{SWEEP}"], cwd=cwd)
    run_train(["reg.lambd=3"], cwd=cwd)
    run_train([], cwd=cwd)
    return cwd / "outputs"


@pytest.fixture(scope="module")
def sweep_dir(outputs: Path) -> Path:
    return outputs / SWEEP


@pytest.fixture(scope="module")
def tensorboard(outputs: Path) -> Iterator[TensorBoard]:
    """`tensorboard --logdir outputs` on a free local port, up until it lists every run; always stopped."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(outputs), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        board = TensorBoard(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}: {server.stderr.read()}")
            try:
                if len(board.get("/data/runs")) >= len(RUNS) + len(SINGLE):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail("tensorboard did not list the sweep's runs within 90 s")
            time.sleep(0.5)
        yield board
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()


@pytest.mark.slow
def test_runs_are_named_by_their_overrides(tensorboard):
    """A sweep's jobs by the keys it varies; a single run by its overrides (`job` without), before its time."""
    runs = tensorboard.get("/data/runs")
    assert sorted(r for r in runs if r.startswith(SWEEP)) == sorted(RUNS)
    single = sorted(r for r in runs if not r.startswith(SWEEP))
    assert len(single) == 2 and [r.startswith(prefix) for r, prefix in zip(single, sorted(SINGLE), strict=True)] == [True, True]


@pytest.mark.slow
def test_test_loss_has_one_point_per_evaluation(tensorboard):
    for run in RUNS:
        points = tensorboard.get("/data/plugin/scalars/scalars", run=run, tag="loss/test")
        assert [step for _, step, _ in points] == [1, 2, 3, 4, 5]  # trainer.eval_every=1


@pytest.mark.slow
def test_hparams_plugin_has_one_session_per_job_with_its_lambda(tensorboard, sweep_dir):
    experiment = tensorboard.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"reg.lambd", "seed", "model", "optim.lr", "trainer.epochs"} <= names
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"loss/test", "loss/train", "weights/l2_norm"} <= metrics

    request = {
        "experimentName": "",
        "allowedStatuses": STATUSES,
        "colParams": [{"hparam": "reg.lambd"}, {"metric": {"tag": "loss/test"}}],
        "startIndex": 0,
        "sliceSize": 100,
    }
    groups = tensorboard.post("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    sessions = {s["name"]: (g["hparams"]["reg.lambd"], s) for g in groups for s in g["sessions"]}
    assert {name for name in sessions if name.startswith(SWEEP)} == set(RUNS)
    assert sorted(name.rpartition("/")[0] + "/" for name in sessions if not name.startswith(SWEEP)) == sorted(SINGLE)  # trial IDs
    for run, (lambd, session) in sessions.items():
        if run not in RUNS:
            continue
        assert lambd == RUNS[run]
        assert session["status"] == "STATUS_SUCCESS"
        loss = {m["name"]["tag"]: m for m in session["metricValues"]}["loss/test"]
        final = json.loads((sweep_dir.parent.parent / run / "metrics.json").read_text())
        assert loss["trainingStep"] == 5 and loss["value"] == pytest.approx(final["test_loss"], rel=1e-6)  # the final metric
