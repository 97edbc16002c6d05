"""Train one job, or a sweep with -m: python train.py -m reg.lambd=0,3"""

import signal
import sys


def interrupted() -> None:
    """Ctrl-C outside training (which ends a run itself, with a result): one line and SIGINT's exit status, no traceback."""
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def on_ctrl_c(signum: int, frame: object) -> None:
    """Python's handler (raise KeyboardInterrupt), and a note of it: a KeyboardInterrupt raised while the interpreter
    runs a finalizer or a library's catch-all is dropped, and the run would go on training as if never interrupted."""
    ctrl_c.append(signum)
    raise KeyboardInterrupt


ctrl_c: list[int] = []
signal.signal(signal.SIGINT, on_ctrl_c)
try:  # importing torch takes seconds: Ctrl-C then too
    import math
    from pathlib import Path

    import hydra
    from omegaconf import DictConfig

    import regularization
    from regularization.checkpoint import CTRL_C, note_ctrl_c
    from regularization.config import ConfigError, check_command_line
except KeyboardInterrupt:
    interrupted()
signal.signal(signal.SIGINT, signal.default_int_handler)  # as found, for a process that imports this module
if ctrl_c:  # seen, but its KeyboardInterrupt was dropped
    interrupted()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    value = regularization.run(cfg)
    # A failed or diverged job has no value (NaN). Optuna's sweeper crashes on a NaN but records
    # a value that is not a float, None, as a failed trial and goes on with the study.
    return value if math.isfinite(value) else None


if __name__ == "__main__":
    # From here on the library's handler notes a Ctrl-C as the one above did, for training and the run's end to see.
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
