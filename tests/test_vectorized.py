"""The vectorized launcher: stacked members equal single runs, groups split where they must, members fail alone."""

import contextlib
import json
import math
import pickle
import re
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from regularization import engine
from regularization.engine import train
from regularization.models import build_model, parameter_count
from regularization.vectorized import member_dropout, plan_groups, train_group
from tests.conftest import real_data_root, run_train

CPU = torch.device("cpu")
SHORT_WD = ["+experiment=weight_decay", "trainer.epochs=12"]


def single(make_cfg, overrides: list[str]) -> dict:
    """The job run alone by engine.train, as the basic launcher runs it."""
    cfg = make_cfg(*overrides)
    out = Path(cfg.hydra.runtime.output_dir)
    train(cfg, CPU, out)
    return json.loads((out / "metrics.json").read_text())


def stacked(make_cfg, members: list[list[str]]) -> list[dict]:
    cfgs = [make_cfg(*m) for m in members]
    dirs = [Path(c.hydra.runtime.output_dir) for c in cfgs]
    train_group(cfgs, dirs, CPU)
    return [json.loads((d / "metrics.json").read_text()) for d in dirs]


def assert_same_run(got: dict, want: dict, rel: float = 1e-4) -> None:
    assert got.keys() - {"group_wall_s", "group_size"} == want.keys()  # a member records its group's time and size too
    assert got["status"] == want["status"] and got["epochs"] == want["epochs"]
    assert len(got["history"]) == len(want["history"])
    for g, w in zip(got["history"], want["history"], strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if value is None:
                assert g[key] is None
            else:
                assert g[key] == pytest.approx(value, rel=rel, abs=1e-7), key


def assert_same_mean(got: list[float], alone: list[float]) -> None:
    """The means of two sets of seeds within three standard errors of their difference, each set's from its
    seed-to-seed spread: stacked runs and single runs agree in distribution, whichever CPU gives the last bits."""
    stderr = math.sqrt(statistics.variance(got) / len(got) + statistics.variance(alone) / len(alone))
    assert abs(statistics.fmean(got) - statistics.fmean(alone)) <= 3 * stderr, (got, alone)


@pytest.mark.parametrize(
    "reg",
    [["reg=none"], ["reg=l2"], ["reg=l2", "reg.impl=weight_decay"], ["reg=l1"], ["reg=l1", "reg.impl=proximal"]],
    ids=["none", "l2-penalty", "l2-weight_decay", "l1-subgradient", "l1-proximal"],
)
def test_members_equal_single_runs(make_cfg, reg):
    """λ, lr and seed differ per member (a new seed: new data, init and batch order); every number matches within 1e-4."""
    lambd = (lambda v: []) if reg == ["reg=none"] else (lambda v: [f"reg.lambd={v}"])
    members = [
        SHORT_WD + reg + lambd(0),
        SHORT_WD + reg + lambd(0.5),
        SHORT_WD + reg + lambd(2) + ["optim.lr=0.01"],
        SHORT_WD + reg + ["seed=3"],
    ]
    got = stacked(make_cfg, members)
    for g, m in zip(got, members, strict=True):
        assert_same_run(g, single(make_cfg, m))


def test_mlp_adam_members_equal_single_runs(make_cfg, tiny_fashion_root):
    """The classification path (MLP, cross-entropy, accuracies) and the Adam update, per-member lr and seed."""
    base = ["model=mlp", "model.hidden1=32", "model.hidden2=16", "data=fashion_mnist", f"data.root={tiny_fashion_root}"]
    base += ["data.batch_size=32", "trainer.epochs=3", "optim=adam", "reg=l2"]
    members = [base + ["reg.lambd=0.01"], base + ["optim.lr=0.01", "seed=4"]]
    got = stacked(make_cfg, members)
    for g, m in zip(got, members, strict=True):
        assert_same_run(g, single(make_cfg, m))
    assert got[0]["test_acc"] is not None


def test_a_diverging_member_does_not_disturb_the_others(make_cfg):
    members = [SHORT_WD + ["reg.lambd=1"], SHORT_WD + ["optim.lr=5"], SHORT_WD + ["reg.lambd=3"]]
    got = stacked(make_cfg, members)
    assert got[1]["status"] == "diverged" and got[1]["epochs"] < 12
    assert_same_run(got[1], single(make_cfg, members[1]))
    for k in (0, 2):
        assert got[k]["status"] == "completed"
        assert_same_run(got[k], single(make_cfg, members[k]))


def test_groups_split_on_keys_that_cannot_stack_and_respect_max_members(make_cfg):
    jobs = [
        ["reg.lambd=0"],
        ["reg.lambd=1", "seed=2"],
        ["data.batch_size=4"],  # another batch size
        ["reg=l1", "reg.lambd=1"],  # another penalty
        ["reg.lambd=2", "optim.lr=0.1"],
        ["model=mlp"],  # another model
        ["optim=adam", "optim.lr=0.003"],  # another optimizer, even with the same lr
    ]
    cfgs = [make_cfg(*j) for j in jobs]
    assert plan_groups(cfgs, max_members=64) == [[0, 1, 4], [2], [3], [5], [6]]
    assert plan_groups(cfgs, max_members=2) == [[0, 1], [4], [2], [3], [5], [6]]


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_parameter_count_is_the_built_models(make_cfg, model):
    cfg = make_cfg(f"model={model}", *(["model.hidden1=7", "model.hidden2=5"] if model == "mlp" else []))
    assert parameter_count(cfg, 13, 3) == sum(p.numel() for p in build_model(cfg, 13, 3).parameters())


def test_default_group_size_grows_for_small_models(make_cfg):
    """max_members null: 64 for the Fashion-MNIST MLP (as before), more for the 201-parameter weight-decay model."""
    linear, mlp = make_cfg(), make_cfg("model=mlp", "data=fashion_mnist")
    lambdas = [OmegaConf.merge(linear, {"reg": {"lambd": v}}) for v in range(200)]
    assert plan_groups(lambdas, max_members=None) == [list(range(200))]
    mlps = [OmegaConf.merge(mlp, {"reg": {"lambd": v}}) for v in range(100)]
    assert plan_groups(mlps, max_members=None) == [list(range(64)), list(range(64, 100))]


def test_member_dropout_keeps_one_minus_p_per_member():
    torch.manual_seed(0)
    p = torch.tensor([0.0, 0.2, 0.5, 0.9])
    H = torch.ones(4, 500, 200)
    out = member_dropout(H, p, torch.rand(H.shape))
    kept = (out != 0).float().mean(dim=(1, 2))
    assert torch.equal(out[0], H[0])  # p = 0 keeps every unit
    assert kept.tolist() == pytest.approx((1 - p).tolist(), abs=0.01)
    assert out.mean(dim=(1, 2)).tolist() == pytest.approx([1.0] * 4, abs=0.03)  # E[dropout(H)] = H


def test_dropout_members_agree_with_single_runs(make_cfg, tiny_fashion_root):
    """Mean test accuracy over 5 seeds, stacked vs alone (the masks differ, so only statistically)."""
    base = ["+experiment=dropout", f"data.root={tiny_fashion_root}", "model.hidden1=32", "model.hidden2=32"]
    base += ["model.init=default", "data.batch_size=20", "trainer.epochs=8", "optim.lr=0.5"]
    members = [base + [f"seed={s}"] for s in range(5)]
    got = stacked(make_cfg, members)
    alone = [single(make_cfg, m) for m in members]
    mean = lambda runs: 100 * sum(r["test_acc"] for r in runs) / len(runs)  # noqa: E731
    assert abs(mean(got) - mean(alone)) <= 0.5
    assert all(r["status"] == "completed" for r in got)


def event_tags(job_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(job_dir)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def strip_launcher(hydra_yaml: Path) -> dict:
    """hydra.yaml without what names the launcher or the sweep dir."""
    h = OmegaConf.to_container(OmegaConf.load(hydra_yaml))["hydra"]
    for key in ("launcher", "sweep"):
        h.pop(key)
    h["runtime"].pop("output_dir")
    h["runtime"]["choices"].pop("hydra/launcher")
    h["overrides"]["hydra"] = [
        o for o in h["overrides"]["hydra"] if not o.startswith(("hydra/launcher", "hydra.sweep.dir", "hydra.launcher"))
    ]
    return h


@pytest.mark.slow
def test_sweep_leaves_what_the_basic_launcher_leaves(tmp_path):
    sweep = ["-m", "+experiment=weight_decay", "trainer.epochs=4", "reg=l1,l2", "reg.lambd=0,1.5", "seed=0,1"]
    run_train([*sweep, f"hydra.sweep.dir={tmp_path / 'basic'}"], cwd=tmp_path)
    vec = tmp_path / "vectorized"
    args = [*sweep, f"hydra.sweep.dir={vec}", "hydra/launcher=vectorized", "hydra.launcher.max_members=3"]
    proc = run_train(args, cwd=tmp_path)
    assert "4 vectorized group(s)" in proc.stdout + proc.stderr  # {l1, l2} × ⌈4 / 3⌉
    names = sorted(p.name for p in (tmp_path / "basic").iterdir() if p.is_dir())
    assert len(names) == 8 and names == sorted(p.name for p in vec.iterdir() if p.is_dir())
    for name in names:
        b, v = tmp_path / "basic" / name, vec / name
        for f in ("config.yaml", "overrides.yaml"):
            assert (v / ".hydra" / f).read_text() == (b / ".hydra" / f).read_text()
        assert strip_launcher(v / ".hydra" / "hydra.yaml") == strip_launcher(b / ".hydra" / "hydra.yaml")
        got, want = (json.loads((d / "metrics.json").read_text()) for d in (v, b))
        assert_same_run(got, want)
        # train.log, where Hydra's job logging puts a job's lines: an "epoch k/4 ..." line per evaluation in both.
        got_log, want_log = (
            [line.split(" - ", 1)[1] for line in (d / "train.log").read_text().splitlines() if " - epoch " in line] for d in (v, b)
        )
        assert len(got_log) == 4 and [line[:9] for line in got_log] == [line[:9] for line in want_log]
        tags_v, tags_b = event_tags(v), event_tags(b)
        assert tags_v.keys() == tags_b.keys()
        for tag, points in tags_b.items():
            assert [s for s, _ in tags_v[tag]] == [s for s, _ in points]
            assert all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-7) for (_, x), (_, y) in zip(tags_v[tag], points, strict=True))
    assert (vec / "summary.csv").exists()
    # Rerun into the same dir: every job is complete, so nothing trains again.
    before = {n: (vec / n / "metrics.json").stat().st_mtime_ns for n in names}
    proc = run_train(args, cwd=tmp_path)
    assert "0 jobs as 0 vectorized group(s)" in proc.stdout + proc.stderr
    assert before == {n: (vec / n / "metrics.json").stat().st_mtime_ns for n in names}


