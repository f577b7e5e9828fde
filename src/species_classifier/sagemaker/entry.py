"""SageMaker training entry point: run `species-classifier train` inside the training container.

SageMaker's training toolkit starts `python sagemaker_entry.py --key value ...` (the script
that `launch.build_source_dir` writes) with the job's hyperparameters as arguments and as
JSON in `SM_HPS`. This module maps that environment onto `train` flags:

- the input channel `SM_CHANNEL_TRAINING` (or the only channel) plus the `dataset`
  hyperparameter (a manifest file name, or `.` for a folder of species subfolders) → DATASET
- `SM_MODEL_DIR` → `--out`, so the job's model.tar.gz contains the same bundle as a local run
- `/opt/ml/checkpoints` (SageMaker syncs it with the job's checkpoint S3 URI) → `--checkpoint-dir`
- every other hyperparameter → the `train` flag of the same name (`img-size: 64` → `--img-size 64`)
- `SM_NUM_GPUS` > 1 or several hosts in `SM_HOSTS` → the training runs under `torchrun`

Training runs in a child process, which gets SIGTERM forwarded to it, so a spot reclaim
saves a checkpoint before the container stops. After a successful run the report and
metrics files are copied to `SM_OUTPUT_DATA_DIR` (the job's output.tar.gz).

`python -m species_classifier.sagemaker.entry train ARGS...` runs only the `train`
command. It is the child process, and it does not import the collection stage's
dependencies (polars, duckdb, pyinaturalist), which the container does not install.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAINING_CHANNEL = "training"
DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"
DEFAULT_MANIFEST = "manifest.csv"
MASTER_PORT = 29500
WORKER_MODULE = "species_classifier.sagemaker.entry"

# Hyperparameters that this entry point reads itself instead of passing them to `train`.
DATASET_KEY = "dataset"
CHECKPOINT_DIR_KEY = "checkpoint-dir"
# `train` flags that SageMaker decides: the run folder is SM_MODEL_DIR, and deleting the
# previous run would throw away the checkpoints a spot restart resumes from.
REJECTED_KEYS = {
    "out": "the run folder is SM_MODEL_DIR, which SageMaker packs into model.tar.gz",
    "overwrite": "a job resumes from its checkpoint S3 URI; launch with a new --checkpoint-uri to start over",
    "config": "the launcher turns the config file into hyperparameters",
}
# Weight files stay out of SM_OUTPUT_DATA_DIR (output.tar.gz), so the report and metrics
# there can be downloaded without the weights.
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth")


@dataclass(frozen=True)
class SageMakerEnvironment:
    """The parts of the SageMaker training environment that the entry point uses."""

    model_dir: Path
    output_data_dir: Path
    channels: dict[str, Path]
    hyperparameters: dict[str, Any]
    num_gpus: int = 0
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    current_host: str = "algo-1"
    output_dir: Path | None = None

    @property
    def is_master(self) -> bool:
        return self.current_host == self.hosts[0]


def read_environment(environ: Mapping[str, str], argv: Sequence[str]) -> SageMakerEnvironment:
    """Read the `SM_*` variables; hyperparameters come from `SM_HPS`, else from `argv`.

    Raises:
        ValueError: A variable contains invalid JSON, or SM_NUM_GPUS is not an integer.
    """
    channel_names = _json_variable(environ, "SM_CHANNELS", None)
    if channel_names is None:
        channel_names = [key[len("SM_CHANNEL_"):].lower() for key in environ if key.startswith("SM_CHANNEL_")]
    channels = {}
    for name in channel_names:
        path = environ.get(f"SM_CHANNEL_{name.upper()}")
        if path:
            channels[name] = Path(path)

    hyperparameters = _json_variable(environ, "SM_HPS", None)
    if hyperparameters is None:
        hyperparameters = parse_argument_pairs(argv)
    hosts = _json_variable(environ, "SM_HOSTS", ["algo-1"])
    try:
        num_gpus = int(environ.get("SM_NUM_GPUS", "0"))
    except ValueError:
        raise ValueError(f"SM_NUM_GPUS must be an integer, got {environ['SM_NUM_GPUS']!r}") from None

    return SageMakerEnvironment(
        model_dir=Path(environ.get("SM_MODEL_DIR", "/opt/ml/model")),
        output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")),
        output_dir=Path(environ["SM_OUTPUT_DIR"]) if environ.get("SM_OUTPUT_DIR") else None,
        channels=channels,
        hyperparameters={key: value for key, value in hyperparameters.items() if not key.startswith("sagemaker_")},
        num_gpus=num_gpus,
        hosts=list(hosts) or ["algo-1"],
        current_host=environ.get("SM_CURRENT_HOST", hosts[0] if hosts else "algo-1"),
    )


def _json_variable(environ: Mapping[str, str], name: str, default: Any) -> Any:
    if name not in environ:
        return default
    try:
        return json.loads(environ[name])
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error}): {environ[name][:200]!r}") from None


def parse_argument_pairs(argv: Sequence[str]) -> dict[str, str | bool]:
    """Parse `--key value` pairs as the training toolkit passes hyperparameters.

    A `--key` followed by another `--key`, or at the end, is read as the flag value True.
    Values stay strings; `train_arguments` converts them.
    """
    values: dict[str, str | bool] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}; hyperparameters arrive as --key value pairs")
        key = token[2:]
        if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            values[key] = argv[index + 1]
            index += 2
        else:
            values[key] = True
            index += 1
    return values


def build_train_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Build a `species-classifier` parser with only `train`; returns it and the `train` subparser.

    The container lacks the other stages' packages, so `species_classifier.cli` cannot
    build its full parser there.
    """
    from species_classifier.train.cli import add_subcommands

    parser = argparse.ArgumentParser(prog="species-classifier")
    subparsers = parser.add_subparsers(dest="command")
    add_subcommands(subparsers)
    return parser, subparsers.choices["train"]


