"""Endpoints: the model archive (S3, local archive, run folder, training job), the requests sent to a
loopback moto server, and `invoke` through a botocore Stubber."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from species_classifier.sagemaker import deploy
from species_classifier.sagemaker.session import create_session
from tests.sagemaker.conftest import (
    BUCKET,
    PREDICTION,
    REGION,
    ROLE,
    ContainerRun,
    capture_requests,
    json_body,
    only_request,
    runtime_client,
)

def archive_members(s3: Any, uri: str) -> set[str]:
    key = uri.split(f"s3://{BUCKET}/", 1)[1]
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        return set(archive.getnames())


@pytest.fixture()
def trained_run(container_run: ContainerRun) -> Path:
    assert container_run.returncode == 0, container_run.log[-3000:]
    return container_run.model_dir


# --- model archive ------------------------------------------------------------------------


def test_resolve_model_data_keeps_s3_archive() -> None:
    uri = f"s3://{BUCKET}/models/model.tar.gz"
    assert deploy.resolve_model_data(uri, None, session=None) == uri


def test_resolve_model_data_rejects_s3_folder() -> None:
    with pytest.raises(ValueError, match="expected the S3 URI of a model.tar.gz"):
        deploy.resolve_model_data(f"s3://{BUCKET}/models/", None, session=None)


def test_resolve_model_data_needs_upload_uri(trained_run: Path) -> None:
    with pytest.raises(ValueError, match="--upload-uri is missing"):
        deploy.resolve_model_data(str(trained_run), None, session=None)


def test_resolve_model_data_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model not found"):
        deploy.resolve_model_data(str(tmp_path / "nothing"), f"s3://{BUCKET}/models", session=None)


def test_training_archive_is_not_serving_archive(trained_run: Path, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(trained_run / "model.json", arcname="model.json")
    with pytest.raises(ValueError, match="has no code/inference.py: it is not a serving archive"):
        deploy.check_serving_archive(archive)


def test_run_folder_is_packaged_and_uploaded(moto: str, s3, trained_run: Path) -> None:  # noqa: ANN001 - boto3 client
    session = create_session(REGION)
    uri = deploy.resolve_model_data(str(trained_run), f"s3://{BUCKET}/models/run-1/", session)
    assert uri == f"s3://{BUCKET}/models/run-1/model.tar.gz"
    members = archive_members(s3, uri)
    assert {"model.json", "fold_0.safetensors", "fold_1.safetensors", "code/inference.py", "code/requirements.txt"} <= members


def test_training_job_is_packaged(moto: str, s3, trained_run: Path) -> None:  # noqa: ANN001 - boto3 client
    # A completed job in moto, whose model.tar.gz contains the run folder as SageMaker packs SM_MODEL_DIR.
    sagemaker_client = boto3.client("sagemaker", region_name=REGION)
    sagemaker_client.create_training_job(
        TrainingJobName="finished-job",
        AlgorithmSpecification={"TrainingImage": "image", "TrainingInputMode": "File"},
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/species-classifier"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    artifact = sagemaker_client.describe_training_job(TrainingJobName="finished-job")["ModelArtifacts"]["S3ModelArtifacts"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(trained_run.iterdir()):
            tar.add(path, arcname=path.name)
    s3.put_object(Bucket=BUCKET, Key=artifact.split(f"s3://{BUCKET}/", 1)[1], Body=buffer.getvalue())

    session = create_session(REGION)
    uri = deploy.package_training_job("finished-job", None, session)
    assert uri == artifact.rsplit("/", 1)[0] + "/serving/model.tar.gz"
    assert {"model.json", "fold_0.safetensors", "code/inference.py"} <= archive_members(s3, uri)


def test_unknown_training_job(moto: str) -> None:
    session = create_session(REGION)
    with pytest.raises(deploy.EndpointRequestError, match="training job missing-job"):
        deploy.package_training_job("missing-job", None, session)


# --- CreateModel, CreateEndpointConfig, CreateEndpoint -------------------------------------


def test_deploy_sends_endpoint_requests(moto: str) -> None:
    session = create_session(REGION)
    requests = capture_requests(session)
    spec = deploy.DeploySpec(
        model_data_uri=f"s3://{BUCKET}/models/run-1/model.tar.gz",
        role=ROLE,
        endpoint_name="species-endpoint",
        instance_type="ml.c5.xlarge",
        instance_count=2,
        environment={"SPECIES_CLASSIFIER_DEFAULT_THRESHOLD": "0.7"},
        tags={"project": "species"},
    )
    endpoint = deploy.deploy_endpoint(spec, session)

    model = only_request(requests, "CreateModel")
    container = model["PrimaryContainer"]
    assert container["Image"].endswith("/pytorch-inference:2.6-cpu-py312")
    assert container["ModelDataUrl"] == spec.model_data_uri
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert container["Environment"]["SAGEMAKER_REGION"] == REGION
    assert container["Environment"]["SPECIES_CLASSIFIER_DEFAULT_THRESHOLD"] == "0.7"
    assert model["ExecutionRoleArn"] == ROLE
    assert model["ModelName"] == endpoint.model_name

    config = only_request(requests, "CreateEndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == endpoint.model_name
    assert variant["InstanceType"] == "ml.c5.xlarge"
    assert variant["InitialInstanceCount"] == 2

    created = only_request(requests, "CreateEndpoint")
    assert created["EndpointName"] == "species-endpoint"
    assert created["EndpointConfigName"] == config["EndpointConfigName"]
    assert {"Key": "project", "Value": "species"} in created["Tags"]
    assert endpoint.name == "species-endpoint"
    assert "aws sagemaker wait endpoint-in-service" in endpoint.follow_instructions()


def test_deploy_without_role() -> None:
    spec = deploy.DeploySpec(model_data_uri=f"s3://{BUCKET}/m/model.tar.gz", role="")
    with pytest.raises(ValueError, match="--role is missing"):
        deploy.deploy_endpoint(spec, session=None)


# --- invoke -------------------------------------------------------------------------------


def test_invoke_sends_raw_photo(tmp_path: Path) -> None:
    photo = tmp_path / "leaf.JPG"
    photo.write_bytes(b"\xff\xd8\xff fake jpeg")
    client = runtime_client()
    with Stubber(client) as stubber:
        stubber.add_response(
            "invoke_endpoint",
            {"Body": json_body(PREDICTION), "ContentType": "application/json"},
            {"EndpointName": "species-endpoint", "ContentType": "image/jpeg", "Accept": "application/json", "Body": photo.read_bytes()},
        )
        result = deploy.invoke_endpoint(client, "species-endpoint", photo)
        stubber.assert_no_pending_responses()
    assert result == PREDICTION


def test_invoke_verifies_species(tmp_path: Path) -> None:
    photo = tmp_path / "bug.png"
    photo.write_bytes(b"\x89PNG fake")
    body = json.dumps({"image": base64.b64encode(photo.read_bytes()).decode(), "species": "Lycorma delicatula"})
    client = runtime_client()
    with Stubber(client) as stubber:
        stubber.add_response(
            "invoke_endpoint",
            {"Body": json_body({"match": True}), "ContentType": "application/json"},
            {"EndpointName": "species-endpoint", "ContentType": "application/json", "Accept": "application/json", "Body": body},
        )
        assert deploy.invoke_endpoint(client, "species-endpoint", photo, species="Lycorma delicatula") == {"match": True}


def test_invoke_reports_model_error(tmp_path: Path) -> None:
    photo = tmp_path / "photo.webp"
    photo.write_bytes(b"RIFF fake")
    client = runtime_client()
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message="Received client error (422) from primary",
            http_status_code=424,
            modeled_fields={"OriginalStatusCode": 422, "OriginalMessage": "unknown species 'Quercus alba'"},
        )
        with pytest.raises(deploy.EndpointRequestError, match=r"returned HTTP 422: unknown species 'Quercus alba'"):
            deploy.invoke_endpoint(client, "species-endpoint", photo)


@pytest.mark.parametrize("name,expected", [("a.jpeg", "image/jpeg"), ("a.TIF", "image/tiff"), ("a.heic", "application/x-image")])
def test_photo_content_type(name: str, expected: str) -> None:
    assert deploy.photo_content_type(Path(name)) == expected
