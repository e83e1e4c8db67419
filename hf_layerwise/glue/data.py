"""GLUE tasks and their data, read three ways with the same columns and label ids as the hub dataset.

* the hub: ``datasets.load_dataset("nyu-mll/glue", task)`` (the default for users who have it);
* ``data_dir``: the original GLUE TSV folders (``DIR/MRPC/train.tsv``, ``DIR/MNLI/dev_matched.tsv``...),
  read like GLUE's and HF's own loader: tab-delimited, ``csv.QUOTE_NONE``, CoLA without a header,
  the MRPC byte-order mark stripped;
* ``train_file`` / ``validation_file``: csv, tsv or json(l) files with the hub's column names.

Every path returns a ``datasets.DatasetDict`` with the hub's text columns, ``label`` and ``idx``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import datasets

from ..errors import UsageError

__all__ = ["GlueTask", "TASKS", "get_task", "load_glue", "read_glue_tsv", "read_table", "GlueDataError"]

HUB_DATASET = "nyu-mll/glue"


class GlueDataError(UsageError):
    """A data file is missing, empty or malformed, or a label is invalid; the message names the file (and line)."""


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its columns, labels, metrics and the layout of its original TSV files.

    ``tsv_columns`` maps each hub column to the TSV column holding it (a header name, or a
    position for header-less CoLA). ``label_names`` are the hub's ClassLabel names, so label ids
    are the same on every path; ``None`` for the STS-B regression, whose scores lie in ``score_range``.
    """

    name: str
    dir_name: str
    text_keys: tuple[str, ...]
    label_names: tuple[str, ...] | None
    main_metric: str
    tsv_columns: dict[str, str | int]
    tsv_header: bool = True
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})
    score_range: tuple[float, float] | None = None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def eval_splits(self) -> list[str]:
        return [s for s in self.splits if s != "train"]