def test_sweep_progress_lines_say_group_k_of_n_pace_and_eta(tmp_path):
    """Logged (the output is no terminal here, so no bar): every epoch of every group, its place, s/epoch and ETAs."""
    args = ["-m", "+experiment=weight_decay", "trainer.epochs=2", "reg=l1,l2", "hydra/launcher=vectorized"]
    proc = run_train(args, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "group 1 of 2 on cpu:" in output and "group 2 of 2 on cpu:" in output
    pace = r"\(\d[\d.e+-]* s/epoch; ETA group \d\d:\d\d, sweep ~\d\d:\d\d\): 1 of 1 members training; train_loss "
    for k in (1, 2):
        for epoch in (1, 2):
            assert re.search(rf"group {k} of 2, epoch {epoch}/2 {pace}", output), output


def test_derived_configs_equal_composed_ones(tmp_path):
    """SweepComposer composes once per structure and derives the other jobs: every config equals Hydra's own."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hydra_plugins.regularization_launcher.compose import SweepComposer
    from tests.conftest import CONF

    jobs = [
        ["+experiment=weight_decay", "reg.lambd=0", "seed=1"],
        ["+experiment=weight_decay", "reg.lambd=2.5", "seed=4"],  # derived
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=2.5", "seed=4"],  # another group choice: composed
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=1", "seed=0"],  # derived from the one above
        ["+experiment=weight_decay", "reg.lambd=1", "reg.lambd=3", "seed=0"],  # a key twice: composed
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
        composer = SweepComposer(loader, master)
        for overrides in jobs:
            config, task = composer.compose(overrides)
            want = loader.load_sweep_config(master, overrides)
            assert OmegaConf.to_yaml(composer.task(overrides)) == OmegaConf.to_yaml(task)
            assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(want)
            assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml({k: v for k, v in want.items() if k != "hydra"})
            assert OmegaConf.is_struct(task) and task.reg.lambd == want.reg.lambd
        assert len(composer.bases) == 1 + 3  # the master, and the three composed above
    GlobalHydra.instance().clear()


@contextlib.contextmanager
def placed_jobs(sweep: list[str], jobs: list[list[str]], sweep_dir: Path) -> Iterator[list]:
    """The launcher's jobs of a sweep (its command line ``sweep``, its jobs' overrides ``jobs``), composed by
    SweepComposer and placed in ``sweep_dir``, inside Hydra's context (which the block may still need)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals
    from hydra.types import RunMode

    from hydra_plugins.regularization_launcher import Job, VectorizedLauncher
    from hydra_plugins.regularization_launcher.compose import SweepComposer
    from tests.conftest import CONF

    setup_globals()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [*sweep, f"hydra.sweep.dir={sweep_dir}"], run_mode=RunMode.MULTIRUN)
        composer = SweepComposer(loader, master)
        yield [VectorizedLauncher.place(Job(i, o, composer.compose_job(o))) for i, o in enumerate(jobs)]
    GlobalHydra.instance().clear()


