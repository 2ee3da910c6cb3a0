"""Options declared once, as dataclass fields: the help (and argparse ``choices``) sit in the field's metadata, where
both ``HfArgumentParser`` (training) and the ``bioscan-clip`` commands read them."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field with its command-line help (it may use ``%(default)s``) and any other argparse keyword."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})