_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}
TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), "matthews_correlation",
                 {"sentence": 3, "label": 1}, tsv_header=False),
        GlueTask("sst2", "SST-2", ("sentence",), ("negative", "positive"), "accuracy",
                 {"sentence": "sentence", "label": "label"}),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1",
                 {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), None, "spearmanr",
                 {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}, score_range=(0.0, 5.0)),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1",
                 {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
        GlueTask("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy",
                 {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
                 splits={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                         "validation_mismatched": "dev_mismatched.tsv"}),
        GlueTask("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy",
                 {"question": "question", "sentence": "sentence", "label": "label"}),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy", _PAIR),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy", _PAIR),
    ]
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(name: str) -> GlueTask:
    """The task named ``name`` (case-insensitive; ``SST-2`` and ``STS-B`` spellings accepted).

    Example:
        >>> get_task("MRPC").label_names
        ('not_equivalent', 'equivalent')
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def _label(task: GlueTask, value: str, where: str) -> int | float:
    value = value.strip()
    if task.is_regression:
        low, high = task.score_range or (-math.inf, math.inf)
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if math.isfinite(score) and low <= score <= high:
            return score
        raise GlueDataError(f"{where}: label {value!r} is not a {task.name} score: expected a finite number in "
                            f"[{low:g}, {high:g}]")
    if value in task.label_names:
        return task.label_names.index(value)
    if value.isdigit() and int(value) < task.num_labels:
        return int(value)
    raise GlueDataError(f"{where}: label {value!r} is not one of {list(task.label_names)} or "
                        f"0..{task.num_labels - 1}")


def _rows(path: str, reader: Iterator, line: Callable[[], int]) -> Iterator:
    """The rows of a csv reader, with unreadable bytes (a binary file, NUL bytes) reported as ``GlueDataError``."""
    try:
        yield from reader
    except UnicodeDecodeError as err:
        raise GlueDataError(f"{path}: not a UTF-8 text file (byte {err.start} of a block cannot be decoded: "
                            f"{err.reason}); expected a tab-separated GLUE file") from None
    except csv.Error as err:
        raise GlueDataError(f"{path}:{line() + 1}: unreadable row ({err}); is this a text file?") from None


def _check_not_empty(columns: dict[str, list], path: str) -> dict[str, list]:
    if not columns["idx"]:
        raise GlueDataError(f"{path}: no examples (the file is empty or holds only a header)")
    return columns


def read_glue_tsv(task: GlueTask, path: str) -> dict[str, list]:
    """Read one original GLUE TSV file into hub columns (``idx``, text keys, ``label``).

    Raises:
        GlueDataError: missing, empty or non-text file, missing column, a row with the wrong number
            of fields, or an invalid label (unknown class, NaN/inf, a score out of range) -- naming
            the file and line.
    """
    if not os.path.isfile(path):
        raise GlueDataError(f"{path}: file not found (expected the original GLUE layout {task.dir_name}/...)")
    columns: dict[str, list] = {"idx": [], **{k: [] for k in task.text_keys}, "label": []}
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC starts with a BOM
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = _rows(path, reader, lambda: reader.line_num)
        if task.tsv_header:
            header = next(rows, None)
            if header is None:
                raise GlueDataError(f"{path}: empty file")
            missing = [c for c in task.tsv_columns.values() if c not in header]
            if missing:
                raise GlueDataError(f"{path}:1: header lacks column(s) {missing}; found {header}")
            position = {k: header.index(c) for k, c in task.tsv_columns.items()}
            width = len(header)
        else:
            position = dict(task.tsv_columns)
            width = None
        for row in rows:
            where = f"{path}:{reader.line_num}"
            if width is None:
                width = len(row)
                if width <= max(position.values()):
                    raise GlueDataError(f"{where}: expected at least {max(position.values()) + 1} tab-separated "
                                        f"fields, found {width}")
            if len(row) != width:
                raise GlueDataError(f"{where}: expected {width} tab-separated fields, found {len(row)}")
            columns["idx"].append(len(columns["idx"]))
            for key in task.text_keys:
                columns[key].append(row[position[key]])
            columns["label"].append(_label(task, row[position["label"]], where))
    return _check_not_empty(columns, path)


def read_table(task: GlueTask, path: str) -> dict[str, list]:
    """Read a user file (``.csv``, ``.tsv``, ``.json`` or ``.jsonl``) with the hub's column names.

    Labels may be ids or the hub's label names; they end up as the hub's ids.
    """
    if not os.path.isfile(path):
        raise GlueDataError(f"{path}: file not found")
    ext = os.path.splitext(path)[1].lower()
    rows: list[tuple[str, dict]] = []
    if ext in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            for row in _rows(path, reader, lambda: reader.line_num):
                if None in row or None in row.values():
                    raise GlueDataError(f"{path}:{reader.line_num}: wrong number of fields")
                rows.append((f"{path}:{reader.line_num}", row))
    elif ext in (".json", ".jsonl"):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as err:
            raise GlueDataError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason})") from None
        try:
            if text.lstrip().startswith("["):
                rows = [(f"{path}: record {i + 1}", r) for i, r in enumerate(json.loads(text))]
            else:
                rows = [(f"{path}:{i + 1}", json.loads(line)) for i, line in enumerate(text.splitlines()) if line.strip()]
        except json.JSONDecodeError as err:
            raise GlueDataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        if not all(isinstance(row, dict) for _, row in rows):
            where = next(w for w, row in rows if not isinstance(row, dict))
            raise GlueDataError(f"{where}: expected a JSON object with the columns {[*task.text_keys, 'label']}")
    else:
        raise GlueDataError(f"{path}: unsupported file type {ext!r}; use .csv, .tsv, .json or .jsonl")
    columns: dict[str, list] = {"idx": [], **{k: [] for k in task.text_keys}, "label": []}
    for where, row in rows:
        missing = [k for k in (*task.text_keys, "label") if k not in row]
        if missing:
            raise GlueDataError(f"{where}: missing column(s) {missing} (task {task.name} needs "
                                f"{[*task.text_keys, 'label']}); found {sorted(row)}")
        try:
            columns["idx"].append(int(row.get("idx", len(columns["idx"]))))
        except (TypeError, ValueError):
            raise GlueDataError(f"{where}: idx {row['idx']!r} is not an integer") from None
        for key in task.text_keys:
            columns[key].append(str(row[key]))
        columns["label"].append(_label(task, str(row["label"]), where))
    return _check_not_empty(columns, path)


def _features(task: GlueTask) -> datasets.Features:
    label = datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    return datasets.Features({"idx": datasets.Value("int32"), **{k: datasets.Value("string") for k in task.text_keys},
                              "label": label})


def load_glue(
    task_name: str,
    data_dir: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
) -> datasets.DatasetDict:
    """Load a GLUE task: from ``data_dir`` (original TSVs), from user files, or from the hub.

    Example:
        >>> ds = load_glue("rte", data_dir="../shared/glue")    # doctest: +SKIP
        >>> ds["train"].num_rows, ds["validation"].num_rows
        (2490, 277)
    """
    task = get_task(task_name)
    features = _features(task)
    if data_dir is not None:
        folder = os.path.join(data_dir, task.dir_name)
        if not os.path.isdir(folder):
            raise GlueDataError(f"{folder}: no such folder; --data_dir must hold the GLUE task folders "
                                f"({', '.join(t.dir_name for t in TASKS.values())})")
        splits = {s: read_glue_tsv(task, os.path.join(folder, f)) for s, f in task.splits.items()}
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(c, features=features) for s, c in splits.items()})
    if train_file is not None or validation_file is not None:
        if train_file is None or validation_file is None:
            raise GlueDataError("pass both --train_file and --validation_file")
        files = {"train": train_file, task.eval_splits[0]: validation_file}
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(read_table(task, p), features=features)
                                     for s, p in files.items()})
    try:
        raw = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as err:  # offline, no cache, network error: say what to do instead
        raise GlueDataError(
            f"could not load {HUB_DATASET}/{task.name} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Offline, pass --data_dir with the original GLUE TSV folders (e.g. ../shared/glue) or "
            "--train_file/--validation_file."
        ) from err
    for split in task.splits:
        if raw[split].num_rows == 0:
            raise GlueDataError(f"{HUB_DATASET}/{task.name}: the {split} split has no examples")
    return datasets.DatasetDict({s: raw[s].cast(features) for s in task.splits})
