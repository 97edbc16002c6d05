"""Train one job, or a sweep with -m: python train.py -m reg.lambd=0,3"""

import signal
import sys


def interrupted() -> None:
    """Ctrl-C outside training (which ends a run itself, with a result): one line and SIGINT's exit status, no traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C, while exiting, would print a traceback
    print("interrupted", file=sys.stderr)
    sys.exit(130)


# Importing torch and Hydra takes seconds. A Ctrl-C then is noted, and acted on once the imports are done: a
# KeyboardInterrupt inside an import leaves a module half-made (numpy then refuses to load again) or, inside a C++
# extension's start-up, can abort the process.
ctrl_c: list[int] = []
signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.append(signum))
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig

import regularization
from regularization.checkpoint import CTRL_C, note_ctrl_c
from regularization.config import ConfigError, check_command_line

signal.signal(signal.SIGINT, signal.default_int_handler)  # as found, for a process that imports this module
if ctrl_c:
    interrupted()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    value = regularization.run(cfg)
    # A failed or diverged job has no value (NaN). Optuna's sweeper crashes on a NaN but records
    # a value that is not a float, None, as a failed trial and goes on with the study.
    return value if math.isfinite(value) else None


if __name__ == "__main__":
    # From here on the library's handler notes a Ctrl-C (for training and the run's end to see) and raises
    # KeyboardInterrupt, after the import in progress if there is one.
    signal.signal(signal.SIGINT, note_ctrl_c)
    try:
        try:
            check_command_line(sys.argv[1:], Path(__file__).parent / "conf")
        except ConfigError as err:
            sys.exit(str(err))  # the message alone, exit status 1, as Hydra reports a bad config
        main()
    except KeyboardInterrupt:
        interrupted()
    if CTRL_C.is_set():  # a Ctrl-C whose KeyboardInterrupt was dropped after start-up, outside training
        interrupted()