def test_hydra_files_written_per_base_equal_hydras_own(tmp_path):
    """The launcher writes each job's .hydra files from its base's YAML, converted once, with the job's values put
    in: the bytes Hydra's run_job writes (its _save_config) from the job's own config, for derived and composed jobs,
    enums, strings YAML would read as booleans, and the per-job hydra fields."""
    from hydra.core.utils import _save_config

    from hydra_plugins.regularization_launcher import VectorizedLauncher
    from hydra_plugins.regularization_launcher.compose import HydraFiles

    sweep = ["+experiment=weight_decay", "reg.lambd=0,2.5", "model.init=normal,default", "device=yes,cpu"]
    jobs = [
        ["+experiment=weight_decay", "reg.lambd=0", "model.init=normal", "device=yes"],
        ["+experiment=weight_decay", "reg.lambd=2.5", "model.init=default", "device=cpu"],  # derived: an enum, a string
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=1", "model.init=default", "device=off"],  # composed
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=3", "model.init=normal", "device=auto"],  # derived from it
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=1e-7", "model.init=normal", "device='a b: c'"],  # a spaced string
    ]
    with placed_jobs(sweep, jobs, tmp_path) as placed:
        assert [bool(job.keys) for job in placed] == [True, True, False, True, True]
        for job in placed:
            want, got = tmp_path / "hydra" / str(job.idx), tmp_path / "ours" / str(job.idx)
            _save_config(job.task_cfg, "config.yaml", want)  # what hydra.core.utils.run_job writes
            _save_config(job.hydra_cfg, "hydra.yaml", want)
            _save_config(job.config.hydra.overrides.task, "overrides.yaml", want)
            where, texts = VectorizedLauncher.hydra_files(job)
            assert where == job.out_dir / ".hydra"
            HydraFiles.write(texts, got)
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                assert (got / name).read_text() == (want / name).read_text(), (job.overrides, name)
            assert OmegaConf.load(got / "hydra.yaml").hydra.job.num == job.idx  # the job's own, not its base's


