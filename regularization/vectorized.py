"""Train K jobs at once as one stacked model: every weight gets a leading member dimension k = 0..K−1.

Member k computes exactly what ``engine.fit`` computes for its job alone:

- the same init: ``seed_everything(seed_k)`` then ``build_model``, whose weights are then stacked;
- the same batches: a generator seeded with seed_k draws the same ``randperm`` every epoch;
- the same objective: data loss + λ_k·Ω(w_k), with Ω = ½‖w‖² (l2) or ‖w‖₁ (l1), in the same
  implementation (in the loss, torch.optim's weight_decay, or the proximal step);
- the same update rule (SGD or Adam, written out with a per-member learning rate lr_k).

The members share nothing but the tensors they live in: the loss summed over members has
∂(Σⱼ Lⱼ)/∂w_k = ∂L_k/∂w_k, so one backward pass gives every member its own gradient.
Dropout draws from a generator of the group's own (one mask per member), so dropout members agree
with single runs in distribution, not bit for bit. A member whose objective stops being finite is marked
diverged, its weights are zeroed and its learning rate set to 0, and the others train on. A member that early
stopping stops (``selection.EarlyStopping``, one per member) gets its best weights back and a learning rate of 0,
and the others train on. Every member's learning rate follows the group's schedule: lr_k·f(e) (``schedule``).

A group checkpoints as a single run does (``CheckpointCadence``): the stacked weights, the optimizer's state,
each seed's batch generator, the dropout masks' generator, the global RNG states, the evaluations (the members'
histories are made of them), statuses and active members, in ``group_checkpoint.pt`` in its first member's dir.
A rerun of the sweep into the same dir resumes it bit for bit, dropout members included.
"""

from __future__ import annotations

import json
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict
from torch import nn

from regularization.checkpoint import (
    GROUP_CHECKPOINT,
    CheckpointCadence,
    checkpoint_epoch,
    experiment_config,
    experiment_digest,
    generator_state,
    group_members,
    load_group_checkpoint,
    restore_generator,
    save_group_checkpoint,
    set_rng_states,
)
from regularization.config import ConfigError, DropoutStyle, config_without, impl_of
from regularization.data import data_shapes, load_data
from regularization.engine import EVAL_BATCH, final_metric, resume_command, seed_everything, set_deterministic
from regularization.gpu import (
    failure_message,
    is_sticky_cuda_error,
    peak_memory,
    release_cached_memory,
    reset_peak_memory,
    sticky_cuda_error,
)
from regularization.logging import (
    HParam,
    JobLog,
    RunLogger,
    job_logs,
    json_text,
    log,
    run_hparams,
    saved_hydra_config,
    write_texts_atomic,
)
from regularization.models import build_model, parameter_count
from regularization.progress import SINGLE_GROUP, GroupProgress, SweepPosition, progress_enabled
from regularization.regularizers import IN_LOSS
from regularization.results import run_result
from regularization.schedule import factor_of
from regularization.selection import EarlyStopping, selection_result
from regularization.step import Step, set_matmul_precision

# The keys in which the members of one stacked group may differ.
STACKABLE = ("reg.lambd", "reg.dropout1", "reg.dropout2", "optim.lr", "seed")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which engine uses
# A group whose training step has fewer matmul FLOPs than this trains on one CPU thread: handing microsecond
# ops to intra-op threads costs more than it saves (the 64-member λ sweep: 1.2 s on one thread, 9.7 s on two,
# on the 2-core dev machine while other processes kept both cores busy).
SMALL_STEP_FLOPS = 2**22
# The default group size: 64 members, or more for small models, as many as hold this many parameters in all (the
# stacked weights take 64 MB in fp32; gradients and optimizer state 1–3× more): the weight-decay model's 201
# parameters give 83,468 members a group, so a 1,024-λ sweep trains as one group instead of 16 one after another.
DEFAULT_MEMBERS, GROUP_PARAMETERS = 64, 2**24
GLOBAL_RNG = threading.Lock()  # held while a group seeds torch's global RNG and draws its members' init from it
# Set by the launcher at Ctrl-C, or when a group on another GPU stopped the sweep: groups end at their next epoch.
stop_requested = threading.Event()


def group_key(cfg: DictConfig) -> str:
    """What members of one group share: the job's config without the stackable keys (and without hydra)."""
    return json.dumps(config_without(cfg, STACKABLE), sort_keys=True)


