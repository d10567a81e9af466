"""The synthetic-shapes benchmark end to end in its smoke size (CI): data, model, latents, training, generation
through `openuni eval shapes`, scoring. The scorer must give the rendered ground truth ~1 and the untrained model
about nothing (it draws no shape, so below the shuffled-caption chance level)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_scores_ground_truth_one_and_untrained_near_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shapes.py"), "--smoke", "--work", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "shapes.json").read_text())
    assert result["ground_truth"]["overall"] >= 0.95
    assert min(result["ground_truth"]["tasks"].values()) >= 0.95
    assert result["untrained"]["overall"] <= 0.1
    assert result["untrained"]["overall"] < result["shuffled"]["overall"]
    assert set(result["trained"]["tasks"]) == set(result["ground_truth"]["tasks"])  # every task generated and scored
    for name in ("REPORT.md", "grid.png", "eval-trained/shapes_summary.md", "eval-trained/00000/samples/0003.png"):
        assert (tmp_path / name).is_file(), name
    assert "| **overall** |" in (tmp_path / "REPORT.md").read_text()