@pytest.mark.parametrize("log_file", [None, "${hydra.runtime.output_dir}/${hydra.job.name}-${seed}.log"])
def test_what_the_launcher_makes_of_a_job_equals_what_its_config_gives(tmp_path, monkeypatch, log_file):
    """The launcher makes each job's dir, experiment config, HParams row and job log from its plain values and its
    base's templates, not from its OmegaConf tree: the same as Hydra's resolution and ``members_of`` give, for derived
    and composed jobs, enums, a key override_dirname excludes, a +key, and a log file name that interpolates a task
    key (made from the config)."""
    from hydra.core.hydra_config import HydraConfig

    from hydra_plugins.regularization_launcher import LazyJobReturn, VectorizedLauncher
    from regularization.vectorized import members_of

    log = [f"hydra.job_logging.handlers.file.filename={log_file}"] if log_file else []
    sweep = ["+experiment=weight_decay", "reg.lambd=0,2.5", "model.init=normal,default", "device=cpu,auto", *log]
    jobs = [
        ["+experiment=weight_decay", "reg.lambd=0", "model.init=normal", "device=cpu"],
        ["+experiment=weight_decay", "reg.lambd=2.5", "model.init=default", "device=auto"],  # derived
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=1", "model.init=default", "device=cpu"],  # composed
        ["+experiment=weight_decay", "reg=l1", "reg.lambd=3", "model.init=normal", "device=auto"],  # derived from it
    ]
    with placed_jobs(sweep, [[*o, *log] for o in jobs], tmp_path) as placed:
        for job in placed:
            saved, HydraConfig.instance().cfg = HydraConfig.instance().cfg, job.config
            want_dir = Path(str(OmegaConf.select(job.config, "hydra.sweep.dir"))) / str(OmegaConf.select(job.config, "hydra.sweep.subdir"))
            HydraConfig.instance().cfg = saved
            assert job.out_dir == want_dir.absolute() == tmp_path / job.config.hydra.job.override_dirname
            want, got = members_of([job.task_cfg], [job.hydra_cfg.hydra])[0], VectorizedLauncher.member(job)
            assert got.experiment == want.experiment and got.hparams == want.hparams, job.overrides
            assert (got.log.path, got.log.formatter._fmt) == (want.log.path, want.log.formatter._fmt)
            name = job.config.hydra.job.name
            assert got.log.path.name == (f"{name}-{job.task_cfg.seed}.log" if log_file else f"{name}.log")
        assert placed[1].task_cfg.model.init.name == "default" and "device" not in placed[1].config.hydra.job.override_dirname
        ret = LazyJobReturn(placed[3], overrides=placed[3].composed.task_lines, cfg=placed[3].task_cfg)
        sent = pickle.loads(pickle.dumps(ret))  # its hydra config made when pickled (Hydra's JobReturn, then)
        assert sent.hydra_cfg.hydra.job.num == 3 and OmegaConf.to_yaml(sent.hydra_cfg) == OmegaConf.to_yaml(ret.hydra_cfg)
        assert (sent.overrides, sent.cfg) == (ret.overrides, ret.cfg)
        checked, on_configs = set(), []
        real_preflight = engine.preflight

        def preflight(cfg, **kw):
            on_configs.append(isinstance(cfg, DictConfig))
            return real_preflight(cfg, **kw)

        monkeypatch.setattr(engine, "preflight", preflight)
        for job in placed:
            VectorizedLauncher().check(job, checked)
        assert on_configs == [True, False, True, False]  # each base's first job on its config; the others on their values


