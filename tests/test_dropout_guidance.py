"""The dropout chapter's guidance: input dropout, max-norm, momentum, standard vs inverted dropout, the recipe preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch import nn

from regularization.config import ConfigError, DropoutKind, DropoutStyle
from regularization.data import load_data
from regularization.engine import make_optimizer, make_penalty, preflight, seed_everything, train, train_epoch
from regularization.models import build_model
from regularization.regularizers import Dropout, max_norm_, max_norm_linear_
from tests.conftest import real_data_root

CPU = torch.device("cpu")


def row_norms(model: nn.Module) -> torch.Tensor:
    """The L2 norm of every unit's incoming weight vector, over all Linear layers."""
    return torch.cat([m.weight.detach().norm(dim=1) for m in model.modules() if isinstance(m, nn.Linear)])


# --- max-norm ---------------------------------------------------------------------------------


def test_max_norm_projects_long_rows_and_leaves_short_ones_untouched() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 30) * torch.linspace(0.05, 2.0, 50).unsqueeze(1)  # row norms from ~0.3 to ~11
    c = 3.0
    before = w.clone()
    short = before.norm(dim=1) <= c
    assert 0 < short.sum() < len(w)  # both kinds of rows are present
    max_norm_(w, c)
    norms = w.norm(dim=1)
    assert (norms <= c * (1 + 1e-6)).all()
    assert torch.equal(w[short], before[short])  # bit-for-bit: the factor is exactly 1
    torch.testing.assert_close(norms[~short], torch.full_like(norms[~short], c))  # projected onto the sphere
    cosine = nn.functional.cosine_similarity(w[~short], before[~short], dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))  # same direction


def test_max_norm_leaves_a_zero_row_zero() -> None:
    w = torch.zeros(2, 4)
    w[1] = 10.0
    max_norm_(w, 1.0)
    assert torch.equal(w[0], torch.zeros(4))
    assert torch.isclose(w[1].norm(), torch.tensor(1.0))


@pytest.mark.parametrize(
    "reg",
    [
        ["reg=none"],
        ["reg=l2", "reg.lambd=0.01", "reg.impl=weight_decay"],
        ["reg=l1", "reg.lambd=0.001", "reg.impl=proximal"],
        ["reg=dropout_builtin", "reg.input_dropout=0.2"],
    ],
    ids=["none", "l2-weight_decay", "l1-proximal", "dropout"],
)
def test_max_norm_holds_after_training_steps_with_any_regularizer(make_cfg, tiny_fashion_root: Path, reg: list[str]) -> None:
    c = 0.5
    common = ["model=mlp", "model.init=default", "data=fashion_mnist", f"data.root={tiny_fashion_root}", "data.batch_size=20"]
    common += ["optim.lr=0.5", "optim.momentum=0.9", *reg]

    def one_epoch(*extra: str) -> nn.Module:
        cfg = make_cfg(*common, *extra)
        preflight(cfg)
        seed_everything(cfg.seed)
        data = load_data(cfg, CPU)
        model = build_model(cfg, data.num_inputs, data.num_outputs)
        penalty = make_penalty(cfg, model)
        optimizer = make_optimizer(cfg, model, penalty)
        train_epoch(model, data, optimizer, penalty, cfg.data.batch_size, torch.Generator().manual_seed(0), cfg.reg.max_norm)
        return model

    assert row_norms(one_epoch()).max() > c  # without the constraint these steps grow rows past c
    assert row_norms(one_epoch(f"reg.max_norm={c}")).max() <= c * (1 + 1e-5)


def test_max_norm_covers_every_linear_layer() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(10.0)
    max_norm_linear_(model, 2.0)
    torch.testing.assert_close(row_norms(model), torch.full((7,), 2.0))
    assert (model[0].bias == 10.0).all()  # biases are not constrained


