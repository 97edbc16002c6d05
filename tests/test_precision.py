"""trainer.precision and trainer.compile: fp32 unchanged, bf16 matmuls with fp32 state, compiled steps, refusals."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from regularization.checkpoint import CHECKPOINT
from regularization.config import ConfigError
from regularization.data import load_data
from regularization.engine import make_optimizer, make_penalty, make_step, preflight, seed_everything, train, train_epoch
from regularization.logging import run_hparams
from regularization.models import build_model
from regularization.vectorized import (
    StackedOptimizer,
    StackedPenalty,
    build_members,
    check_vectorizable,
    load_stacked_data,
    member_batches,
    per_member,
    train_group,
)
from regularization.vectorized import make_step as make_stacked_step
from regularization.vectorized import train_epoch as stacked_epoch
from tests.conftest import run_train

CPU = torch.device("cpu")
MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}


class MatmulDtypes(TorchDispatchMode):
    """The dtypes of the tensors every matmul (forward and backward) is computed from, as autocast hands them on."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in MATMULS:
            self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


def metrics(out_dir: Path) -> dict:
    m = json.loads((out_dir / "metrics.json").read_text())
    m.pop("wall_s")
    return m


def train_job(cfg) -> dict:
    out_dir = Path(cfg.hydra.runtime.output_dir)
    train(cfg, preflight(cfg), out_dir)
    return metrics(out_dir)


def tiny_mlp(root: Path) -> list[str]:
    return ["+experiment=dropout", f"data.root={root}", "data.batch_size=32", "model.hidden1=32", "model.hidden2=16", "model.init=default"]


def test_default_precision_is_the_fp32_code_before_it(make_cfg):
    """The final metrics of commit eb12f35 (before trainer.precision existed) for this run, and precision=32 spelled
    out, bit for bit. The numbers were measured on an Intel Xeon; another CPU model's fp32 kernels sum in another
    order (an AMD EPYC: 1.4e-7 relative away), so they hold to 1e-5, far below what another computation moves."""
    default = train_job(make_cfg("trainer.epochs=12", "reg.lambd=1"))
    assert (default["train_loss"], default["test_loss"], default["weight_l2_norm"]) == pytest.approx(
        (3.501267671585083, 89.0562515258789, 12.261773109436035), rel=1e-5
    )
    assert train_job(make_cfg("trainer.epochs=12", "reg.lambd=1", "trainer.precision=32")) == default
    assert "compile_s" not in default


def test_bf16_mixed_runs_the_matmuls_in_bf16_and_keeps_weights_and_optimizer_state_fp32(make_cfg, tiny_fashion_root):
    cfg = make_cfg(*tiny_mlp(tiny_fashion_root), "trainer.precision=bf16-mixed", "optim.momentum=0.9")
    seed_everything(0)
    data = load_data(cfg, CPU)
    model = build_model(cfg, data.num_inputs, data.num_outputs)
    penalty = make_penalty(cfg, model)
    optimizer = make_optimizer(cfg, model, penalty)
    with MatmulDtypes() as seen:
        objective = train_epoch(model, data, optimizer, penalty, 32, torch.Generator().manual_seed(0), step=make_step(cfg, model, data))
    assert seen.dtypes == {torch.bfloat16}  # forward and backward
    assert objective.dtype == torch.float32 and torch.isfinite(objective)
    assert {p.dtype for p in model.parameters()} == {p.grad.dtype for p in model.parameters()} == {torch.float32}
    assert {s["momentum_buffer"].dtype for s in optimizer.state.values()} == {torch.float32}


def test_vectorized_bf16_mixed_runs_the_stacked_gemms_in_bf16(make_cfg, tiny_fashion_root):
    cfgs = [make_cfg(*tiny_mlp(tiny_fashion_root), "trainer.precision=bf16-mixed", f"seed={s}") for s in (0, 1)]
    data = load_stacked_data(cfgs, CPU)
    net = build_members(cfgs, data, CPU)
    penalty = StackedPenalty("none", None, per_member([0.0, 0.0], CPU), net.weights)
    optimizer = StackedOptimizer(cfgs[0].optim, net.parameters(), per_member([0.5, 0.5], CPU), {})
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    batches = member_batches(len(data.X_train), 32, generators, torch.tensor([0, 1]))
    with MatmulDtypes() as seen:
        objective = stacked_epoch(net, data, optimizer, penalty, batches, None, make_stacked_step(cfgs[0], net, data))
    assert seen.dtypes == {torch.bfloat16}
    assert objective.dtype == torch.float32 and bool(torch.isfinite(objective).all())
    assert {p.dtype for p in net.parameters()} == {torch.float32}


def test_bf16_members_equal_bf16_single_runs(make_cfg, tiny_fashion_root):
    """The vectorized launcher at bf16-mixed trains what the basic one does, up to the rounding of other GEMM shapes
    (without dropout: its masks come from another stream of random numbers in a group)."""
    common = [*tiny_mlp(tiny_fashion_root), "reg.dropout1=0", "reg.dropout2=0", "trainer.epochs=3", "trainer.precision=bf16-mixed"]
    members = [[*common, f"seed={s}"] for s in (0, 1)]
    cfgs = [make_cfg(*m) for m in members]
    train_group(cfgs, [Path(c.hydra.runtime.output_dir) for c in cfgs], CPU)
    for cfg, m in zip(cfgs, members, strict=True):
        got, want = metrics(Path(cfg.hydra.runtime.output_dir)), train_job(make_cfg(*m))
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-2)
        assert got["test_acc"] == pytest.approx(want["test_acc"], abs=0.03)