def test_jobs_of_a_plain_sweep_derive_from_the_master(tmp_path, monkeypatch):
    """The master config, composed with the sweep's own overrides, is the base of every job of a sweep over plain
    keys: none is composed again, and every config equals Hydra's own."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hydra_plugins.regularization_launcher.compose import SweepComposer
    from tests.conftest import CONF

    sweep = ["+experiment=weight_decay", "reg.lambd=range(0,3,1)", "trainer.epochs=7", "seed=0,1"]
    jobs = [["+experiment=weight_decay", f"reg.lambd={x}", "trainer.epochs=7", f"seed={seed}"] for x in (0, 1, 2) for seed in (0, 1)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [*sweep, f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
        composer = SweepComposer(loader, master)
        want = [loader.load_sweep_config(master, overrides) for overrides in jobs]
        monkeypatch.setattr(loader, "load_sweep_config", lambda *args: pytest.fail("a job was composed"))
        for overrides, composed in zip(jobs, want, strict=True):
            config, task = composer.compose(overrides)
            assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(composed)
            assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml({k: v for k, v in composed.items() if k != "hydra"})
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [*sweep, f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
        composer = SweepComposer(loader, master)
        loader.load_sweep_config = None  # composing a job from here on would fail the test
        composed = [composer.compose(overrides) for overrides in jobs]
        del loader.load_sweep_config
        for overrides, (config, task) in zip(jobs, composed, strict=True):
            want = loader.load_sweep_config(master, overrides)
            assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(want)
            assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml({k: v for k, v in want.items() if k != "hydra"})
        assert len(composer.bases) == 1
    GlobalHydra.instance().clear()


def test_momentum_nesterov_and_max_norm_members_equal_single_runs(make_cfg):
    """The dropout chapter's other knobs on the stacked path: SGD momentum (and Nesterov) and the max-norm projection."""
    base = SHORT_WD + ["optim.momentum=0.9", "reg.max_norm=0.5", "reg.lambd=0.1"]
    members = [base, base + ["optim.lr=0.001"], base + ["seed=2"]]
    for extra in ([], ["optim.nesterov=true"]):
        got = stacked(make_cfg, [m + extra for m in members])
        for g, m in zip(got, members, strict=True):
            assert_same_run(g, single(make_cfg, m + extra))
        assert max(g["weight_l2_norm"] for g in got) <= 0.5 + 1e-5  # the linear model's one unit is projected


