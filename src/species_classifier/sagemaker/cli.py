"""The `sagemaker` subcommand: `sagemaker train`, `sagemaker deploy` and `sagemaker invoke`.

`sagemaker train` takes the same training flags as `train` and sends them as
hyperparameters. A flag's value comes from, in rising priority: the `train` default, the
config file, the --dry-run preset, the command line. To tell a flag given on the command
line from a default, every option of `sagemaker train` is parsed with default SUPPRESS,
and its default is applied in `resolve_training_values` and `resolve_launch_values`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from species_classifier.cli import HelpFormatter
from species_classifier.config import ConfigError, load_section
from species_classifier.sagemaker.deploy import DEFAULT_ENDPOINT_INSTANCE_TYPE
from species_classifier.sagemaker.entry import build_train_parser
from species_classifier.sagemaker.launch import (
    DEFAULT_BASE_JOB_NAME,
    DEFAULT_FRAMEWORK_VERSION,
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_PY_VERSION,
)

log = logging.getLogger(__name__)

# `train` options that the container decides (run folder, checkpoint folder) or that make
# no sense for a new job; `sagemaker train` does not offer them.
EXCLUDED_TRAIN_DESTS = {"help", "dataset", "config", "out", "overwrite", "checkpoint_dir"}

# Defaults of the launcher's own options (see the module docstring for why they are not
# argparse defaults).
LAUNCH_DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "role": None,
    "region": None,
    "profile": None,
    "instance_type": DEFAULT_INSTANCE_TYPE,
    "instance_count": 1,
    "volume_size": 50,
    "spot": True,
    "max_run": 24 * 3600,
    "max_wait": None,
    "output_uri": None,
    "checkpoint_uri": None,
    "job_name": None,
    "base_job_name": DEFAULT_BASE_JOB_NAME,
    "framework_version": DEFAULT_FRAMEWORK_VERSION,
    "py_version": DEFAULT_PY_VERSION,
    "input_mode": "File",
    "tag": [],
    "wait": False,
    "dry_run": False,
}
# --dry-run: a cheap job that runs the whole path (data, training, bundle, report) in minutes.
DRY_RUN_TRAINING = {"other_fraction": 0.05, "epochs": 1, "folds": 1, "img_size": 128}
DRY_RUN_LAUNCH = {"instance_type": "ml.m5.xlarge", "max_run": 3600}


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `sagemaker` with its nested subcommands `train`, `deploy` and `invoke`."""
    parser = subparsers.add_parser(
        "sagemaker",
        help="train on Amazon SageMaker, deploy a bundle to an endpoint, send a photo to it",
        description=(
            "Launch a SageMaker training job, create a SageMaker endpoint from a trained run, or send a photo "
            "to an endpoint. Needs the SageMaker Python SDK v2 (pip install 'species-classifier[sagemaker]') "
            "and AWS credentials (the usual AWS_* variables, ~/.aws files or --profile)."
        ),
    )
    nested = parser.add_subparsers(dest="sagemaker_command", metavar="SUBCOMMAND")
    add_train_parser(nested)
    add_deploy_parser(nested)
    add_invoke_parser(nested)

    def print_usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=print_usage)


def _add_aws_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    group = parser.add_argument_group("AWS")
    default = argparse.SUPPRESS if suppress else None
    group.add_argument("--region", default=default, help="AWS region, e.g. us-east-1 (default: AWS_REGION or the profile's region)")
    group.add_argument("--profile", default=default, help="AWS CLI profile for credentials (default: the usual credential chain)")


def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def parse_key_values(items: list[str], flag: str) -> dict[str, str]:
    """Turn ["KEY=VALUE", ...] into a dict.

    Raises:
        ValueError: An item without `=` or with an empty key.
    """
    values = {}
    for item in items:
        key, separator, value = str(item).partition("=")
        if not separator or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        values[key] = value
    return values


# ---------------------------------------------------------------------------------------
# sagemaker train


