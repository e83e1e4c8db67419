"""The output folder of a run: only what this project wrote is ever replaced, a replaced run comes back when its
replacement fails before it has anything to show, one writer at a time, files written atomically, and checkpoints
that are checked before a resume trusts them.

Ownership. Every run writes a manifest, ``OUTPUT_DIR/.hf_layerwise.json``: its run id and the names it writes at the
top of the folder (``results.json``, ``step_*`` checkpoints, ``model`` with ``--save_model``...; :class:`RunFiles`).
An entry of the folder is the project's when a manifest lists its name; anything else (your notes, a data or model
folder, a sweep's ``status.json``, a run of a version without manifests) is foreign: never deleted, and when a run
would write an entry of that name, the run is refused with the name.

* :func:`check_output_dir` (before any work, writes nothing) refuses a folder that holds a run unless it is resumed or
  overwritten, foreign entries a run would write over, and a place that cannot be written to; it returns what it saw;
* :func:`claim_output_dir` (once every input was checked) creates the folder, locks it for the process, checks again
  under the lock that it is still what :func:`check_output_dir` saw (a run that took the folder meanwhile is not
  written over), sets an overwritten run aside in ``.hf_layerwise-replaced/`` and writes the manifest. Its
  :class:`RunFolder` drops the set-aside run once the new run's results are written (:meth:`RunFolder.commit`) and puts
  it back when the new run fails before writing a checkpoint (:meth:`RunFolder.abandon`, on leaving the ``with``
  block with an exception);
* :func:`write_json_atomic`: a reader never sees a half-written file (mode from the umask, like any other file);
* :func:`checkpoint_problem` / :func:`latest_checkpoint`: a checkpoint with a missing or damaged file (its settings
  ``run_config.json`` included) is named as such; ``latest`` skips a damaged newest checkpoint with a warning and
  takes the previous complete one.

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
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import CheckpointError, UsageError

__all__ = ["ACCELERATE", "TRAINER", "RUN_CONFIG", "SWEEP_PID_ENV", "MANIFEST", "REPLACED", "CHECKPOINT_PREFIXES",
           "RunFiles", "FolderState", "RunFolder", "inspect_output_dir", "check_output_dir", "claim_output_dir",
           "remove_run_files", "write_json_atomic", "checkpoints", "checkpoint_problem", "latest_checkpoint",
           "resolve_checkpoint",
           "load_run_config", "check_same_settings", "stop_with_sweep", "take_lock"]

logger = logging.getLogger(__name__)

ACCELERATE = re.compile(r"^step_(\d+)$")
TRAINER = re.compile(r"^checkpoint-(\d+)$")
RUN_CONFIG = "run_config.json"  # the settings a checkpoint was trained with (checked on resume)
LOCK = ".hf_layerwise.lock"
MANIFEST = ".hf_layerwise.json"  # what the run in this folder wrote (see the module docstring)
REPLACED = ".hf_layerwise-replaced"  # the run --overwrite_output_dir replaced, until its replacement has results
_BOOKKEEPING = (LOCK, MANIFEST, REPLACED)
SWEEP_PID_ENV = "HF_LAYERWISE_SWEEP_PID"  # set by recipes/ablate.py for the runs it starts
CACHE_DIR = "feature_cache"  # --cache_frozen's states beyond its memory budget (removed at the end of a run)
CHECKPOINT_PREFIXES = ("step_", ".tmp-step_", "checkpoint-")


@dataclass(frozen=True)
class RunFiles:
    """The names a run writes at the top of its output folder, each with what writes it (for messages): exact names
    and name prefixes (checkpoints).

    Example:
        >>> files = RunFiles({"results.json": "the results", "model": "--save_model"}, {"step_": "checkpoints"})
        >>> files.why("step_40"), files.why("notes.txt")
        ('checkpoints', None)
    """

    names: dict[str, str]
    prefixes: dict[str, str] = field(default_factory=dict)

    def why(self, name: str) -> str | None:
        """What writes ``name`` (None: this run does not write it)."""
        if name in self.names:
            return self.names[name]
        return next((why for prefix, why in self.prefixes.items() if name.startswith(prefix)), None)


@dataclass(frozen=True)
class FolderState:
    """What an output folder holds: the run id of its manifest (None without one), the entries a manifest lists
    (``owned``), the others (``foreign``), and whether a replaced run is set aside there."""

    run_id: str | None
    owned: tuple[str, ...]
    foreign: tuple[str, ...]
    replaced: bool
    manifest: dict[str, Any] | None = None

    @property
    def holds_run(self) -> bool:
        return bool(self.owned) or self.replaced

    def same_as(self, other: FolderState) -> bool:
        return (self.run_id, self.owned, self.foreign, self.replaced) == (other.run_id, other.owned, other.foreign,
                                                                          other.replaced)

    def describe(self) -> str:
        names = list(self.owned) + ([f"{REPLACED} (a run an unfinished --overwrite_output_dir set aside)"]
                                    if self.replaced else [])
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _manifest_files(manifest: dict[str, Any] | None) -> RunFiles:
    if not manifest:
        return RunFiles({})
    return RunFiles(dict.fromkeys(manifest.get("names", []), ""), dict.fromkeys(manifest.get("prefixes", []), ""))


def read_manifest(output_dir: str) -> dict[str, Any] | None:
    """The manifest of ``output_dir`` (None when there is none).

    Raises:
        UsageError: the manifest exists but cannot be read (named, with what to do).
    """
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("names"), list):
            raise ValueError("not a manifest")
        return manifest
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: the list of what hf-layerwise wrote in this folder is damaged ({err}); nothing in "
                         "the folder can be told apart from your own files: choose another --output_dir") from None


def inspect_output_dir(output_dir: str) -> FolderState:
    """What ``output_dir`` holds now (see :class:`FolderState`); writes nothing."""
    if not os.path.isdir(output_dir):
        return FolderState(None, (), (), False)
    manifest = read_manifest(output_dir)
    listed = _manifest_files(manifest)
    entries = sorted(n for n in os.listdir(output_dir) if n not in _BOOKKEEPING)
    owned = tuple(n for n in entries if listed.why(n) is not None)
    foreign = tuple(n for n in entries if listed.why(n) is None)
    return FolderState(manifest.get("run_id") if manifest else None, owned, foreign,
                       os.path.isdir(os.path.join(output_dir, REPLACED)), manifest)


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


def drop_lock(handle: IO[str]) -> None:
    """Give up a lock of :func:`take_lock`; its stamp is removed (the file stays, empty)."""
    handle.seek(0)
    handle.truncate()
    handle.flush()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def _probe_writable(folder: str) -> None:
    """Create and delete a temporary file in ``folder`` (leaves nothing behind)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def _writable(output_dir: str) -> None:
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