@pytest.mark.parametrize("style", ["inverted", "standard"])
def test_input_dropout_and_dropout_styles_agree_with_single_runs(make_cfg, tiny_fashion_root, style):
    """Input dropout and both dropout styles on the stacked path: the same accuracy as single runs, up to mask noise."""
    base = ["+experiment=dropout", f"data.root={tiny_fashion_root}", "data.batch_size=32", "trainer.epochs=15"]
    base += ["reg.input_dropout=0.2", f"reg.dropout_style={style}"]
    members = [base, base + ["reg.dropout1=0.5", "seed=1"]]
    got = stacked(make_cfg, members)
    want = [single(make_cfg, m) for m in members]
    assert got[0]["test_acc"] > 0.5
    for g, w in zip(got, want, strict=True):
        assert g["status"] == w["status"] == "completed"
        assert abs(g["test_acc"] - w["test_acc"]) <= 0.1  # 100 test images; the masks differ, the distributions don't


def test_members_diverge_on_a_non_finite_evaluation_too(make_cfg, tiny_fashion_root):
    """engine.fit's rule on the stacked path: a member whose loss stops being finite is diverged, the others go on."""
    base = ["+experiment=dropout", f"data.root={tiny_fashion_root}", "model.hidden1=16", "model.hidden2=16", "trainer.epochs=6"]
    members = [base + ["optim.lr=0.1"], base + ["optim.lr=100000000.0"]]
    got = stacked(make_cfg, members)
    want = [single(make_cfg, m) for m in members]
    assert [(g["status"], g["epochs"]) for g in got] == [(w["status"], w["epochs"]) for w in want] == [("completed", 6), ("diverged", 2)]


@pytest.mark.slow
def test_dropout_members_agree_with_single_runs_on_fashion_mnist(make_cfg):
    """The chapter's MLP and dropout on the real data, 5 seeds, 2 epochs: the stacked members' mean test accuracy
    agrees with single runs' within three standard errors of the difference (wrong mask scaling or a rate applied
    to the wrong member moves it by several points)."""
    root = real_data_root()
    members = [["+experiment=dropout", f"data.root={root}", "trainer.epochs=2", f"seed={s}"] for s in range(5)]
    got = [r["test_acc"] for r in stacked(make_cfg, members)]
    alone = [single(make_cfg, m)["test_acc"] for m in members]
    stderr = math.sqrt(statistics.variance(got) / len(got) + statistics.variance(alone) / len(alone))
    assert abs(statistics.mean(got) - statistics.mean(alone)) <= max(3 * stderr, 0.002), (got, alone)


LONG_WD = ["+experiment=weight_decay", "trainer.epochs=100"]


@pytest.mark.parametrize("reg", [["reg=l2"], ["reg=l1", "reg.impl=proximal"]], ids=["l2-penalty", "l1-proximal"])
def test_smooth_penalties_match_single_runs_over_100_epochs_at_a_large_lambda(make_cfg, reg):
    """The chapter's whole budget at λ = 10 (and λ = 0 beside it): every evaluation within 1e-4."""
    members = [LONG_WD + reg + [f"reg.lambd={lambd}", f"seed={seed}"] for lambd in (0, 10) for seed in (0, 1)]
    for got, m in zip(stacked(make_cfg, members), members, strict=True):
        assert_same_run(got, single(make_cfg, m))


