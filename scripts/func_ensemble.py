"""The baseline the vectorized launcher is measured against: the same sweep as a plain torch.func ensemble.

``stack_module_state`` stacks K copies of one module's weights, ``functional_call`` runs the module on one
member's weights, ``vmap(grad_and_value(loss))`` gives every member's gradient and loss at once; the per-member
hyperparameter (λ, or the dropout rates) is a batched tensor, the SGD step is written by hand on the stacked
weights. The data stay in memory, and nothing is written: no job dirs, no events, no checkpoints, no summary.
It is what a user who needs only the final numbers would write, so that whole-process time is the least a
sweep of these jobs takes with torch.func.

The models are the harness's (scripts/bench.py checks that they train the same ones, tests/test_bench.py too):

- ``lambda``: the weight-decay experiment (synthetic regression, 20 examples × 200 inputs, w ~ N(0, 1), b = 0,
  SGD lr 0.003, batch 5, 100 epochs), loss (ŷ − y)²/2 + λ/2·‖w‖², one seed: the same data, init and batch order
  as ``train.py -m reg.lambd=...``;
- ``dropout``: the dropout experiment's MLP 784-256-256-10 on Fashion-MNIST (w ~ N(0, 0.01²), SGD lr 0.5, batch
  256), inverted dropout with rates (p1, p2) per member, at fp32 or bf16-mixed (autocast, bf16 features).
  Its masks are drawn by vmap (randomness="different"): the members agree with the harness's in distribution.

Run: python scripts/func_ensemble.py lambda [--n 64] | dropout [--rates 0,0.2,0.5,0.8] [--epochs 2]
[--precision bf16-mixed]. Prints one JSON line: run_s (data, training and the final evaluation, after the
imports) and each member's final train/test loss and ‖w‖ (and accuracy).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]


def lambdas(n: int) -> list[str]:
    """λ = 0 and n − 1 values log-spaced from 1e-3 to 10, as the command line writes them (6 significant digits)."""
    return ["0"] + [f"{10 ** (-3 + 4 * i / (n - 2)):.6g}" for i in range(n - 1)]


def synthetic(seed: int = 0, n_train: int = 20, n_test: int = 100, d: int = 200, noise: float = 0.01) -> tuple[torch.Tensor, ...]:
    """The weight-decay chapter's data, drawn as regularization.data.synthetic_regression draws them."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_train + n_test, d, generator=gen)
    y = X @ torch.full((d, 1), 0.01) + 0.05 + noise * torch.randn(n_train + n_test, 1, generator=gen)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def fashion_mnist(root: Path) -> tuple[torch.Tensor, ...]:
    from torchvision.datasets import FashionMNIST

    def split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ds = FashionMNIST(str(root), train=train)
        return ds.data.flatten(1).float().div_(255), ds.targets.long()

    return *split(True), *split(False)


def normal_init(model: nn.Module, std: float) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    return model


