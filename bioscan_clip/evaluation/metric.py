"""Where the installed ``taxonomic_retrieval`` evaluate metric lives, and its module.

The metric's source is ``metrics/taxonomic_retrieval/`` (an ``evaluate`` folder that imports nothing of ours, so it
also loads from the Hub on its own). ``pyproject.toml`` installs that folder as the ``bioscan_clip.taxonomic_retrieval``
package, in a wheel and in an editable install alike, so nothing here depends on a source checkout.

Example:

>>> import evaluate
>>> from bioscan_clip.evaluation.metric import METRIC_DIR, metric_module
>>> (METRIC_DIR / "taxonomic_retrieval.py").is_file(), (METRIC_DIR / "README.md").is_file()
(True, True)
>>> metric = evaluate.load(str(METRIC_DIR))
>>> metric.name
'taxonomic_retrieval'
>>> metric_module().harmonic_mean(0.5, 0.25)
0.3333333333333333
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from types import ModuleType

# metrics/taxonomic_retrieval/ installed under this name (pyproject.toml); its __init__.py imports nothing.
_PACKAGE = "bioscan_clip.taxonomic_retrieval"

METRIC_DIR: Path = Path(importlib.import_module(_PACKAGE).__file__).resolve().parent
"""The folder holding ``taxonomic_retrieval.py`` and its card ``README.md``: ``evaluate.load(str(METRIC_DIR))``."""


@cache
def metric_module() -> ModuleType:
    """The metric's Python module (``compute_taxonomic_accuracy``, ``harmonic_mean``, ``TaxonomicRetrieval``, ...).

    Imported once, as ``bioscan_clip.taxonomic_retrieval.taxonomic_retrieval``; callers that only need the numbers
    use ``metric_module().compute_taxonomic_accuracy(...)`` and skip evaluate's Arrow cache.

    Returns:
        `types.ModuleType`: the module of ``METRIC_DIR / "taxonomic_retrieval.py"``.
    """
    return importlib.import_module(f"{_PACKAGE}.taxonomic_retrieval")
