"""Create a SageMaker endpoint from a packaged bundle, and send a photo to it.

The endpoint runs the SageMaker PyTorch inference container with the archive that
`species-classifier package` builds (`serve/package.py`): the container unpacks it into
/opt/ml/model and loads `code/inference.py` from there, as SAGEMAKER_PROGRAM and
SAGEMAKER_SUBMIT_DIRECTORY tell it.
"""

from __future__ import annotations

import base64
import json
import logging
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from species_classifier.sagemaker.launch import DEFAULT_FRAMEWORK_VERSION, DEFAULT_PY_VERSION
from species_classifier.sagemaker.session import console_url, import_sdk, join_s3_uri, split_s3_uri

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT_INSTANCE_TYPE = "ml.m5.xlarge"
DEFAULT_BASE_NAME = "species-classifier"
ARCHIVE_NAME = "model.tar.gz"
HANDLER_MEMBER = "code/inference.py"
SERVING_ENVIRONMENT = {
    "SAGEMAKER_PROGRAM": "inference.py",
    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
}
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class EndpointRequestError(ValueError):
    """A SageMaker request that failed, with the service's or the model's message."""


@dataclass
class DeploySpec:
    """Settings of the CreateModel, CreateEndpointConfig and CreateEndpoint requests that `deploy_endpoint` sends."""

    model_data_uri: str
    role: str
    endpoint_name: str | None = None
    instance_type: str = DEFAULT_ENDPOINT_INSTANCE_TYPE
    instance_count: int = 1
    framework_version: str = DEFAULT_FRAMEWORK_VERSION
    py_version: str = DEFAULT_PY_VERSION
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeployedEndpoint:
    """An endpoint that SageMaker is creating (or has created, after a wait)."""

    name: str
    model_name: str
    region: str
    model_data_uri: str

    def follow_instructions(self) -> str:
        """Return the commands that wait for the endpoint, call it and delete it."""
        return "\n".join([
            f"Creating SageMaker endpoint {self.name} in {self.region} (model {self.model_name}, data {self.model_data_uri}).",
            f"  wait:    aws sagemaker wait endpoint-in-service --region {self.region} --endpoint-name {self.name}",
            f"  invoke:  species-classifier sagemaker invoke {self.name} PHOTO.jpg --region {self.region}",
            f"  console: {console_url(self.region, 'endpoints/' + self.name)}",
            f"  delete:  aws sagemaker delete-endpoint --region {self.region} --endpoint-name {self.name}",
        ])


def check_serving_archive(path: Path) -> None:
    """Check that a local model.tar.gz is a serving archive, not a training job's run folder.

    Raises:
        ValueError: The file is not a gzip tar, or it has no code/inference.py.
    """
    try:
        with tarfile.open(path, "r:gz") as archive:
            names = {name.removeprefix("./") for name in archive.getnames()}
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"{path}: not a readable .tar.gz ({error})") from None
    if HANDLER_MEMBER not in names:
        raise ValueError(
            f"{path} has no {HANDLER_MEMBER}: it is not a serving archive. Extract a training job's "
            "model.tar.gz into a folder and deploy the folder, or use --training-job NAME"
        )


def upload_file(session: Any, path: Path, uri: str) -> str:
    """Upload `path` to the S3 object `uri`; returns `uri`."""
    bucket, key = split_s3_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"expected an S3 object URI ending in a file name, got {uri!r}")
    log.info("Uploading %s (%.1f MB) to %s", path, path.stat().st_size / 1e6, uri)
    session.s3_client.upload_file(str(path), bucket, key)
    return uri


def package_and_upload(run_dir: Path, upload_prefix: str, session: Any) -> str:
    """Package a run folder with `build_sagemaker_archive` and upload it to UPLOAD_PREFIX/model.tar.gz."""
    from species_classifier.serve.package import build_sagemaker_archive

    with tempfile.TemporaryDirectory(prefix="species-classifier-package-") as folder:
        archive = build_sagemaker_archive(run_dir, Path(folder) / ARCHIVE_NAME)
        return upload_file(session, archive, join_s3_uri(upload_prefix, ARCHIVE_NAME))