def test_precision_and_compile_are_in_the_hparams_row(make_cfg):
    row = run_hparams(make_cfg("trainer.precision=bf16-mixed"))
    assert (row["trainer.precision"], row["trainer.compile"]) == ("bf16-mixed", False)


def test_a_checkpoint_of_another_precision_is_refused_and_one_from_before_the_key_resumes(make_cfg, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    first = make_cfg("trainer.epochs=2")
    job = Path(first.hydra.runtime.output_dir)
    train(first, preflight(first), job)
    (job / "metrics.json").unlink()
    other = make_cfg("trainer.epochs=3", "trainer.precision=bf16-mixed")
    with pytest.raises(ConfigError, match="differs in trainer.precision"):
        train(other, preflight(other), job)
    state = torch.load(job / CHECKPOINT, weights_only=True)  # as a checkpoint written before trainer.precision existed
    config = json.loads(state["config"])
    del config["trainer"]["precision"], config["trainer"]["compile"]
    torch.save(state | {"config": json.dumps(config, sort_keys=True)}, job / CHECKPOINT)
    longer = make_cfg("trainer.epochs=3")
    train(longer, preflight(longer), job)
    assert metrics(job)["epochs"] == 3


@pytest.mark.parametrize("overrides", [["trainer.precision=bf16"], ["trainer.precision=64-true"], ["trainer.precision=16-mixed"]])
def test_a_precision_that_cannot_run_here_names_the_key_and_what_is_allowed(make_cfg, overrides):
    with pytest.raises(ConfigError, match="trainer.precision") as info:
        preflight(make_cfg(*overrides, "device=cpu"))
    assert "bf16-mixed" in str(info.value)


def test_16_mixed_under_the_vectorized_launcher_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="trainer.precision: 16-mixed needs hydra/launcher=basic"):
        check_vectorizable(make_cfg("trainer.precision=16-mixed"))


def test_compile_without_a_cpp_compiler_is_refused_before_training(make_cfg, monkeypatch):
    from torch._inductor import cpp_builder, exc

    def missing() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(ConfigError, match="trainer.compile: no C\\+\\+ compiler found"):
        preflight(make_cfg("trainer.compile=true", "device=cpu"))


def test_compile_where_torch_compile_cannot_run_is_refused(make_cfg, monkeypatch):
    def unsupported() -> None:
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch._dynamo.eval_frame, "check_if_dynamo_supported", unsupported)
    with pytest.raises(ConfigError, match="trainer.compile: torch.compile does not run here"):
        preflight(make_cfg("trainer.compile=true", "device=cpu"))


@pytest.mark.slow
def test_cli_sweep_over_precision_names_its_dirs_and_splits_vectorized_groups(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=vectorized", "trainer.precision=32,bf16-mixed", "reg.lambd=0,3", "trainer.epochs=3"]
    run_train([*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    names = {p.name for p in sweep.iterdir() if p.is_dir()}
    assert names == {f"reg.lambd={v},trainer.precision={p}" for v in (0, 3) for p in ("32", "bf16-mixed")}
    free = {p: metrics(sweep / f"reg.lambd=0,trainer.precision={p}") for p in ("32", "bf16-mixed")}
    assert free["32"] != free["bf16-mixed"]  # the bf16 members trained in bf16
    assert free["bf16-mixed"]["test_loss"] == pytest.approx(free["32"]["test_loss"], rel=0.05)


@pytest.mark.slow
def test_cli_unknown_precision_is_a_short_error(tmp_path):
    proc = run_train(["trainer.precision=fp8", f"hydra.run.dir={tmp_path}/run"], tmp_path, check=False)
    assert proc.returncode != 0 and "trainer.precision" in proc.stderr and "32, bf16-mixed, 16-mixed" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 8


@pytest.mark.slow
def test_compiled_step_trains_as_the_eager_one_in_both_launchers_and_reports_its_compile_time(make_cfg):
    """torch.compile on CPU (inductor, g++): the linear regression's numbers match eager within 1e-5; compile_s > 0,
    a vectorized member's its share of its group's (group_compile_s), as its wall_s is, so within its wall_s."""
    common = ["trainer.epochs=3", "reg.lambd=1"]
    eager = train_job(make_cfg(*common))
    compiled = train_job(make_cfg(*common, "trainer.compile=true"))
    cfgs = [make_cfg(*common, "trainer.compile=true", f"seed={s}") for s in (0, 1)]
    train_group(cfgs, [Path(c.hydra.runtime.output_dir) for c in cfgs], CPU)
    member = json.loads((Path(cfgs[0].hydra.runtime.output_dir) / "metrics.json").read_text())
    assert member["compile_s"] == pytest.approx(member["group_compile_s"] / 2) and member["compile_s"] <= member["wall_s"]
    for got in (compiled, member):
        assert 0 < got["compile_s"]
        assert (got["test_loss"], got["weight_l2_norm"]) == pytest.approx((eager["test_loss"], eager["weight_l2_norm"]), rel=1e-5)


def test_the_weight_decay_chapter_holds_under_bf16_mixed(make_cfg):
    """The fp32 master weights keep the 0.01-sized signal: ‖w‖ ≈ 13 and a large test loss at λ = 0, ‖w‖ ≈ 0.35 at λ = 3."""
    free = train_job(make_cfg("reg.lambd=0", "trainer.precision=bf16-mixed"))
    decayed = train_job(make_cfg("reg.lambd=3", "trainer.precision=bf16-mixed"))
    assert 10 <= free["weight_l2_norm"] <= 17 and free["test_loss"] > 10
    assert 0.25 <= decayed["weight_l2_norm"] <= 0.6 and decayed["test_loss"] < 1
