"""`species-classifier sagemaker train|deploy|invoke`: help, value precedence, and whole commands
against a loopback moto server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

import species_classifier.cli as main_cli
from species_classifier.config import ConfigError
from species_classifier.sagemaker import cli, session as session_module
from species_classifier.train.recipe import TrainConfig
from tests.sagemaker.conftest import (
    BUCKET,
    PREDICTION,
    REGION,
    ROLE,
    TARGETS,
    ContainerRun,
    capture_requests,
    json_body,
    only_request,
    runtime_client,
)

DATASET = f"s3://{BUCKET}/datasets/baltimore/manifest.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="species-classifier")
    subparsers = parser.add_subparsers(dest="command")
    cli.add_subcommands(subparsers)
    return parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["sagemaker", "train", *argv])


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Return the help output with line breaks and indentation collapsed to single spaces."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture()
def with_sagemaker_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register this module with the main command, as it is once listed in COMMAND_MODULES."""
    if "species_classifier.sagemaker.cli" not in main_cli.COMMAND_MODULES:
        monkeypatch.setattr(main_cli, "COMMAND_MODULES", (*main_cli.COMMAND_MODULES, "species_classifier.sagemaker.cli"))


@pytest.fixture()
def captured_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Record the SageMaker requests of every session that the commands create."""
    requests: list[tuple[str, dict]] = []
    create_session = session_module.create_session

    def create_recording_session(region: str | None = None, profile: str | None = None) -> Any:
        session = create_session(region, profile)
        capture_requests(session, requests)
        return session

    monkeypatch.setattr(session_module, "create_session", create_recording_session)
    return requests


# --- help -----------------------------------------------------------------------------------


def test_sagemaker_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "sagemaker")
    for name in ("train", "deploy", "invoke"):
        assert name in text


def test_train_help_offers_train_flags(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "sagemaker", "train")
    for flag in ("--targets", "--img-size", "--epochs", "--precision", "--compile", "--no-channels-last", "--lr-multipliers"):
        assert flag in text
    for flag in ("--role", "--spot", "--max-wait SECONDS", "--checkpoint-uri", "--dry-run", "--volume-size GB"):
        assert flag in text
    assert f"(default: {TrainConfig().epochs})" in text  # --epochs, from `train`'s defaults
    assert "(default: 86400)" in text  # --max-run
    # Options that SageMaker decides are not offered.
    for flag in ("--out ", "--overwrite", "--checkpoint-dir"):
        assert flag not in text


def test_deploy_and_invoke_help(capsys: pytest.CaptureFixture[str]) -> None:
    deploy_text = help_text(capsys, "sagemaker", "deploy")
    assert "--training-job NAME" in deploy_text
    assert "--upload-uri S3_URI" in deploy_text
    assert "(default: ml.m5.xlarge)" in deploy_text
    invoke_text = help_text(capsys, "sagemaker", "invoke")
    assert "--species" in invoke_text
    assert "PHOTO" in invoke_text


# --- value precedence -------------------------------------------------------------------------


def test_hyperparameters_hold_changed_values_only() -> None:
    default_epochs = TrainConfig().epochs
    values, hyperparameters = cli.resolve_training_values(
        parse(DATASET, "--targets", TARGETS, "--epochs", str(default_epochs), "--folds", "5", "--compile", "--no-channels-last")
    )
    assert hyperparameters == {"targets": TARGETS, "folds": 5, "compile": True, "no-channels-last": True}
    assert values["epochs"] == default_epochs
    assert values["channels_last"] is False


def test_config_file_then_dry_run_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "project.toml"
    config.write_text(
        "[train]\n"
        'dataset = "data/local/manifest.csv"\n'  # a local path, ignored on SageMaker
        'targets = ["Lycorma delicatula", "Acer rubrum"]\n'
        "epochs = 8\nfolds = 4\nlr-multipliers = [0.2, 1.0]\nbatch_size = 64\n"
        "[sagemaker]\n"
        f'dataset = "{DATASET}"\nrole = "{ROLE}"\ninstance-type = "ml.g5.2xlarge"\nspot = false\ntag = ["team=ml"]\n'
    )
    args = parse("--config", str(config), "--dry-run", "--epochs", "2", "--instance-type", "ml.c5.2xlarge")
    spec, launch = cli.build_training_job_spec(args)

    # [train] < --dry-run < command line.
    assert spec.hyperparameters == {
        "targets": TARGETS, "epochs": 2, "folds": 1, "other-fraction": 0.05, "img-size": 128,
        "lr-multipliers": "0.2,1.0", "batch-size": 64,
    }
    # [sagemaker] < --dry-run < command line.
    assert spec.dataset_uri == DATASET
    assert spec.role == ROLE
    assert spec.instance_type == "ml.c5.2xlarge"
    assert spec.max_run_s == 3600
    assert spec.spot is False
    assert spec.tags == {"team": "ml"}
    assert launch["dry_run"] is True


def test_dry_run_preset() -> None:
    spec, _ = cli.build_training_job_spec(parse(DATASET, "--role", ROLE, "--targets", TARGETS, "--dry-run"))
    assert spec.hyperparameters == {"targets": TARGETS, "epochs": 1, "folds": 1, "other-fraction": 0.05, "img-size": 128}
    assert spec.instance_type == "ml.m5.xlarge"
    assert spec.max_run_s == 3600
    assert spec.spot is True


@pytest.mark.parametrize(
    "table,message",
    [
        ("[train]\nlearning_rate = 0.1\n", r"unknown key in \[train\]: learning_rate"),
        ("[train]\nprecision = \"fp8\"\n", "precision must be one of fp32, bf16, fp16"),
        ("[sagemaker]\nspot = \"yes\"\n", "spot must be true or false"),
        ("[sagemaker]\nbucket = \"x\"\n", r"unknown key in \[sagemaker\]: bucket"),
    ],
)
def test_config_errors(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(table)
    with pytest.raises(ConfigError, match=message):
        cli.build_training_job_spec(parse(DATASET, "--targets", TARGETS, "--config", str(config)))


@pytest.mark.parametrize(
    "argv,message",
    [
        ((DATASET, "--role", ROLE), "--targets is missing"),
        ((DATASET, "--targets", TARGETS, "--folds", "0"), "--folds must be at least 1"),
        (("--targets", TARGETS), "S3_DATASET is missing"),
        ((DATASET, "--targets", TARGETS, "--tag", "a=1", "--tag", "b=2", "--lr", "-1"), "--lr must be positive"),
    ],
)
def test_invalid_values_fail_before_launch(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cli.build_training_job_spec(parse(*argv))


def test_tag_needs_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(DATASET, "--tag", "no-equals-sign")
    assert "expected KEY=VALUE" in capsys.readouterr().err


# --- whole commands through species_classifier.cli.main ---------------------------------------


def test_main_without_subcommand_prints_help(with_sagemaker_command: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_cli.main(["sagemaker"]) == 2
    assert "train" in capsys.readouterr().out


def test_main_reports_missing_role(with_sagemaker_command: None, caplog: pytest.LogCaptureFixture) -> None:
    assert main_cli.main(["sagemaker", "train", DATASET, "--targets", TARGETS]) == 2
    assert "--role is missing" in caplog.text


def test_main_launches_dry_run(
    with_sagemaker_command: None, moto: str, captured_requests: list, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main_cli.main([
        "sagemaker", "train", DATASET, "--role", ROLE, "--targets", TARGETS, "--dry-run",
        "--job-name", "species-dry-run", "--region", REGION,
    ])
    assert code == 0
    output = capsys.readouterr().out
    assert "Started SageMaker training job species-dry-run in us-east-1." in output
    assert "aws logs tail /aws/sagemaker/TrainingJobs --region us-east-1 --log-stream-name-prefix species-dry-run/ --follow" in output

    request = only_request(captured_requests, "CreateTrainingJob")
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    hyperparameters = {key: json.loads(value) for key, value in request["HyperParameters"].items()}
    assert hyperparameters["epochs"] == 1
    assert hyperparameters["folds"] == 1
    assert hyperparameters["img-size"] == 128
    assert hyperparameters["other-fraction"] == 0.05


def test_main_deploys_run_folder(
    with_sagemaker_command: None, moto: str, captured_requests: list, container_run: ContainerRun, capsys: pytest.CaptureFixture[str]
) -> None:
    assert container_run.returncode == 0, container_run.log[-3000:]
    code = main_cli.main([
        "sagemaker", "deploy", str(container_run.model_dir), "--role", ROLE, "--upload-uri", f"s3://{BUCKET}/models/run-1",
        "--endpoint-name", "species-endpoint", "--env", "SPECIES_CLASSIFIER_DEFAULT_THRESHOLD=0.6",
    ])
    assert code == 0
    assert "Creating SageMaker endpoint species-endpoint in us-east-1" in capsys.readouterr().out
    model = only_request(captured_requests, "CreateModel")
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/models/run-1/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["SPECIES_CLASSIFIER_DEFAULT_THRESHOLD"] == "0.6"
    assert only_request(captured_requests, "CreateEndpoint")["EndpointName"] == "species-endpoint"


def test_main_deploy_needs_one_source(with_sagemaker_command: None, caplog: pytest.LogCaptureFixture) -> None:
    assert main_cli.main(["sagemaker", "deploy", "--role", ROLE]) == 2
    assert "give either MODEL or --training-job NAME" in caplog.text


def test_main_invokes_endpoint(
    with_sagemaker_command: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff fake jpeg")
    client = runtime_client()
    stubber = Stubber(client)
    stubber.add_response(
        "invoke_endpoint",
        {"Body": json_body(PREDICTION), "ContentType": "application/json"},
        {"EndpointName": "species-endpoint", "ContentType": "image/jpeg", "Accept": "application/json", "Body": photo.read_bytes()},
    )
    monkeypatch.setattr(cli, "create_runtime_client", lambda region, profile: client)
    with stubber:
        assert main_cli.main(["sagemaker", "invoke", "species-endpoint", str(photo)]) == 0
    assert json.loads(capsys.readouterr().out) == PREDICTION


def test_main_reports_unknown_profile(with_sagemaker_command: None, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("sagemaker", reason="the SageMaker Python SDK v2 is not installed")
    code = main_cli.main(["sagemaker", "train", DATASET, "--role", ROLE, "--targets", TARGETS, "--profile", "no-such-profile"])
    assert code == 2
    assert "launching the training job failed: The config profile (no-such-profile) could not be found" in caplog.text


def test_aws_errors_keep_service_message() -> None:
    from botocore.exceptions import ClientError

    error = ClientError({"Error": {"Code": "ResourceLimitExceeded", "Message": "ml.g5.xlarge for spot training: limit 0"}}, "CreateTrainingJob")
    with pytest.raises(session_module.AwsRequestError, match="launching failed: ResourceLimitExceeded: ml.g5.xlarge for spot training: limit 0"):
        with session_module.aws_errors("launching"):
            raise error