class MLP(nn.Module):
    """784-256-256-10 with inverted dropout after each hidden ReLU, at the rates it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2, self.lin3 = nn.Linear(784, 256), nn.Linear(256, 256), nn.Linear(256, 10)

    def forward(self, X: torch.Tensor, p1: torch.Tensor | None = None, p2: torch.Tensor | None = None) -> torch.Tensor:
        H1 = dropout(torch.relu(self.lin1(X)), p1)
        return self.lin3(dropout(torch.relu(self.lin2(H1)), p2))


def dropout(H: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    """Inverted dropout (keep with probability 1 − p, scale by 1/(1 − p)); p None: evaluation, no dropout."""
    return H if p is None else H * ((torch.rand_like(H, dtype=torch.float32) >= p) / (1 - p)).to(H.dtype)


def train(
    model: nn.Module,
    K: int,
    loss: Callable,
    member_args: tuple[torch.Tensor, ...],
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """K members from model's init, trained by SGD on the same shuffled batches (one seeded generator, as the harness's)."""
    params, _ = stack_module_state([model] * K)
    params = {name: p.detach() for name, p in params.items()}
    step = vmap(grad_and_value(loss), in_dims=(0, *[0] * len(member_args), None, None), randomness="different")
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=generator).split(batch_size):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                grads, _ = step(params, *member_args, X[idx], y[idx])
            for name, p in params.items():
                p.sub_(lr * grads[name])
    return params


def lambda_sweep(values: list[float], epochs: int = 100, seed: int = 0) -> dict:
    # One thread, as the harness takes for a step this small (vectorized.SMALL_STEP_FLOPS): handing microsecond
    # ops to a second thread costs more than it saves (13 s against 44 s here, whole process, under load).
    torch.set_num_threads(1)
    X, y, X_test, y_test = synthetic(seed)
    torch.manual_seed(seed)  # build_model's draws after seed_everything(seed): nn.Linear's init, then N(0, 1)
    model = normal_init(nn.Linear(X.shape[1], 1), 1.0)

    def loss(params: dict, lambd: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_hat = functional_call(model, params, (X,))
        return (y_hat - y).pow(2).mean() / 2 + lambd / 2 * params["weight"].pow(2).sum()

    lambd = torch.tensor(values)
    params = train(model, len(values), loss, (lambd,), X, y, lr=0.003, batch_size=5, epochs=epochs, seed=seed, dtype=None)

    @torch.no_grad()
    def final(X: torch.Tensor, y: torch.Tensor) -> list[float]:
        return vmap(lambda p: (functional_call(model, p, (X,)) - y).pow(2).mean() / 2)(params).tolist()

    return {
        "train_loss": final(X, y),
        "test_loss": final(X_test, y_test),
        "weight_l2_norm": params["weight"].flatten(1).norm(dim=1).tolist(),
    }


def dropout_grid(rates: list[float], epochs: int = 2, precision: str = "32", seed: int = 0) -> dict:
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    X, y, X_test, y_test = fashion_mnist(ROOT / "data")
    if dtype is not None:  # autocast rounds every batch to bf16 before the first matmul: once here instead
        X, X_test = X.to(dtype), X_test.to(dtype)
    torch.manual_seed(seed)
    model = normal_init(MLP(), 0.01)

    def loss(params: dict, p1: torch.Tensor, p2: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (X, p1, p2)).float(), y)

    grid = [(p1, p2) for p1 in rates for p2 in rates]
    p1, p2 = (torch.tensor(c) for c in zip(*grid, strict=True))
    params = train(model, len(grid), loss, (p1, p2), X, y, lr=0.5, batch_size=256, epochs=epochs, seed=seed, dtype=dtype)

    @torch.no_grad()
    def final(X: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            y_hat = vmap(lambda p: functional_call(model, p, (X,)))(params).float()  # [K, n, 10]
        losses = F.cross_entropy(y_hat.flatten(0, 1), y.repeat(len(grid)), reduction="none").view(len(grid), -1).mean(1)
        return losses.tolist(), (y_hat.argmax(-1) == y).float().mean(1).tolist()

    (train_loss, train_acc), (test_loss, test_acc) = final(X, y), final(X_test, y_test)
    norm = torch.cat([params[f"lin{i}.weight"].flatten(1) for i in (1, 2, 3)], dim=1).norm(dim=1).tolist()
    return {
        "rates": grid,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_acc": train_acc,
        "test_acc": test_acc,
        "weight_l2_norm": norm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", choices=["lambda", "dropout"])
    parser.add_argument("--n", type=int, default=64, help="lambda: the number of λ values (0 and n − 1 log-spaced)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 100 (lambda), 2 (dropout)")
    parser.add_argument("--rates", default="0,0.2,0.5,0.8", help="dropout: the rates of each layer (a grid of both)")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    args = parser.parse_args()
    start = time.perf_counter()
    if args.sweep == "lambda":
        result = lambda_sweep([float(v) for v in lambdas(args.n)], args.epochs or 100)
    else:
        result = dropout_grid([float(r) for r in args.rates.split(",")], args.epochs or 2, args.precision)
    result["run_s"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
