"""The output folder of a run: never overwritten by accident, written atomically, one writer at a time, and
checkpoints that are checked before a resume trusts them.

* :func:`check_output_dir` (before any work, writes nothing) refuses a folder that holds another run's results or
  checkpoints unless the run is resumed or overwritten, and a place that cannot be written to;
  :func:`claim_output_dir` (once every input was checked) creates it, deletes the old run when overwriting, and
  takes a lock so that a second process writing into the same folder (a second launch, an orphaned sweep child) is
  refused;
* :func:`write_json_atomic`: a reader never sees a half-written file;
* :func:`checkpoint_problem` / :func:`latest_checkpoint`: a checkpoint with a missing or damaged file is named as
  such; ``latest`` skips a damaged newest checkpoint with a warning and takes the previous complete one.

Two checkpoint layouts: the accelerate recipe's ``step_N`` (``accelerator.save_state`` + ``progress.json``) and the
Trainer's ``checkpoint-N``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import struct
import tempfile
import threading
import time
import zipfile
from typing import IO, Any

from ..errors import CheckpointError, UsageError

__all__ = ["ACCELERATE", "TRAINER", "RUN_CONFIG", "SWEEP_PID_ENV", "run_artifacts", "check_output_dir",
           "claim_output_dir", "release_output_dir", "write_json_atomic", "checkpoints", "checkpoint_problem",
           "latest_checkpoint", "resolve_checkpoint", "load_run_config", "check_same_settings", "stop_with_sweep"]

logger = logging.getLogger(__name__)

ACCELERATE = re.compile(r"^step_(\d+)$")
TRAINER = re.compile(r"^checkpoint-(\d+)$")
RUN_CONFIG = "run_config.json"  # the settings a checkpoint was trained with (checked on resume)
LOCK = ".hf_layerwise.lock"
SWEEP_PID_ENV = "HF_LAYERWISE_SWEEP_PID"  # set by recipes/ablate.py for the runs it starts
# What a run leaves in its folder. Anything else (a sweep's status.json and log.txt, the user's own files) is
# neither a reason to refuse the folder nor deleted by --overwrite_output_dir.
_RUN_FILES = ("results.json", "health.jsonl", "report.html", "lr_per_depth.png", "update_ratio_per_depth.png",
              "grad_norm_per_depth.png", "weight_histograms.png", "lr_find.json", "lr_find.png")
CACHE_DIR = "feature_cache"  # --cache_frozen's states beyond its memory budget (removed at the end of a run)
_RUN_FOLDERS = ("best_model", "model", "health_tb", "glue", "runs", CACHE_DIR)
_RUN_PREFIXES = ("step_", ".tmp-step_", "checkpoint-")


def run_artifacts(output_dir: str) -> list[str]:
    """The names in ``output_dir`` that belong to a run (results, checkpoints, saved models, logs), sorted."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if name in _RUN_FILES or name in _RUN_FOLDERS or name.startswith(_RUN_PREFIXES))


def take_lock(path: str) -> IO[str] | str:
    """An exclusive, non-blocking ``flock`` on ``path`` (created if missing), stamped with this process's pid and the
    time: the open handle (the lock lasts while it is open), or, when another process holds it, that one's stamp."""
    handle = open(path, "a+")  # noqa: SIM115 -- the caller keeps it open as long as it needs the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown pid"
        handle.close()
        return holder
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def _hold_lock(output_dir: str) -> IO[str]:
    handle = take_lock(os.path.join(output_dir, LOCK))  # held (and the lock with it) until the process exits
    if isinstance(handle, str):
        raise UsageError(f"--output_dir {output_dir}: another run is writing to it ({handle}); wait for it to "
                         "finish, stop it, or choose another --output_dir")
    return handle


_LOCKS: dict[str, IO[str]] = {}


