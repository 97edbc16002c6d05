"""scripts/gpu_check.py on a machine without a GPU: it says so and stops; its helpers compare runs and lay out rows."""

import math
import runpy
import sys

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