def default_members(cfg: DictConfig) -> int:
    """max(DEFAULT_MEMBERS, GROUP_PARAMETERS // the parameters of one member)."""
    return max(DEFAULT_MEMBERS, GROUP_PARAMETERS // parameter_count(cfg, *data_shapes(cfg)))


def plan_groups(cfgs: list[DictConfig], max_members: int | None, keys: list[str] | None = None) -> list[list[int]]:
    """Job indices split into compatible groups (same ``group_key``, or the ``keys`` given for them), in sweep order,
    of at most max_members each (None: ``default_members`` of the group's model)."""
    by_key: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        by_key.setdefault(keys[i] if keys is not None else group_key(cfg), []).append(i)
    groups = []
    for idx in by_key.values():
        size = max_members or default_members(cfgs[idx[0]])
        groups += [idx[s : s + size] for s in range(0, len(idx), size)]
    return groups


def per_member(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] tensor viewed as [K, 1, …, 1] to broadcast against a stacked [K, …] tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def member_dropout(H: torch.Tensor, p: torch.Tensor, u: torch.Tensor, inverted: bool = True) -> torch.Tensor:
    """Dropout with a rate per member, from uniforms u (H's shape, fp32 whatever H's dtype: see
    regularizers.inverted_dropout): keep where u ≥ p_k, and (inverted) scale kept units by 1/(1 − p_k).

    ``u ≥ p`` (not ``u > p``) so that p_k = 0 keeps every unit, as engine's dropout does.
    """
    keep = u >= bcast(p, H)
    return H * (keep / bcast(1 - p, H)).to(H.dtype) if inverted else H * keep  # H's dtype: see regularizers.inverted_dropout


def static(t: torch.Tensor) -> torch.Tensor:
    """t, marked as an input whose address stays the same from step to step: CUDA graphs (trainer.compile on CUDA)
    read it in place instead of copying it into a buffer of their own every step. Not guarded: another group's
    tensors, at other addresses, reuse the compiled graph (its CUDA graphs are recorded again)."""
    torch._dynamo.mark_static_address(t)
    return t


class StackedNet:
    """K copies of a Linear or MLP: x → dropout → [Linear → ReLU → dropout]* → Linear, with W: [K, out, in]
    (nn.Linear's layout, stacked) and b: [K, 1, out].

    ``rates`` holds one [K] dropout rate for the inputs and one per hidden layer (empty for the linear model).
    Standard (non-inverted) dropout scales by (1 − p) at evaluation instead of 1/(1 − p) in training.
    The masks come from ``generator``, the group's own: groups that train at once in threads (one per GPU) must
    not share torch's global RNG, which every ``torch.manual_seed`` resets on every device. A training step's
    uniforms are drawn before the step (``draw``) and handed to the forward pass.
    """

    def __init__(
        self,
        models: list[nn.Module],
        rates: list[torch.Tensor],
        inverted: bool = True,
        generator: torch.Generator | None = None,
        compiled: bool = False,
    ) -> None:
        # Marked static only for a compiled step: marking imports torch._dynamo, 0.7 s that an eager sweep needn't pay.
        self.static = static if compiled else lambda t: t
        layers = list(zip(*([m for m in model.modules() if isinstance(m, nn.Linear)] for model in models), strict=True))
        self.weights = [self.static(torch.stack([lin.weight.detach() for lin in layer]).requires_grad_()) for layer in layers]
        self.biases = [self.static(torch.stack([lin.bias.detach()[None] for lin in layer]).requires_grad_()) for layer in layers]
        self.rates, self.inverted, self.generator = rates, inverted, generator
        self.dropping = [bool(p.any()) for p in rates]  # read once here, not (a device sync) at every batch
        self.uniforms: dict[int, list[torch.Tensor | None]] = {}  # per batch size: see ``draw``

    def draw(self, batch: int) -> list[torch.Tensor | None]:
        """A training step's uniforms, one [K, batch, in] tensor per dropout layer (None where no member drops),
        drawn from ``generator`` in the order the forward pass applies them: the inputs, then each hidden layer.

        Drawn here, before the step, rather than in it: dynamo cannot trace a draw from a torch.Generator, and each
        would break the compiled step's graph in two; so a compiled step is one graph, with the eager step's masks.
        Drawn in place, into buffers kept per batch size (an epoch's full batches and its last one): static
        inputs, which CUDA graphs need not copy.
        """
        if batch not in self.uniforms:
            K = len(self.weights[0])
            self.uniforms[batch] = [
                self.static(torch.empty(K, batch, W.shape[2], device=W.device)) if dropping else None
                for W, dropping in zip(self.weights, self.dropping, strict=False)  # no rates: the linear model
            ]
        for u in self.uniforms[batch]:
            if u is not None:
                u.uniform_(generator=self.generator)  # what torch.rand(u.shape, generator=...) draws
        return self.uniforms[batch]

    def dropout(self, H: torch.Tensor, layer: int, uniforms: list[torch.Tensor | None] | None) -> torch.Tensor:
        """Dropout of ``layer`` (0: the inputs, i: after hidden layer i) for every member: in training, with
        ``uniforms`` (``draw``'s), else (None) evaluation's."""
        p = self.rates[layer]
        if not self.dropping[layer]:
            return H
        if H.dim() == 2:  # inputs shared by all members: each member draws its own mask
            H = H.expand(len(p), *H.shape)
        if uniforms is not None:
            return member_dropout(H, p, uniforms[layer], self.inverted)
        return H if self.inverted else H * bcast(1 - p, H)

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    def __call__(self, X: torch.Tensor, uniforms: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """X: [B, d] (the same inputs for all members) or [K, B, d]; returns [K, B, outputs]. A training forward pass
        with a step's ``uniforms`` (``draw(B)``), an evaluation one without."""
        H = self.dropout(X, 0, uniforms) if self.rates else X
        for i, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            H = torch.baddbmm(b, H, W.transpose(1, 2)) if H.dim() == 3 else shared_linear(H, W, b)
            if i < len(self.weights) - 1:
                H = self.dropout(torch.relu(H), i + 1, uniforms)
        return H

    @torch.no_grad()
    def max_norm_(self, c: float) -> None:
        """``regularizers.max_norm_linear_`` for every member: each unit's incoming weights onto ‖w_j‖₂ ≤ c."""
        for W in self.weights:
            W.mul_((c / W.norm(dim=2, keepdim=True)).clamp_(max=1.0))


def shared_linear(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every member's layer on the same inputs as one GEMM: X @ [W_1 | … | W_K]ᵀ + b, [B, d] → [K, B, out].

    One [B, d] × [d, K·out] product (and one for ∂W in the backward pass) runs closer to the BLAS peak
    than K products of [B, d] × [d, out], and X is not copied K times.
    """
    K, out, d = W.shape
    return F.linear(X, W.view(K * out, d), b.view(K * out)).view(-1, K, out).transpose(0, 1)


class StackedPenalty:
    """``regularizers.WeightPenalty`` with λ_k per member: λ_k·Ω(w_k), Ω = ½‖w‖² (l2) or ‖w‖₁ (l1)."""

    def __init__(self, kind: str, impl: str | None, lambd: torch.Tensor, params: list[torch.Tensor]) -> None:
        self.kind, self.impl, self.lambd, self.params = kind, impl, lambd, params
        self.in_loss = impl in IN_LOSS
        self.zero, self.unpenalized = torch.zeros_like(lambd), lambd == 0  # made once, not per step

    def omega(self) -> torch.Tensor:
        if self.kind == "l2":
            return sum(w.pow(2).flatten(1).sum(1) for w in self.params) / 2
        return sum(w.abs().flatten(1).sum(1) for w in self.params)

    def value(self) -> torch.Tensor:
        """[K]: λ_k·Ω(w_k), and exactly 0 where λ_k = 0 (engine does not evaluate Ω then)."""
        if self.kind == "none":
            return self.zero
        return torch.where(self.unpenalized, 0.0, self.lambd * self.omega())

    def weight_decay(self) -> dict[int, torch.Tensor]:
        """λ_k as the optimizer's weight decay on the penalized tensors, for impl=weight_decay."""
        return {id(w): self.lambd for w in self.params} if self.impl == "weight_decay" else {}

    @torch.no_grad()
    def after_step(self, lr: torch.Tensor) -> None:
        """impl=proximal: w_k ← sign(w_k)·max(|w_k| − lr_k·λ_k, 0)."""
        if self.impl == "proximal":
            for w in self.params:
                w.copy_(torch.sign(w) * torch.clamp(w.abs() - bcast(lr * self.lambd, w), min=0))


class StackedOptimizer:
    """torch.optim's SGD and Adam update rules (L2 weight decay added to the gradient), with lr_k per member.

    SGD: g ← g + wd_k·w; with momentum μ, b ← μb + g and g ← b (Nesterov: g ← g + μb); w ← w − lr_k·g.
    Adam: g ← g + wd_k·w; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; w ← w − lr_k/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
    """

    def __init__(self, optim: DictConfig, params: list[torch.Tensor], lr: torch.Tensor, weight_decay: dict[int, torch.Tensor]) -> None:
        self.name, self.params, self.lr, self.weight_decay = optim.name, params, lr, weight_decay
        self.base_lr = lr.clone()  # lr_k before the schedule's factor (``scale_lr``); 0 for a stopped member
        self.neg_lr = -lr  # made once, not per step and tensor
        self.momentum, self.nesterov = optim.get("momentum", 0.0), optim.get("nesterov", False)
        self.t = 0
        adam = self.name == "adam"
        self.m = [torch.zeros_like(p) for p in params] if adam or self.momentum else []  # Adam's m, or SGD's momentum buffer
        self.v = [torch.zeros_like(p) for p in params] if adam else []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        adam_step = self.lr / (1 - ADAM_BETAS[0] ** self.t) if self.name == "adam" else None
        for i, p in enumerate(self.params):
            g = p.grad
            if id(p) in self.weight_decay:
                g = g + bcast(self.weight_decay[id(p)], p) * p
            if self.name == "sgd":
                if self.momentum:  # torch starts the buffer at g: μ·0 + g
                    buf = self.m[i].mul_(self.momentum).add_(g)
                    g = g + self.momentum * buf if self.nesterov else buf
                p.addcmul_(g, bcast(self.neg_lr, p))  # w ← w + (−lr_k)·g in one pass, no [K, …] temporary
                continue
            (b1, b2), m, v = ADAM_BETAS, self.m[i], self.v[i]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**self.t)).add_(ADAM_EPS)
            p.sub_(bcast(adam_step, p) * m / denom)

    @torch.no_grad()
    def scale_lr(self, factor: float) -> None:
        """Every member's learning rate for the coming epoch: lr_k·factor (the schedule's f, ``schedule.lr_factor``)."""
        torch.mul(self.base_lr, factor, out=self.lr)
        torch.neg(self.lr, out=self.neg_lr)

    @torch.no_grad()
    def freeze(self, members: torch.Tensor, keep_weights: bool = False) -> None:
        """Stop the given members ([K] bool): their learning rate to 0, and (unless keep_weights) their weights and
        moments zeroed (a diverged member's hold non-finite values)."""
        for lr in (self.base_lr, self.lr, self.neg_lr):
            lr[members] = 0
        if not keep_weights:
            for t in self.params + self.m + self.v:
                t[members] = 0


@dataclass
class StackedData:
    """Train, test and (with data.val_size) validation tensors for K members: shared ([n, …], one dataset for all)
    or per member ([K, n, …])."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_outputs: int
    per_member: bool
    classification: bool
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    members: torch.Tensor | None = field(init=False)  # [K, 1]: member k's row of per-member tensors, made once

    def __post_init__(self) -> None:
        self.members = torch.arange(len(self.X_train), device=self.X_train.device)[:, None] if self.per_member else None

    def take(self, T: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Rows idx ([B] shared by all members, or [K, B]) of T."""
        if not self.per_member:
            return T[idx]
        if idx.dim() == 1:
            return T[:, idx]
        return T[self.members, idx]

    def rows(self, T: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return T[:, start:stop] if self.per_member else T[start:stop]


def load_stacked_data(cfgs: list[DictConfig], device: torch.device) -> StackedData:
    """Each member's dataset, loaded once per distinct dataset: synthetic data are drawn from the seed,
    so members with different seeds get their own data ([K, n, …]); Fashion-MNIST is one shared copy."""
    seeds = [cfg.seed for cfg in cfgs]
    distinct = sorted(set(seeds)) if cfgs[0].data.name == "synthetic" else [seeds[0]]
    by_seed = {s: load_data(_with_seed(cfgs[0], s), device) for s in distinct}
    first = by_seed[distinct[0]]
    names = ("X_train", "y_train", "X_test", "y_test")
    val = ("X_val", "y_val") if first.X_val is not None else ()
    if len(distinct) == 1:
        shared = {n: getattr(first, n) for n in names + val}
        return StackedData(**shared, num_outputs=first.num_outputs, per_member=False, classification=first.is_classification)
    tensors = {n: torch.stack([getattr(by_seed[s], n) for s in seeds]) for n in names + val}
    return StackedData(**tensors, num_outputs=first.num_outputs, per_member=True, classification=first.is_classification)


def _with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.seed = seed
    return cfg


def member_batches(n: int, batch_size: int, generators: list[torch.Generator], which: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One epoch's index batches, all drawn at once: generator g draws ``data.minibatches``' permutation (one
    ``randperm`` per distinct seed, as engine.fit's generator does), member k follows generator which[k], and the
    batches are views into the [K, n] order. One generator (one seed): [B] batches shared by all members, else [K, B]."""
    orders = [torch.randperm(n, generator=g, device=g.device) for g in generators]
    order = orders[0] if len(orders) == 1 else torch.stack(orders).index_select(0, which)
    return order.split(batch_size, dim=-1)


def member_losses(y_hat: torch.Tensor, y: torch.Tensor, classification: bool) -> torch.Tensor:
    """[K] mean losses: cross-entropy, or the squared loss (ŷ − y)²/2 averaged as engine.squared_loss does."""
    if classification:
        K, B, C = y_hat.shape
        return F.cross_entropy(y_hat.reshape(K * B, C), y.expand(K, B).reshape(-1), reduction="none").view(K, B).mean(1)
    return (y_hat - y).pow(2).flatten(1).mean(1) / 2


def check_vectorizable(cfg: DictConfig) -> None:
    """ConfigError for a job the vectorized launcher cannot train as a member of a group."""
    if cfg.trainer.precision == "16-mixed":  # GradScaler skips a step for all members when one member's gradient overflows
        raise ConfigError(
            "Invalid config: trainer.precision: 16-mixed needs hydra/launcher=basic: one loss scale would tie the members "
            "of a vectorized group together; use bf16-mixed with the vectorized launcher"
        )


def make_step(cfg: DictConfig, net: StackedNet, data: StackedData) -> Step:
    """The stacked training step at cfg.trainer.precision (the stacked GEMMs under autocast), compiled if asked."""
    return Step(
        lambda X, y, uniforms: member_losses(net(X, uniforms).float(), y, data.classification),
        cfg.trainer.precision,
        cfg.trainer.compile,
        data.X_train.device,
    )


def train_epoch(
    net: StackedNet,
    data: StackedData,
    optimizer: StackedOptimizer,
    penalty: StackedPenalty,
    batches: Iterable[torch.Tensor],
    max_norm: float | None,
    step: Step,
) -> torch.Tensor:
    """One shuffled pass for every member; returns each member's mean objective (loss + λ·Ω, the penalty taken
    before each step as engine.train_epoch takes it), [K], on the device."""
    n = data.X_train.shape[-2]
    total = torch.zeros_like(optimizer.lr)
    for idx in batches:
        data_loss = step.loss(data.take(data.X_train, idx), data.take(data.y_train, idx), net.draw(idx.shape[-1]))
        with torch.set_grad_enabled(penalty.in_loss):  # [K] λ_k·Ω(w_k) before the step, as engine.train_epoch takes it
            term = penalty.value()
        optimizer.zero_grad()
        step.backward((data_loss + term if penalty.in_loss else data_loss).sum())
        step.update(optimizer)
        penalty.after_step(optimizer.lr)
        if max_norm is not None:
            net.max_norm_(max_norm)
        with torch.no_grad():
            total += (data_loss + term) * idx.shape[-1]
    return total / n


@torch.inference_mode()
def evaluate(net: StackedNet, data: StackedData, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[K] mean loss (and accuracy) over the whole set, without dropout, summed on the device in large chunks."""
    K, n = net.weights[0].shape[0], X.shape[-2]
    chunk = max(1024, EVAL_BATCH * 8 // K)  # bounds the [K, chunk, hidden] activations
    loss_sum = torch.zeros(K, device=X.device)
    correct = torch.zeros(K, device=X.device)
    for start in range(0, n, chunk):
        Xc, yc = data.rows(X, start, start + chunk), data.rows(y, start, start + chunk)
        y_hat = net(Xc).float()  # fp32 under autocast too
        loss_sum += member_losses(y_hat, yc, data.classification) * y_hat.shape[1]
        if data.classification:
            correct += (y_hat.argmax(-1) == yc).sum(-1)
    return loss_sum / n, (correct / n if data.classification else None)


@dataclass
class Evaluation:
    """One evaluation of a group's members, read from the device in one transfer: a row per member and a column per
    metric of ``keys`` (``table``, float32, on the host); the metrics in ``none`` the members have none of (accuracy,
    in regression) are None in their entries. ``logged``: the members whose histories it went into (those training).

    A group checkpoint saves these tables, not the histories' dicts: pickling 102,400 of them (1,024 members, 100
    evaluations) took 0.26 s at each save, and packing them into tensors first 0.12 s."""

    epoch: int
    keys: list[str]
    none: list[str]
    table: torch.Tensor
    logged: torch.Tensor | None = None

    def entries(self) -> list[dict[str, float | int | None]]:
        """Each member's history entry: the epoch, then the metrics engine.evaluate_all gives a job, in its order."""
        none = dict.fromkeys(self.none)
        return [{"epoch": self.epoch, **dict(zip(self.keys, row, strict=True)), **none} for row in self.table.tolist()]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "keys": self.keys, "none": self.none, "table": self.table, "logged": self.logged}


def evaluations_of(histories: list[list[dict]]) -> list[Evaluation]:
    """The members' histories (lists of entries, as group checkpoints once held them) as the evaluations they came from."""
    by_epoch: dict[int, dict[int, dict]] = {}
    for k, history in enumerate(histories):
        for entry in history:
            by_epoch.setdefault(entry["epoch"], {})[k] = entry
    evaluations = []
    for epoch, entries in sorted(by_epoch.items()):
        keys = [key for key in next(iter(entries.values())) if key != "epoch"]
        missing = dict.fromkeys(keys, math.nan)
        rows = [[math.nan if v is None else v for v in (entries.get(k, missing)[key] for key in keys)] for k in range(len(histories))]
        none = [key for key in keys if all(entry[key] is None for entry in entries.values())]
        logged = torch.tensor([k in entries for k in range(len(histories))])
        evaluations.append(Evaluation(epoch, keys, none, torch.tensor(rows, dtype=torch.float32), logged))
    return evaluations


def evaluate_all(
    net: StackedNet, data: StackedData, penalty: StackedPenalty, objective: torch.Tensor, sparsity_threshold: float, epoch: int
) -> Evaluation:
    """engine.evaluate_all for every member at ``epoch``."""
    train_loss, train_acc = evaluate(net, data, data.X_train, data.y_train)
    test_loss, test_acc = evaluate(net, data, data.X_test, data.y_test)
    flat = torch.cat([w.detach().flatten(1) for w in penalty.params], dim=1)
    values = {"train_loss": train_loss, "test_loss": test_loss, "objective": objective, "weight_l2_norm": flat.norm(dim=1)}
    if data.classification:
        values |= {"train_acc": train_acc, "test_acc": test_acc}
    nullable = ["train_acc", "test_acc"]  # first in an entry, as engine.evaluate_all has them
    if data.X_val is not None:
        val_loss, val_acc = evaluate(net, data, data.X_val, data.y_val)
        values |= {"val_loss": val_loss, "val_acc": val_acc} if data.classification else {"val_loss": val_loss}
        nullable.append("val_acc")
    values["sparsity"] = (flat.abs() < sparsity_threshold).float().mean(1)
    keys = nullable + [k for k in values if k not in nullable]
    nan = torch.full_like(values["train_loss"], math.nan)
    table = torch.stack([values.get(k, nan).float() for k in keys], dim=1).cpu()
    return Evaluation(epoch, keys, [k for k in nullable if k not in values], table)


def spread(histories: list[list[dict]], epoch: int) -> str:
    """The group's train and test loss at this evaluation: mean and range over the members still training."""
    parts = []
    for key in ("train_loss", "test_loss"):
        values = [h[-1][key] for h in histories if h and h[-1]["epoch"] == epoch and math.isfinite(h[-1][key])]
        if values:
            parts.append(f"{key} {sum(values) / len(values):.4g} ({min(values):.4g}–{max(values):.4g})")
    return ", ".join(parts) or "no finite loss"


def build_members(cfgs: list[DictConfig], data: StackedData, device: torch.device) -> StackedNet:
    """Each member's model as engine.train builds it (seed_everything(seed_k), then build_model), stacked.

    The init depends on the seed alone (the members share the model config), so each seed's model is built
    once: a 64-value λ sweep of one seed builds one model, not 64. The init draws from the global RNG, which
    groups training in other threads share: one group at a time seeds it and builds. The dropout masks come from
    a generator of the group's own, seeded with the first member's seed.
    """
    by_seed: dict[int, nn.Module] = {}
    with GLOBAL_RNG:
        for cfg in cfgs:
            if cfg.seed not in by_seed:
                seed_everything(cfg.seed)
                by_seed[cfg.seed] = build_model(cfg, data.X_train.shape[-1], data.num_outputs).to(device)
    models = [by_seed[cfg.seed] for cfg in cfgs]
    rates = [per_member([cfg.reg.get(key, 0.0) for cfg in cfgs], device) for key in ("input_dropout", "dropout1", "dropout2")]
    inverted = cfgs[0].reg.get("dropout_style", DropoutStyle.inverted) is DropoutStyle.inverted
    masks = torch.Generator(device=device).manual_seed(cfgs[0].seed)
    return StackedNet(models, rates if cfgs[0].model.name == "mlp" else [], inverted, masks, compiled=cfgs[0].trainer.compile)


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to n (None: left as it is) for the block."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def step_flops(net: StackedNet, batch_size: int) -> int:
    """Matmul FLOPs of one forward pass of a batch through all members: 2·B·Σ_k Σ_layers in·out."""
    return 2 * batch_size * sum(W.numel() for W in net.weights)


def fit_group(
    cfgs: list[DictConfig],
    loggers: list[RunLogger],
    device: torch.device,
    checkpoint: Path | None = None,
    resume_from: dict | None = None,
    elapsed: Callable[[], float] = lambda: 0.0,
    position: SweepPosition = SINGLE_GROUP,
    members: str = "",
) -> list[dict]:
    """engine.fit for K compatible jobs at once; returns each member's result (metrics.json without wall_s).

    Given a path, a group checkpoint is saved after each epoch the cadence (``CheckpointCadence``) asks for;
    ``resume_from`` (a loaded one) continues exactly where it stopped. ``elapsed()``: the group's wall time so far.
    ``position``: where the group stands in its sweep, for its progress lines and bar. ``members``: what identifies the
    group's checkpoint (``group_members``; train_group makes it with the members' experiment ids).
    """
    set_deterministic(cfgs[0].trainer.deterministic)  # not stackable: the same for every member
    set_matmul_precision(cfgs[0].trainer.matmul_precision)  # nor this
    data = load_stacked_data(cfgs, device)
    net = build_members(cfgs, data, device)
    small = device.type == "cpu" and step_flops(net, cfgs[0].data.batch_size) < SMALL_STEP_FLOPS
    done = resume_from["epoch"] if resume_from else 0
    enabled = progress_enabled(cfgs[0].trainer.progress)
    with cpu_threads(1 if small else None), GroupProgress(position, cfgs[0].trainer.epochs, enabled, done) as progress:
        return fit_members(cfgs, loggers, data, net, checkpoint, resume_from, elapsed, progress, members)


@dataclass
class GroupState:
    """Everything of a group's training that changes from epoch to epoch, besides the weights and the RNGs."""

    optimizer: StackedOptimizer
    generators: list[torch.Generator]
    results: list[dict]
    histories: list[list[dict]]
    active: torch.Tensor
    evaluations: list[Evaluation] = field(default_factory=list)  # what the histories are made of
    # With early stopping: each member's bookkeeping, and the stacked weights of each member's best epoch.
    stoppers: list[EarlyStopping] | None = None
    best_params: list[torch.Tensor] | None = None

    def saved(self, epoch: int, net: StackedNet, wall_s: float, compile_s: float) -> dict:
        """What a group checkpoint holds besides the global RNG states and the members (save_group_checkpoint adds those)."""
        opt = self.optimizer
        return {
            "epoch": epoch,
            "params": [p.detach() for p in net.parameters()],
            # lr: each member's before the schedule (the epoch gives the factor), 0 for members that diverged or stopped
            "optimizer": {"t": opt.t, "lr": opt.base_lr, "m": opt.m, "v": opt.v},
            "generators": [generator_state(g) for g in self.generators],
            "masks": generator_state(net.generator) if net.generator is not None else None,
            "results": self.results,
            "evaluations": [e.state_dict() for e in self.evaluations],
            "active": self.active,
            "wall_s": wall_s,
            "compile_s": compile_s,  # trainer.compile's, over the runs so far, as wall_s
            "early_stopping": [s.state_dict() for s in self.stoppers] if self.stoppers else None,
            "best_params": self.best_params,
        }

    def record(self, evaluation: Evaluation) -> list[dict]:
        """Keep an evaluation (its ``logged`` set) and put its entries into the histories of the members it logged;
        returns every member's entry."""
        self.evaluations.append(evaluation)
        entries = evaluation.entries()
        for history, entry, logged in zip(self.histories, entries, evaluation.logged.tolist(), strict=True):
            if logged:
                history.append(entry)
        return entries

    @torch.no_grad()
    def restore(self, saved: dict, net: StackedNet) -> int:
        """The state of ``saved`` (a loaded group checkpoint) in place; returns its epoch. Saved on another device
        type, the generators cannot continue their streams exactly: training goes on, not bit for bit (logged)."""
        opt, device = self.optimizer, net.weights[0].device
        for t, value in zip(
            net.parameters() + opt.m + opt.v, saved["params"] + saved["optimizer"]["m"] + saved["optimizer"]["v"], strict=True
        ):
            t.copy_(value)
        opt.t = saved["optimizer"]["t"]
        opt.base_lr.copy_(saved["optimizer"]["lr"])
        opt.scale_lr(1.0)  # the epoch's factor is set as it begins
        if self.stoppers:
            for stopper, state in zip(self.stoppers, saved["early_stopping"], strict=True):
                stopper.load_state_dict(state)
            for best, value in zip(self.best_params, saved["best_params"], strict=True):
                best.copy_(value)
        exact = all([restore_generator(g, state) for g, state in zip(self.generators, saved["generators"], strict=True)])
        if net.generator is not None and saved["masks"] is not None:
            exact &= restore_generator(net.generator, saved["masks"])
        if not exact:
            log.warning("the group checkpoint was written on another device type than %s: training continues, not bit for bit", device.type)
        self.results[:] = saved["results"]
        if "evaluations" in saved:
            evaluations = [Evaluation(**e) for e in saved["evaluations"]]
        else:  # written before there were evaluations: the histories' lists
            evaluations = evaluations_of(saved["histories"])
        self.evaluations.clear()
        for history in self.histories:
            history.clear()
        for evaluation in evaluations:
            self.record(evaluation)
        self.active.copy_(saved["active"])
        set_rng_states(saved["rng"], device)
        return saved["epoch"]


def fit_members(
    cfgs: list[DictConfig],
    loggers: list[RunLogger],
    data: StackedData,
    net: StackedNet,
    checkpoint: Path | None = None,
    resume_from: dict | None = None,
    elapsed: Callable[[], float] = lambda: 0.0,
    progress: GroupProgress | None = None,
    members: str = "",
) -> list[dict]:
    first, K, device = cfgs[0], len(cfgs), net.weights[0].device
    params = net.parameters()
    penalized = net.weights + (net.biases if first.reg.penalize_bias else [])
    penalty = StackedPenalty(first.reg.penalty.value, impl_of(first.reg), per_member([c.reg.lambd for c in cfgs], device), penalized)
    optimizer = StackedOptimizer(first.optim, params, per_member([c.optim.lr for c in cfgs], device), penalty.weight_decay())
    step = make_step(first, net, data)
    seeds = sorted({c.seed for c in cfgs})
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    which = torch.tensor([seeds.index(c.seed) for c in cfgs], device=device)
    epochs, every, n = first.trainer.epochs, first.trainer.eval_every, data.X_train.shape[-2]
    lr_factor = factor_of(first)  # the schedule is not stackable: one f for the group, times each member's lr
    stoppers = [EarlyStopping.of(c) for c in cfgs] if EarlyStopping.of(first) else None
    state = GroupState(
        optimizer,
        generators,
        results=[{"status": "completed", "epochs": epochs} for _ in cfgs],
        histories=[[] for _ in cfgs],
        active=torch.ones(K, dtype=torch.bool, device=device),
        stoppers=stoppers,
        best_params=[p.detach().clone() for p in params] if stoppers else None,
    )
    results, histories, active = state.results, state.histories, state.active
    done = 0
    if resume_from is not None:
        done = state.restore(resume_from, net)
        step.compile_s = resume_from.get("compile_s", 0.0)  # the runs before this one compiled too (engine.fit's rule)
        log.info("resuming the group of %d jobs from %s after epoch %d", K, checkpoint, done)
        for result in results:
            if result["status"] == "completed":
                result["epochs"] = epochs  # a group resumed to more epochs than it was started with
    cadence = CheckpointCadence.of(first.trainer)
    for epoch in range(done + 1, epochs + 1):
        if not bool(active.any()):
            break
        batches = member_batches(n, first.data.batch_size, generators, which)
        optimizer.scale_lr(lr_factor(epoch - 1))
        objective = train_epoch(net, data, optimizer, penalty, batches, first.reg.max_norm, step)
        if first.trainer.compile and epoch == 1:
            log.info("compiled the training step in %.1f s (trainer.compile)", step.compile_s)
        diverged = active & ~torch.isfinite(objective)
        stop = stop_requested.is_set() and epoch < epochs  # Ctrl-C, or another GPU's group stopped the sweep
        detail = f"{int((active & ~diverged).sum())} of {K} members training"
        if epoch % every == 0 or epoch == epochs or stop:  # the events end at the stop
            with step.autocast():
                evaluation = evaluate_all(net, data, penalty, objective, first.sparsity_threshold, epoch)
            evaluation.logged = (active & ~diverged).cpu()
            alive, evaluated = evaluation.logged.tolist(), state.record(evaluation)
            for k, entry in enumerate(evaluated):
                if alive[k]:
                    loggers[k].log_eval(epoch, entry)
                    if not (math.isfinite(entry["train_loss"]) and math.isfinite(entry["test_loss"])):
                        diverged[k] = True
            detail = f"{sum(alive)} of {K} members training; {spread(histories, epoch)}"
            if stoppers:
                stop_members(state, net, evaluated, [a and not d for a, d in zip(alive, diverged.tolist(), strict=True)], epoch)
        if bool(diverged.any()):  # as engine.fit: a non-finite objective or evaluated loss stops the member
            for k in diverged.nonzero().flatten().tolist():
                log.warning("member %d, epoch %d: the loss is not finite; stopping it (status diverged)", k, epoch)
                results[k] |= {"status": "diverged", "epochs": epoch}
            optimizer.freeze(diverged)
            active &= ~diverged
        if checkpoint is not None and (cadence.due(epoch) or stop or not bool(active.any())):  # or the last epoch any member trains
            for logger in loggers:  # events up to this epoch are on disk before its checkpoint is
                logger.flush()
            save_group_checkpoint(checkpoint, state.saved(epoch, net, elapsed(), step.compile_s), members, device)
            cadence.saved()
        if progress is not None:
            progress.epoch_done(epoch, detail)
        if stop:  # ends as an interrupted group, its checkpoint at this epoch
            raise KeyboardInterrupt
    for k, (result, history) in enumerate(zip(results, histories, strict=True)):
        stopper = stoppers[k] if stoppers else None
        result |= run_result(history) | selection_result(history, cfgs[k], stopper, result["status"] == "completed")
        result["history"] = history
        if first.trainer.compile:  # the member's share of the group's, as wall_s is, and the group's own
            result |= {"compile_s": step.compile_s / len(results), "group_compile_s": step.compile_s}
    return results


@torch.no_grad()
def stop_members(state: GroupState, net: StackedNet, evaluated: list[dict], finite: list[bool], epoch: int) -> None:
    """Early stopping for every member evaluated with finite losses at this epoch, as engine.fit does it for a job:
    a new best keeps the member's weights (into ``state.best_params``); a member out of patience gets its best
    weights back and a learning rate of 0, and stops training (it is no longer ``active``)."""
    improved, stopping = torch.zeros_like(state.active), torch.zeros_like(state.active)
    for k, metrics in enumerate(evaluated):
        if finite[k]:
            improved[k] = state.stoppers[k].update(epoch, metrics)
            stopping[k] = state.stoppers[k].stopped
    params = net.parameters()
    for best, p in zip(state.best_params, params, strict=True):
        best[improved] = p[improved]
    if bool(stopping.any()):
        for k in stopping.nonzero().flatten().tolist():
            s = state.stoppers[k]
            log.info("member %d, epoch %d: %s has not improved for %d evaluations; stopping it early", k, epoch, s.metric, s.patience)
        for best, p in zip(state.best_params, params, strict=True):
            p[stopping] = best[stopping]
        state.optimizer.freeze(stopping, keep_weights=True)
        state.active &= ~stopping


def group_checkpoint(
    cfgs: list[DictConfig], out_dirs: list[Path], mmap: bool = False, experiments: list[dict] | None = None
) -> tuple[Path, dict | None]:
    """Where the group keeps its checkpoint (the first member's dir) and, with ``resume``, the checkpoint there (or None).
    ``experiments``: the members' experiment configs, if already made.

    ConfigError, before anything trains, for a checkpoint written for other members, at an epoch past
    trainer.epochs, or left in another member's dir by a group that held these jobs differently.
    """
    path = out_dirs[0] / GROUP_CHECKPOINT
    if not cfgs[0].resume:
        return path, None
    for d in out_dirs[1:]:
        if (d / GROUP_CHECKPOINT).exists():
            raise ConfigError(
                f"Invalid checkpoint: {d / GROUP_CHECKPOINT} was written for a vectorized group that began with this job; "
                f"this sweep groups it after {out_dirs[0].name}. Rerun the sweep as it was (the same values and "
                "hydra.launcher.max_members), delete it, or pass resume=false to start over."
            )
    if not path.exists():
        return path, None
    saved = load_group_checkpoint(path, cfgs, mmap, experiments)
    if saved["epoch"] > cfgs[0].trainer.epochs:
        raise ConfigError(f"Invalid config: trainer.epochs: {path} is at epoch {saved['epoch']}, past {cfgs[0].trainer.epochs}")
    return path, saved


@dataclass
class Member:
    """What a group makes of a job's config besides training it: its experiment config (the group checkpoint's
    identity, metrics.json's experiment_id), its HParams row, and its job log (None: the job logging writes no file).
    The vectorized launcher makes them from plain values, once per base (``Job.member``); ``members_of`` from configs."""

    experiment: dict
    hparams: dict[str, HParam]
    log: JobLog | None


def members_of(cfgs: list[DictConfig], hydra_cfgs: list[DictConfig | None]) -> list[Member]:
    """Each job's ``Member`` from its task config and hydra node (about 1 ms a job)."""
    logs = job_logs(hydra_cfgs)
    return [Member(experiment_config(c), run_hparams(c, h), jl) for c, h, jl in zip(cfgs, hydra_cfgs, logs, strict=True)]


def train_group(
    cfgs: list[DictConfig],
    out_dirs: list[Path],
    device: torch.device,
    hydra_cfgs: list[DictConfig] | None = None,
    position: SweepPosition = SINGLE_GROUP,
    members: list[Member] | None = None,
) -> list[float]:
    """engine.train for a group: event files, metrics.json and the job log in each member's dir; returns each
    member's final ``optimize_metric`` (NaN unless it completed).

    ``hydra_cfgs`` are the jobs' hydra nodes (with ``members`` given, the first job's alone will do: for the resume
    command; else for their overrides in the HParams rows, and where their job
    logging writes); by default they are read from the .hydra/hydra.yaml the launcher saved. ``wall_s`` is the
    member's fair share of the group's wall time (group time / K: the members trained together), ``group_wall_s``
    the group's time, ``group_size`` K. If the group raises, every member is marked failed with the traceback, as
    engine.run marks a failed job; at Ctrl-C every member is marked interrupted, the group checkpoint
    (``group_checkpoint``: in the first member's dir) stands, and the process exits 130. ``position``: where the
    group stands in its sweep, for the progress lines. ``members``: each job's ``Member``, made from ``cfgs`` and
    ``hydra_cfgs`` when not given.
    """
    hydra_cfgs = hydra_cfgs or [saved_hydra_config(d) for d in out_dirs]
    members = members or members_of(cfgs, hydra_cfgs)
    experiments = [m.experiment for m in members]
    checkpoint, resume_from = group_checkpoint(cfgs, out_dirs, experiments=experiments)
    for k, member in enumerate(members):
        if member.log is not None:
            member.log.info("trained on %s as member %d of a vectorized group of %d jobs (hydra/launcher=vectorized)", device, k, len(cfgs))
    # Events past the checkpoint's epoch, from a run that died, are purged (hidden) by TensorBoard.
    purge = resume_from["epoch"] + 1 if resume_from else 1
    loggers = [
        RunLogger(d, cfg.trainer.epochs, console=False, purge_step=purge, job_log=member.log)
        for cfg, d, member in zip(cfgs, out_dirs, members, strict=True)
    ]
    for member, logger in zip(members, loggers, strict=True):
        logger.log_hparams(member.hparams)
    statuses = ["failed"] * len(cfgs)  # what the HParams sessions end with if the group raises
    start, before = time.perf_counter(), resume_from["wall_s"] if resume_from else 0.0

    def elapsed() -> float:  # the group's wall time, over its runs
        return before + time.perf_counter() - start

    try:
        reset_peak_memory(device)
        results = fit_group(cfgs, loggers, device, checkpoint, resume_from, elapsed, position, group_members(experiments))
        for logger, result in zip(loggers, results, strict=True):
            logger.log_result(result)
        statuses = [r["status"] for r in results]
    except KeyboardInterrupt:  # as engine.train: logs flushed (finally), status interrupted, exit 130
        statuses = ["interrupted"] * len(cfgs)  # the HParams sessions stay open, as a resumed run ends them
        done = checkpoint_epoch(checkpoint) if checkpoint.exists() else 0  # the file on disk is the truth
        for logger in loggers:
            logger.purge_from(done + 1)  # TensorBoard hides the epochs past the checkpoint (a second Ctrl-C's)
        write_texts_atomic([(d / "metrics.json", json_text({"status": "interrupted", "epochs": done}) + "\n") for d in out_dirs])
        log.warning("interrupted: the group's checkpoint after epoch %d stands; a rerun into the same sweep dir resumes it", done)
        log.warning("to resume: %s", resume_command(hydra_cfgs[0], multirun=True))
        raise SystemExit(130) from None
    except Exception as err:
        error = failure_message(err, "a smaller hydra.launcher.max_members or data.batch_size")
        for d in out_dirs:
            (d / "traceback.txt").write_text(traceback.format_exc())
        write_texts_atomic([(d / "metrics.json", json_text({"status": "failed", "error": error}) + "\n") for d in out_dirs])
        if is_sticky_cuda_error(err):
            raise sticky_cuda_error(err, f"a vectorized group of {len(cfgs)} jobs ({out_dirs[0]}, ...)") from None
        log.exception("group of %d jobs failed; traceback in each job dir", len(cfgs))
        return [math.nan] * len(cfgs)
    finally:
        for logger, status in zip(loggers, statuses, strict=True):
            logger.close(status)
        release_cached_memory(device)
    wall = elapsed()
    shares = {"wall_s": wall / len(cfgs), "group_wall_s": wall, "group_size": len(cfgs)} | peak_memory(device, "group_peak_memory_bytes")
    metrics = [r | shares | {"experiment_id": experiment_digest(e)} for r, e in zip(results, experiments, strict=True)]
    write_texts_atomic([(d / "metrics.json", json_text(m) + "\n") for d, m in zip(out_dirs, metrics, strict=True)])
    return [final_metric(r, cfg.optimize_metric) for r, cfg in zip(results, cfgs, strict=True)]