def test_l1_subgradient_at_a_large_lambda_agrees_in_distribution_over_100_epochs(make_cfg, monkeypatch):
    """L1 by its subgradient at λ = 10: the sign of every weight near 0 flips from step to step, so a difference in the
    last bit (the stacked matmuls sum in another order) can grow, and a member may part from its single run late in
    training. Where it parts depends on the group and on the CPU model (its fp32 kernels): on an Intel Xeon no member
    of this group parted by more than 3.3e-4, on an AMD EPYC one parted by 5%. What holds on any CPU is agreement in
    distribution: over 12 seeds, the stacked members' mean final test loss and ‖w‖ are each within three standard
    errors (from the seed-to-seed spread) of the single runs' means. The test loss hardly moves with λ here; ‖w‖
    does (a stacked λ off by 20% fails). Two members at λ = 1 make the group a λ sweep's."""
    from regularization import plots

    monkeypatch.setattr(plots, "save_run_curves", lambda *args: None)  # a single run's curves.png: half its time here
    seeds = range(12)
    members = [LONG_WD + ["reg=l1", "reg.lambd=10", f"seed={seed}"] for seed in seeds]
    got = stacked(make_cfg, members + [LONG_WD + ["reg=l1", "reg.lambd=1", f"seed={seed}"] for seed in (0, 1)])
    alone = [single(make_cfg, m) for m in members]
    assert all(r["status"] == "completed" for r in got + alone)
    for key in ("test_loss", "weight_l2_norm"):
        assert_same_mean([g[key] for g in got[: len(seeds)]], [a[key] for a in alone])


@pytest.mark.parametrize(
    "line",
    ["reg.lambd=0", "reg.lambd=0.00123", "reg.lambd=1e-3", "reg.lambd=-2.5E+3", "seed=12", "a.b_c=3.", "x=.5", "x=-0", "x=+3"]
    + ["x=007", "x=1_000", "x=inf", "reg=l2", "x=1,2", "+x=1", "x=range(0,3)", "x=1e", "x='1'"],
)
def test_override_lines_parse_as_hydra_parses_them(line):
    """A sweep's `key=number` lines skip Hydra's parser (milliseconds each, and a 1,024-λ sweep has 1,024 distinct
    lines): the Override is the one the parser gives, its value of the same type."""
    from regularization.logging import _overrides_parser, parse_override

    want, got = _overrides_parser().parse_overrides([line])[0], parse_override(line)
    assert got == want and type(got.value()) is type(want.value())


