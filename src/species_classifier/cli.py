"""The `species-classifier` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence

from species_classifier import __version__
from species_classifier.config import apply_config_defaults
from species_classifier.runtime import reexec_with_tuned_allocator

log = logging.getLogger("species_classifier")

# Each module registers its own subcommands with `add_subcommands(subparsers)`, so a
# stage's flags live beside its code. Listed in pipeline order, as `--help` shows them.
COMMAND_MODULES = (
    "species_classifier.inat.cli",      # collect, download
    "species_classifier.train.cli",     # train
    "species_classifier.evaluate.cli",  # evaluate
    "species_classifier.model.cli",     # average-folds
    "species_classifier.predict_cli",   # predict
    "species_classifier.serve.cli",     # serve, export, package
    "species_classifier.sagemaker.cli", # sagemaker train, deploy, invoke
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" to option help, except where it would mislead.

    Skipped: empty defaults (None, "", False, []), on/off switches, and help that
    already states its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        empty = default is None or default is False or default == "" or default == []
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if empty or switch or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Build the command parser; each subparser is reachable as `parser.subcommands[name]`."""
    parser = argparse.ArgumentParser(
        prog="species-classifier",
        description="Turn iNaturalist photos into a species classifier: collect, download, train, evaluate, predict, serve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # a stage that is not part of this build
        module.add_subcommands(subparsers)
    parser.subcommands = subparsers.choices
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


# Options whose value may start with a minus sign (a region whose first latitude is
# south of the equator). argparse would read "-34.6,..." as an unknown option.
NEGATIVE_VALUE_OPTIONS = ("--target-region", "--confuser-region", "--other-region")
_STARTS_NEGATIVE = re.compile(r"^-\.?\d")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """Rewrite `--target-region -34.6,...` as `--target-region=-34.6,...` so argparse accepts it."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in NEGATIVE_VALUE_OPTIONS and index + 1 < len(argv) and _STARTS_NEGATIVE.match(argv[index + 1]):
            joined.append(f"{token}={argv[index + 1]}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    from_command_line = argv is None
    argv = join_negative_values(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        if getattr(args, "config", None) and not getattr(args, "reads_config_itself", False):
            apply_config_defaults(parser.subcommands[args.command], args.config, args.command)
            args = parser.parse_args(argv)
        if from_command_line and getattr(args, "tune_allocator", False):
            reexec_with_tuned_allocator()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("Interrupted")
        return 130
    except (ValueError, FileNotFoundError) as error:
        # The package's own errors (dataset, labels, splits, bundle, images) subclass
        # ValueError, and their message names the value and the fix, so no traceback.
        log.debug("Error details", exc_info=True)
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
