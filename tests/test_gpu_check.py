"""bench/gpu_check.py --dry-run: every GPU path of the check, on the CPU with a tiny model, keeps working."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry-run", "--out",
                           str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # one JSON object, last
    assert not [name for name in ("recipes", "anatomy", "ratios") if "error" in summary[name]], summary
    recipes = summary["recipes"]
    assert set(recipes) == {"glue_fp32", "glue_bf16", "glue_bf16_compiled", "trainer_bf16", "library_fsdp1_fsdp2"}
    assert not [name for name, row in recipes.items() if "error" in row], recipes
    assert all(row["train_samples_per_second"] > 0 and row["eval_time_s"] >= 0 for name, row in recipes.items()
               if name != "library_fsdp1_fsdp2")
    assert recipes["trainer_bf16"]["wall_s"] < 60  # the Trainer recipe compiles only when asked
    for precision in ("fp32", "bf16"):
        assert set(summary["anatomy"][precision]) == {"collate", "forward", "backward", "clip", "optimizer", "step"}
    assert summary["ratios"]["groups_layerwise_vs_2"]["groups"] == [16, 2]
    assert all(summary["ratios"][k]["ratio"] > 0 for k in ("groups_layerwise_vs_2", "preset_freeze_vs_hand",
                                                             "layerwise_trainer_vs_trainer"))
    assert summary["wall_s"] < 120
