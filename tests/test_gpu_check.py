"""scripts/gpu_check.py on a machine without a GPU: it says so and stops; its helpers compare runs and lay out rows;
``--device cpu`` runs every row that does not need CUDA, end to end."""

import json
import math
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def test_mixed_precision_passes_within_three_standard_errors_of_fp32():
    """The precision rows' bound: bf16's seeds' mean within 3σ√(2/n) of fp32's, σ fp32's seed-to-seed spread."""
    stats = gpu_check["seed_stats"]({"32": [1.0, 2.0, 3.0], "bf16-mixed": [1.1, 2.1, 3.1]}, "bf16-mixed")
    assert stats["sigma_32"] == pytest.approx(1.0) and stats["gap"] == pytest.approx(0.1)
    assert stats["bound"] == pytest.approx(3 * (2 / 3) ** 0.5)


def test_final_metrics_compared_across_compile_and_precision():
    """Compared: the final losses, accuracy and weight norm; not sparsity (a count), not the run's id or wall time."""
    base = {"status": "completed", "train_loss": 1.0, "test_loss": 2.0, "test_acc": None, "weight_l2_norm": 4.0, "sparsity": 0.1}
    other = base | {"test_loss": 2.02, "sparsity": 0.2, "experiment_id": "x", "compile_s": 3.0}
    assert gpu_check["final_rel_diff"](other, base) == pytest.approx(0.01, rel=1e-5)
    assert gpu_check["final_rel_diff"](other | {"status": "diverged"}, base) == math.inf


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``gpu_check.py --device cpu --size tiny``, as a user types it, once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("gpu_check")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--size", "tiny", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out


# The tests of the one CPU run, in one xdist worker: each worker would run it again (a minute on 2 cores).
ONE_CPU_RUN = pytest.mark.xdist_group("gpu_check_cpu_run")


@pytest.mark.slow
@ONE_CPU_RUN
def test_the_cpu_run_end_to_end(cpu_run):
    """``gpu_check.py --device cpu`` at the test's size: every check runs through train.py and bench.py as on a
    GPU, the vectorized launcher agrees with the basic one, the kill lands mid-run and resumes bitwise, compile
    compiles once and agrees with eager, bf16-mixed with fp32, and the JSON report holds every row."""
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report_path,) = out.glob("gpu_check-*.json")
    rows = {row["check"]: row for row in json.loads(report_path.read_text())["rows"]}
    assert set(rows) == {
        "launcher basic",
        "launcher vectorized",
        "kill -9 + resume weight_decay_adam",
        "deterministic=true: repeats",
        "compile basic",
        "compile vectorized",
        "precision bf16-mixed basic",
        "precision 16-mixed basic",
        "precision bf16-mixed vectorized",
        "4-job dropout sweep",
        "bench (b) 2-value λ sweep",
    }
    assert rows["launcher vectorized"]["ok"] and rows["launcher vectorized"]["max_rel_diff_vs_basic"] <= 1e-4
    assert rows["kill -9 + resume weight_decay_adam"]["ok"] and rows["kill -9 + resume weight_decay_adam"]["killed_mid_run"]
    basic, vectorized = rows["compile basic"], rows["compile vectorized"]
    assert basic["ok"] and basic["compile_s"] > 0 and basic["compile_s_second_job"] == 0 and not basic["eager_fallback"]
    assert vectorized["ok"] and vectorized["compile_s"] > 0 and vectorized["max_rel_diff_vs_eager"] <= 1e-4
    for name in ("precision bf16-mixed basic", "precision bf16-mixed vectorized"):
        assert rows[name]["ok"] and rows[name]["completed"] == 4 and not rows[name]["bitwise_fp32"]
    assert rows["precision 16-mixed basic"]["ok"] is None and rows["precision 16-mixed basic"]["why"] == "16-mixed needs CUDA"
    assert rows["4-job dropout sweep"]["ok"] and rows["4-job dropout sweep"]["speedup"] > 0
    assert rows["bench (b) 2-value λ sweep"]["speedup"] > 0


def edit_metrics(job_dir: Path, **changes) -> None:
    path = job_dir / "metrics.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.slow
@ONE_CPU_RUN
def test_the_compile_and_precision_rows_fail_where_the_runs_do(cpu_run, tmp_path):
    """The CPU run's own sweeps, edited: a second job that compiled again, a compiled run farther from eager than
    the tolerance, a bf16 mean shifted by 10 fp32 standard deviations, bf16 runs equal to fp32 (no autocast): FAIL."""
    _, out = cpu_run
    (runs,) = (out / "runs").iterdir()
    work = shutil.copytree(runs, tmp_path / "runs")
    judge_compiled, sweep, tolerance = gpu_check["judge_compiled"], work / "compile" / "basic", gpu_check["COMPILED_BASIC_TOL"]
    assert judge_compiled("basic", sweep, tolerance)["ok"]
    assert not judge_compiled("basic", sweep, 0.0)["ok"]  # the compiled masks are inductor's random numbers: not bitwise
    first, second = (p for p in gpu_check["in_run_order"](sweep) if gpu_check["job_value"](p, "trainer.compile"))
    edit_metrics(second, compile_s=1.5)  # the second rate compiled its own graphs
    assert not judge_compiled("basic", sweep, tolerance)["ok"]

    judge, sweep = gpu_check["judge_precision"], work / "precision" / "basic"
    assert judge("basic", sweep, "bf16-mixed", 2)["ok"]
    jobs = {(gpu_check["job_value"](p, "trainer.precision"), gpu_check["job_value"](p, "seed")): p for p in gpu_check["job_dirs"](sweep)}
    fp32 = [gpu_check["metrics"](jobs["32", s]) for s in range(2)]
    sigma = abs(fp32[0]["test_loss"] - fp32[1]["test_loss"]) / 2**0.5
    shifted = shutil.copytree(sweep, tmp_path / "shifted")
    for s in range(2):
        edit_metrics(shifted / jobs["bf16-mixed", s].name, test_loss=fp32[s]["test_loss"] + 10 * sigma)
    assert not judge("basic", shifted, "bf16-mixed", 2)["ok"]
    for s in range(2):
        (jobs["bf16-mixed", s] / "metrics.json").write_text((jobs["32", s] / "metrics.json").read_text())
    row = judge("basic", sweep, "bf16-mixed", 2)
    assert not row["ok"] and row["bitwise_fp32"]
