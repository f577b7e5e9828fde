"""Kill-and-resume, SIGTERM, 2-process torchrun, mixed precision and torch.compile on CPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from species_classifier.cli import main
from species_classifier.train.checkpoint import read_fold_state
from tests.fast_training import TARGETS

# Deterministic CPU settings: one thread, no loader workers, a fixed seed.
DETERMINISTIC = ["--img-size", "64", "--batch-size", "8", "--workers", "0", "--threads", "1", "--folds", "2", "--seed", "3"]


def _train_command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "species_classifier", "train", str(dataset), "--targets", TARGETS, "--out", str(out),
            *DETERMINISTIC, *extra]


def _environment() -> dict[str, str]:
    return {**os.environ, "SPECIES_CLASSIFIER_NO_ALLOCATOR_TUNING": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for_epoch(checkpoint: Path, epochs: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before the signal could be sent"
        if checkpoint.is_file():
            try:
                if read_fold_state(checkpoint).epochs_done >= epochs:
                    return
            except Exception:  # the file is being replaced; read it again
                pass
        time.sleep(0.05)
    raise TimeoutError(f"{checkpoint} did not reach epoch {epochs}")


@pytest.fixture(scope="module")
def uninterrupted(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_train_command(small_dataset, out, "--epochs", "3", "--patience", "5"), env=_environment(), check=True,
                   capture_output=True)
    return pd.read_csv(out / "metrics.csv")


def test_sigkill_then_rerun_matches(uninterrupted: pd.DataFrame, small_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    command = _train_command(small_dataset, out, "--epochs", "3", "--patience", "5")
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epoch(out / "checkpoints" / "fold_0.safetensors", 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    subprocess.run(command, env=_environment(), check=True, capture_output=True)
    resumed = pd.read_csv(out / "metrics.csv")
    assert list(resumed[["fold", "epoch"]].itertuples(index=False, name=None)) == \
        list(uninterrupted[["fold", "epoch"]].itertuples(index=False, name=None))
    for column in ("train_loss", "val_loss", "val_macro_f1", "val_accuracy"):
        pd.testing.assert_series_equal(resumed[column], uninterrupted[column], atol=1e-4, rtol=0, check_names=False)


def test_sigterm_saves_and_exits(uninterrupted: pd.DataFrame, small_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    command = _train_command(small_dataset, out, "--epochs", "3", "--patience", "5")
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(out / "checkpoints" / "fold_0.safetensors", 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr

    subprocess.run(command, env=_environment(), check=True, capture_output=True)
    resumed = pd.read_csv(out / "metrics.csv")
    assert list(resumed[["fold", "epoch"]].itertuples(index=False, name=None)) == \
        list(uninterrupted[["fold", "epoch"]].itertuples(index=False, name=None))
    assert (out / "fold_1.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return server.getsockname()[1]


def test_torchrun_two_processes_match_one(small_dataset: Path, tmp_path: Path):
    # No augmentation, dropout or class weights, so both runs see the same batches of 8
    # photos. A GroupNorm model normalises each photo on its own, so splitting a batch
    # over two processes changes nothing but the order of floating-point sums.
    same_batches = ["--model", "test_efficientnet_gn", "--pretrained", "none", "--epochs", "2", "--drop-rate", "0", "--scale-min", "1", "--hflip", "0", "--rotation", "0",
                    "--class-weights", "none", "--patience", "5", "--img-size", "64", "--workers", "0", "--threads", "1",
                    "--folds", "2", "--seed", "3"]
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "species_classifier", "train", str(small_dataset), "--targets", TARGETS,
                    "--out", str(single), "--batch-size", "8", *same_batches], env=_environment(), check=True, capture_output=True)
    pair = tmp_path / "pair"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "species_classifier", "train", str(small_dataset), "--targets", TARGETS,
         "--out", str(pair), "--batch-size", "4", *same_batches],
        env=_environment(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    one = pd.read_csv(single / "metrics.csv")
    two = pd.read_csv(pair / "metrics.csv")
    assert len(two) == len(one) == 4
    assert (pair / "fold_1.safetensors").is_file()
    oof = pd.read_csv(pair / "oof_predictions.csv")
    assert sorted(oof["path"]) == sorted(pd.read_csv(single / "oof_predictions.csv")["path"])
    # Tolerance: 1e-3 on losses, which covers float summation order (observed: under 1e-6).
    for column in ("train_loss", "val_loss"):
        assert (one[column] - two[column]).abs().max() < 1e-3, column
    assert (one["val_accuracy"] - two["val_accuracy"]).abs().max() < 1e-9


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision: str, small_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    code = main(["train", str(small_dataset), "--targets", TARGETS, "--out", str(out), "--model", "test_efficientnet",
                 "--pretrained", "none", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--epochs", "1",
                 "--folds", "2", "--precision", precision])
    assert code == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["train_loss"].notna().all()
    assert (metrics["train_loss"] > 0).all()


def test_compiled_model_trains(small_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    code = main(["train", str(small_dataset), "--targets", TARGETS, "--out", str(out), "--model", "test_efficientnet",
                 "--pretrained", "none", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--epochs", "1",
                 "--folds", "1", "--compile"])
    assert code == 0
    assert (out / "fold_0.safetensors").is_file()