def train_options(train_parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Map each long `train` flag name without dashes (`img-size`) to its argparse action."""
    options = {}
    for action in train_parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                options[option[2:]] = action
    return options


def resolve_dataset(environment: SageMakerEnvironment, relative: str | None) -> Path:
    """Find DATASET in the input channel: `relative` inside it, else manifest.csv, else the channel folder.

    Raises:
        ValueError: No input channel, several channels without a `training` one, or a
            `dataset` hyperparameter that points outside the channel or to a missing path.
    """
    channels = environment.channels
    if TRAINING_CHANNEL in channels:
        channel = channels[TRAINING_CHANNEL]
    elif len(channels) == 1:
        channel = next(iter(channels.values()))
    elif not channels:
        raise ValueError("no input channel: SM_CHANNEL_TRAINING is not set; launch the job with a training input")
    else:
        raise ValueError(f"several input channels ({', '.join(sorted(channels))}) and none named {TRAINING_CHANNEL!r}")

    if relative in (None, ""):
        manifest = channel / DEFAULT_MANIFEST
        return manifest if manifest.is_file() else channel
    dataset = (channel / relative).resolve()
    if not dataset.is_relative_to(channel.resolve()):
        raise ValueError(f"dataset hyperparameter {relative!r} points outside the input channel {channel}")
    if not dataset.exists():
        raise ValueError(f"dataset {relative!r} not found in the input channel {channel}")
    return dataset


def _is_true(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def train_arguments(environment: SageMakerEnvironment, options: Mapping[str, argparse.Action]) -> list[str]:
    """Build the `train` command line from the environment and hyperparameters.

    Hyperparameter keys are `train` flag names with `-` or `_` (`img-size`, `img_size`).
    A flag without a value (`compile`, `no-channels-last`) is passed when its value is
    true (True, "true", "1"). A list becomes a comma-separated value.

    Raises:
        ValueError: An unknown hyperparameter, or one that SageMaker decides (`out`, `overwrite`).
    """
    hyperparameters = {key.replace("_", "-"): value for key, value in environment.hyperparameters.items()}
    dataset = resolve_dataset(environment, hyperparameters.pop(DATASET_KEY, None))
    arguments = ["train", str(dataset), "--out", str(environment.model_dir)]

    checkpoint_dir = str(hyperparameters.pop(CHECKPOINT_DIR_KEY, DEFAULT_CHECKPOINT_DIR))
    if CHECKPOINT_DIR_KEY in options:
        arguments += ["--checkpoint-dir", checkpoint_dir]
    else:
        log.warning("This version of `train` has no --checkpoint-dir; checkpoints stay in %s/checkpoints and are not synced to S3", environment.model_dir)

    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        if key in REJECTED_KEYS:
            raise ValueError(f"hyperparameter {key!r} is not allowed on SageMaker: {REJECTED_KEYS[key]}")
        action = options.get(key)
        if action is None or key == "help":
            valid = sorted(name for name in options if name not in REJECTED_KEYS and name != "help")
            raise ValueError(f"unknown hyperparameter {key!r}; valid: {DATASET_KEY}, {', '.join(valid)}")
        if action.nargs == 0:
            if _is_true(value):
                arguments.append(f"--{key}")
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(item) for item in value)
        arguments += [f"--{key}", str(value)]
    return arguments


def child_command(environment: SageMakerEnvironment, arguments: Sequence[str]) -> list[str]:
    """Return the command that runs `train`: under torchrun for several GPUs or hosts, else plain Python."""
    processes_per_node = max(environment.num_gpus, 1)
    if processes_per_node == 1 and len(environment.hosts) == 1:
        return [sys.executable, "-m", WORKER_MODULE, *arguments]
    if environment.current_host not in environment.hosts:
        raise ValueError(f"SM_CURRENT_HOST {environment.current_host!r} is not in SM_HOSTS {environment.hosts}")
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(len(environment.hosts)),
        "--node-rank", str(environment.hosts.index(environment.current_host)),
        "--nproc-per-node", str(processes_per_node),
        "--master-addr", environment.hosts[0],
        "--master-port", str(MASTER_PORT),
        "-m", WORKER_MODULE, *arguments,
    ]


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the child's environment: this package importable, tuned malloc, slow progress bars.

    tqdm redraws a progress bar with carriage returns every 0.1 s by default, and CloudWatch
    Logs keeps every redraw. TQDM_MININTERVAL=60 (read by tqdm 4.66 and later) redraws
    once a minute. Each epoch's log line carries the metrics anyway.
    """
    from species_classifier.runtime import TUNED_ALLOCATOR_ENV

    package_parent = str(Path(__file__).resolve().parents[2])
    python_path = environ.get("PYTHONPATH", "")
    environment = {**TUNED_ALLOCATOR_ENV, **environ}
    environment["PYTHONPATH"] = package_parent + (os.pathsep + python_path if python_path else "")
    environment.setdefault("TQDM_MININTERVAL", "60")
    return environment


def run_child(command: Sequence[str], environment: Mapping[str, str]) -> int:
    """Run the training process, forwarding SIGTERM and SIGINT to it; returns its exit status."""
    process = subprocess.Popen(list(command), env=dict(environment))

    def forward(signal_number: int, frame: Any) -> None:
        log.warning("Received %s: forwarding it to the training process %d", signal.Signals(signal_number).name, process.pid)
        process.send_signal(signal_number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def copy_output_files(model_dir: Path, output_data_dir: Path) -> list[Path]:
    """Copy the run folder's top-level files except weights (report, metrics, predictions) to `output_data_dir`."""
    output_data_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
            shutil.copy2(path, output_data_dir / path.name)
            copied.append(output_data_dir / path.name)
    return copied


def write_failure_reason(output_dir: Path | None, message: str) -> None:
    """Write `message` to OUTPUT_DIR/failure (/opt/ml/output/failure), which SageMaker shows as the job's FailureReason."""
    if output_dir is None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "failure").write_text(message[:1000] + "\n")


def run_sagemaker_job(environ: Mapping[str, str], argv: Sequence[str]) -> int:
    """Run training for one SageMaker host; returns the process exit status."""
    try:
        environment = read_environment(environ, argv)
    except ValueError as error:
        log.error("%s", error)
        if environ.get("SM_OUTPUT_DIR"):
            write_failure_reason(Path(environ["SM_OUTPUT_DIR"]), str(error))
        return 2
    try:
        arguments = train_arguments(environment, train_options(build_train_parser()[1]))
        command = child_command(environment, arguments)
    except ValueError as error:
        log.error("%s", error)
        write_failure_reason(environment.output_dir, str(error))
        return 2

    log.info("Host %s of %d, %d GPU(s): %s", environment.current_host, len(environment.hosts), environment.num_gpus, " ".join(command))
    status = run_child(command, child_environment(environ))
    if status != 0:
        log.error("Training exited with status %d", status)
        write_failure_reason(environment.output_dir, f"species-classifier train exited with status {status}; see the job's CloudWatch log for the error")
        return status

    # NOTE: with several hosts, only the first one (torchrun rank 0) writes the bundle. This path
    # has run as two CPU torchrun nodes on one machine, not yet as a multi-instance SageMaker job.
    if environment.is_master:
        copied = copy_output_files(environment.model_dir, environment.output_data_dir)
        log.info("Copied %d report and metrics files to %s", len(copied), environment.output_data_dir)
    return 0


def run_train_command(argv: Sequence[str]) -> int:
    """Run `train ARGS`, as `species-classifier train` does, without importing the other stages."""
    from species_classifier.cli import configure_logging

    args = build_train_parser()[0].parse_args(["train", *argv])
    configure_logging()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("Interrupted")
        return 130
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the SageMaker entry point, or the `train` command when the first argument is `train`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return run_train_command(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_sagemaker_job(os.environ if environ is None else environ, argv)


if __name__ == "__main__":
    sys.exit(main())
