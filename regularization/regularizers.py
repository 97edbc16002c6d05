"""Weight penalties and dropout, written as the chapters write them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from regularization.config import DropoutStyle

Params = Iterable[torch.Tensor]
IN_LOSS = ("penalty", "subgradient")  # the implementations that add λ·Ω(w) to the loss


def l2_penalty(params: Params) -> torch.Tensor:
    """½·Σ‖w‖²: the chapter's ``l2_penalty``; the loss adds λ times this."""
    return sum((w.pow(2).sum() for w in params), torch.tensor(0.0)) / 2


def l1_penalty(params: Params) -> torch.Tensor:
    """Σ‖w‖₁ = Σᵢ|wᵢ|; the loss adds λ times this."""
    return sum((w.abs().sum() for w in params), torch.tensor(0.0))


def flat(params: Params) -> torch.Tensor:
    """All the given tensors as one vector."""
    return torch.cat([w.detach().flatten() for w in params])


def weight_norm(params: Params) -> torch.Tensor:
    """‖w‖₂ over all the given tensors, as if they were one vector."""
    return flat(params).norm()


def sparsity(params: Params, tol: float = 1e-3) -> torch.Tensor:
    """The fraction of weights with |w| < tol."""
    return (flat(params).abs() < tol).float().mean()


@torch.no_grad()
def soft_threshold_(w: torch.Tensor, threshold: float | torch.Tensor) -> None:
    """w ← sign(w)·max(|w| − t, 0): the proximal step of t·‖w‖₁, which sets small weights to exactly 0."""
    w.copy_(torch.sign(w) * torch.clamp(w.abs() - threshold, min=0))


def dropout_layer(X: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: zero each unit with probability p and scale the kept ones by 1/(1−p),

    so that E[dropout_layer(X, p)] = X. The mask is drawn on X's device.
    """
    if p == 1:
        return torch.zeros_like(X)
    if p == 0:
        return X
    return inverted_dropout(X, p, 1 - p)


def inverted_dropout(X: torch.Tensor, p: float | torch.Tensor, keep: float | torch.Tensor) -> torch.Tensor:
    """``dropout_layer`` for 0 < p < 1, without its branches on p, so that p and keep = 1 − p may be 0-dim tensors."""
    # The uniforms in fp32 whatever X's dtype: the same masks at every precision, and on CPU bf16 uniforms are
    # slower to draw. The mask itself in X's dtype: under bf16-mixed an fp32 mask would promote the activations
    # to fp32, and the next matmul would cast them back. Each unit times 0 or 1/(1−p): one pass over X.
    kept = torch.rand(X.shape, device=X.device) > p
    return X * (kept / keep).to(X.dtype)


def standard_dropout_layer(X: torch.Tensor, p: float) -> torch.Tensor:
    """Standard (non-inverted) dropout in training: zero each unit with probability p, keep the rest unscaled,

    so that E[standard_dropout_layer(X, p)] = (1−p)·X; evaluation multiplies by (1−p) to match.
    """
    if p == 0:
        return X
    return standard_dropout(X, p)


def standard_dropout(X: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """``standard_dropout_layer`` without its branch on p, so that p may be a 0-dim tensor."""
    return X * (torch.rand_like(X) > p)


class Dropout(nn.Module):
    """Dropout as a module, active in training mode only. At evaluation, E[training output] is matched:

    - ``inverted`` (default): training computes ``dropout_layer``; evaluation is the identity.
    - ``standard``: training computes ``standard_dropout_layer``; evaluation returns (1−p)·X.

    Training reads p and 1 − p from 0-dim tensors, ``rate`` and ``keep`` (buffers: they follow the model's device):
    a compiled step takes them as inputs, so one graph serves every rate, where the float p would be a constant
    compiled into the graph (a recompile per rate). They are not persistent: the state_dict, and so a checkpoint,
    holds what it held before (the rate comes from the config). 1 − p is taken in float64, then rounded, as
    ``dropout_layer`` takes it: the same masks and scale. p = 0 is the identity and draws nothing (``dropping``):
    the one thing about p a compiled step is specialised on.
    """

    def __init__(self, p: float, style: DropoutStyle = DropoutStyle.inverted) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.style, self.dropping = p, style, p > 0
        self.register_buffer("rate", torch.tensor(float(p)), persistent=False)
        self.register_buffer("keep", torch.tensor(1 - float(p)), persistent=False)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not self.dropping:
            return X
        inverted = self.style is DropoutStyle.inverted
        if self.training:
            return inverted_dropout(X, self.rate, self.keep) if inverted else standard_dropout(X, self.rate)
        return X if inverted else X * (1 - self.p)  # evaluation is not compiled: the float, as before

    def extra_repr(self) -> str:
        return f"p={self.p}, style={self.style.value}"


@torch.no_grad()
def max_norm_(weight: torch.Tensor, c: float) -> None:
    """w_j ← w_j·min(1, c/‖w_j‖₂) for every row j of a Linear weight, i.e. unit j's incoming weights.

    Rows already within the ball ‖w_j‖₂ ≤ c are left exactly as they are (the factor is 1).
    """
    factor = (c / weight.norm(dim=1, keepdim=True)).clamp_(max=1.0)  # a zero row gives c/0 = inf → 1
    weight.mul_(factor)


def max_norm_linear_(model: nn.Module, c: float) -> None:
    """``max_norm_`` on every nn.Linear's weight (hidden and output units alike; biases are not constrained)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            max_norm_(m.weight, c)


class WeightPenalty:
    """λ·Ω(w) with Ω = ½‖w‖² (l2) or ‖w‖₁ (l1), in one of its implementations.

    - l2 ``penalty`` and l1 ``subgradient``: the term is added to the loss and autograd differentiates it.
    - l2 ``weight_decay``: the optimizer adds λ·w to the gradient of the penalized group (``param_groups``),
      which is the gradient of λ/2·‖w‖², so λ means the same in both.
    - l1 ``proximal``: after each step, w ← soft_threshold(w, lr·λ) (``after_step``).
    """

    def __init__(self, kind: str, lambd: float, impl: str | None, params: list[nn.Parameter]) -> None:
        self.kind, self.lambd, self.impl, self.params = kind, lambd, impl, params
        self.omega = {"l2": l2_penalty, "l1": l1_penalty}.get(kind)
        self.in_loss = impl in IN_LOSS  # autograd differentiates the term; otherwise it is only logged
        self.zero = torch.zeros((), device=params[0].device if params else None)  # made once, not per step

    def value(self) -> torch.Tensor:
        """λ·Ω(w), whichever implementation applies it."""
        if self.omega is None or self.lambd == 0:
            return self.zero
        return self.lambd * self.omega(self.params)

    def param_groups(self, params: list[nn.Parameter]) -> list[dict]:
        """Optimizer groups: weight_decay = λ on the penalized weights only, for impl=weight_decay."""
        if self.impl != "weight_decay":
            return [{"params": params}]
        ids = {id(p) for p in self.params}
        rest = [p for p in params if id(p) not in ids]
        return [{"params": self.params, "weight_decay": self.lambd}, {"params": rest, "weight_decay": 0.0}]

    def after_step(self, lr: float | torch.Tensor) -> None:
        if self.impl == "proximal":
            for w in self.params:
                soft_threshold_(w, lr * self.lambd)
