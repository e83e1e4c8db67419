"""Layer-wise LR ablations: run every (task, cell, seed) through recipes/glue.py, then summarize.

    python recipes/ablate.py run --tasks rte,mrpc,stsb,cola --presets baseline,top3x5,top3x5-freeze --seeds 1-5 \
        --out results/minilm -- --model_name_or_path MODEL --data_dir ../shared/glue --num_train_epochs 3
    python recipes/ablate.py run ... --cell uniform-5x="--preset baseline --learning_rate 1e-4"
    python recipes/ablate.py run ... --grid top_lr_multiplier=1,5,10 freeze_below=0,3
    python recipes/ablate.py report results/minilm          # summary.csv, summary.md, summary.png

Every cell writes OUT/<task>/<cell>/seed<k>/results.json (glue.py's). A cell whose results.json is complete is
skipped, so a killed sweep continues where it stopped when the same command is run again; a failing cell (an error,
a non-finite loss) is recorded (status.json with its error) and the sweep goes on; a lock file per task keeps two
sweeps of one task out of one folder, while sweeps of different tasks may share it (on a 2-core CPU, two sweeps with
OMP_NUM_THREADS=1 keep both cores busy). Options after ``--`` (or any option ablate.py does not know) go to every glue.py run; a cell's own
options come after them and win. ``--launcher "accelerate launch --num_processes 1"`` runs each cell under
accelerate. ``--jobs N`` runs N cells at a time in the same order (small runs sharing one GPU, or several CPU cores:
each run gets OMP_NUM_THREADS = cores / N unless it is set; the report marks their times as measured under shared
load). Tasks, cells and every cell's options are checked before the first run.

The training child runs in its own process group and ends with the sweep: Ctrl-C or SIGTERM stop it (the cell is
recorded as interrupted), and if the sweep is killed outright the run notices (``HF_LAYERWISE_SWEEP_PID``) and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import fcntl
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hf_layerwise.errors import UsageError, one_line, run_cli  # noqa: E402
from hf_layerwise.glue import get_task  # noqa: E402
from hf_layerwise.glue.arguments import parse_args as parse_glue_args  # noqa: E402
from hf_layerwise.glue.run_dir import (CHECKPOINT_PREFIXES, SWEEP_PID_ENV, checkpoints,  # noqa: E402
                                       remove_run_files, take_lock, write_json_atomic)

GLUE_RECIPE = os.path.join(HERE, "glue.py")
BASELINE = "baseline"
# glue.py options the sweep sets itself for every run (a cell or a forwarded option must not: with --output_dir every
# seed would write one folder, with --seed every seed would be the same run)
SWEEP_OWNED = ("--task_name", "--seed", "--output_dir", "--overwrite_output_dir", "--resume_from_checkpoint")


# ---------------------------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class Cell:
    name: str
    options: tuple[str, ...]


def parse_seeds(text: str) -> list[int]:
    """'1-5' -> [1, 2, 3, 4, 5]; '1,3,7' -> [1, 3, 7]; '1-3,9' -> [1, 2, 3, 9]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                seeds.extend(range(lo, hi + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: use seeds >= 0 like 1-5, 1,3,7 or 1-3,9") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: no seeds; use seeds >= 0 like 1-5, 1,3,7 or 1-3,9")
    return seeds


def build_cells(presets: list[str], cells: list[str], grid: list[str]) -> list[Cell]:
    """Cells from --presets, --cell NAME="options" and --grid key=v1,v2 (the cartesian product)."""
    out = [Cell(p, ("--preset", p)) for p in presets]
    for spec in cells:
        name, sep, options = spec.partition("=")
        if not sep or not name:
            raise ValueError(f'--cell {spec!r}: use NAME="--option value ..."')
        out.append(Cell(name, tuple(shlex.split(options))))
    if grid:
        axes = []
        for axis in grid:
            key, sep, values = axis.partition("=")
            if not sep or not values:
                raise ValueError(f"--grid {axis!r}: use key=v1,v2,...")
            axes.append([(key, v) for v in values.split(",")])
        for combo in itertools.product(*axes):
            name = ",".join(f"{k}={v}" for k, v in combo)
            out.append(Cell(name, tuple(x for k, v in combo for x in (f"--{k}", v))))
    names = [c.name for c in out]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"cells must have distinct names and there must be at least one: {names}")
    for name in names:
        if "/" in name or name.startswith("."):
            raise ValueError(f"cell name {name!r} cannot contain '/' or start with '.'")
    return out


def main_value(result: dict) -> float | None:
    """The run's main metric, or None when it is missing or not finite (such a run counts as failed)."""
    try:
        value = float(result["metrics"][result["main_metric"]])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def is_complete(folder: str) -> bool:
    path = os.path.join(folder, "results.json")
    try:
        with open(path) as f:
            return main_value(json.load(f)) is not None
    except (OSError, ValueError):
        return False


def sweep_owned(options: list[str] | tuple[str, ...], where: str) -> None:
    """Refuse a glue.py option the sweep sets itself (``SWEEP_OWNED``), in a cell or among the forwarded options."""
    for option in options:
        flag = option.split("=", 1)[0]
        if flag in SWEEP_OWNED:
            what = {"--task_name": "--tasks", "--seed": "--seeds", "--output_dir": "--out (OUT/<task>/<cell>/seed<k>)"
                    }.get(flag, "the sweep (it resumes or restarts each cell itself)")
            raise UsageError(f"{where}: {flag} is set by the sweep for every run ({what}); drop it")