# --- input dropout ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dropout_scratch", "dropout_builtin"])
def test_input_dropout_acts_in_training_mode_only(make_cfg, kind: str) -> None:
    p = 0.5
    cfg = make_cfg("+experiment=dropout", f"reg={kind}", f"reg.input_dropout={p}")
    model = build_model(cfg, num_inputs=784, num_outputs=10)
    seen: list[torch.Tensor] = []
    model.lin1.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    X = torch.ones(64, 784)

    model.train()
    model(X)
    dropped = seen[-1]
    assert abs((dropped == 0).float().mean().item() - p) < 0.02  # 50 176 Bernoulli(½) draws: σ ≈ 0.0022
    assert set(dropped.unique().tolist()) == {0.0, 1 / (1 - p)}  # inverted: kept inputs scaled by 1/(1−p)

    model.eval()
    model(X)
    assert torch.equal(seen[-1], X)


@pytest.mark.parametrize("kind", ["dropout_scratch", "dropout_builtin"])
def test_no_input_dropout_by_default(make_cfg, kind: str) -> None:
    cfg = make_cfg("+experiment=dropout", f"reg={kind}")
    model = build_model(cfg, num_inputs=784, num_outputs=10).train()
    seen: list[torch.Tensor] = []
    model.lin1.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    X = torch.rand(8, 784)
    model(X)
    assert torch.equal(seen[-1], X)


# --- standard vs inverted dropout -------------------------------------------------------------


@pytest.mark.parametrize("style", list(DropoutStyle))
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_style_keeps_the_expected_activation_between_train_and_eval(style: DropoutStyle, p: float) -> None:
    """E over masks of the training output equals the evaluation output, unit by unit.

    Each of the 100 units is a Bernoulli(1−p) keep times x·s, with s = 1/(1−p) (inverted) or 1 (standard),
    so its mean over N draws has σ = x·s·√(p(1−p)/N). A 5σ tolerance fails by chance with probability
    about 100 × 6·10⁻⁷; with the seed fixed the test is deterministic. The other style's evaluation
    output is √(p(1−p)N) ≥ 56σ away, so a missing or extra (1−p) factor cannot pass.
    """
    torch.manual_seed(0)
    N = 20_000
    x = torch.rand(100) + 0.5
    layer = Dropout(p, style)
    train_mean = layer.train()(x.expand(N, -1)).mean(dim=0)
    eval_out = layer.eval()(x)
    scale = 1 / (1 - p) if style is DropoutStyle.inverted else 1.0
    sigma = x * scale * math.sqrt(p * (1 - p) / N)
    assert ((train_mean - eval_out).abs() <= 5 * sigma).all()
    wrong_eval = x * (1 - p) if style is DropoutStyle.inverted else x
    assert ((train_mean - wrong_eval).abs() > 20 * sigma).all()


def test_standard_dropout_does_not_scale_in_training_and_scales_by_keep_rate_in_eval() -> None:
    torch.manual_seed(0)
    p, x = 0.3, torch.rand(1000) + 0.5
    layer = Dropout(p, DropoutStyle.standard)
    out = layer.train()(x)
    kept = out != 0
    assert torch.equal(out[kept], x[kept])
    torch.testing.assert_close(layer.eval()(x), x * (1 - p))


def test_dropout_style_reaches_every_dropout_layer_of_the_mlp(make_cfg) -> None:
    cfg = make_cfg("+experiment=dropout", "reg.dropout_style=standard", "reg.input_dropout=0.1")
    model = build_model(cfg, num_inputs=784, num_outputs=10)
    layers = [model.drop0, model.drop1, model.drop2]
    assert [(d.p, d.style) for d in layers] == [(0.1, DropoutStyle.standard), (0.2, DropoutStyle.standard), (0.5, DropoutStyle.standard)]


# --- momentum ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reg", [["reg=l2"], ["reg=l2", "reg.lambd=0.1", "reg.impl=weight_decay"]], ids=["one-group", "two-groups"])
def test_momentum_and_nesterov_reach_the_optimizer(make_cfg, reg: list[str]) -> None:
    cfg = make_cfg(*reg, "optim.momentum=0.9", "optim.nesterov=true")
    preflight(cfg)
    model = build_model(cfg, 200, 1)
    optimizer = make_optimizer(cfg, model, make_penalty(cfg, model))
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["momentum"], g["nesterov"]) for g in optimizer.param_groups] == [(0.9, True)] * len(optimizer.param_groups)