def _probe_writable(folder: str) -> None:
    """Create and delete a temporary file in ``folder`` (leaves nothing behind)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def check_output_dir(output_dir: str, *, overwrite: bool = False, resume: bool = False) -> None:
    """Check, without writing anything, that a run may use ``output_dir`` (first thing a recipe does).

    Refuses (``UsageError``) a folder that holds another run's results or checkpoints unless ``resume`` (continue
    it) or ``overwrite`` (its files are deleted when the folder is claimed, after every input was checked), a path
    that is not a folder, and a place that cannot be written to.

    Example:
        >>> check_output_dir("runs/mrpc", overwrite=args.overwrite_output_dir,      # doctest: +SKIP
        ...                  resume=args.resume_from_checkpoint is not None)
    """
    found = run_artifacts(output_dir)
    if found and not (overwrite or resume):
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise UsageError(f"--output_dir {output_dir} already holds a run ({shown}): pass --overwrite_output_dir to "
                         "replace it, --resume_from_checkpoint latest to continue it, or choose another --output_dir")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir}: exists and is not a folder")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file")
        _probe_writable(existing)
    except OSError as err:
        raise UsageError(f"--output_dir {output_dir}: cannot write there ({err.strerror}); choose a writable "
                         "folder") from None


def claim_output_dir(output_dir: str, *, overwrite: bool = False, is_main_process: bool = True) -> None:
    """Make ``output_dir`` this run's, once every input was checked: create it, lock it for the lifetime of the
    process (a second writer is refused), and with ``overwrite`` delete the previous run's files (files that are not
    a run's, such as a sweep's status.json, are kept). Only the main process does anything."""
    if not is_main_process:
        return
    try:
        os.makedirs(output_dir, exist_ok=True)
        _probe_writable(output_dir)
    except OSError as err:
        raise UsageError(f"--output_dir {output_dir}: cannot write there ({err.strerror}); choose a writable "
                         "folder") from None
    key = os.path.realpath(output_dir)
    if key not in _LOCKS:
        _LOCKS[key] = _hold_lock(output_dir)
    if overwrite:
        found = run_artifacts(output_dir)
        for name in found:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        if found:
            logger.warning("--overwrite_output_dir: deleted the previous run's %s in %s", ", ".join(found), output_dir)


def release_output_dir(output_dir: str) -> None:
    """Give up this process's lock on ``output_dir`` (at the end of a run; process exit does it too)."""
    handle = _LOCKS.pop(os.path.realpath(output_dir), None)
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def stop_with_sweep(poll_s: float = 1.0) -> bool:
    """In a run started by ``recipes/ablate.py``: end this process when the sweep process is gone.

    The sweep puts its pid in ``HF_LAYERWISE_SWEEP_PID``; the variable passes through any launcher (``accelerate
    launch``, ``torchrun``), so every training process watches it. When the sweep dies -- even by SIGKILL, which it
    cannot forward -- the run stops within ``poll_s`` seconds instead of writing on into a folder the next sweep will
    use. Returns whether a watch was started.
    """
    pid = os.environ.get(SWEEP_PID_ENV, "")
    if not pid.isdigit():
        return False

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                logger.error("the sweep that started this run (pid %s) is gone: stopping", pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # alive, another user's
                pass

    threading.Thread(target=watch, name="sweep-watch", daemon=True).start()
    return True


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON so that a reader never sees a partial file (temporary file, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- checkpoints -----------------------------------------------------------------------------------------------
def checkpoints(output_dir: str, layout: re.Pattern[str] = ACCELERATE) -> list[str]:
    """The checkpoint folders of ``layout`` in ``output_dir``, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := layout.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def _safetensors_problem(path: str) -> str | None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "truncated (no header)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "truncated (header cut off)"
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            return "damaged header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"truncated ({size} bytes, the header says {8 + length + end})"
    return None


def _file_problem(path: str) -> str | None:
    """Why the checkpoint file at ``path`` cannot be loaded, or None. Structural checks only (cheap)."""
    name = os.path.basename(path)
    try:
        if name.endswith(".safetensors"):
            return _safetensors_problem(path)
        if name.endswith(".json"):
            with open(path) as f:
                json.load(f)
        elif name.endswith((".bin", ".pt", ".pth", ".pkl")):  # torch.save's zip format
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.header_offset + info.compress_size > os.path.getsize(path):
                        return "truncated"
    except (ValueError, UnicodeDecodeError):
        return "not valid JSON (truncated or damaged)"
    except zipfile.BadZipFile:
        return "truncated or damaged (not a complete torch.save archive)"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return None


# What a checkpoint must hold: (what it is, the name it usually has, a pattern any of its layouts matches). Under FSDP
# weights and optimizer state are sharded folders (pytorch_model_fsdp_0/, optimizer_0/); under DeepSpeed one folder
# holds both (pytorch_model/ for accelerate, global_stepN/ for the Trainer).
_REQUIRED = {
    "accelerate": (("model weights", "model.safetensors", re.compile(r"^(model|pytorch_model)")),
                   ("optimizer state", "optimizer.bin", re.compile(r"^(optimizer|pytorch_model$)")),
                   ("RNG states", "random_states_0.pkl", re.compile(r"^random_states_0\.pkl$")),
                   ("loop progress", "progress.json", re.compile(r"^progress\.json$"))),
    "trainer": (("model weights", "model.safetensors", re.compile(r"^(model|pytorch_model|adapter_model)")),
                ("optimizer state", "optimizer.pt", re.compile(r"^(optimizer|global_step\d+$)")),
                ("scheduler state", "scheduler.pt", re.compile(r"^scheduler\.pt$")),
                ("trainer state", "trainer_state.json", re.compile(r"^trainer_state\.json$"))),
}


def checkpoint_problem(path: str, kind: str = "accelerate") -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from (a missing or damaged file, named), or None.

    ``kind`` is ``"accelerate"`` (``step_N`` of recipes/glue.py) or ``"trainer"`` (``checkpoint-N``).

    Example:
        >>> checkpoint_problem("runs/mrpc/step_40")      # doctest: +SKIP
        'runs/mrpc/step_40/optimizer.bin is missing'
    """
    if not os.path.isdir(path):
        return f"{path} is not a folder"
    present = os.listdir(path)
    for what, usual, pattern in _REQUIRED[kind]:
        if not any(pattern.match(name) for name in present):
            return f"{os.path.join(path, usual)} is missing (no {what})"
    for folder, _, files in sorted(os.walk(path)):  # sharded layouts keep their files in sub-folders
        for name in sorted(files):
            problem = _file_problem(os.path.join(folder, name))
            if problem:
                return f"{os.path.join(folder, name)} is {problem}"
    return None


def latest_checkpoint(output_dir: str, kind: str = "accelerate") -> str | None:
    """The newest checkpoint in ``output_dir`` that is complete; damaged newer ones are skipped with a warning.

    Raises:
        CheckpointError: there are checkpoints but none is complete (each one's problem is named).
    """
    layout = ACCELERATE if kind == "accelerate" else TRAINER
    problems = []
    for path in checkpoints(output_dir, layout):
        problem = checkpoint_problem(path, kind)
        if problem is None:
            return path
        logger.warning("skipping damaged checkpoint %s: %s", os.path.basename(path), problem)
        problems.append(problem)
    if problems:
        raise CheckpointError(f"no complete checkpoint in {output_dir} to resume from: {'; '.join(problems)}. Pass "
                              "--overwrite_output_dir to start again")
    return None


def resolve_checkpoint(value: str | None, output_dir: str, kind: str = "accelerate") -> str | None:
    """``--resume_from_checkpoint`` to a checked folder: ``latest`` or a path (None: start from the beginning).

    ``latest`` in a folder without any run starts from the beginning; in a folder that holds a run but no
    checkpoint (a finished run whose checkpoints were removed, a run killed before its first one) it is refused,
    since starting over would replace that run.

    Raises:
        CheckpointError: the given folder does not exist or has a missing or damaged file (named); ``latest`` found
            no complete checkpoint in a folder that holds a run.
    """
    if value is None:
        return None
    if value == "latest":
        found = latest_checkpoint(output_dir, kind)
        if found is None and run_artifacts(output_dir):
            raise CheckpointError(f"--resume_from_checkpoint latest: {output_dir} holds a run "
                                  f"({', '.join(run_artifacts(output_dir)[:4])}) but no checkpoint to resume from; "
                                  "pass --overwrite_output_dir to start it again")
        if found is None:
            logger.warning("--resume_from_checkpoint latest: no checkpoint in %s, starting from the beginning",
                           output_dir)
        return found
    if not os.path.isdir(value):
        raise CheckpointError(f"--resume_from_checkpoint {value}: no such folder (pass a checkpoint folder or "
                              "'latest')")
    problem = checkpoint_problem(value, kind)
    if problem:
        raise CheckpointError(f"--resume_from_checkpoint {value}: cannot resume: {problem}")
    return value


def load_run_config(checkpoint: str) -> dict[str, Any] | None:
    """The settings saved with a checkpoint (``run_config.json``), or None for checkpoints written without it."""
    path = os.path.join(checkpoint, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_same_settings(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint: str) -> None:
    """Refuse a resume whose settings differ from the checkpoint's (they would silently not apply).

    Raises:
        CheckpointError: naming every changed setting with both values.
    """
    if saved is None:
        return
    changed = [f"{key} {current.get(key)!r} (checkpoint: {saved.get(key)!r})"
               for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if changed:
        raise CheckpointError(f"cannot resume from {checkpoint} with other settings: {'; '.join(changed)}. Resume "
                              "with the settings it was trained with, or start a new run (--overwrite_output_dir or "
                              "another --output_dir)")
