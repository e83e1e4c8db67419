"""How the command-line programs fail: one ``error: ...`` line and an exit code, a traceback only on request.

The library raises typed exceptions (``ValueError`` subclasses for bad settings and input, ``NonFiniteError`` for a
diverged run); the recipes and ``python -m hf_layerwise`` run their ``main`` through :func:`run_cli`, which turns them
into one line on stderr and an exit code:

* ``2`` -- bad usage: an argument, input file, model folder or output folder that cannot work
  (:class:`UsageError` and its subclasses, raised before any training);
* ``1`` -- the run started and failed (:class:`RunFailed`, a non-finite loss, anything unexpected);
* ``130`` -- interrupted (Ctrl-C).

``--debug`` on the command line, or ``HF_LAYERWISE_DEBUG=1`` in the environment, adds the traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["UsageError", "RunFailed", "CheckpointError", "DEBUG_ENV", "one_line", "usage_errors", "run_cli"]

DEBUG_ENV = "HF_LAYERWISE_DEBUG"


class UsageError(ValueError):
    """An argument or input that cannot work; the message says what is wrong and how to fix it (exit code 2)."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from (missing or damaged file, other settings); names the file."""


class RunFailed(RuntimeError):
    """A run that started could not finish (exit code 1)."""


def one_line(err: BaseException | str) -> str:
    """The message of ``err`` on one line (library messages can span several)."""
    text = err if isinstance(err, str) else str(err)
    if not isinstance(err, str) and isinstance(err, KeyError) and err.args:
        text = str(err.args[0])  # KeyError's str() adds quotes
    return " ".join(text.split()) or type(err).__name__


@contextlib.contextmanager
def usage_errors(what: str = "") -> Iterator[None]:
    """Turn a ``ValueError``/``OSError`` raised inside into a :class:`UsageError` (prefixed with ``what``).

    For the set-up steps of a program, where such an error always means bad input, never a bug mid-run.

    Example:
        >>> with usage_errors("--preset"):
        ...     LayerwiseConfig.preset("nope")       # doctest: +SKIP
        UsageError: --preset: Unknown preset 'nope'; known presets: ...
    """
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError) as err:
        raise UsageError(f"{what}: {one_line(err)}" if what else one_line(err)) from err


def _is_reporting_process() -> bool:
    """Usage errors are the same on every process of a launch: only local rank 0 prints them."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and return the exit code (``main``'s own when it returns an int, else 0); failures print one
    ``error: ...`` line on stderr.

    Example:
        >>> if __name__ == "__main__":
        ...     raise SystemExit(run_cli(main))      # doctest: +SKIP
    """
    from .monitor import NonFiniteError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        code = main(argv)
        return code if isinstance(code, int) else 0
    except UsageError as err:
        failure, code, message, show = err, 2, one_line(err), _is_reporting_process()
    except (RunFailed, NonFiniteError) as err:
        failure, code, message, show = err, 1, one_line(err), True
    except KeyboardInterrupt as err:
        failure, code, message, show = err, 130, "interrupted", True
    except Exception as err:  # a bug or a library failure mid-run: still one line, the traceback on request
        failure, code, show = err, 1, True
        message = (f"{type(err).__name__}: {one_line(err)} (unexpected; rerun with --debug or {DEBUG_ENV}=1 for "
                   "the traceback)")
    if show:
        if debug:
            traceback.print_exception(failure)
        print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
    return code
