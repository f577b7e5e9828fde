"""Serving: the HTTP service (`serve`), ONNX export (`export`) and SageMaker packaging (`package`).

Modules, one concept each:

- `settings`: limits and runtime settings of the service, with their defaults.
- `calibration`: reads `calibration.json` (temperature and per-species thresholds).
- `ensemble`: turns per-fold logits into ensemble, calibrated and per-fold probabilities.
- `export`: writes the fold ensemble as one ONNX graph into the run folder.
- `backends`: one interface over OpenVINO, ONNX Runtime and PyTorch.
- `precision`: the check that a reduced-precision backend keeps every decision.
- `batching`: gathers concurrent requests into batches for the backend.
- `service`: the loaded classifier that routes call (decode, preprocess, infer, decide).
- `inputs`: the request-body parsing dependency shared by all image routes.
- `limits`: body-size, concurrency and timeout middleware.
- `schemas`, `app`, `cli`: the HTTP contract, the FastAPI routes, the subcommands.
- `sagemaker_handler`, `package`: the SageMaker `inference.py` and the `model.tar.gz` builder.

This package's `__init__` imports nothing, so the SageMaker handler can import the
numpy-only modules without FastAPI installed.
"""