def add_train_parser(nested: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `sagemaker train`: the launcher's options plus every `train` training flag."""
    parser = nested.add_parser(
        "train",
        help="launch a SageMaker training job with the `train` flags as hyperparameters",
        description=(
            "Launch a SageMaker training job with the PyTorch estimator of the SageMaker Python SDK v2. The job runs "
            "`species-classifier train` on the photos under an S3 prefix and writes the same run folder as a local run "
            "to the job's model.tar.gz, so `package`, `serve` and `evaluate` work on it once extracted. Training flags "
            "are the flags of `train`. Spot instances are used by default: the container's /opt/ml/checkpoints is "
            "synced with --checkpoint-uri, so an interrupted job resumes where it stopped."
        ),
        epilog=(
            "Values come from, in rising priority: the defaults shown here, the config file ([train] for training "
            "flags, [sagemaker] for the other options; keys are the long flag names), --dry-run, the command line. "
            "This command opts out of the SageMaker SDK's telemetry unless your SDK defaults config sets "
            "SageMaker.PythonSDK.Modules.TelemetryOptOut."
        ),
    )
    parser.add_argument(
        "dataset", nargs="?", default=argparse.SUPPRESS, metavar="S3_DATASET",
        help="s3://BUCKET/PREFIX/manifest.csv (photo paths relative to its folder, which becomes the input channel) "
        "or s3://BUCKET/PREFIX/ holding <Genus_species>/ subfolders",
    )
    parser.add_argument("--config", dest="config_file", metavar="FILE.toml", default=argparse.SUPPRESS, help="read values from the [train] and [sagemaker] tables of a TOML file")
    parser.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS,
        help="launch a small job that checks the whole setup: --other-fraction 0.05, --epochs 1, --folds 1, "
        "--img-size 128 on one ml.m5.xlarge (CPU) with --max-run 3600; flags given on the command line win",
    )
    parser.add_argument("--wait", action="store_true", default=argparse.SUPPRESS, help="stream the job's log until it ends (default: return once the job has started)")

    job = parser.add_argument_group("SageMaker job")
    job.add_argument("--role", default=argparse.SUPPRESS, metavar="ARN", help="IAM role that SageMaker assumes to read the data and write results (required)")
    job.add_argument("--instance-type", default=argparse.SUPPRESS, help=f"training instance type (default: {DEFAULT_INSTANCE_TYPE}, one NVIDIA A10G GPU)")
    job.add_argument("--instance-count", type=int, default=argparse.SUPPRESS, help="instances; more than 1 runs torchrun across them (default: 1)")
    job.add_argument("--volume-size", type=int, default=argparse.SUPPRESS, metavar="GB", help="EBS volume per instance for the photos and the run, in GB (default: 50)")
    job.add_argument("--spot", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help="use spot instances, which cost less and may be interrupted (default: --spot)")
    job.add_argument("--max-run", type=int, default=argparse.SUPPRESS, metavar="SECONDS", help="stop the job after this much training time (default: 86400)")
    job.add_argument("--max-wait", type=int, default=argparse.SUPPRESS, metavar="SECONDS", help="spot only: stop the job after this much time including waits for spot capacity; at least --max-run (default: twice --max-run)")
    job.add_argument("--input-mode", choices=("File", "FastFile"), default=argparse.SUPPRESS, help="File copies the photos to the instance before training; FastFile streams them from S3 (default: File)")
    job.add_argument("--output-uri", default=argparse.SUPPRESS, metavar="S3_URI", help="S3 prefix for the source code, model.tar.gz, output.tar.gz and checkpoints (default: s3://DATASET_BUCKET/species-classifier)")
    job.add_argument("--checkpoint-uri", default=argparse.SUPPRESS, metavar="S3_URI", help="S3 prefix synced with the container's /opt/ml/checkpoints; reuse a previous job's to resume it (default: OUTPUT_URI/JOB_NAME/checkpoints)")
    job.add_argument("--job-name", default=argparse.SUPPRESS, help="training job name, unique in the account and region (default: BASE_JOB_NAME plus a timestamp)")
    job.add_argument("--base-job-name", default=argparse.SUPPRESS, help=f"prefix of generated job names (default: {DEFAULT_BASE_JOB_NAME})")
    job.add_argument("--framework-version", default=argparse.SUPPRESS, help=f"PyTorch version of the SageMaker training container (default: {DEFAULT_FRAMEWORK_VERSION})")
    job.add_argument("--py-version", default=argparse.SUPPRESS, help=f"Python version of the training container; 3.11 or newer (default: {DEFAULT_PY_VERSION})")
    job.add_argument("--tag", action="append", type=_key_value, default=argparse.SUPPRESS, metavar="KEY=VALUE", help="tag the training job; repeat for several tags")
    _add_aws_options(parser, suppress=True)

    for title, actions in training_action_groups():
        group = parser.add_argument_group(f"training: {title}")
        for action in actions:
            _copy_train_action(group, action)
    parser.set_defaults(func=run_train)
    return parser


