"""``bioscan-clip demo``: serve the Gradio demo of ``space/app.py`` on a trained model and its key folder.

The app itself lives in ``space/app.py`` so that the ``space/`` folder can be pushed as a Hugging Face Space
unchanged; this module only loads it (from the source checkout beside the package) and forwards the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SPACE_APP = Path(__file__).resolve().parent.parent / "space" / "app.py"
_MODULE_NAME = "bioscan_clip_space_app"


def load_space_app(path: Path = SPACE_APP) -> ModuleType:
    """Imports ``space/app.py`` as a module (it is a Space entry point, not part of the installed package)."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the demo app was not found; `bioscan-clip demo` needs a source checkout "
            "(pip install -e .) or run `python space/app.py` from the repository"
        )
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``bioscan-clip demo`` (those of ``python space/app.py``)."""
    return load_space_app().add_arguments(parser)


def run_demo(args: argparse.Namespace) -> int:
    """Serves the demo (binds 127.0.0.1 unless ``--host`` says otherwise) until interrupted."""
    return load_space_app().run(args)
