"""Subcommands `serve`, `export` and `package`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from species_classifier.cli import HelpFormatter
from species_classifier.serve.settings import BACKEND_CHOICES, PRECISION_CHOICES, ServeSettings

log = logging.getLogger(__name__)

_DEFAULTS = ServeSettings()


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    _add_serve(subparsers)
    _add_export(subparsers)
    _add_package(subparsers)


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a trained run over HTTP (predict, verify, web page, SageMaker /ping and /invocations)",
        description=(
            "Serve a trained run folder over HTTP. GET / is a web page to verify photos, POST /v1/verify and "
            "/v1/predict are the app API, GET /ping and POST /invocations are the SageMaker container contract. "
            "ONNX backends use RUN/onnx/model.onnx and export it first when it is missing or stale."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder written by `train` (contains model.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 listens on every interface")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (SageMaker expects 8080)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")

    runtime = parser.add_argument_group("inference runtime")
    runtime.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=_DEFAULTS.backend,
        help="inference runtime; auto tries openvino, onnxruntime, pytorch in that order",
    )
    runtime.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=_DEFAULTS.precision,
        help="fp32; reduced (OpenVINO's reduced-precision hint, e.g. bf16, allowed only after "
        "`export --check-precision` passed); auto: reduced when such a check passed, else fp32",
    )
    runtime.add_argument("--threads", type=int, default=_DEFAULTS.threads, help="inference threads; 0 = runtime default (all cores)")
    runtime.add_argument(
        "--no-export",
        action="store_true",
        help="do not export a missing or stale ONNX graph; auto then falls back to pytorch",
    )

    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--max-batch-size", type=int, default=_DEFAULTS.max_batch_size, help="largest batch of concurrent requests run at once (images)"
    )
    batching.add_argument(
        "--batch-wait-ms",
        type=float,
        default=_DEFAULTS.batch_wait_ms,
        help="how long a request waits for others to join its batch, in milliseconds",
    )

    limits = parser.add_argument_group("request limits")
    limits.add_argument(
        "--max-body-mb",
        type=float,
        default=_DEFAULTS.max_body_bytes / 2**20,
        help="largest accepted request body in MiB (base64 adds a third to the image size)",
    )
    limits.add_argument(
        "--max-megapixels",
        type=float,
        default=_DEFAULTS.max_pixels / 1e6,
        help="largest accepted image in megapixels (width x height / 1e6); larger images get 413 before decoding",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=_DEFAULTS.request_timeout_s,
        help="seconds an image request may take, upload included, before it gets 503",
    )
    limits.add_argument(
        "--max-concurrency",
        type=int,
        default=_DEFAULTS.max_concurrency,
        help="image requests in progress at once; more get 503 with Retry-After",
    )
    limits.add_argument(
        "--decode-workers", type=int, default=_DEFAULTS.decode_workers, help="threads that decode and preprocess uploads"
    )

    verify = parser.add_argument_group("verify")
    verify.add_argument(
        "--default-threshold",
        type=float,
        default=_DEFAULTS.default_threshold,
        help="verify threshold on the probability of the assigned species when RUN has no calibration.json",
    )
    parser.set_defaults(func=run_serve)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's fold ensemble to ONNX (RUN/onnx/model.onnx)",
        description=(
            "Export every fold of a run as one ONNX graph with a dynamic batch axis (input `pixels`, "
            "output `fold_logits` of shape batch x fold x class), check it against PyTorch (max logit "
            "difference 1e-4), and optionally check OpenVINO's reduced precision on photos."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder written by `train`")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument(
        "--check-precision",
        type=Path,
        metavar="PHOTOS_DIR",
        help="folder of photos (searched recursively) on which OpenVINO's reduced precision must give the same "
        "top predictions and verify decisions as fp32; a pass lets `serve --precision auto` use it",
    )
    parser.set_defaults(func=run_export)


def _add_package(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "package",
        help="build model.tar.gz for the SageMaker PyTorch inference containers",
        description=(
            "Build model.tar.gz: the run's model.json, fold weights and calibration.json, plus code/inference.py "
            "(model_fn, input_fn, predict_fn, output_fn), code/requirements.txt and this package's inference "
            "modules under code/."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder written by `train`")
    parser.add_argument("--output", type=Path, help="archive to write; default RUN/model.tar.gz")
    parser.set_defaults(func=run_package)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        export_missing=not args.no_export,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        request_timeout_s=args.request_timeout,
        max_concurrency=args.max_concurrency,
        decode_workers=args.decode_workers,
        default_threshold=args.default_threshold,
    )


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from species_classifier.model.bundle import read_bundle
    from species_classifier.serve.app import create_app
    from species_classifier.serve.service import ClassifierService

    settings = settings_from_args(args)
    read_bundle(args.run)  # fail fast, before binding the port, on a folder that is not a run
    app = create_app(ClassifierService(args.run, settings))
    log.info("Listening on http://%s:%d (model loading in the background; GET /ping turns 200 when ready)", args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from species_classifier.predict import expand_image_paths
    from species_classifier.serve.export import export_onnx
    from species_classifier.serve.precision import check_reduced_precision

    result = export_onnx(args.run, opset=args.opset)
    print(f"Wrote {result.path} (max logit difference from PyTorch: {result.max_abs_diff:.1e})")
    if args.check_precision is None:
        return 0
    record = check_reduced_precision(args.run, expand_image_paths([str(args.check_precision)]))
    verdict = "passed" if record["passed"] else "failed"
    print(
        f"Precision check {verdict}: {record['precision']} vs fp32 on {record['images']} photos, "
        f"{record['top_prediction_changes']} top-prediction and {record['verify_decision_changes']} of "
        f"{record['verify_decisions']} verify-decision changes, max probability difference "
        f"{record['max_abs_probability_diff']:.1e}"
    )
    return 0 if record["passed"] else 1


def run_package(args: argparse.Namespace) -> int:
    from species_classifier.serve.package import build_sagemaker_archive

    output = args.output or args.run / "model.tar.gz"
    path = build_sagemaker_archive(args.run, output)
    print(f"Wrote {path}")
    return 0