def _shown(names: list[str] | tuple[str, ...], files: RunFiles | None = None) -> str:
    parts = [f"{n} ({files.why(n)})" if files is not None and files.why(n) else n for n in names[:4]]
    return ", ".join(parts) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def check_output_dir(output_dir: str, files: RunFiles, *, overwrite: bool = False, resume: bool = False,
                     resumable: bool = True) -> FolderState:
    """Check, without writing anything, that a run writing ``files`` may use ``output_dir`` (first thing a recipe
    does); returns what the folder holds, for :func:`claim_output_dir` to compare with.

    Refuses (``UsageError``): entries no manifest lists (the user's own) that this run would write over, whatever the
    options; a folder that holds a run unless ``resume`` (continue it; ``resumable`` programs only) or ``overwrite``
    (it is set aside when the folder is claimed, and deleted once the new run has results); a path that is not a
    folder; a place that cannot be written to.

    Example:
        >>> seen = check_output_dir("runs/mrpc", RunFiles({"results.json": "the results"}),          # doctest: +SKIP
        ...                         overwrite=args.overwrite_output_dir)
    """
    _writable(output_dir)
    state = inspect_output_dir(output_dir)
    clash = [n for n in state.foreign if files.why(n) is not None]
    if clash:
        hint = ""
        if resume and any(ACCELERATE.match(n) or TRAINER.match(n) for n in clash):
            hint = (" (to continue a checkpoint copied there, pass its path to --resume_from_checkpoint with a new "
                    "--output_dir)")
        raise UsageError(f"--output_dir {output_dir} holds {_shown(clash, files)}, which hf-layerwise did not write "
                         "there (no manifest of this folder lists them), and this run would write over them: move "
                         f"them out of the folder, or choose another --output_dir{hint}")
    if state.holds_run and not (overwrite or resume):
        hint = ", --resume_from_checkpoint latest to continue it" if resumable else ""
        raise UsageError(f"--output_dir {output_dir} already holds a run ({state.describe()}): pass "
                         f"--overwrite_output_dir to replace it{hint}, or choose another --output_dir")
    return state


