# SPDX-License-Identifier: MIT
"""examples/train_digits.py --quick runs and writes what it promises: one CSV row per method, lr,
seed and epoch with finite losses and accuracies in [0, 1], the curves and the summary."""
import csv
import math
import subprocess
import sys

from conftest import ROOT


def test_train_digits_quick_writes_its_outputs(tmp_path):
    subprocess.run([sys.executable, f"{ROOT}/examples/train_digits.py", "--quick", "--threads", "1", "--out",
                    str(tmp_path)], check=True, capture_output=True, text=True, timeout=300)
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["method"] for r in rows}) == ["batchnorm", "deconv", "plain"]
    assert len(rows) == 3 * 2  # 3 methods, 1 lr, 1 seed, 2 epochs
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and 0 <= float(r["test_acc"]) <= 1, r
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "deconv" in (tmp_path / "summary.txt").read_text()