def training_action_groups() -> list[tuple[str, list[argparse.Action]]]:
    """Return `train`'s option groups (title, actions) without the options in EXCLUDED_TRAIN_DESTS."""
    train_parser = build_train_parser()[1]
    groups = []
    for group in train_parser._action_groups:
        actions = [action for action in group._group_actions if action.option_strings and action.dest not in EXCLUDED_TRAIN_DESTS]
        if actions:
            groups.append((group.title or "options", actions))
    return groups


def _copy_train_action(group: argparse._ArgumentGroup, action: argparse.Action) -> None:
    help_text = action.help or ""
    if action.dest == "targets":
        help_text += " (required)"
    if action.default is not None and action.nargs != 0 and "%(default)" not in help_text:
        default = ",".join(str(item) for item in action.default) if isinstance(action.default, list) else action.default
        help_text += f" (default: {default})"
    if action.nargs == 0:
        # store_true and store_false flags (--compile, --no-channels-last).
        group.add_argument(*action.option_strings, dest=action.dest, action="store_const", const=action.const, default=argparse.SUPPRESS, help=help_text)
        return
    group.add_argument(
        *action.option_strings, dest=action.dest, type=action.type, choices=action.choices,
        metavar=action.metavar, default=argparse.SUPPRESS, help=help_text,
    )


