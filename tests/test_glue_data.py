import json
import os

import datasets
import pytest
from glue_fixtures import write_glue_task

from hf_layerwise.glue import TASKS, GlueDataError, get_task, load_glue, read_glue_tsv

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "glue")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_official_layout_parses(tmp_path, task):
    write_glue_task(str(tmp_path), task, n_train=30, n_dev=11)
    ds = load_glue(task, data_dir=str(tmp_path))
    spec = get_task(task)
    assert set(ds) == set(spec.splits)
    for split, data in ds.items():
        assert data.num_rows == (30 if split == "train" else 11)
        assert data.column_names == ["idx", *spec.text_keys, "label"]
        assert data["idx"] == list(range(data.num_rows))
    labels = ds["train"]["label"]
    if spec.is_regression:
        assert all(isinstance(v, float) for v in labels)
    else:
        assert set(labels) <= set(range(spec.num_labels))
        assert ds["train"].features["label"].names == list(spec.label_names)  # the hub's ClassLabel names


def test_quirks_of_the_original_files(tmp_path):
    write_glue_task(str(tmp_path), "mrpc", n_train=5, n_dev=3)
    ds = load_glue("mrpc", data_dir=str(tmp_path))
    assert ds["train"][0]["sentence2"].startswith('" ')  # QUOTE_NONE keeps the stray quote
    write_glue_task(str(tmp_path), "rte", n_train=5, n_dev=3)
    ds = load_glue("rte", data_dir=str(tmp_path))
    assert ds["train"][0]["sentence1"].startswith('"')
    assert ds["validation"].features["label"].names == ["entailment", "not_entailment"]


def test_malformed_row_names_file_and_line(tmp_path):
    folder = write_glue_task(str(tmp_path), "rte", n_train=5, n_dev=3)
    path = os.path.join(folder, "train.tsv")
    lines = open(path).read().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0]  # drop the label field of data row 3 (line 4)
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(GlueDataError, match=r"RTE/train.tsv:4: expected 4 tab-separated fields, found 3"):
        load_glue("rte", data_dir=str(tmp_path))
    lines[3] = "7\ta\tb\tmaybe"
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(GlueDataError, match=r"train.tsv:4: label 'maybe' is not one of \['entailment'"):
        load_glue("rte", data_dir=str(tmp_path))


def test_missing_folder_and_unknown_task(tmp_path):
    with pytest.raises(GlueDataError, match="no such folder"):
        load_glue("cola", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown GLUE task 'colaa'; known tasks: cola, sst2"):
        get_task("colaa")
    assert get_task("SST-2").name == "sst2" and get_task("STS-B").name == "stsb"


def test_user_files_csv_tsv_json_same_ids(tmp_path):
    rows = [{"sentence1": "a b", "sentence2": "c", "label": "not_entailment"},
            {"sentence1": "d", "sentence2": "e, f", "label": "entailment"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "dev.json").write_text(json.dumps([{**r, "label": i} for i, r in enumerate(rows)]))
    (tmp_path / "train.csv").write_text('sentence1,sentence2,label\n"a b",c,not_entailment\nd,"e, f",entailment\n')
    (tmp_path / "dev.tsv").write_text("sentence1\tsentence2\tlabel\na b\tc\t1\nd\te, f\t0\n")
    a = load_glue("rte", train_file=str(tmp_path / "train.jsonl"), validation_file=str(tmp_path / "dev.json"))
    b = load_glue("rte", train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "dev.tsv"))
    assert a["train"]["label"] == b["train"]["label"] == [1, 0]  # hub ids: entailment=0, not_entailment=1
    assert a["validation"]["label"] == [0, 1] and b["validation"]["label"] == [1, 0]
    assert b["train"]["sentence2"] == ["c", "e, f"]
    (tmp_path / "bad.csv").write_text("sentence1,label\nx,1\n")
    with pytest.raises(GlueDataError, match=r"bad.csv:2: missing column\(s\) \['sentence2'\]"):
        load_glue("rte", train_file=str(tmp_path / "bad.csv"), validation_file=str(tmp_path / "dev.tsv"))


def test_hub_path_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", "/nonexistent-cache")
    with pytest.raises(GlueDataError, match="from the Hugging Face Hub .* pass --data_dir"):
        load_glue("rte")


def test_hub_path_keeps_hub_columns_and_ids(tmp_path, monkeypatch):
    """The hub branch, fed by a stand-in for load_dataset with the hub's schema."""
    write_glue_task(str(tmp_path), "rte", n_train=6, n_dev=4)
    local = load_glue("rte", data_dir=str(tmp_path))
    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        return datasets.DatasetDict({**{s: d.select_columns(["sentence1", "sentence2", "label", "idx"])
                                        for s, d in local.items()}, "test": local["validation"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_glue("rte")
    assert calls == [("nyu-mll/glue", "rte")]
    assert set(hub) == {"train", "validation"}
    assert hub["train"].column_names == local["train"].column_names
    assert hub["train"]["label"] == local["train"]["label"]


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/glue is not beside this checkout")
def test_real_glue_files_official_row_counts():
    expected = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
                "rte": (2490, 277), "wnli": (635, 71)}
    for task, (n_train, n_dev) in expected.items():
        ds = load_glue(task, data_dir=SHARED)
        assert (ds["train"].num_rows, ds["validation"].num_rows) == (n_train, n_dev), task
    qnli = read_glue_tsv(get_task("qnli"), os.path.join(SHARED, "QNLI", "dev.tsv"))
    assert len(qnli["label"]) == 5463
    mrpc = load_glue("mrpc", data_dir=SHARED)["train"]
    assert sum(mrpc["label"]) == 2474  # 67.4% positive, as published