class RunFolder:
    """The output folder a run has claimed (:func:`claim_output_dir`); use it as a ``with`` block around the rest of
    the run. Only the main process does anything.

    Leaving the block with an exception calls :meth:`abandon`; in every case the lock is given up.
    """

    def __init__(self, output_dir: str, is_main_process: bool) -> None:
        self.output_dir, self.is_main_process = output_dir, is_main_process
        self.set_aside = False  # this claim moved the previous run into REPLACED
        self.lock: IO[str] | None = None
        self.manifest: dict[str, Any] | None = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        try:
            if kind is not None:
                self.abandon()
        finally:
            self.release()

    def add(self, files: RunFiles) -> None:
        """List more names in the manifest before writing them (a name a run decides on late)."""
        if not self.is_main_process or self.manifest is None:
            return
        names = sorted(set(self.manifest["names"]) | set(files.names))
        prefixes = sorted(set(self.manifest["prefixes"]) | set(files.prefixes))
        if (names, prefixes) != (self.manifest["names"], self.manifest["prefixes"]):
            self.manifest.update(names=names, prefixes=prefixes)
            write_json_atomic(os.path.join(self.output_dir, MANIFEST), self.manifest)

    def commit(self) -> None:
        """The run has written its results: the run it replaced is deleted."""
        replaced = os.path.join(self.output_dir, REPLACED)
        if self.is_main_process and os.path.isdir(replaced):
            shutil.rmtree(replaced)
            logger.info("--overwrite_output_dir: the previous run in %s is deleted (this run has its results)",
                        self.output_dir)
        self.set_aside = False

    def abandon(self) -> None:
        """The run failed. When it set a run aside and wrote no checkpoint, its files are deleted and the previous
        run is put back as it was; with a checkpoint, both stay (the failed run can be resumed) and a warning says
        where the previous one is."""
        replaced = os.path.join(self.output_dir, REPLACED)
        if not (self.is_main_process and self.set_aside and os.path.isdir(replaced)):
            return
        mine = inspect_output_dir(self.output_dir)
        if any(n.startswith(CHECKPOINT_PREFIXES) and not n.startswith(".tmp") for n in mine.owned):
            logger.warning("this run failed after writing checkpoints; the run it was replacing is kept in %s until "
                           "a run in this folder finishes", replaced)
            return
        for name in mine.owned:
            _remove(os.path.join(self.output_dir, name))
        for name in os.listdir(replaced):  # the previous run's entries and its manifest
            os.replace(os.path.join(replaced, name), os.path.join(self.output_dir, name))
        os.rmdir(replaced)
        logger.warning("this run failed before writing a checkpoint: the previous run in %s is back as it was",
                       self.output_dir)
        self.set_aside = False

    def release(self) -> None:
        if self.lock is not None:
            drop_lock(self.lock)
            _LOCKS.pop(os.path.realpath(self.output_dir), None)
            self.lock = None


_LOCKS: dict[str, RunFolder] = {}


