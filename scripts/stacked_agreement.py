"""How far stacked members (hydra/launcher=vectorized) follow the same jobs run alone, per penalty.

    python scripts/stacked_agreement.py --epochs 100 --seeds 10 --lambd 0 0.1 1 10

For each penalty implementation, every (λ, seed) job trains once alone (engine.train) and once as a member of
one stacked group (vectorized.train_group) on the weight-decay chapter's problem. Printed per penalty: how
many members were bitwise equal on every evaluation, the first epoch at which some member's train or test
loss differs from its single run by more than 1e-4 relative (and 1e-7 absolute), the largest relative difference of the final
test loss, and the final test loss's mean and std over the seeds, stacked and alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import regularization  # noqa: E402, F401  (registers the config schemas)
from regularization.engine import train  # noqa: E402
from regularization.machine import cpu_model  # noqa: E402
from regularization.vectorized import train_group  # noqa: E402
from tests.conftest import compose_config  # noqa: E402  (the tests' job composition: the script measures their claim)

PENALTIES = {
    "l2 penalty": ["reg=l2"],
    "l2 weight_decay": ["reg=l2", "reg.impl=weight_decay"],
    "l1 subgradient": ["reg=l1"],
    "l1 proximal": ["reg=l1", "reg.impl=proximal"],
}
REL, ABS = 1e-4, 1e-7  # as tests/test_vectorized.py compares: a train loss near 0 differs by float noise


def history(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "metrics.json").read_text())["history"]


def first_parting(stacked: list[dict], alone: list[dict]) -> int | None:
    """The first epoch whose train or test loss differs by more than REL relative, or None."""
    for s, a in zip(stacked, alone, strict=True):
        if any(abs(s[k] - a[k]) > max(REL * abs(a[k]), ABS) for k in ("train_loss", "test_loss")):
            return a["epoch"]
    return None


def compare(name: str, reg: list[str], args: argparse.Namespace, root: Path) -> str:
    lambdas = [0.0] if name == "none" else args.lambd
    base = ["+experiment=weight_decay", f"trainer.epochs={args.epochs}", *reg]
    overrides = [base + [f"seed={s}"] + ([f"reg.lambd={v}"] if name != "none" else []) for v in lambdas for s in range(args.seeds)]
    alone_dirs = [root / name / f"alone{i}" for i in range(len(overrides))]
    for o, d in zip(overrides, alone_dirs, strict=True):
        train(compose_config(o, d), torch.device("cpu"), d)
    member_dirs = [root / name / f"member{i}" for i in range(len(overrides))]
    cfgs = [compose_config(o, d) for o, d in zip(overrides, member_dirs, strict=True)]
    train_group(cfgs, member_dirs, torch.device("cpu"), [c.hydra for c in cfgs])
    pairs = [(history(m), history(a)) for m, a in zip(member_dirs, alone_dirs, strict=True)]
    bitwise = sum(s == a for s, a in pairs)
    partings = [p for p in (first_parting(s, a) for s, a in pairs) if p is not None]
    finals = [(s[-1]["test_loss"], a[-1]["test_loss"]) for s, a in pairs]
    worst = max(abs(s - a) / abs(a) for s, a in finals)
    top = finals[-args.seeds :]  # the largest λ's members
    mean_sd = lambda v: f"{statistics.fmean(v):.4g}" + (f" ± {statistics.stdev(v):.2g}" if len(v) > 1 else "")  # noqa: E731
    return (
        f"{name:16} bitwise {bitwise}/{len(pairs)}  first epoch beyond {REL:g}: {min(partings) if partings else '-':>4}"
        f" ({len(partings)} of {len(pairs)} members)  worst final test-loss rel diff {worst:.2e}"
        f"  at lambda {lambdas[-1]:g}: final test loss stacked {mean_sd([s for s, _ in top])}, alone {mean_sd([a for _, a in top])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lambd", type=float, nargs="+", default=[10.0], help="one group holds every λ × seed")
    parser.add_argument("--only", nargs="*", default=None, help="penalties to run (names as printed)")
    args = parser.parse_args()
    machine = f"{cpu_model()}, torch {torch.__version__}"  # where a member parts depends on the CPU model's kernels
    print(f"weight-decay problem, {args.epochs} epochs, seeds 0..{args.seeds - 1}, lambdas {args.lambd}; {machine}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, reg in {"none": ["reg=none"], **PENALTIES}.items():
            if args.only is None or name in args.only:
                print(compare(name, reg, args, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