def _convert_config_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """Convert a TOML value as argparse would convert the flag's text."""
    if isinstance(value, list) and action.nargs in (None, "?"):
        value = ",".join(str(item) for item in value)
    if isinstance(value, str) and callable(action.type):
        try:
            value = action.type(value)
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ConfigError(f"--config {path}: invalid value {value!r} for {key} ({error})") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def resolve_training_values(args: argparse.Namespace, dry_run: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge `train` defaults, the [train] table, the --dry-run preset and the command line.

    Returns (values, hyperparameters). `values` maps every `train` dest to its value, and
    `hyperparameters` contains the values that differ from `train`'s defaults, keyed by flag name.

    Raises:
        ConfigError: An unknown key or invalid value in the [train] table.
        ValueError: A value `train` rejects (checked with `train`'s own validation).
    """
    from species_classifier.train.cli import config_from_args

    actions = {action.dest: action for _, group in training_action_groups() for action in group}
    defaults = {dest: action.default for dest, action in actions.items()}
    values = dict(defaults)

    config_path = getattr(args, "config_file", None)
    if config_path:
        for key, value in load_section(config_path, "train").items():
            if key in EXCLUDED_TRAIN_DESTS:
                log.info("--config %s: [train] %s is not used on SageMaker", config_path, key)
                continue
            if key not in actions:
                raise ConfigError(f"--config {config_path}: unknown key in [train]: {key}; valid: {', '.join(sorted(actions))}")
            values[key] = _convert_config_value(actions[key], key, value, config_path)
    if dry_run:
        values.update(DRY_RUN_TRAINING)
    values.update({dest: getattr(args, dest) for dest in actions if hasattr(args, dest)})

    # `train`'s own checks (targets present, counts and ranges valid); the dataset is in S3.
    check = build_train_parser()[1].parse_args(["s3-dataset"])
    vars(check).update(values)
    config_from_args(check)

    hyperparameters = {}
    for dest, action in actions.items():
        value = values[dest]
        if value == defaults[dest]:
            continue
        name = next(option for option in action.option_strings if option.startswith("--"))[2:]
        if action.nargs == 0:
            if value == action.const:
                hyperparameters[name] = True
        elif isinstance(value, (list, tuple)):
            hyperparameters[name] = ",".join(str(item) for item in value)
        else:
            hyperparameters[name] = value
    return values, hyperparameters


def launch_actions() -> dict[str, argparse.Action]:
    """Return the argparse actions of the launcher's own options, by dest."""
    scratch = argparse.ArgumentParser()
    parser = add_train_parser(scratch.add_subparsers())
    return {action.dest: action for action in parser._actions if action.dest in LAUNCH_DEFAULTS}


def resolve_launch_values(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the launcher's defaults, the [sagemaker] table, the --dry-run preset and the command line.

    Raises:
        ConfigError: An unknown key or invalid value in the [sagemaker] table.
    """
    actions = launch_actions()
    values = dict(LAUNCH_DEFAULTS)
    config_path = getattr(args, "config_file", None)
    if config_path:
        for key, value in load_section(config_path, "sagemaker").items():
            if key not in LAUNCH_DEFAULTS:
                raise ConfigError(f"--config {config_path}: unknown key in [sagemaker]: {key}; valid: {', '.join(sorted(LAUNCH_DEFAULTS))}")
            action = actions[key]
            if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
                if not isinstance(value, bool):
                    raise ConfigError(f"--config {config_path}: {key} must be true or false, got {value!r}")
            elif key == "tag":
                value = [_key_value(str(item)) for item in (value if isinstance(value, list) else [value])]
            else:
                value = _convert_config_value(action, key, value, config_path)
            values[key] = value
    if getattr(args, "dry_run", values["dry_run"]):
        values.update(DRY_RUN_LAUNCH)
    values.update({dest: getattr(args, dest) for dest in LAUNCH_DEFAULTS if hasattr(args, dest)})
    return values


def build_training_job_spec(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Build the TrainingJobSpec from the parsed arguments; returns it and the launch values (region, profile, wait)."""
    from species_classifier.sagemaker.launch import TrainingJobSpec

    launch = resolve_launch_values(args)
    _, hyperparameters = resolve_training_values(args, dry_run=launch["dry_run"])
    if not launch["dataset"]:
        raise ValueError("sagemaker train: S3_DATASET is missing, e.g. s3://my-bucket/photos/manifest.csv")
    spec = TrainingJobSpec(
        dataset_uri=launch["dataset"],
        role=launch["role"] or "",
        hyperparameters=hyperparameters,
        output_uri=launch["output_uri"],
        checkpoint_uri=launch["checkpoint_uri"],
        instance_type=launch["instance_type"],
        instance_count=launch["instance_count"],
        volume_size_gb=launch["volume_size"],
        spot=launch["spot"],
        max_run_s=launch["max_run"],
        max_wait_s=launch["max_wait"],
        input_mode=launch["input_mode"],
        base_job_name=launch["base_job_name"],
        job_name=launch["job_name"],
        framework_version=launch["framework_version"],
        py_version=launch["py_version"],
        tags=parse_key_values(launch["tag"], "--tag"),
    )
    return spec, launch


def run_train(args: argparse.Namespace) -> int:
    """Launch the training job and print its name and how to follow it."""
    from species_classifier.sagemaker.launch import check_spec, launch_training_job
    from species_classifier.sagemaker.session import aws_errors, create_session

    spec, launch = build_training_job_spec(args)
    check_spec(spec)
    log.info("Hyperparameters: %s", json.dumps(spec.hyperparameters, sort_keys=True))
    with aws_errors("launching the training job"):
        session = create_session(launch["region"], launch["profile"])
        job = launch_training_job(spec, session, wait=launch["wait"])
    print(job.follow_instructions())
    return 0


# ---------------------------------------------------------------------------------------
# sagemaker deploy


def add_deploy_parser(nested: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `sagemaker deploy`."""
    parser = nested.add_parser(
        "deploy",
        help="create a SageMaker endpoint from a packaged bundle, a run folder or a training job",
        description=(
            "Create a SageMaker real-time endpoint that runs the SageMaker PyTorch inference container with a "
            "model.tar.gz built by `species-classifier package`. MODEL is the S3 URI of such an archive, a local "
            "one (uploaded to --upload-uri), or a local run folder (packaged, then uploaded). --training-job "
            "downloads a finished job's run folder, packages it and uploads it instead."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help="s3://.../model.tar.gz, a local model.tar.gz, or a local run folder")
    parser.add_argument("--training-job", metavar="NAME", help="deploy the run folder of this completed training job instead of MODEL")
    parser.add_argument("--role", metavar="ARN", help="IAM role that SageMaker assumes to read the model from S3 (required)")
    parser.add_argument("--upload-uri", metavar="S3_URI", help="S3 prefix for the packaged model.tar.gz of a local MODEL (required then); with --training-job, default: a serving/ folder beside the job's model.tar.gz")
    parser.add_argument("--endpoint-name", help="endpoint name, unique in the account and region (default: species-classifier plus a timestamp)")
    parser.add_argument("--instance-type", default=DEFAULT_ENDPOINT_INSTANCE_TYPE, help="endpoint instance type; CPU types run the fold ensemble in PyTorch on CPU")
    parser.add_argument("--instance-count", type=int, default=1, help="endpoint instances")
    parser.add_argument("--framework-version", default=DEFAULT_FRAMEWORK_VERSION, help="PyTorch version of the SageMaker inference container (2.1 or newer)")
    parser.add_argument("--py-version", default=DEFAULT_PY_VERSION, help="Python version of the inference container")
    parser.add_argument("--env", action="append", type=_key_value, default=[], metavar="KEY=VALUE", help="environment variable for the model container, e.g. SPECIES_CLASSIFIER_DEFAULT_THRESHOLD=0.7; repeat for several")
    parser.add_argument("--tag", action="append", type=_key_value, default=[], metavar="KEY=VALUE", help="tag the model, endpoint configuration and endpoint; repeat for several")
    parser.add_argument("--wait", action="store_true", help="return when the endpoint is InService (usually 5 to 10 minutes) instead of right after the request")
    _add_aws_options(parser)
    parser.set_defaults(func=run_deploy)
    return parser


def run_deploy(args: argparse.Namespace) -> int:
    """Resolve the model archive, create the endpoint and print how to use it."""
    from species_classifier.sagemaker.deploy import DeploySpec, deploy_endpoint, package_training_job, resolve_model_data
    from species_classifier.sagemaker.session import aws_errors, create_session

    if bool(args.model) == bool(args.training_job):
        raise ValueError("sagemaker deploy: give either MODEL or --training-job NAME")
    if not args.role:
        raise ValueError("--role is missing: the ARN of an IAM role that SageMaker can assume to read the model from S3")
    environment = parse_key_values(args.env, "--env")
    tags = parse_key_values(args.tag, "--tag")
    with aws_errors("deploying the endpoint"):
        session = create_session(args.region, args.profile)
        if args.training_job:
            model_data = package_training_job(args.training_job, args.upload_uri, session)
        else:
            model_data = resolve_model_data(args.model, args.upload_uri, session)
        spec = DeploySpec(
            model_data_uri=model_data, role=args.role, endpoint_name=args.endpoint_name, instance_type=args.instance_type,
            instance_count=args.instance_count, framework_version=args.framework_version, py_version=args.py_version,
            environment=environment, tags=tags,
        )
        endpoint = deploy_endpoint(spec, session, wait=args.wait)
    print(endpoint.follow_instructions())
    return 0


# ---------------------------------------------------------------------------------------
# sagemaker invoke


def add_invoke_parser(nested: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `sagemaker invoke`."""
    parser = nested.add_parser(
        "invoke",
        help="send a photo to a SageMaker endpoint and print its JSON result",
        description=(
            "Send a photo to an endpoint created by `sagemaker deploy` and print the JSON result: the predicted "
            "species and probabilities, or with --species the verification of that species. Needs boto3 only."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("endpoint", metavar="ENDPOINT", help="endpoint name")
    parser.add_argument("photo", type=Path, metavar="PHOTO", help="image file (JPEG, PNG, WebP, GIF, BMP or TIFF)")
    parser.add_argument("--species", help="verify this scientific name instead of predicting (sent as JSON with the base64 image)")
    parser.add_argument("--content-type", help="content type of a raw photo (default: from the file extension, e.g. image/jpeg for .jpg)")
    _add_aws_options(parser)
    parser.set_defaults(func=run_invoke)
    return parser


def create_runtime_client(region: str | None, profile: str | None) -> Any:
    """Create a boto3 sagemaker-runtime client.

    Raises:
        ValueError: No region is given or configured.
    """
    import boto3

    session = boto3.Session(profile_name=profile, region_name=region)
    if not session.region_name:
        raise ValueError("no AWS region: pass --region (e.g. us-east-1) or set AWS_REGION")
    return session.client("sagemaker-runtime")


def run_invoke(args: argparse.Namespace) -> int:
    """Send the photo and print the endpoint's JSON result."""
    from species_classifier.sagemaker.deploy import invoke_endpoint
    from species_classifier.sagemaker.session import aws_errors

    with aws_errors(f"invoking endpoint {args.endpoint}"):
        client = create_runtime_client(args.region, args.profile)
        result = invoke_endpoint(client, args.endpoint, args.photo, species=args.species, content_type=args.content_type)
    print(json.dumps(result, indent=2))
    return 0

