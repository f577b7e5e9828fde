"""SageMaker Python SDK v2 sessions, S3 URIs and the SDK import.

The SDK is an optional dependency (`pip install 'species-classifier[sagemaker]'`): the
training container and the local stages never import it.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'species-classifier[sagemaker]' (the SageMaker Python SDK v2, sagemaker>=2.257,<3)"


class SageMakerSetupError(ValueError):
    """A missing SDK, region or setting that keeps a SageMaker request from being built."""


class AwsRequestError(ValueError):
    """An AWS request that failed (credentials, permissions, limits, a missing resource)."""


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore errors raised while doing `action` into AwsRequestError with the service's message.

    The CLI prints a ValueError's message without a traceback, and these messages name
    the cause (AccessDenied, ResourceLimitExceeded, no credentials) already.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        details = error.response.get("Error", {})
        raise AwsRequestError(f"{action} failed: {details.get('Code', 'error')}: {details.get('Message', error)}") from error
    except BotoCoreError as error:
        raise AwsRequestError(f"{action} failed: {error}; check the AWS credentials, --profile and --region") from error


def import_sdk() -> Any:
    """Import the `sagemaker` package (SDK v2), or raise SageMakerSetupError with the install command."""
    # We pin SDK v2 on purpose (its PyTorch estimator), so its v3 migration warning is noise.
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    try:
        import sagemaker
    except ImportError:
        raise SageMakerSetupError(f"the SageMaker Python SDK is not installed; {INSTALL_HINT}") from None
    major = int(sagemaker.__version__.split(".")[0])
    if major != 2:
        raise SageMakerSetupError(f"sagemaker {sagemaker.__version__} is installed, but this command needs SDK v2; {INSTALL_HINT}")
    return sagemaker


def with_telemetry_opt_out(config: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of the SDK defaults config with TelemetryOptOut set, unless the config sets it already.

    SDK v2 (2.257) sends a usage record to an S3 URL of AWS after `estimator.fit` unless
    `SageMaker.PythonSDK.Modules.TelemetryOptOut` is true. This tool opts out unless the
    user's own SDK defaults config (~/.config/sagemaker/config.yaml) sets the key.
    """
    config = copy.deepcopy(config) if config else {}
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules.setdefault("TelemetryOptOut", True)
    return config


def create_session(region: str | None = None, profile: str | None = None) -> Any:
    """Create a `sagemaker.Session` for `region` and the AWS CLI `profile` (None: the default chain).

    Raises:
        SageMakerSetupError: The SDK is missing, or no region is given or configured.
    """
    sagemaker = import_sdk()
    import boto3
    from sagemaker.config import load_sagemaker_config

    boto_session = boto3.Session(profile_name=profile, region_name=region)
    if not boto_session.region_name:
        raise SageMakerSetupError("no AWS region: pass --region (e.g. us-east-1) or set AWS_REGION")
    config = with_telemetry_opt_out(load_sagemaker_config())
    return sagemaker.Session(boto_session=boto_session, sagemaker_config=config)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into (bucket, key); the key may be empty.

    Raises:
        ValueError: `uri` does not start with s3:// or has no bucket.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an S3 URI like s3://bucket/prefix/, got {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket name")
    return bucket, key


def join_s3_uri(base: str, *parts: str) -> str:
    """Join S3 URI parts with single slashes: join_s3_uri("s3://b/p/", "job", "x") == "s3://b/p/job/x"."""
    pieces = [base.rstrip("/")] + [part.strip("/") for part in parts if part.strip("/")]
    return "/".join(pieces)


def console_url(region: str, path: str) -> str:
    """Return the SageMaker console URL for `path` (e.g. `jobs/NAME`, `endpoints/NAME`) in `region`."""
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{path}"
