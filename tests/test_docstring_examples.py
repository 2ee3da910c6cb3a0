"""The `>>>` examples in the public docstrings run and say the truth."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "modeling_bioscanclip.configuration_bioscanclip",
    "modeling_bioscanclip.modeling_bioscanclip",
    "modeling_bioscanclip.tokenization_dna",
    "modeling_bioscanclip.image_processing_bioscanclip",
    "modeling_bioscanclip.processing_bioscanclip",
    "bioscan_clip.baselines.kmer",
    "bioscan_clip.baselines.identity",
    "bioscan_clip.identification.barcode_search",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
