"""The ``taxonomic_retrieval`` evaluate metric, installed as the ``bioscan_clip.taxonomic_retrieval`` package.

This file only marks the folder as a regular package: ``pyproject.toml`` maps ``bioscan_clip.taxonomic_retrieval``
to ``metrics/taxonomic_retrieval`` so the metric ships in the wheel without moving, and setuptools' editable
installs find a remapped sub-package only when it has an ``__init__.py`` (as a namespace package it is not found).
It imports nothing, so locating the folder (``bioscan_clip.evaluation.metric.METRIC_DIR``) costs nothing. ``evaluate.load``
reads ``taxonomic_retrieval.py`` and ignores this file.
"""