def test_plain_sgd_by_default(make_cfg) -> None:
    cfg = make_cfg()
    model = build_model(cfg, 200, 1)
    group = make_optimizer(cfg, model, make_penalty(cfg, model)).param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0, False)


# --- validation -------------------------------------------------------------------------------

DROPOUT = ["+experiment=dropout"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (DROPOUT + ["reg.input_dropout=-0.1"], r"reg\.input_dropout: must be in \[0, 1\), got -0.1"),
        (DROPOUT + ["reg.input_dropout=1.0"], r"reg\.input_dropout: must be in \[0, 1\), got 1.0"),
        (DROPOUT + ["reg=dropout_builtin", "reg.input_dropout=1.5"], r"reg\.input_dropout: must be in \[0, 1\)"),
        (["reg.max_norm=0"], r"reg\.max_norm: must be > 0"),
        (["reg=none", "reg.max_norm=-3"], r"reg\.max_norm: must be > 0"),
        (DROPOUT + ["reg.max_norm=0"], r"reg\.max_norm: must be > 0"),
        (DROPOUT + ["reg=dropout_builtin", "reg.dropout_style=standard"], r"reg\.dropout_style: standard needs reg=dropout_scratch"),
        (["optim.momentum=1.0"], r"optim\.momentum: must be in \[0, 1\), got 1.0"),
        (["optim.momentum=-0.5"], r"optim\.momentum: must be in \[0, 1\), got -0.5"),
        (["optim.nesterov=true"], r"optim\.nesterov: needs optim\.momentum > 0"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(make_cfg, tiny_fashion_root: Path, overrides: list[str], message: str) -> None:
    cfg = make_cfg(*overrides, f"data.root={tiny_fashion_root}" if overrides[0] == DROPOUT[0] else "seed=0")
    with pytest.raises(ConfigError, match=message):
        preflight(cfg)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optim=adam", "optim.momentum=0.9"], "momentum"),  # momentum and nesterov are SGD's keys
        (["optim=adam", "optim.nesterov=true"], "nesterov"),
        (["reg=l2", "reg.input_dropout=0.2"], "input_dropout"),  # dropout keys need a dropout reg
        (["reg=l2", "reg.dropout_style=standard"], "dropout_style"),
        (DROPOUT + ["reg.dropout_style=scaled"], "dropout_style"),
    ],
)
def test_keys_that_do_not_apply_are_rejected_while_composing(make_cfg, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(*overrides)
    assert key in f"{err.value} {err.value.__cause__}"


@pytest.mark.parametrize(
    "overrides",
    [
        ["reg=l2", "reg.max_norm=3"],
        ["reg=l1", "reg.lambd=0.01", "reg.impl=proximal", "reg.max_norm=0.1"],
        ["optim.momentum=0.99", "optim.nesterov=true"],
        DROPOUT + ["reg.dropout_style=standard", "reg.input_dropout=0.2", "reg.max_norm=4"],
        DROPOUT + ["reg=dropout_builtin", "reg.dropout_style=inverted", "reg.input_dropout=0.2"],
        ["+experiment=dropout_recipe"],
    ],
)
def test_good_values_pass_preflight(make_cfg, tiny_fashion_root: Path, overrides: list[str]) -> None:
    preflight(make_cfg(*overrides, f"data.root={tiny_fashion_root}" if overrides[0].startswith("+experiment") else "seed=0"))


# --- the recipe preset ------------------------------------------------------------------------


def test_recipe_follows_the_chapters_guidelines(make_cfg) -> None:
    cfg = make_cfg("+experiment=dropout_recipe")
    reg = cfg.reg
    assert (reg.dropout, reg.input_dropout, reg.dropout1, reg.dropout2) == (DropoutKind.scratch, 0.2, 0.5, 0.5)
    assert 0.9 <= cfg.optim.momentum <= 0.99
    assert reg.max_norm is not None and 3 <= reg.max_norm <= 4


@pytest.mark.slow
def test_recipe_learns_fashion_mnist_in_one_epoch(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("+experiment=dropout_recipe", f"data.root={real_data_root()}", "trainer.epochs=1")
    train(cfg, CPU, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["test_acc"] > 0.75
