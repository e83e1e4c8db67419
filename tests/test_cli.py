import subprocess
import sys

from conftest import tiny_model

from hf_layerwise.__main__ import main


def test_describe_local_folder(tmp_path, capsys):
    tiny_model("minilm").save_pretrained(tmp_path / "m")
    assert main(["describe", str(tmp_path / "m"), "--preset", "top3x5-freeze"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["depth", "modules", "params", "lr", "x", "weight", "decay", "frozen"]
    row = {line.split()[0]: line for line in lines[2:] if line[:1].isdigit()}
    assert row["3"].rstrip().endswith("yes") and " 5 " in row["4"] and row["6"].rstrip().endswith("no")
    assert "6 blocks in bert.encoder.layer" in out


def test_describe_errors_are_clear(tmp_path, capsys):
    tiny_model("bert").save_pretrained(tmp_path / "m")
    assert main(["describe", str(tmp_path / "m"), "--top-k", "9"]) == 2
    assert "top_k=9 is larger than the model's 4 encoder blocks" in capsys.readouterr().err
    assert main(["describe", str(tmp_path / "m"), "--preset", "nope"]) == 2
    assert "known presets" in capsys.readouterr().err


def test_module_entry_point_offline(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path / "m")
    proc = subprocess.run([sys.executable, "-m", "hf_layerwise", "describe", str(tmp_path / "m"), "--layer-decay",
                           "0.9", "--top-k", "0"], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "0.5905" in proc.stdout  # depth 0: 0.9 ** 5


def test_scan_suggestions_say_when_the_base_lr_fell_back():
    from hf_layerwise.__main__ import scan_suggestions

    scan = {"kind": "multiplier", "valley": True, "suggestion": 7.0, "depths": [4, 5], "target": "top2"}
    line, per_depth = scan_suggestions({"learning_rate": 2e-5, "fallback": True, "tests": [{"kind": "lr"}, scan]})
    assert line == "base learning rate of the scans: 2e-05 (--lr_find_fallback: the range test found no valley)"
    assert per_depth == {4: ["7 (top2)"], 5: ["7 (top2)"]}
    line, _ = scan_suggestions({"learning_rate": 1e-4, "fallback": False, "tests": []})
    assert line == "base learning rate of the scans: 0.0001"
