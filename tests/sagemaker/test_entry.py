"""The container entry point: SM_* variables, hyperparameters → `train` flags, torchrun, and a real run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from species_classifier.sagemaker import entry
from species_classifier.sagemaker.launch import METRIC_DEFINITIONS
from species_classifier.serve.package import build_sagemaker_archive
from tests.sagemaker.conftest import TARGETS, ContainerRun


def make_environment(tmp_path: Path, **overrides) -> entry.SageMakerEnvironment:  # noqa: ANN003 - dataclass fields
    channel = tmp_path / "training"
    channel.mkdir(exist_ok=True)
    values = {
        "model_dir": tmp_path / "model",
        "output_data_dir": tmp_path / "output" / "data",
        "channels": {"training": channel},
        "hyperparameters": {"targets": TARGETS},
    }
    values.update(overrides)
    return entry.SageMakerEnvironment(**values)


@pytest.fixture(scope="module")
def options() -> dict:
    return entry.train_options(entry.build_train_parser()[1])


# --- SM_* variables and hyperparameters ------------------------------------------------


def test_read_environment_from_sm_variables(tmp_path: Path) -> None:
    environ = {
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "data"),
        "SM_OUTPUT_DIR": str(tmp_path / "output"),
        "SM_CHANNELS": '["training", "extra"]',
        "SM_CHANNEL_TRAINING": "/opt/ml/input/data/training",
        "SM_CHANNEL_EXTRA": "/opt/ml/input/data/extra",
        "SM_NUM_GPUS": "4",
        "SM_HOSTS": '["algo-1", "algo-2"]',
        "SM_CURRENT_HOST": "algo-2",
        "SM_HPS": json.dumps({"epochs": 3, "targets": TARGETS, "sagemaker_program": "sagemaker_entry.py"}),
    }
    environment = entry.read_environment(environ, ["--epochs", "99"])
    assert environment.model_dir == tmp_path / "model"
    assert environment.output_data_dir == tmp_path / "data"
    assert environment.output_dir == tmp_path / "output"
    assert environment.channels == {"training": Path("/opt/ml/input/data/training"), "extra": Path("/opt/ml/input/data/extra")}
    assert environment.num_gpus == 4
    assert environment.hosts == ["algo-1", "algo-2"]
    assert environment.current_host == "algo-2"
    assert not environment.is_master
    # SM_HPS wins over the arguments, and the SDK's own sagemaker_* entries are dropped.
    assert environment.hyperparameters == {"epochs": 3, "targets": TARGETS}


def test_read_environment_without_sm_hps_uses_arguments() -> None:
    environ = {"SM_CHANNEL_TRAINING": "/data"}
    environment = entry.read_environment(environ, ["--epochs", "2", "--compile", "--targets", "A b,C d"])
    assert environment.hyperparameters == {"epochs": "2", "compile": True, "targets": "A b,C d"}
    assert environment.channels == {"training": Path("/data")}
    assert environment.hosts == ["algo-1"]
    assert environment.is_master


def test_read_environment_rejects_bad_json() -> None:
    with pytest.raises(ValueError, match="SM_HOSTS is not valid JSON"):
        entry.read_environment({"SM_HOSTS": "[algo-1"}, [])
    with pytest.raises(ValueError, match="SM_NUM_GPUS must be an integer"):
        entry.read_environment({"SM_NUM_GPUS": "two"}, [])


def test_parse_argument_pairs_rejects_positional() -> None:
    with pytest.raises(ValueError, match="unexpected argument 'stray'"):
        entry.parse_argument_pairs(["stray", "--epochs", "1"])


# --- `train` arguments ------------------------------------------------------------------


def test_train_arguments_map_hyperparameters(tmp_path: Path, options: dict) -> None:
    environment = make_environment(tmp_path, hyperparameters={
        "targets": TARGETS, "img_size": 64, "epochs": "1", "compile": "True", "no-channels-last": True,
        "lr-multipliers": [0.1, 1.0], "precision": "bf16",
    })
    arguments = entry.train_arguments(environment, options)
    channel = tmp_path / "training"
    assert arguments[:6] == ["train", str(channel), "--out", str(tmp_path / "model"), "--checkpoint-dir", entry.DEFAULT_CHECKPOINT_DIR]
    flags = arguments[6:]
    assert flags[flags.index("--img-size") + 1] == "64"
    assert flags[flags.index("--epochs") + 1] == "1"
    assert flags[flags.index("--targets") + 1] == TARGETS
    assert flags[flags.index("--lr-multipliers") + 1] == "0.1,1.0"
    assert flags[flags.index("--precision") + 1] == "bf16"
    assert "--compile" in flags
    assert "--no-channels-last" in flags
    # The result parses with `train`'s own parser.
    parsed = entry.build_train_parser()[0].parse_args(arguments)
    assert parsed.img_size == 64
    assert parsed.compile is True
    assert parsed.channels_last is False


def test_train_arguments_skip_false_flags(tmp_path: Path, options: dict) -> None:
    environment = make_environment(tmp_path, hyperparameters={"targets": TARGETS, "compile": "False", "no-channels-last": False})
    arguments = entry.train_arguments(environment, options)
    assert "--compile" not in arguments
    assert "--no-channels-last" not in arguments


def test_train_arguments_dataset_and_checkpoint_dir(tmp_path: Path, options: dict) -> None:
    channel = tmp_path / "training"
    channel.mkdir()
    (channel / "inat.csv").write_text("path,species_name\n")
    environment = make_environment(tmp_path, hyperparameters={"targets": TARGETS, "dataset": "inat.csv", "checkpoint-dir": "/tmp/ckpt"})
    arguments = entry.train_arguments(environment, options)
    assert arguments[1] == str(channel / "inat.csv")
    assert arguments[arguments.index("--checkpoint-dir") + 1] == "/tmp/ckpt"


def test_resolve_dataset_prefers_manifest_csv(tmp_path: Path) -> None:
    environment = make_environment(tmp_path)
    channel = tmp_path / "training"
    assert entry.resolve_dataset(environment, None) == channel
    (channel / "manifest.csv").write_text("path,species_name\n")
    assert entry.resolve_dataset(environment, None) == channel / "manifest.csv"
    assert entry.resolve_dataset(environment, ".") == channel.resolve()


@pytest.mark.parametrize(
    "channels,relative,message",
    [
        ({}, None, "no input channel"),
        ({"a": Path("/a"), "b": Path("/b")}, None, "several input channels"),
        (None, "../elsewhere.csv", "points outside the input channel"),
        (None, "missing.csv", "not found in the input channel"),
    ],
)
def test_resolve_dataset_errors(tmp_path: Path, channels, relative, message) -> None:  # noqa: ANN001 - parametrized values
    environment = make_environment(tmp_path) if channels is None else make_environment(tmp_path, channels=channels)
    with pytest.raises(ValueError, match=message):
        entry.resolve_dataset(environment, relative)


@pytest.mark.parametrize(
    "key,message",
    [
        ("out", "not allowed on SageMaker: the run folder is SM_MODEL_DIR"),
        ("overwrite", "not allowed on SageMaker"),
        ("learning-rate", "unknown hyperparameter 'learning-rate'; valid: dataset, "),
    ],
)
def test_train_arguments_reject_keys(tmp_path: Path, options: dict, key: str, message: str) -> None:
    environment = make_environment(tmp_path, hyperparameters={"targets": TARGETS, key: "x"})
    with pytest.raises(ValueError, match=message):
        entry.train_arguments(environment, options)


# --- child command ----------------------------------------------------------------------


def test_child_command_single_process(tmp_path: Path) -> None:
    command = entry.child_command(make_environment(tmp_path, num_gpus=1), ["train", "data"])
    assert command == [sys.executable, "-m", "species_classifier.sagemaker.entry", "train", "data"]


def test_child_command_torchrun_for_gpus(tmp_path: Path) -> None:
    command = entry.child_command(make_environment(tmp_path, num_gpus=4), ["train", "data"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[command.index("--nnodes") + 1] == "1"
    assert command[command.index("--node-rank") + 1] == "0"
    assert command[command.index("--nproc-per-node") + 1] == "4"
    assert command[command.index("--master-addr") + 1] == "algo-1"
    assert command[-4:] == ["-m", "species_classifier.sagemaker.entry", "train", "data"]


def test_child_command_torchrun_for_hosts(tmp_path: Path) -> None:
    environment = make_environment(tmp_path, num_gpus=8, hosts=["algo-1", "algo-2", "algo-3"], current_host="algo-3")
    command = entry.child_command(environment, ["train", "data"])
    assert command[command.index("--nnodes") + 1] == "3"
    assert command[command.index("--node-rank") + 1] == "2"
    assert command[command.index("--nproc-per-node") + 1] == "8"
    assert command[command.index("--master-addr") + 1] == "algo-1"
    assert command[command.index("--master-port") + 1] == str(entry.MASTER_PORT)


def test_child_command_unknown_host(tmp_path: Path) -> None:
    environment = make_environment(tmp_path, num_gpus=2, hosts=["algo-1", "algo-2"], current_host="algo-9")
    with pytest.raises(ValueError, match="SM_CURRENT_HOST 'algo-9' is not in SM_HOSTS"):
        entry.child_command(environment, ["train"])


def test_child_environment_imports_this_package() -> None:
    environment = entry.child_environment({"PYTHONPATH": "/opt/other", "PATH": "/usr/bin"})
    package_parent = str(Path(entry.__file__).resolve().parents[2])
    assert environment["PYTHONPATH"].split(":") == [package_parent, "/opt/other"]
    assert environment["MALLOC_MMAP_THRESHOLD_"]
    assert environment["TQDM_MININTERVAL"] == "60"
    assert environment["PATH"] == "/usr/bin"


def test_invalid_hyperparameter_writes_failure_reason(tmp_path: Path) -> None:
    channel = tmp_path / "training"
    channel.mkdir()
    environ = {
        "SM_CHANNEL_TRAINING": str(channel),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DIR": str(tmp_path / "output"),
        "SM_HPS": json.dumps({"targets": TARGETS, "out": "/elsewhere"}),
    }
    assert entry.run_sagemaker_job(environ, []) == 2
    assert "not allowed on SageMaker" in (tmp_path / "output" / "failure").read_text()


# --- a real run of the uploaded entry script ---------------------------------------------


def test_container_run_writes_bundle(container_run: ContainerRun) -> None:
    assert container_run.returncode == 0, container_run.log[-3000:]
    model_dir = container_run.model_dir
    assert (model_dir / "model.json").is_file()
    assert (model_dir / "fold_0.safetensors").is_file()
    assert (model_dir / "fold_1.safetensors").is_file()
    assert (model_dir / "report.html").is_file()
    assert (model_dir / "metrics.csv").is_file()
    model = json.loads((model_dir / "model.json").read_text())
    assert model["classes"] == ["Lycorma delicatula", "Acer rubrum", "other"]


def test_container_run_checkpoints_outside_model_dir(container_run: ContainerRun) -> None:
    assert container_run.returncode == 0, container_run.log[-3000:]
    checkpoints = sorted(path.name for path in container_run.checkpoint_dir.iterdir())
    assert any(name.startswith("fold_0") for name in checkpoints), checkpoints
    assert any(name.startswith("fold_1") for name in checkpoints), checkpoints
    # Checkpoints go to the folder SageMaker syncs with S3, not into model.tar.gz.
    assert not (container_run.model_dir / "checkpoints").exists()


def test_container_run_copies_outputs(container_run: ContainerRun) -> None:
    assert container_run.returncode == 0, container_run.log[-3000:]
    copied = {path.name for path in container_run.output_data_dir.iterdir()}
    assert {"report.html", "metrics.csv", "model.json", "oof_predictions.csv"} <= copied
    assert not [name for name in copied if name.endswith(".safetensors")]


def test_container_run_log_feeds_metrics(container_run: ContainerRun) -> None:
    assert container_run.returncode == 0, container_run.log[-3000:]
    values = {
        metric["Name"]: [match.group(1) for match in re.finditer(metric["Regex"], container_run.log)]
        for metric in METRIC_DEFINITIONS
    }
    # Two folds of one epoch each, and one cross-validation summary.
    for name in ("train:loss", "validation:loss", "validation:macro_f1", "validation:accuracy", "train:learning_rate", "train:images_per_second"):
        assert len(values[name]) == 2, (name, values[name])
        assert all(float(value) >= 0 for value in values[name]), (name, values[name])
    assert len(values["cv:macro_f1"]) == 1
    assert 0 <= float(values["cv:macro_f1"][0]) <= 1


def test_container_run_bundle_packages(container_run: ContainerRun, tmp_path: Path) -> None:
    assert container_run.returncode == 0, container_run.log[-3000:]
    archive = build_sagemaker_archive(container_run.model_dir, tmp_path / "model.tar.gz")
    assert archive.stat().st_size > 0