def _remove(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def claim_output_dir(output_dir: str, files: RunFiles, seen: FolderState, *, overwrite: bool = False,
                     resume: bool = False, program: str = "", is_main_process: bool = True) -> RunFolder:
    """Make ``output_dir`` this run's, once every input was checked: create it, lock it for the lifetime of the run
    (a second writer is refused), check that it still holds what :func:`check_output_dir` saw (``seen``: another run
    that took the folder in between is refused, not written over), with ``overwrite`` set the previous run aside, and
    write the manifest (a resumed run keeps its run id). Only the main process does anything.

    Example:
        >>> with claim_output_dir(out, files, seen, overwrite=True) as folder:     # doctest: +SKIP
        ...     train_and_write_results()
        ...     folder.commit()
    """
    folder = RunFolder(output_dir, is_main_process)
    if not is_main_process:
        return folder
    try:
        os.makedirs(output_dir, exist_ok=True)
        _probe_writable(output_dir)
    except OSError as err:
        raise UsageError(f"--output_dir {output_dir}: cannot write there ({err.strerror}); choose a writable "
                         "folder") from None
    key = os.path.realpath(output_dir)
    if key in _LOCKS:
        raise UsageError(f"--output_dir {output_dir}: this process is already writing a run there")
    handle = take_lock(os.path.join(output_dir, LOCK))
    if isinstance(handle, str):
        raise UsageError(f"--output_dir {output_dir}: another run is writing to it ({handle}); wait for it to "
                         "finish, stop it, or choose another --output_dir")
    folder.lock = handle
    _LOCKS[key] = folder
    try:
        now = inspect_output_dir(output_dir)
        if not now.same_as(seen):
            raise UsageError(f"--output_dir {output_dir} changed while this run was starting (another run wrote "
                             f"there; it now holds {now.describe() or ', '.join(now.foreign[:4])}): nothing was "
                             "written; look at the folder and start again")
        if overwrite and now.owned:
            replaced = os.path.join(output_dir, REPLACED)
            if now.replaced:  # an older complete run is set aside already: what is here is an unfinished one
                for name in now.owned:
                    _remove(os.path.join(output_dir, name))
                logger.warning("--overwrite_output_dir: deleted the unfinished run %s in %s (the run before it stays "
                               "in %s until this one has results)", _shown(now.owned), output_dir, REPLACED)
            else:
                os.mkdir(replaced)
                for name in (*now.owned, MANIFEST):
                    os.replace(os.path.join(output_dir, name), os.path.join(replaced, name))
                folder.set_aside = True
                logger.warning("--overwrite_output_dir: the previous run (%s) is set aside in %s and deleted once "
                               "this run has its results", _shown(now.owned), replaced)
        keep = now.manifest if resume and now.manifest else None
        folder.manifest = {"run_id": keep["run_id"] if keep else uuid.uuid4().hex[:12], "program": program,
                           "names": sorted(set(files.names) | set(keep["names"] if keep else [])),
                           "prefixes": sorted(set(files.prefixes) | set(keep["prefixes"] if keep else [])),
                           "started": keep.get("started") if keep else time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(os.path.join(output_dir, MANIFEST), folder.manifest)
    except BaseException:
        folder.abandon()
        folder.release()
        raise
    return folder


def remove_run_files(output_dir: str, prefixes: tuple[str, ...]) -> list[str]:
    """Delete the entries of ``output_dir`` that its manifest lists and whose names start with one of ``prefixes``
    (a finished sweep cell's checkpoints); returns their names. Entries no manifest lists are never touched."""
    state = inspect_output_dir(output_dir)
    gone = [n for n in state.owned if n.startswith(prefixes)]
    for name in gone:
        _remove(os.path.join(output_dir, name))
    return gone


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
    """Write JSON so that a reader never sees a partial file (temporary file, fsync, rename); the file's mode follows
    the umask (not mkstemp's 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}.json")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any other file
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
                   ("loop progress", "progress.json", re.compile(r"^progress\.json$")),
                   ("settings", RUN_CONFIG, re.compile(r"^run_config\.json$"))),
    "trainer": (("model weights", "model.safetensors", re.compile(r"^(model|pytorch_model|adapter_model)")),
                ("optimizer state", "optimizer.pt", re.compile(r"^(optimizer|global_step\d+$)")),
                ("scheduler state", "scheduler.pt", re.compile(r"^scheduler\.pt$")),
                ("trainer state", "trainer_state.json", re.compile(r"^trainer_state\.json$")),
                ("settings", RUN_CONFIG, re.compile(r"^run_config\.json$"))),
}
_LAYOUTS = {"accelerate": (ACCELERATE, "recipes/glue.py", "step_N"), "trainer": (TRAINER, "recipes/glue_trainer.py",
                                                                                 "checkpoint-N")}


def checkpoint_problem(path: str, kind: str = "accelerate") -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from (a missing or damaged file, named), or None.

    ``kind`` is ``"accelerate"`` (``step_N`` of recipes/glue.py) or ``"trainer"`` (``checkpoint-N``).

    Example:
        >>> checkpoint_problem("runs/mrpc/step_40")      # doctest: +SKIP
        'runs/mrpc/step_40/optimizer.bin is missing'
    """
    if not os.path.isdir(path):
        return f"{path} is not a folder"
    for other, (layout, program, name) in _LAYOUTS.items():
        if other != kind and layout.match(os.path.basename(os.path.normpath(path))):
            return (f"{path} is a checkpoint of {program} ({name}); this recipe resumes only from its own "
                    f"{_LAYOUTS[kind][2]} checkpoints")
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
        state = inspect_output_dir(output_dir)
        if found is None and state.holds_run:
            raise CheckpointError(f"--resume_from_checkpoint latest: {output_dir} holds a run "
                                  f"({state.describe()}) but no checkpoint to resume from; "
                                  "pass --overwrite_output_dir to start it again")
        if found is None:
            logger.warning("--resume_from_checkpoint latest: no checkpoint in %s, starting from the beginning",
                           output_dir)
        return found
    if not os.path.isdir(value):
        inside = os.path.join(output_dir, value)
        hint = f"; {inside} exists: pass that path" if not os.path.isabs(value) and os.path.isdir(inside) else ""
        raise CheckpointError(f"--resume_from_checkpoint {value}: no such folder (a path is relative to the current "
                              f"folder, not to --output_dir{hint}; or pass 'latest')")
    problem = checkpoint_problem(value, kind)
    if problem:
        raise CheckpointError(f"--resume_from_checkpoint {value}: cannot resume: {problem}")
    return value


def load_run_config(checkpoint: str) -> dict[str, Any]:
    """The settings saved with a checkpoint (``run_config.json``; :func:`checkpoint_problem` checked it is there).

    Raises:
        CheckpointError: it is missing or not a JSON object: a checkpoint without its settings cannot be trusted.
    """
    path = os.path.join(checkpoint, RUN_CONFIG)
    try:
        with open(path) as f:
            settings = json.load(f)
        if not isinstance(settings, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"--resume_from_checkpoint {checkpoint}: {path} is missing or damaged ({err}): the "
                              "settings it was trained with cannot be checked, so it is not resumed") from None
    return settings


def check_same_settings(saved: dict[str, Any], current: dict[str, Any], checkpoint: str) -> None:
    """Refuse a resume whose settings (data included) differ from the checkpoint's: they would silently not apply.

    Raises:
        CheckpointError: naming every changed setting with both values.
    """
    changed = [f"{key} {current.get(key)!r} (checkpoint: {saved.get(key)!r})"
               for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if changed:
        raise CheckpointError(f"cannot resume from {checkpoint} with other settings: {'; '.join(changed)}. Resume "
                              "with the settings it was trained with, or start a new run (--overwrite_output_dir or "
                              "another --output_dir)")
