"""scripts/gpu_check.py on a machine without a GPU: it says so and stops; its helpers compare runs and lay out rows;
``--device cpu`` runs every row that does not need CUDA, end to end."""

import json
import math
import runpy
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

gpu_check = runpy.run_path(str(ROOT / "scripts" / "gpu_check.py"), run_name="gpu_check")


def test_without_cuda_it_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here") as info:
        gpu_check["main"]()
    assert isinstance(info.value.code, str)  # Python prints it, without a traceback, and exits 1


def run(test_loss: float, history: list[float], status: str = "completed") -> dict:
    return {
        "status": status,
        "test_loss": test_loss,
        "wall_s": 3.0,
        "history": [{"epoch": i, "test_loss": v} for i, v in enumerate(history)],
    }


def test_max_rel_diff():
    diff = gpu_check["max_rel_diff"]
    assert diff(run(1.0, [2.0, 1.0]), run(1.0, [2.0, 1.0])) == 0.0  # bitwise; wall_s is not compared
    assert diff(run(1.0, [2.0, 1.0]), run(1.0, [2.0, 1.0]) | {"wall_s": 9.0}) == 0.0
    assert diff(run(1.0, [2.0, 1.01]), run(1.0, [2.0, 1.0])) == pytest.approx(0.01, rel=1e-5)
    assert diff(run(1.0, [2.0]), run(1.0, [2.0, 1.0])) == math.inf  # another number of evaluations
    assert diff(run(1.0, [2.0], "diverged"), run(1.0, [2.0])) == math.inf


def test_dropout_grid_is_n_by_n_rates_below_0_8():
    d1, d2 = gpu_check["dropout_grid"](16)
    rates = [float(r) for r in d1.removeprefix("reg.dropout1=").split(",")]
    assert d2 == d1.replace("dropout1", "dropout2") and len(rates) == 16 == len(set(rates))
    assert rates[0] == 0 and max(rates) < 0.8


def test_table_rows():
    rows = [{"check": "a", "ok": True, "s": 1.0, "x": 0.5}, {"check": "b", "ok": False, "s": 2.0}, {"check": "c", "ok": None}]
    lines = gpu_check["format_table"](rows).splitlines()
    assert [line.split()[1] for line in lines] == ["ok", "FAIL", "n/a"] and "x 0.5" in lines[0]


def test_a_vectorized_members_bookkeeping_is_not_a_difference():
    """Item 1 of issue 21: vectorized members add group_wall_s and group_size; the launcher row compared them as
    results and always failed."""
    member = run(1.0, [2.0, 1.0]) | {"group_wall_s": 6.0, "group_size": 2, "wall_s": 3.0}
    assert gpu_check["max_rel_diff"](member, run(1.0, [2.0, 1.0])) == 0.0
    assert gpu_check["max_rel_diff"](member | {"extra": 1.0}, run(1.0, [2.0, 1.0])) == math.inf  # a result key still counts


def test_a_run_past_its_time_limit_is_a_failed_row_not_a_crash(tmp_path):
    """Item 8: an uncaught TimeoutExpired ended the script before its JSON was written."""
    sizes = gpu_check["SIZES"]["tiny"]
    check = gpu_check["Check"](tmp_path, "cpu", type(sizes)(**{**sizes.__dict__, "timeout_s": 0.5}))
    start = time.monotonic()
    rows = gpu_check["check_determinism"](check)
    assert [row["ok"] for row in rows] == [False] and "timed out after 0.5 s" in rows[0]["error"]
    assert time.monotonic() - start < 30  # killed, not waited for


def test_a_check_that_raises_is_a_failed_row(tmp_path):
    def broken(check):
        raise KeyError("history")

    rows = gpu_check["run_check"](broken, gpu_check["Check"](tmp_path, "cpu", gpu_check["SIZES"]["tiny"]))
    assert rows[0]["ok"] is False and rows[0]["check"] == "broken" and "KeyError" in rows[0]["error"]


def test_resume_rows_write_ten_checkpoints_not_one_an_epoch():
    """Item 8: the weight-decay resume run wrote an fsynced checkpoint after each of 1,500 epochs."""
    for sizes in gpu_check["SIZES"].values():
        for epochs in (sizes.resume_epochs, sizes.dropout_epochs):
            overrides = dict(a.split("=") for a in gpu_check["ten_checkpoints"](epochs))
            assert epochs / int(overrides["trainer.checkpoint_every"]) <= 10 and epochs <= 400


def test_one_after_another_pays_the_warm_up_once():
    """Item 9: the extrapolated basic side pays the first job's warm-up once, as the vectorized group does."""
    assert gpu_check["one_after_another_s"]([5.0, 1.0, 1.2, 0.8], 256) == pytest.approx(5.0 + 255 * 1.0)


@pytest.mark.slow
def test_the_cpu_run_end_to_end(tmp_path):
    """``gpu_check.py --device cpu`` at the test's size: every check runs through train.py and bench.py as on a
    GPU, the vectorized launcher agrees with the basic one, the kill lands mid-run and resumes bitwise, and the
    JSON report holds every row."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--size", "tiny", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report_path,) = out.glob("gpu_check-*.json")
    rows = {row["check"]: row for row in json.loads(report_path.read_text())["rows"]}
    assert set(rows) == {
        "launcher basic",
        "launcher vectorized",
        "kill -9 + resume weight_decay_adam",
        "deterministic=true: repeats",
        "4-job dropout sweep",
        "bench (b) 2-value λ sweep",
    }
    assert rows["launcher vectorized"]["ok"] and rows["launcher vectorized"]["max_rel_diff_vs_basic"] <= 1e-4
    assert rows["kill -9 + resume weight_decay_adam"]["ok"] and rows["kill -9 + resume weight_decay_adam"]["killed_mid_run"]
    assert rows["4-job dropout sweep"]["ok"] and rows["4-job dropout sweep"]["speedup"] > 0
    assert rows["bench (b) 2-value λ sweep"]["speedup"] > 0
