"""The sources every command can name, and which of their splits play each retrieval role. Imports no builder, so
that option parsers (``--source`` choices) and the query readers stay light."""

from __future__ import annotations

_5M_RETRIEVAL = {
    "train": ("pretrain", "train"),
    "keys": ("train", "key_unseen"),
    "val_queries_seen": ("val",),
    "val_queries_unseen": ("val_unseen",),
    "test_queries_seen": ("test",),
    "test_queries_unseen": ("test_unseen",),
}
_CLIBD_RETRIEVAL = {
    "train": ("no_split", "train_seen"),
    "keys": ("seen_keys", "val_unseen_keys", "test_unseen_keys"),  # = the metasplit all_keys
    "val_queries_seen": ("val_seen",),
    "val_queries_unseen": ("val_unseen",),
    "test_queries_seen": ("test_seen",),
    "test_queries_unseen": ("test_unseen",),
}

# A BOLD export is a reference library by default (partition "none": one split "train", whose records are all
# training records and all keys, with no queries); with partition "clibd" it has the CLIBD splits. The two sets of
# split names do not overlap, so one table serves both.
_BOLD_RETRIEVAL = {
    "train": ("train", *_CLIBD_RETRIEVAL["train"]),
    "keys": ("train", *_CLIBD_RETRIEVAL["keys"]),
    **{role: names for role, names in _CLIBD_RETRIEVAL.items() if role not in ("train", "keys")},
}

RETRIEVAL_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "bioscan5m": _5M_RETRIEVAL,
    "mini": _5M_RETRIEVAL,
    "bioscan1m": _CLIBD_RETRIEVAL,
    "bold": _BOLD_RETRIEVAL,
}
"""For each source, the disjoint splits that make up each role of the retrieval protocol.

Roles: ``train`` (contrastive training data), ``keys`` (the labelled database every query is compared against:
seen and unseen keys together, so unseen queries compete with all keys, open set, as in the paper),
``{val,test}_queries_{seen,unseen}``. BIOSCAN-5M (and mini-BIOSCAN): its ``train`` split is both training data
and seen keys (CLIBD ``map_dict``). BIOSCAN-1M: the CLIBD partition (train = ``no_split_and_seen_train``,
keys = ``all_keys``). BOLD exports: with ``partition="none"`` (the default) the one ``train`` split is both the
training records and the keys (a reference library: every record a key, no queries); with ``partition="clibd"``
the CLIBD splits as for BIOSCAN-1M. Concatenate the listed splits of ``as_dataset()`` to get a role's records.
"""