def check_cells(tasks: list[str], cells: list[Cell], seeds: list[int], forwarded: list[str]) -> None:
    """Parse every cell's glue.py options as glue.py will (before the first run): a typo in the last cell must not
    surface hours into a sweep. Options the sweep sets itself are refused."""
    sweep_owned(forwarded, "options for every run")
    for cell in cells:
        sweep_owned(cell.options, f"cell {cell.name}")
    for cell in cells:
        for task in tasks:
            try:
                parse_glue_args([*forwarded, "--task_name", task, "--seed", str(seeds[0]), "--output_dir",
                                 os.devnull, *cell.options])
            except UsageError as err:
                raise UsageError(f"cell {cell.name} (task {task}): {one_line(err)}") from None


class SweepLock:
    """Exclusive, non-blocking locks on OUT/<task>/.ablate.lock, one per task of the sweep: a second sweep of one of
    those tasks in the same folder refuses to start; sweeps of other tasks may run beside it (each run writes only
    its own task/cell/seed folder, and the report is written atomically)."""

    def __init__(self, out: str, tasks: list[str]) -> None:
        self.out, self.files = out, []
        self.paths = [os.path.join(out, task, ".ablate.lock") for task in sorted(set(tasks))]

    def __enter__(self) -> SweepLock:
        for path in self.paths:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = take_lock(path)
            if isinstance(handle, str):
                self.__exit__()
                task = os.path.basename(os.path.dirname(path))
                raise UsageError(f"another sweep is running task {task} on {self.out} ({handle}); wait for it, "
                                 "sweep other tasks, or use another --out")
            self.files.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for file in self.files:
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()
        self.files = []


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the sweep dies (Linux; the run also watches the sweep's pid)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


@dataclass
class _Run:
    """One started cell: its training process (own process group) and what status.json records."""
    task: str
    cell: str
    seed: int
    folder: str
    proc: subprocess.Popen
    status: dict
    start: float


def start_cell(cmd: list[str], folder: str, env: dict[str, str]) -> subprocess.Popen:
    """Start one cell in its own process group, output to ``folder``/log.txt."""
    with open(os.path.join(folder, "log.txt"), "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)


def cell_outcome(proc: subprocess.Popen, folder: str) -> tuple[bool, str]:
    """(ok, error) of a finished cell: ok when it exited 0 and left a complete results.json."""
    if proc.returncode == 0 and is_complete(folder):
        return True, ""
    with open(os.path.join(folder, "log.txt"), errors="replace") as f:
        tail = f.read()[-3000:]
    what = f"exit code {proc.returncode}" if proc.returncode else f"exit code 0 but no complete {folder}/results.json"
    return False, f"{what}\n{tail}"


def _stop_groups(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """SIGTERM to each child's process group (launcher and training processes) at once; SIGKILL to those still
    running ``grace_s`` later."""
    def signal_all(sig: int) -> None:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass

    signal_all(signal.SIGTERM)
    deadline = time.time() + grace_s
    while any(proc.poll() is None for proc in procs) and time.time() < deadline:
        time.sleep(0.1)
    signal_all(signal.SIGKILL)
    for proc in procs:
        proc.wait()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cell_env(jobs: int) -> dict[str, str]:
    """The environment of every run: the sweep's pid (a run stops when the sweep is gone) and, with ``jobs`` > 1 and
    no OMP_NUM_THREADS of the user's, an equal share of the CPU cores per run (else each of N runs would start as
    many threads as there are cores)."""
    env = {**os.environ, SWEEP_PID_ENV: str(os.getpid())}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // jobs))
    return env


def sweep(args: argparse.Namespace, forwarded: list[str]) -> int:
    try:
        tasks = [get_task(t).name for t in args.tasks.split(",") if t.strip()]
        cells = build_cells([p for p in (args.presets or "").split(",") if p], args.cell or [], args.grid or [])
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise UsageError(one_line(err)) from None
    if not tasks:
        raise UsageError(f"--tasks {args.tasks!r}: no task")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be 1 or more (the number of runs at a time)")
    if args.jobs > 1 and args.launcher:
        raise UsageError(f"--jobs {args.jobs} with --launcher: launched runs of several processes would all "
                         "rendezvous on one port; run one sweep per launcher, each with its own --main_process_port "
                         "(and its own --tasks), or drop --jobs")
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    if not launcher or shutil.which(launcher[0]) is None:
        raise UsageError(f"--launcher {args.launcher!r}: {launcher[0] if launcher else 'nothing'} is not a program "
                         "on PATH")
    check_cells(tasks, cells, seeds, forwarded)
    # seed-major, then cell, then task: every (task, cell) gets seed 1 before any gets seed 2, and each cell is
    # run on all tasks before the next cell starts, so a partial sweep already holds paired, comparable cells
    plan = [(t, c, s) for s in seeds for c in cells for t in tasks]
    with SweepLock(args.out, tasks):
        todo = [(t, c, s) for t, c, s in plan if not is_complete(os.path.join(args.out, t, c.name, f"seed{s}"))]
        jobs = min(args.jobs, max(1, len(todo)))  # the cores are shared among the runs that can run at once
        env = cell_env(jobs)
        at_a_time = f", {jobs} at a time" if jobs > 1 else ""
        print(f"sweep: {len(plan)} cells ({len(tasks)} tasks x {len(cells)} cells x {len(seeds)} seeds), "
              f"{len(plan) - len(todo)} already complete, {len(todo)} to run{at_a_time}", flush=True)
        if jobs > 1:
            threads = env.get("OMP_NUM_THREADS", "?")
            note = f" (more runs than the {usable_cpus()} CPU cores: they share cores)" if jobs > usable_cpus() else ""
            print(f"sweep: {jobs} runs at a time, OMP_NUM_THREADS={threads} each{note}; their train times "
                  "overlap, so the report marks them as measured under shared load", flush=True)
        received: list[int] = []

        def stop(signum: int, frame: object) -> None:
            received.append(signum)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return _run_all(args.out, jobs, todo, forwarded, launcher, env, received)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _run_all(out: str, jobs: int, todo: list[tuple[str, Cell, int]], forwarded: list[str], launcher: list[str],
             env: dict[str, str], received: list[int]) -> int:
    """Run ``todo`` in order, up to ``jobs`` at a time; on SIGINT/SIGTERM (``received``) stop every running
    cell, record it as interrupted and return 128 + the signal."""
    pending, running, spent, failures, done = list(todo), [], [], 0, 0
    while pending or running:
        while pending and len(running) < jobs and not received:
            task, cell, seed = pending.pop(0)
            folder = os.path.join(out, task, cell.name, f"seed{seed}")
            os.makedirs(folder, exist_ok=True)
            cmd = [*launcher, GLUE_RECIPE, *forwarded, "--task_name", task, "--seed", str(seed), "--output_dir",
                   folder, *cell.options]
            # killed mid-cell with checkpoints on: continue it; otherwise replace what a failed attempt left
            cmd += ["--resume_from_checkpoint", "latest"] if checkpoints(folder) else ["--overwrite_output_dir"]
            status = {"task": task, "cell": cell.name, "seed": seed, "command": shlex.join(cmd),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_json_atomic(os.path.join(folder, "status.json"), {**status, "status": "running"})
            running.append(_Run(task, cell.name, seed, folder, start_cell(cmd, folder, env), status, time.time()))
        if received:
            _stop_groups([run.proc for run in running])
            for run in running:
                run.status.update(status="interrupted", seconds=round(time.time() - run.start, 1),
                                  error=signal.Signals(received[0]).name)
                write_json_atomic(os.path.join(run.folder, "status.json"), run.status)
            where = ", ".join(f"{r.task}/{r.cell}/seed{r.seed}" for r in running) or "no run"
            print(f"sweep interrupted ({signal.Signals(received[0]).name}) during {where}: "
                  f"{'the runs were' if len(running) > 1 else 'the run was'} stopped; the same command continues "
                  "the sweep", flush=True)
            return 128 + received[0]
        for run in [r for r in running if r.proc.poll() is not None]:
            running.remove(run)
            ok, error = cell_outcome(run.proc, run.folder)
            spent.append(time.time() - run.start)
            run.status.update(status="complete" if ok else "failed", seconds=round(spent[-1], 1), error=error or None)
            write_json_atomic(os.path.join(run.folder, "status.json"), run.status)
            if ok:  # checkpoints and weights are not results (only what the run's manifest lists is removed)
                remove_run_files(run.folder, (*CHECKPOINT_PREFIXES, "best_model"))
                with open(os.path.join(run.folder, "results.json")) as f:
                    result = json.load(f)
                outcome = f"{result['main_metric']}={main_value(result):.4f}"
            else:
                failures += 1
                outcome = f"FAILED ({error.splitlines()[0]}; see {run.folder}/status.json)"
            done += 1
            eta = statistics.mean(spent) * math.ceil((len(todo) - done) / jobs)
            print(f"[{done}/{len(todo)}] {run.task}/{run.cell}/seed{run.seed}: {outcome} in "
                  f"{_duration(spent[-1])}; ETA {_duration(eta)}", flush=True)
        time.sleep(0.2)
    print(f"sweep done: {len(todo) - failures} ran, {failures} failed", flush=True)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------- report
# Mosbach et al.'s failed run (no better than the majority class) has no regression counterpart: a constant
# prediction has no correlation (0), while a collapsed STS-B run predicts an almost constant value and still scores a
# few points by chance (e5-small at 1e-4: Spearman 0.053). A regression run fails below this correlation, the usual
# lower bound of a "weak" one: it explains under 4% of the labels' variance.
REGRESSION_FAILED = 0.2


def collect(out: str, damaged: list[str] | None = None) -> list[dict]:
    """One row per complete run under OUT (task/cell/seedK/results.json); the `task/cell/seedK` of results.json files
    that cannot be read as glue.py's go into ``damaged``."""
    rows = []
    for root, _, files in os.walk(out):
        if "results.json" not in files:
            continue
        rel = os.path.relpath(root, out).split(os.sep)
        if len(rel) != 3 or not rel[2].startswith("seed"):
            continue
        try:
            with open(os.path.join(root, "results.json")) as f:
                r = json.load(f)
            main, glue_task = r["main_metric"], get_task(r["task"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            if damaged is not None:  # not a results.json of glue.py (or unreadable): listed with the crashed runs
                damaged.append("/".join(rel) + " (damaged results.json)")
            continue
        value = main_value(r)
        majority = (r.get("majority_baseline") or {}).get(main, math.nan)
        failed = (value is None or value <= majority + 1e-12
                  or (glue_task.is_regression and value < REGRESSION_FAILED))
        rows.append({"task": glue_task.name, "cell": rel[1], "seed": r.get("seed", rel[2][4:]), "metric": main,
                     "value": value, "majority": majority, "failed": failed,
                     "train_time_s": r.get("train_time_s"), "trainable_params": r.get("trainable_params"),
                     **{f"metric_{k}": v for k, v in (r.get("metrics") or {}).items()}, **_lr_find_columns(r),
                     "fixed_lr": _fixed_lr(r), **_timing_columns(root, r)})
    mark_shared_load(rows)
    rows.sort(key=lambda r: (r["task"], r["cell"], r["seed"]))
    return rows


SAME_MACHINE_S = 12 * 3600  # runs without a host record: started this close, taken to be on the same machine
SHARED = 0.1  # a run overlapped by other runs of the folder for more than this fraction of its time shared the CPU
LOW_CPU_SHARE = 0.8  # a run that got less CPU than this per thread shared it (results.json "host", newer runs)


def _timing_columns(folder: str, r: dict) -> dict:
    """When the run ran (status.json of the sweep: start and seconds) and on what (results.json "host")."""
    start = end = None
    try:
        with open(os.path.join(folder, "status.json")) as f:
            status = json.load(f)
        start = time.mktime(time.strptime(status["started"], "%Y-%m-%d %H:%M:%S"))
        end = start + float(status["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    host = r.get("host") or {}
    return {"started_s": start, "ended_s": end, "boot_id": host.get("boot_id"),
            "torch_threads": host.get("torch_threads"), "cpu_share": host.get("cpu_share")}


def mark_shared_load(rows: list[dict]) -> None:
    """``shared_load``: the run shared the CPU with other work, so its time is not comparable with a run that did
    not: another run of the same folder overlapped it (status.json times) for more than ``SHARED`` of its duration, or
    its recorded CPU share per thread was below ``LOW_CPU_SHARE``."""
    spans = [(r["started_s"], r["ended_s"]) for r in rows if r["started_s"] is not None and r["ended_s"] is not None]
    for r in rows:
        share = r["cpu_share"]
        r["shared_load"] = share is not None and share < LOW_CPU_SHARE
        start, end = r["started_s"], r["ended_s"]
        if start is None or end is None or end <= start:
            continue
        overlap = sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans) - (end - start)  # minus itself
        r["shared_load"] = r["shared_load"] or overlap > SHARED * (end - start)


def comparable_times(a: dict, b: dict) -> bool:
    """Whether the train times of runs ``a`` and ``b`` were measured under the same conditions: neither shared the
    CPU, both on the same machine (the same boot, or for runs without a host record, started within
    ``SAME_MACHINE_S`` of each other), with the same number of threads where recorded."""
    if a["shared_load"] or b["shared_load"] or not (a["train_time_s"] and b["train_time_s"]):
        return False
    if a["torch_threads"] and b["torch_threads"] and a["torch_threads"] != b["torch_threads"]:
        return False
    if a["boot_id"] and b["boot_id"]:
        return a["boot_id"] == b["boot_id"]
    if a["started_s"] is None or b["started_s"] is None:
        return False
    return abs(a["started_s"] - b["started_s"]) <= SAME_MACHINE_S


def _lr_find_columns(r: dict) -> dict:
    """A ``--learning_rate auto`` run's choice (none for a run with a given LR, so their CSV columns stay as they
    were): the base LR, the scanned top-k multiplier (None without a scan), whether it fell back, the tests' time."""
    found = r.get("lr_find")
    if not isinstance(found, dict):
        return {}
    scanned = any(t.get("kind") == "multiplier" for t in found.get("tests") or [])
    return {"lr_find_lr": found.get("learning_rate"), "lr_find_top": found.get("top_lr_multiplier") if scanned else None,
            "lr_find_fallback": bool(found.get("fallback")), "lr_find_time_s": found.get("time_s")}


def _fixed_lr(r: dict) -> float | None:
    """The learning rate of a run that trained every parameter at one given LR (nothing frozen, no multiplier, no
    decay: a point of a fixed-LR grid), else None."""
    lr = ((r.get("config") or {}).get("train") or {}).get("learning_rate")
    lw = r.get("layerwise") or {}
    one_lr = (lw.get("freeze_below") == 0 and not lw.get("freeze_embeddings") and lw.get("top_k") == 0
              and lw.get("layer_decay") is None and lw.get("head_lr_multiplier", 1.0) == 1.0
              and not lw.get("unfreeze_every") and not r.get("lr_find"))
    return float(lr) if one_lr and isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def grid_best(rows: list[dict]) -> dict[str, tuple[str, float, dict[int, float]]]:
    """Per task, the fixed-LR grid's best cell (:func:`_fixed_lr` cells with at least 2 seeds): (cell, its LR,
    {seed: value}). Cells are ranked by their mean over the seeds they all have (when at least 2), so a cell with
    more seeds, or with a lucky extra seed, does not win on seeds the others never ran; else by their own means."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("fixed_lr") is not None and r["value"] is not None:
            cells.setdefault((r["task"], r["cell"]), []).append(r)
    candidates: dict[str, list[tuple[str, float, dict[int, float]]]] = {}
    for (task, cell), runs in sorted(cells.items()):
        if len(runs) >= 2 and len({r["fixed_lr"] for r in runs}) == 1:
            candidates.setdefault(task, []).append((cell, runs[0]["fixed_lr"], {r["seed"]: r["value"] for r in runs}))
    best: dict[str, tuple[str, float, dict[int, float]]] = {}
    for task, found in candidates.items():
        common = set.intersection(*(set(values) for _, _, values in found))
        shared = common if len(common) >= 2 else None
        best[task] = max(found, key=lambda c: statistics.mean(c[2][s] for s in (shared or c[2])))
    return best


def lr_find_lines(rows: list[dict]) -> list[str]:
    """summary.md's table of the LR range tests: per task and cell with ``--learning_rate auto`` runs, the base LR
    chosen (median, range), the scanned multiplier, the fallbacks, the tests' cost against training time, and the
    best LR of the folder's fixed-LR grid (:func:`grid_best`) with the seed-paired difference to it."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("lr_find_lr") is not None:
            groups.setdefault((r["task"], r["cell"]), []).append(r)
    if not groups:
        return []
    best = grid_best(rows)

    def spread(values: list[float]) -> str:
        return "—" if not values else (f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
                                      if len(values) > 1 else f"{values[0]:.3g}")

    lines = ["## LR range tests (`--learning_rate auto`)", "",
             "Per task and cell: the base learning rate the range test chose (median over the seeds that did not "
             "fall back, min-max), the "
             "top-k multiplier the scan chose, the runs that trained at `--lr_find_fallback` because the curve had "
             "no usable valley, and the range tests' time: median seconds and median ratio to the same run's "
             "training time (which does not include them). `grid best`: the cell of this folder that trains every "
             "parameter at one fixed LR (nothing frozen, at least 2 seeds) with the best mean over the seeds all such "
             "cells of the task share (its own mean if they share fewer than 2), its LR and its mean over all its "
             "seeds; `vs grid best`: the seed-paired difference of the main metric to it with its 95% t "
             "interval.", "",
             "| task | cell | runs | learning rate | top multiplier | fallbacks | range tests | / train time "
             "| grid best | vs grid best [95% CI] |",
             "|---|---|---:|---|---|---:|---:|---:|---|---|"]
    for (task, cell), runs in sorted(groups.items()):
        lrs = [r["lr_find_lr"] for r in runs if not r["lr_find_fallback"]]
        tops = [r["lr_find_top"] for r in runs if r["lr_find_top"] is not None]
        times = [r["lr_find_time_s"] for r in runs if r["lr_find_time_s"] is not None]
        ratios = [r["lr_find_time_s"] / r["train_time_s"] for r in runs
                  if r["lr_find_time_s"] is not None and r["train_time_s"]]
        grid, versus = "—", "—"
        if task in best:
            name, lr, values = best[task]
            grid = f"{name} ({lr:.3g}): {100 * statistics.mean(values.values()):.2f}"
            diff = paired_difference({r["seed"]: r["value"] for r in runs if r["value"] is not None}, values)
            versus = _diff_text(diff)
        lines.append(f"| {task} | {cell} | {len(runs)} | {spread(lrs)} | {spread(tops)} | "
                     f"{sum(r['lr_find_fallback'] for r in runs)} | "
                     f"{f'{statistics.median(times):.0f} s' if times else '—'} | "
                     f"{f'{statistics.median(ratios):.3f}' if ratios else '—'} | {grid} | {versus} |")
    return [*lines, ""]


def t_quantile_975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_difference(values: dict[int, float], base: dict[int, float]) -> dict | None:
    """Mean of the seed-paired differences to the baseline and its 95% t confidence interval."""
    seeds = sorted(set(values) & set(base))
    if not seeds:
        return None
    diffs = [values[s] - base[s] for s in seeds]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1}
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(diffs)}


def time_ratio(runs: dict[int, dict], base_runs: dict[int, dict]) -> tuple[float, int, int]:
    """The median over seeds of (train time / the baseline's train time of the same seed), over the seed pairs whose
    times are comparable (:func:`comparable_times`: same machine, neither sharing the CPU); with the number of such
    pairs and of all pairs. nan when no pair is comparable: a ratio of times measured under different load or on
    another machine would state a speed that is an artifact."""
    pairs = sorted(set(runs) & set(base_runs))
    ratios = [runs[s]["train_time_s"] / base_runs[s]["train_time_s"] for s in pairs
              if comparable_times(runs[s], base_runs[s])]
    return (statistics.median(ratios) if ratios else math.nan), len(ratios), len(pairs)


def summarize(rows: list[dict], compare_to: tuple[str, ...] = (), baseline: str = BASELINE) -> list[dict]:
    """Per (task, cell): n, mean, std, median, max, failed runs, median train time and its seed-paired ratio to
    the ``baseline`` cell, the paired difference to it, and (``vs``) the paired differences to each cell of
    ``compare_to`` (e.g. a uniform-LR control)."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["cell"]), {})[r["seed"]] = r
    def scores(cell_runs: dict[int, dict]) -> dict[int, float]:  # runs without a finite score count as failed only
        return {s: r["value"] for s, r in cell_runs.items() if r["value"] is not None}

    out = []
    for (task, cell), runs in sorted(groups.items()):
        values = scores(runs)
        base = scores(groups.get((task, baseline), {}))
        v = list(values.values()) or [math.nan]
        times = [r["train_time_s"] for r in runs.values() if r["train_time_s"] is not None]
        ratio, comparable, pairs = time_ratio(runs, groups.get((task, baseline), {}))
        out.append({
            "task": task, "cell": cell, "metric": next(iter(runs.values()))["metric"], "n": len(values),
            "mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "median": statistics.median(v), "max": max(v), "failed": sum(r["failed"] for r in runs.values()),
            "train_time_s": statistics.median(times) if times else math.nan,  # robust to a run slowed by others
            "time_ratio": ratio, "time_pairs": (comparable, pairs),
            "shared_load": sum(bool(r["shared_load"]) for r in runs.values()),
            "diff": None if cell == baseline else paired_difference(values, base),
            "vs": {ref: None if cell == ref else paired_difference(values, scores(groups.get((task, ref), {})))
                   for ref in compare_to},
        })
    return out


def glue_average(summary: list[dict]) -> dict[str, float]:
    """Per cell: the mean over tasks of the task's mean main metric (only cells present for every task)."""
    tasks = sorted({s["task"] for s in summary})
    by_cell: dict[str, dict[str, float]] = {}
    for s in summary:
        by_cell.setdefault(s["cell"], {})[s["task"]] = s["mean"]
    return {cell: statistics.mean(v.values()) for cell, v in by_cell.items() if len(v) == len(tasks)}


def _complete_seeds(rows: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """Per cell and seed: that seed's runs, for the seeds that finished every task."""
    tasks = {r["task"] for r in rows}
    by_cell: dict[str, dict[int, dict[str, dict]]] = {}
    for r in rows:
        if r["value"] is None:  # no score: this seed did not finish every task
            continue
        by_cell.setdefault(r["cell"], {}).setdefault(r["seed"], {})[r["task"]] = r
    return {cell: {seed: list(v.values()) for seed, v in seeds.items() if len(v) == len(tasks)}
            for cell, seeds in by_cell.items()}


def seed_averages(rows: list[dict]) -> dict[str, dict[int, float]]:
    """Per cell and seed: the GLUE-style average of that seed's runs, for the seeds that finished every task.

    These per-seed averages are what the "+1.2 GLUE points" claim is about; pairing them by seed with the
    baseline's gives the difference of the average with a confidence interval (``paired_difference``).
    """
    return {cell: {seed: statistics.mean(r["value"] for r in runs) for seed, runs in seeds.items()}
            for cell, seeds in _complete_seeds(rows).items()}


def all_tasks_time_ratio(summary: list[dict], cell: str, baseline: str = BASELINE) -> float:
    """The cell's train time for all tasks as a fraction of the baseline's: its per-task seed-paired ratios,
    weighted by the baseline's median train time on each task (nan if a task lacks either)."""
    base = {s["task"]: s["train_time_s"] for s in summary if s["cell"] == baseline}
    ratio = {s["task"]: s["time_ratio"] for s in summary if s["cell"] == cell}
    if not base or set(ratio) != set(base):
        return math.nan
    return sum(ratio[t] * base[t] for t in base) / sum(base.values())


def _ratio_text(ratio: float, comparable: int = 0, pairs: int = 0) -> str:
    if math.isnan(ratio):
        return "—"
    return f"{ratio:.2f}" + (f" ({comparable} of {pairs})" if comparable < pairs else "")


def _time_text(seconds: float, shared: int) -> str:
    return "—" if math.isnan(seconds) else _duration(seconds) + (" †" if shared else "")


def _diff_text(d: dict | None) -> str:
    if d is None:
        return "—"
    if d["n"] < 2:
        return f"{100 * d['mean']:+.2f} (n=1)"
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] (n={d['n']})"


def crashed_cells(out: str) -> list[str]:
    """The `task/cell/seedK` of runs recorded as failed (status.json, no results.json) under `out`."""
    crashed = []
    for root, _, files in os.walk(out):
        if "status.json" in files and "results.json" not in files:
            try:
                with open(os.path.join(root, "status.json")) as f:
                    status = json.load(f)
                if status.get("status") == "failed":
                    crashed.append(f"{status['task']}/{status['cell']}/seed{status['seed']}")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                crashed.append(f"{os.path.relpath(root, out)} (damaged status.json)")
    return sorted(crashed)


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[str]:
    """A temporary file beside ``path`` that replaces it when the block ends without an error (sweeps of other tasks
    may write the same report at the same time: a reader sees one whole version)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_markdown(summary: list[dict], rows: list[dict], path: str, compare_to: tuple[str, ...] = (),
                   crashed: list[str] = (), baseline: str = BASELINE) -> None:
    tasks = sorted({s["task"] for s in summary})
    vs_header = "".join(f" diff to {ref} [95% CI] |" for ref in compare_to)
    lines = ["# Layer-wise LR ablation summary", "",
             "Scores are x100. `diff` is the mean of seed-paired differences to `baseline` (same seed = same data "
             "order and head initialisation) with its 95% t confidence interval. A run *fails* when its main metric "
             "is no better than predicting the majority class (Mosbach et al. 2021), or for a regression task "
             f"(STS-B) when its correlation is below {REGRESSION_FAILED:g}; failed runs are included in "
             "the statistics. `train time` is the median wall-clock training time over the seeds, marked † when "
             "some of those runs shared the CPU with other work (another run of this folder overlapped it, or the run "
             "recorded a CPU share per thread below 0.8): such a time says how long the run took, not how fast the "
             "cell is. `time vs baseline` is the median over seeds of its ratio to the baseline's time with the same "
             "seed, over the seed pairs measured under the same conditions only (same machine: the same boot, or for "
             "runs without that record, started within 12 hours of each other; neither sharing the CPU), with "
             "\"(k of n)\" when only k of the n pairs qualify, and — when none does."
             + (f" `diff to X` columns pair seeds with cell X the same way (here: {', '.join(compare_to)})."
                if compare_to else "")
             + (f" The baseline of this folder is the cell `{baseline}`." if baseline != BASELINE else ""), ""]
    for task in tasks:
        stats = [s for s in summary if s["task"] == task]
        lines += [f"## {task} ({stats[0]['metric']})", "",
                  f"| cell | seeds | mean ± std | median | max | failed | diff to {baseline} [95% CI] |{vs_header} "
                  f"train time | time vs {baseline} |",
                  "|---|---:|---:|---:|---:|---:|---|" + "---|" * len(compare_to) + "---:|---:|"]
        for s in sorted(stats, key=lambda s: (s["cell"] != baseline, s["cell"])):
            lines.append(f"| {s['cell']} | {s['n']} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | "
                         f"{100 * s['median']:.2f} | {100 * s['max']:.2f} | {s['failed']} | {_diff_text(s['diff'])} | "
                         + "".join(f"{_diff_text(s['vs'].get(ref))} | " for ref in compare_to) +
                         f"{_time_text(s['train_time_s'], s['shared_load'])} | "
                         f"{_ratio_text(s['time_ratio'], *s['time_pairs'])} |")
        lines.append("")
    avg = glue_average(summary)
    if avg:
        header = " | ".join(f"{t}" for t in tasks)
        per_seed = seed_averages(rows)
        lines += ["## GLUE-style average (mean of each task's main metric)", "",
                  "`average` is the mean of the task means above (cells may differ in seed counts). The columns "
                  "after it use only the seeds that finished every task: the number of such seeds, and the mean of "
                  "the seed-paired differences of the per-seed average to `baseline` (and to any `diff to X` cell) "
                  "with its 95% t confidence interval — the comparison a claim of \"+x GLUE points\" is about. "
                  "`train time, all tasks` is "
                  "the sum of the task rows' median train times; `time vs baseline` the mean of the task rows' `time vs "
                  "baseline` weighted by the baseline's median train time per task (the time for all tasks, as a "
                  "fraction of the baseline's, from per-task ratios that are robust to one slowed run; — when a "
                  "task has no comparable pair).", "",
                  f"| cell | {header} | average | seeds with every task | average diff to {baseline} [95% CI] "
                  f"|{vs_header} train time, all tasks | time vs {baseline} |",
                  "|---|" + "---:|" * (len(tasks) + 2) + "---|" * (1 + len(compare_to)) + "---:|---:|"]
        means = {(s["task"], s["cell"]): s["mean"] for s in summary}
        times = {(s["task"], s["cell"]): s["train_time_s"] for s in summary}
        shared = {(s["task"], s["cell"]): s["shared_load"] for s in summary}
        for cell in sorted(avg, key=lambda c: (c != baseline, c)):
            cols = " | ".join(f"{100 * means[(t, cell)]:.2f}" for t in tasks)
            mine = per_seed.get(cell, {})
            diff = None if cell == baseline else paired_difference(mine, per_seed.get(baseline, {}))
            total = sum(times[(t, cell)] for t in tasks)  # the sum of each task's median train time
            vs = "".join(f"{_diff_text(None if cell == ref else paired_difference(mine, per_seed.get(ref, {})))} | "
                         for ref in compare_to)
            lines.append(f"| {cell} | {cols} | {100 * avg[cell]:.2f} | {len(mine)} | {_diff_text(diff)} | {vs}"
                         f"{_time_text(total, sum(shared[(t, cell)] for t in tasks))} | "
                         f"{_ratio_text(all_tasks_time_ratio(summary, cell, baseline))} |")
        lines.append("")
    lines += lr_find_lines(rows)
    if crashed:
        lines += ["Runs that crashed (no results; see their status.json): " + ", ".join(crashed), ""]
    with _replacing(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines))


def write_csv(rows: list[dict], path: str) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with _replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: str, baseline: str = BASELINE) -> None:
    """Per task (and for the per-seed GLUE-style average): every seed's score per cell, with mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (title, {cell: [values x100]})
    for task in sorted({r["task"] for r in rows}):
        metric = next(r["metric"] for r in rows if r["task"] == task)
        values: dict[str, list[float]] = {}
        for r in rows:
            if r["task"] == task and r["value"] is not None:
                values.setdefault(r["cell"], []).append(100 * r["value"])
        panels.append((f"{task} ({metric})", values))
    averages = {cell: [100 * v for v in seeds.values()] for cell, seeds in seed_averages(rows).items() if seeds}
    if len(panels) > 1 and averages:
        panels.append(("average (seeds with every task)", averages))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        cells = sorted(values, key=lambda c: (c != baseline, c))
        for x, cell in enumerate(cells):
            v = values[cell]
            jitter = [x + 0.08 * (i - (len(v) - 1) / 2) for i in range(len(v))]
            ax.scatter(jitter, v, s=18, alpha=0.7, color="tab:red" if cell == baseline else "tab:blue")
            ax.errorbar(x + 0.3, statistics.mean(v), yerr=statistics.stdev(v) if len(v) > 1 else 0.0, fmt="D",
                        color="black", markersize=5, capsize=3)
            if cell == baseline:
                ax.axhline(statistics.mean(v), color="tab:red", linestyle="--", linewidth=1, label=f"{baseline} mean")
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels(cells, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("dev score x100 (dots: seeds; diamond: mean ± std)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with _replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_tables(out: str, dest: str, compare_to: tuple[str, ...] = (),
                 baseline: str = BASELINE) -> tuple[list[dict], list[dict]]:
    """summary.csv and summary.md of the runs under `out`, written into `dest`, with differences and time ratios
    seed-paired to the cell `baseline`; returns (rows, summary)."""
    if not os.path.isdir(out):
        raise UsageError(f"{out}: no such folder (pass the --out folder of a sweep)")
    damaged: list[str] = []
    rows = collect(out, damaged)
    if not rows:
        raise UsageError(f"no runs (task/cell/seedK/results.json) under {out}"
                         + (f"; damaged: {', '.join(damaged[:4])}" if damaged else ""))
    cells = {r["cell"] for r in rows}
    # a folder may lack the default `baseline` cell (its columns stay empty); a named one must exist
    for option, unknown in (("--compare_to", sorted(set(compare_to) - cells)),
                            ("--baseline", [baseline] if baseline != BASELINE and baseline not in cells else [])):
        if unknown:
            raise UsageError(f"{option} {', '.join(unknown)}: no such cell under {out}; "
                             f"the cells are {', '.join(sorted(cells))}")
    if baseline in compare_to:
        raise UsageError(f"--compare_to {baseline} is the --baseline cell already: drop one of them")
    summary = summarize(rows, compare_to, baseline)
    write_csv(rows, os.path.join(dest, "summary.csv"))
    crashed = sorted(crashed_cells(out) + damaged)
    for run in damaged:
        print(f"warning: {run}: left out of the report", file=sys.stderr)
    write_markdown(summary, rows, os.path.join(dest, "summary.md"), compare_to, crashed, baseline)
    return rows, summary


def report(out: str, compare_to: tuple[str, ...] = (), baseline: str = BASELINE) -> list[dict]:
    rows, summary = write_tables(out, out, compare_to, baseline)
    plot(rows, os.path.join(out, "summary.png"), baseline)
    print(f"{len(rows)} runs -> {out}/summary.csv, summary.md, summary.png")
    return summary


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, forwarded = argv[:at], argv[at + 1:]
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the sweep (resumable)", allow_abbrev=False)
    run.add_argument("--tasks", required=True, help="comma-separated GLUE tasks")
    run.add_argument("--presets", default="", help="comma-separated presets, one cell each")
    run.add_argument("--cell", action="append", help='NAME="glue.py options" (repeatable)')
    run.add_argument("--grid", nargs="+", help="key=v1,v2 ... : one cell per combination")
    run.add_argument("--seeds", default="1-3", help="e.g. 1-5 or 1,2,7")
    run.add_argument("--out", required=True)
    run.add_argument("--launcher", default=None, help='e.g. "accelerate launch --num_processes 1"')
    run.add_argument("--jobs", type=int, default=1,
                     help="runs at a time (default 1); e.g. several small runs sharing one GPU. Each gets "
                          "OMP_NUM_THREADS = CPU cores / jobs unless set")
    rep = sub.add_parser("report", help="summary.csv / summary.md / summary.png of a sweep folder", allow_abbrev=False)
    rep.add_argument("out")
    rep.add_argument("--compare_to", action="append", default=[],
                     help="also give seed-paired differences to this cell (repeatable), e.g. a uniform-LR control")
    rep.add_argument("--baseline", default=BASELINE,
                     help=f"the cell every difference and time ratio is paired with (default: {BASELINE})")
    args, unknown = parser.parse_known_args(argv)
    if args.command == "report":
        if unknown or forwarded:
            parser.error(f"unrecognized arguments: {unknown + forwarded}")
        report(args.out, tuple(args.compare_to), args.baseline)
        return 0
    return sweep(args, unknown + forwarded)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
