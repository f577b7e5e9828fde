"""Fixtures for the SageMaker tests: dummy AWS settings, a loopback moto server, a network guard,
and one real training run of the container entry point on real photos.

No test reaches AWS: every boto3 client goes to the moto server through AWS_ENDPOINT_URL,
and `network_guard` records any connection to a host other than loopback and fails the test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from species_classifier.sagemaker.launch import build_source_dir

REPO = Path(__file__).resolve().parents[2]
SPECIES_DEV = REPO.parent / "shared" / "datasets" / "species-dev"
REGION = "us-east-1"
BUCKET = "species-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerTraining"
TARGETS = "Lycorma delicatula,Acer rubrum"
OTHER_SPECIES = ("Acer_saccharum", "Columba_livia", "Abies_concolor", "Zenaida_asiatica", "Acer_negundo", "Accipiter_gentilis")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Modules of the collection and serving stages, which the training container does not install.
BLOCKED_IN_CONTAINER = ("polars", "duckdb", "pyinaturalist", "fastapi", "uvicorn", "onnx", "onnxruntime", "openvino", "boto3", "sagemaker")


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Reject and record connections and name lookups for hosts other than loopback.

    Recording matters because the SageMaker SDK swallows errors of its telemetry request.
    """
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address):  # noqa: ANN001, ANN202 - socket API
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in LOOPBACK:
            attempts.append(f"connect {address}")
            raise ConnectionRefusedError(f"test network guard: {address} is not loopback")
        return real_connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - socket API
        if host not in LOOPBACK and host is not None:
            attempts.append(f"getaddrinfo {host}")
            raise socket.gaierror(f"test network guard: {host} is not loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"the test tried to reach non-loopback hosts: {attempts}"


@pytest.fixture(autouse=True)
def aws_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Dummy credentials and region; no ~/.aws files, profiles or real endpoints."""
    missing = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def moto(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every boto3 client at a freshly reset moto server holding the bucket BUCKET.

    Tests with this fixture use the SageMaker SDK and are skipped without it.
    """
    pytest.importorskip("sagemaker", reason="the SageMaker Python SDK v2 is not installed")
    import boto3
    import requests

    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    return moto_server


@pytest.fixture()
def s3(moto: str):  # noqa: ANN201 - boto3 client type
    import boto3

    return boto3.client("s3", region_name=REGION)


@pytest.fixture(scope="session")
def species_dev() -> Path:
    if not (SPECIES_DEV / "Lycorma_delicatula").is_dir():
        pytest.skip(f"real photos not found at {SPECIES_DEV}")
    return SPECIES_DEV


def write_manifest_dataset(species_dev: Path, channel: Path) -> Path:
    """Copy 30 real photos into `channel/photos/` and write `channel/manifest.csv` with relative paths.

    12 spotted lanternfly, 6 red maple, and 2 photos each of 6 other species.
    """
    counts = {"Lycorma_delicatula": 12, "Acer_rubrum": 6, **{name: 2 for name in OTHER_SPECIES}}
    rows = ["path,species_name,observation_id"]
    for folder, count in counts.items():
        (channel / "photos" / folder).mkdir(parents=True, exist_ok=True)
        for photo in sorted((species_dev / folder).glob("*.jpg"))[:count]:
            shutil.copyfile(photo, channel / "photos" / folder / photo.name)
            rows.append(f"photos/{folder}/{photo.name},{folder.replace('_', ' ')},{photo.stem}")
    manifest = channel / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@dataclass
class ContainerRun:
    """One run of the uploaded entry script with the SM_* variables pointing at temporary folders."""

    returncode: int
    log: str
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    channel: Path


# Makes the modules in BLOCKED_IN_CONTAINER fail to import, as if not installed; on
# PYTHONPATH, Python imports it at startup. The spec has no origin, so probes such as
# torch._dynamo's `find_spec` loop skip the module instead of failing.
SITECUSTOMIZE = '''
import importlib.machinery
import sys

BLOCKED = {blocked!r}


class NotInstalledLoader:
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}} (not installed in the SageMaker training container)", name=spec.name)

    def exec_module(self, module):
        raise AssertionError("unreachable")


class BlockContainerMissingModules:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, NotInstalledLoader(), origin=None)
        return None


sys.meta_path.insert(0, BlockContainerMissingModules())
'''


@pytest.fixture(scope="session")
def container_run(species_dev: Path, tmp_path_factory: pytest.TempPathFactory) -> ContainerRun:
    """Run `sagemaker_entry.py` from a built source folder as the training toolkit would.

    The toolkit starts the script with the hyperparameters as `--key value` arguments and
    as JSON in SM_HPS. The modules that the container lacks are blocked in the run.
    """
    root = tmp_path_factory.mktemp("sagemaker-container")
    source = build_source_dir(root / "code")
    channel = root / "input" / "data" / "training"
    write_manifest_dataset(species_dev, channel)
    blocker = root / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED_IN_CONTAINER))

    model_dir, output_dir, checkpoint_dir = root / "model", root / "output", root / "checkpoints"
    hyperparameters = {
        "targets": TARGETS, "img-size": 64, "epochs": 1, "folds": 2, "batch-size": 8, "workers": 0,
        "dataset": "manifest.csv", "checkpoint-dir": str(checkpoint_dir),
    }
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("SM_", "AWS_"))},
        "PYTHONPATH": str(blocker),
        "HF_HUB_OFFLINE": "1",
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
        "SM_CHANNELS": json.dumps(["training"]),
        "SM_CHANNEL_TRAINING": str(channel),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_CURRENT_HOST": "algo-1",
        "SM_HPS": json.dumps(hyperparameters),
    }
    arguments = [item for key, value in hyperparameters.items() for item in (f"--{key}", str(value))]
    completed = subprocess.run(
        [sys.executable, "sagemaker_entry.py", *arguments],
        cwd=source, env=environment, capture_output=True, text=True, timeout=600,
    )
    return ContainerRun(
        returncode=completed.returncode, log=completed.stdout + completed.stderr, model_dir=model_dir,
        output_data_dir=output_dir / "data", checkpoint_dir=checkpoint_dir, channel=channel,
    )


# --- request capture and stubbed responses --------------------------------------------------


def capture_requests(session: Any, requests: list[tuple[str, dict]] | None = None) -> list[tuple[str, dict]]:
    """Record (operation, parameters) of every request the session's SageMaker client sends."""
    requests = [] if requests is None else requests

    def record(params: dict, model: Any, **kwargs: Any) -> None:
        requests.append((model.name, json.loads(json.dumps(params, default=str))))

    session.sagemaker_client.meta.events.register("provide-client-params.sagemaker.*", record)
    return requests


def only_request(requests: list[tuple[str, dict]], operation: str) -> dict:
    matching = [params for name, params in requests if name == operation]
    assert len(matching) == 1, [name for name, _ in requests]
    return matching[0]


PREDICTION = {"species": "Acer rubrum", "probabilities": {"Lycorma delicatula": 0.1, "Acer rubrum": 0.8, "other": 0.1}}


def runtime_client() -> Any:
    import boto3

    return boto3.client("sagemaker-runtime", region_name=REGION)


def json_body(value: dict) -> Any:
    from botocore.response import StreamingBody

    data = json.dumps(value).encode()
    return StreamingBody(io.BytesIO(data), len(data))