def resolve_model_data(source: str, upload_prefix: str | None, session: Any) -> str:
    """Return the S3 URI of a serving model.tar.gz for `source`, packaging and uploading local files.

    `source` is an S3 URI of a packaged model.tar.gz (used as it is), a local run folder
    (packaged, then uploaded), or a local packaged model.tar.gz (uploaded).

    Raises:
        ValueError: A local source without `upload_prefix`, an S3 URI that is not a
            .tar.gz, or a local archive without code/inference.py.
        FileNotFoundError: The local path does not exist.
    """
    if source.startswith("s3://"):
        split_s3_uri(source)
        if not source.endswith(".tar.gz"):
            raise ValueError(f"expected the S3 URI of a model.tar.gz built by `species-classifier package`, got {source!r}")
        return source

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (give a run folder, a model.tar.gz or an s3:// URI)")
    if upload_prefix is None:
        raise ValueError(f"--upload-uri is missing: an S3 prefix to upload {path} to, e.g. s3://my-bucket/species-classifier/models/")
    if path.is_dir():
        return package_and_upload(path, upload_prefix, session)
    check_serving_archive(path)
    return upload_file(session, path, join_s3_uri(upload_prefix, ARCHIVE_NAME))


def package_training_job(job_name: str, upload_prefix: str | None, session: Any) -> str:
    """Download a finished training job's run folder, package it for serving and upload it.

    The serving archive goes to UPLOAD_PREFIX/model.tar.gz, by default to a `serving/`
    folder beside the job's model.tar.gz. Returns its S3 URI.

    Raises:
        EndpointRequestError: The job is not found or has not completed.
    """
    from botocore.exceptions import ClientError

    try:
        description = session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    except ClientError as error:
        raise EndpointRequestError(f"training job {job_name}: {error}") from None
    status = description.get("TrainingJobStatus")
    artifact = description.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if status != "Completed" or not artifact:
        raise EndpointRequestError(f"training job {job_name} is {status}, not Completed; deploy it when it has finished")

    bucket, key = split_s3_uri(artifact)
    prefix = upload_prefix or join_s3_uri(artifact.rsplit("/", 1)[0], "serving")
    with tempfile.TemporaryDirectory(prefix="species-classifier-job-") as folder:
        downloaded = Path(folder) / ARCHIVE_NAME
        log.info("Downloading %s", artifact)
        session.s3_client.download_file(bucket, key, str(downloaded))
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        with tarfile.open(downloaded, "r:gz") as archive:
            # The "data" filter rejects absolute paths, links out of the folder and device files.
            archive.extractall(run_dir, filter="data")
        return package_and_upload(run_dir, prefix, session)


def deploy_endpoint(spec: DeploySpec, session: Any, wait: bool = False) -> DeployedEndpoint:
    """Create the model, endpoint configuration and endpoint with the SDK's PyTorchModel.

    With `wait`, returns when the endpoint is InService (usually 5 to 10 minutes).

    Raises:
        ValueError: An instance count below 1 or a missing role.
    """
    if not spec.role:
        raise ValueError("--role is missing: the ARN of an IAM role that SageMaker can assume to read the model from S3")
    if spec.instance_count < 1:
        raise ValueError(f"--instance-count must be at least 1, got {spec.instance_count}")
    import_sdk()
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.utils import name_from_base

    endpoint_name = spec.endpoint_name or name_from_base(DEFAULT_BASE_NAME)
    model_name = name_from_base(DEFAULT_BASE_NAME)
    split_s3_uri(spec.model_data_uri)

    model = PyTorchModel(
        model_data=spec.model_data_uri,
        role=spec.role,
        framework_version=spec.framework_version,
        py_version=spec.py_version,
        # No entry_point: the archive already contains code/inference.py, so the SDK neither
        # repacks nor uploads code. Without code_location the SDK would still look up (and
        # create) its default bucket sagemaker-REGION-ACCOUNT.
        env={**SERVING_ENVIRONMENT, **spec.environment},
        name=model_name,
        code_location=spec.model_data_uri.rsplit("/", 1)[0],
        sagemaker_session=session,
    )
    log.info("Creating endpoint %s on %d x %s from %s", endpoint_name, spec.instance_count, spec.instance_type, spec.model_data_uri)
    model.deploy(
        initial_instance_count=spec.instance_count,
        instance_type=spec.instance_type,
        endpoint_name=endpoint_name,
        tags=[{"Key": key, "Value": value} for key, value in spec.tags.items()] or None,
        wait=wait,
    )
    return DeployedEndpoint(name=endpoint_name, model_name=model_name, region=session.boto_region_name, model_data_uri=spec.model_data_uri)


def photo_content_type(photo: Path) -> str:
    """Return the content type for a photo file from its extension (application/x-image when unknown)."""
    return CONTENT_TYPES.get(photo.suffix.lower(), "application/x-image")


def invoke_endpoint(runtime_client: Any, endpoint_name: str, photo: Path, species: str | None = None, content_type: str | None = None) -> dict[str, Any]:
    """Send a photo to the endpoint and return its JSON result.

    Without `species` the body is the raw image, and the result is the prediction. With
    `species` the body is `{"image": "<base64>", "species": ...}`, and the result is the
    verification of that species.

    Raises:
        FileNotFoundError: `photo` does not exist.
        EndpointRequestError: SageMaker or the model rejected the request.
    """
    from botocore.exceptions import ClientError

    data = photo.read_bytes()
    if species is None:
        body, kind = data, content_type or photo_content_type(photo)
    else:
        body, kind = json.dumps({"image": base64.b64encode(data).decode("ascii"), "species": species}), "application/json"
    try:
        response = runtime_client.invoke_endpoint(EndpointName=endpoint_name, ContentType=kind, Accept="application/json", Body=body)
    except ClientError as error:
        details = error.response.get("Error", {})
        status = error.response.get("OriginalStatusCode")
        message = error.response.get("OriginalMessage") or details.get("Message") or str(error)
        prefix = f"endpoint {endpoint_name} returned HTTP {status}" if status else f"endpoint {endpoint_name}: {details.get('Code', 'request failed')}"
        raise EndpointRequestError(f"{prefix}: {message}") from None
    payload = response["Body"].read()
    try:
        return json.loads(payload)
    except json.JSONDecodeError:
        raise EndpointRequestError(f"endpoint {endpoint_name} returned a non-JSON body: {payload[:200]!r}") from None
