"""What reaches the user's console. By default: our own lines (baselines, the progress bar or
one line per epoch, the summary, our warnings and errors). Ray's internal lines (training
report dumps, actor and deprecation warnings, "Progress bars disabled", the token
authentication notice) stay in Ray's log files (``/tmp/ray/session_latest/logs``) unless
``--verbose`` or ``SSL_RAY_VERBOSE=1`` asks for them.

Our lines from inside Ray (a worker's epoch line, the schedule's re-aim) travel through the
driver's progress board, never through a worker's stdout, so they show either way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

import ray

VERBOSE_ENV = "SSL_RAY_VERBOSE"
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
# MLflow's INFO lines ("Creating initial MLflow database tables...") are its, not ours either.
_OTHER_LOGGERS = ("mlflow",)


def set_verbose(verbose: bool) -> None:
    """Before MLflow is imported: its own level comes from its environment variable then."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if not is_verbose():
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # Its "Downloading artifacts" bars, one per file `evaluate` reads from a run.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_ray_loggers() -> None:
    """The driver's own Ray loggers at ERROR, MLflow's at WARNING (unless verbose): their
    notices are theirs, not ours."""
    if not is_verbose():
        for name in _RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        for name in _OTHER_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def library_prints_hidden():
    """What a library prints rather than logs (MLflow's "Successfully registered model ..."),
    hidden unless verbose; our own lines are not printed inside it."""
    if is_verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def start_ray(**init_options) -> None:
    """``ray.init`` as every command starts a local cluster (or joins ``RAY_ADDRESS``): worker
    processes' output is forwarded to this console only when verbose."""
    if ray.is_initialized():
        return
    verbose = is_verbose()
    ray.init(logging_level=logging.WARNING if verbose else logging.ERROR, log_to_driver=verbose, **init_options)
    quiet_ray_loggers()
