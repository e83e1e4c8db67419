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