def test_a_bad_value_in_a_derived_job_stops_the_vectorized_sweep_with_its_message(tmp_path):
    """Jobs after the first of a structure are checked on a plain view of their values: a bad one still stops the
    sweep before anything trains, with the message a job run alone gives, and the job named."""
    proc = run_train(["-m", "reg.lambd=0,2,-1", "reg.impl=penalty,weight_decay", "hydra/launcher=vectorized"], cwd=tmp_path, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in err
    assert "Invalid config: reg.lambd: must be >= 0, got -1.0" in err and "job: reg.lambd=-1 reg.impl=penalty\n" in err
    assert not list(tmp_path.glob("outputs/multirun/*/*/metrics.json"))


def test_the_plain_view_of_a_derived_job_holds_its_values(tmp_path):
    """Base.view: the job's values, enums and all, where the checks read them; None when the config interpolates."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hydra_plugins.regularization_launcher.compose import SweepComposer
    from regularization.config import Init
    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["reg.lambd=0,2", f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
        composer = SweepComposer(loader, master)
        composed = composer.compose_job(["reg.lambd=2.5", "model.init=default", "seed=3"])
        task, base, keys = composed.task, composed.base, composed.keys
        view = base.view(task, keys)
        assert (view.reg.lambd, view.model.init, view.seed, view.optim.get("momentum")) == (2.5, Init.default, 3, task.optim.momentum)
        assert "dropout" not in view.reg and view.reg.get("dropout1", 0.1) == 0.1
    GlobalHydra.instance().clear()


SCHEDULES = {
    "step+warmup": ["optim.schedule=step", "optim.step_size=3", "optim.gamma=0.5", "optim.warmup_epochs=2"],
    "cosine": ["optim.schedule=cosine"],
    "adam+cosine+warmup": ["optim=adam", "optim.lr=0.01", "optim.schedule=cosine", "optim.warmup_epochs=3"],
}


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_scheduled_members_equal_single_runs(make_cfg, schedule):
    """The schedule's factor on every member's own lr (members differ in lr, λ and seed): within 1e-4 of single runs."""
    members = [SHORT_WD + schedule + extra for extra in ([], ["optim.lr=0.001", "reg.lambd=0.5"], ["seed=3"])]
    for g, m in zip(stacked(make_cfg, members), members, strict=True):
        assert_same_run(g, single(make_cfg, m))


# The regression from a small init at a larger lr overfits within a few epochs (tests/test_validation.py): with a
# validation split and early stopping, members stop at different epochs, or not at all.
EARLY_STOPPING = ["trainer.epochs=40", "data.val_size=50", "model.init_std=0.01", "optim.lr=0.01", "trainer.early_stopping.patience=3"]


def test_early_stopped_members_equal_single_runs(make_cfg):
    """Each member stops on its own validation loss, keeps its best epoch, and equals its single run; the others train on."""
    base = [*EARLY_STOPPING, "optim.schedule=step", "optim.step_size=5", "optim.gamma=0.7"]
    members = [base, base + ["optim.lr=0.02"], base + ["seed=3"], base + ["reg.lambd=1"]]
    got = stacked(make_cfg, members)
    for g, m in zip(got, members, strict=True):
        assert_same_run(g, single(make_cfg, m))
    stops = [g["stopped_epoch"] for g in got]
    assert None in stops and len({s for s in stops if s is not None}) >= 2, stops  # independently, or not at all
    for g in got:
        assert g["status"] == "completed" and g["test_loss"] == g["history"][g["best_epoch"] - 1]["test_loss"]


def test_validation_split_members_equal_single_runs_on_classification(make_cfg, tiny_fashion_root):
    """The validation split of a shared Fashion-MNIST (val_loss, val_acc), a warmup, and early stopping: at lr 1 the
    validation loss rises at epoch 3 and the member stops there; at lr 0.5 it trains on."""
    base = ["model=mlp", "model.hidden1=32", "model.hidden2=16", "data=fashion_mnist", f"data.root={tiny_fashion_root}"]
    base += ["data.batch_size=32", "data.val_size=50", "trainer.epochs=5", "optim.warmup_epochs=2"]
    base += ["trainer.early_stopping.patience=1"]
    members = [base + ["optim.lr=1"], base + ["optim.lr=0.5", "seed=4"]]
    got = stacked(make_cfg, members)
    for g, m in zip(got, members, strict=True):
        assert_same_run(g, single(make_cfg, m))
    assert [g["stopped_epoch"] for g in got] == [3, None]
    assert got[0]["val_acc"] is not None and got[0]["test_acc_at_best_val"] is not None


def test_a_sweep_groups_its_jobs_by_what_they_share_not_by_their_base(tmp_path):
    """Jobs derived from one base by values alone: those that set only stackable keys share a group (their group key
    is made once for the base), a swept batch size splits them, and so does a key that interpolates a stacked one."""
    sweep = ["-m", "reg.lambd=0,1", "data.batch_size=4,5", "trainer.epochs=1", "hydra/launcher=vectorized"]
    proc = run_train(sweep, cwd=tmp_path)
    assert "Launching 4 jobs as 2 vectorized group(s) of at most 2" in proc.stdout + proc.stderr
    tied = ["-m", "seed=1,2", "trainer.epochs=${seed}", "hydra/launcher=vectorized"]
    proc = run_train(tied, cwd=tmp_path)
    assert "Launching 2 jobs as 2 vectorized group(s) of at most 1" in proc.stdout + proc.stderr


def test_histories_round_trip_a_group_checkpoint_exactly(tmp_path):
    """A group checkpoint keeps each evaluation as a table; the members' history entries made from it after a
    weights_only load are those made before: every float (NaN, inf, -0.0, float32's last bit), None, and the keys'
    order (engine.evaluate_all's)."""
    from regularization.vectorized import Evaluation

    table = torch.tensor([[math.nan, 0.1, math.inf, 1e-40], [math.nan, -0.0, math.nan, 3.0]], dtype=torch.float32)
    evaluation = Evaluation(7, ["test_acc", "train_loss", "test_loss", "sparsity"], ["test_acc"], table, torch.tensor([True, False]))
    torch.save({"evaluations": [evaluation.state_dict()]}, tmp_path / "group.pt")
    back = Evaluation(**torch.load(tmp_path / "group.pt", weights_only=True)["evaluations"][0])
    entries = back.entries()
    assert json.dumps(entries) == json.dumps(evaluation.entries())  # NaN included (NaN != NaN as dict values)
    assert list(entries[0]) == ["epoch", "test_acc", "train_loss", "test_loss", "sparsity"] and entries[0]["epoch"] == 7
    assert entries[0]["test_acc"] is None and entries[0]["train_loss"] == float(torch.tensor(0.1))
    assert math.copysign(1, entries[1]["train_loss"]) == -1 and entries[0]["sparsity"] == float(torch.tensor(1e-40))
    assert back.logged.tolist() == [True, False]
