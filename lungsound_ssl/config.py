"""Load dataclass configurations from a YAML file plus command-line overrides.

Each entry point describes its options as dataclasses with ``help`` metadata
and parses them with transformers' ``HfArgumentParser``. A ``--config FILE``
argument names a YAML file whose keys become the defaults; any field can then
be overridden on the command line. Unknown keys in the YAML file or on the
command line are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def _field_names(dataclass_types) -> set[str]:
    names: set[str] = set()
    for dc in dataclass_types:
        names.update(f.name for f in dataclasses.fields(dc) if f.init)
    return names


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of option names to values.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a YAML mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}; pass an existing YAML file to --config")
    with path.open() as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must contain a mapping of option names to values")
    return values


def parse_config(dataclass_types, args: list[str] | None = None):
    """Parse dataclass options from ``--config FILE`` and the command line.

    Args:
        dataclass_types: Dataclass types to fill, e.g. ``(DataConfig, TrainingArguments)``.
        args: Command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        A tuple with one instance per dataclass type, in the given order.

    Raises:
        ValueError: if the YAML file or the command line names an unknown option.
    """
    # allow_abbrev=False: argparse would otherwise take a typo such as --learning_rat as a prefix
    # of --learning_rate, and unknown options must be an error.
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(args)

    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML file with option values; command-line options override it.")
    if known.config:
        values = load_yaml_config(known.config)
        unknown = sorted(set(values) - _field_names(dataclass_types))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} in {known.config}; "
                "run with --help to list the valid options"
            )
        parser.set_defaults(**values)

    outputs = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    *instances, remaining = outputs
    # The parser returns an extra Namespace for --config, which is not a dataclass field.
    instances = [inst for inst in instances if not isinstance(inst, argparse.Namespace)]
    if remaining:
        raise ValueError(f"unknown command-line argument(s): {' '.join(remaining)}; run with --help")
    return tuple(instances)


def run_cli(main, argv=None) -> int:
    """Run an entry point's ``main(argv)``, turning input errors into one log line and exit status 2.

    Errors that name a bad file or option (``ValueError``, ``FileNotFoundError``)
    are the user's to fix, so a traceback would only bury the message.
    """
    import logging

    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("lungsound_ssl").error("%s", error)
        return 2


def config_to_dict(*instances) -> dict[str, Any]:
    """Merge dataclass instances into one plain dict suitable for YAML or JSON."""
    merged: dict[str, Any] = {}
    for inst in instances:
        if hasattr(inst, "to_dict"):
            values = inst.to_dict()
        else:
            values = dataclasses.asdict(inst)
        for key, value in values.items():
            merged[key] = str(value) if isinstance(value, Path) else value
    return merged
