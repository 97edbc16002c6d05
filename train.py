"""Train one job, or a sweep with -m: python train.py -m reg.lambd=0,3"""

import atexit
import gc
import os
import signal
import sys

# The exit status, once the command line has run (``without_teardown``).
exit_status: list[int] = []


def without_teardown() -> None:
    """The last exit handler: the other ones (logging's flush and close, joblib's, weakref finalizers) have run and
    the streams are flushed, so the process ends without the interpreter's teardown of every module, which frees
    nothing the OS does not and took 0.35 s for torch alone, 0.6 s with Hydra, torchvision and matplotlib (a third
    of a 64-job sweep). A run that ended with a traceback has no status here and is torn down as usual."""
    if exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status[0])


# Exit handlers run last registered first: this one, registered before any import, runs last. Not where a handler
# was registered before train.py ran (coverage's subprocess hook, from a .pth file): that one would never run.
if __name__ == "__main__" and getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
    atexit.register(without_teardown)


def interrupted() -> int:
    """Ctrl-C outside training (which ends a run itself, with a result): one line, and SIGINT's exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C, while exiting, would print a traceback
    print("interrupted", file=sys.stderr)
    return 130


# Importing torch and Hydra takes seconds. A Ctrl-C then is noted, and acted on once the imports are done: a
# KeyboardInterrupt inside an import leaves a module half-made (numpy then refuses to load again) or, inside a C++
# extension's start-up, can abort the process.
ctrl_c: list[int] = []
signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.append(signum))
# The imports make some 200,000 objects that live as long as the process; the cyclic garbage collector would go
# over all of them six times meanwhile (0.2 s) and again at each later full collection. Frozen after the imports,
# no collection looks at them again.
gc.disable()
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig

import regularization
from regularization.checkpoint import CTRL_C, note_ctrl_c
from regularization.config import ConfigError, check_command_line

gc.freeze()
gc.enable()
signal.signal(signal.SIGINT, signal.default_int_handler)  # as found, for a process that imports this module
if ctrl_c:
    sys.exit(interrupted())


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    value = regularization.run(cfg)
    # A failed or diverged job has no value (NaN). Optuna's sweeper crashes on a NaN but records
    # a value that is not a float, None, as a failed trial and goes on with the study.
    return value if math.isfinite(value) else None


def command_line() -> int | str | None:
    """Runs the command line; returns its exit status as sys.exit takes it (a message: status 1)."""
    try:
        try:
            check_command_line(sys.argv[1:], Path(__file__).parent / "conf")
        except ConfigError as err:
            return str(err)  # the message alone, exit status 1, as Hydra reports a bad config
        main()
    except SystemExit as done:  # Hydra's, after its message
        return done.code
    except KeyboardInterrupt:
        return interrupted()
    if CTRL_C.is_set():  # a Ctrl-C whose KeyboardInterrupt was dropped after start-up, outside training
        return interrupted()
    return 0


if __name__ == "__main__":
    # From here on the library's handler notes a Ctrl-C (for training and the run's end to see) and raises
    # KeyboardInterrupt, after the import in progress if there is one.
    signal.signal(signal.SIGINT, note_ctrl_c)
    status = command_line()
    exit_status.append(status if isinstance(status, int) else 0 if status is None else 1)
    sys.exit(status)
