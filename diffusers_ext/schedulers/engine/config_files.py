"""Scheduler options given as a path to a JSON file a tool wrote (``calibrate-dc --cpr-out``, ``search --out``).

The scheduler reads the file once, at construction, and keeps its contents in the config, so
``save_pretrained`` / ``from_pretrained`` do not need the file afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def read_option_file(option: str, path: str | os.PathLike, choices: str, parse: Callable[[Any], Any],
                     shipped: str) -> Any:
    """The JSON contents of ``path``, checked by ``parse`` (which raises ValueError); errors name the option,
    the path and ``choices`` (what the option accepts). ``shipped``: what a string that is no file may have
    meant (e.g. "shipped CPR")."""
    where = f"{option}={os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise ValueError(f"Unknown {shipped} or file {where}: no such file. {option} takes {choices}")
    try:
        with open(path) as f:
            contents = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: not valid JSON ({error}). {option} takes {choices}") from None
    try:
        parse(contents)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return contents
