"""The export command and the serve command's help."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys


def run_cli(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "species_classifier", *arguments], capture_output=True, text=True, timeout=timeout
    )


def test_export_with_precision_check(small_run, dev_photos, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("onnx"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in dev_photos["Acer rubrum"][:3] + dev_photos["Lycorma delicatula"][:3]:
        shutil.copy(path, photos / path.name)

    completed = run_cli("export", str(run), "--check-precision", str(photos))

    record = json.loads((run / "onnx" / "precision_check.json").read_text())
    assert completed.returncode == (0 if record["passed"] else 1), completed.stderr
    assert "Wrote" in completed.stdout
    assert "Precision check" in completed.stdout
    assert (run / "onnx" / "model.onnx").is_file()
    assert json.loads((run / "onnx" / "export.json").read_text())["max_abs_diff_vs_pytorch"] <= 1e-4
    assert record["images"] == 6


def test_serve_help_states_units():
    completed = run_cli("serve", "--help", timeout=60)
    assert completed.returncode == 0
    for text in ("--max-body-mb", "MiB", "--max-megapixels", "--request-timeout", "seconds", "--max-concurrency", "default: 8080"):
        assert text in completed.stdout


def test_serve_rejects_bad_setting(small_run):
    completed = run_cli("serve", str(small_run), "--max-batch-size", "0", timeout=60)
    assert completed.returncode == 2
    assert "max_batch_size must be positive" in completed.stderr
