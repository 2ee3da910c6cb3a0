"""The index types a :class:`~bioscan_clip.retrieval.KeyIndex` can build: one parameters record, one table.

:class:`IndexParams` holds every index setting a caller may give (``KeyIndex.build``'s keywords, the ``index``
command's options, :func:`resolve_index_params`'s keywords are all its fields). :data:`INDEX_TYPES` maps each type's
name to an :class:`IndexTypeEntry` saying how to validate its parameters, construct its faiss index and search it.
Adding an index type is one entry here (and, if it has a new setting, one field of :class:`IndexParams`); nothing
else in the package switches on index type names.

``"auto"`` is not an index type but a rule (:func:`resolve_index_params`): exact flat search below
:data:`AUTO_FLAT_MAX_KEYS` keys, IVF-PQ (fast scan) with exact re-ranking from there up, where a flat index's RAM and
per-query time grow past what a user can hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import faiss
import numpy as np

from bioscan_clip.option_fields import option
from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

from .index_file import Layout, flat_layout, hnsw_layout, ivf_layout, ivfpq_layout

AUTO = "auto"
AUTO_FLAT_MAX_KEYS = 200_000
# IVF-PQ candidates re-scored exactly per query when the caller does not say: DEFAULT_RERANK per RERANK_PER_KEYS keys,
# at least DEFAULT_RERANK. The true neighbour's rank among the 4-bit PQ scores grows with the key count, and the
# candidates, not nprobe, are what recall needs: on 2M clustered 768-d keys, nprobe 16/32/64 all gave recall@1 0.925
# with 64 candidates and 0.985 with 128 (benchmarks/bench_index.py measures the defaults from 200k to 5.15M keys).
DEFAULT_RERANK = 64
RERANK_PER_KEYS = 1_000_000
# Hard ceilings of the per-query search settings (IVF lists visited, HNSW beam widths, candidates re-ranked): far above
# any useful value, and low enough that no saved index can make one query allocate more than a few MB (a stored
# efSearch of 2**31-1 made faiss reserve 8.8 GB; an nprobe of 3.4e11 aborted the process).
MAX_SEARCH_WIDTH = 16_384


@dataclass(frozen=True, kw_only=True)
class IndexParams:
    """The index settings a caller chooses; each index type reads the fields it has and ignores the others.

    ``None`` means "chosen from the key count and dimension" (see :func:`resolve_index_params`). Each field's
    ``metadata["help"]`` is its one-line description (the ``index`` command's help); the resolved, validated values are
    what a saved index's manifest holds as ``index_params``.

    Attributes:
        nlist (`int`, *optional*): IVF lists; defaults to about sqrt(keys), at most keys / 39.
        nprobe (`int`, *optional*, defaults to 16): IVF lists visited per query (clipped to ``nlist``).
        hnsw_m (`int`, *optional*, defaults to 32): HNSW graph degree.
        ef_construction (`int`, *optional*, defaults to 80): HNSW build-time beam width.
        ef_search (`int`, *optional*, defaults to 64): HNSW search-time beam width.
        pq_m (`int`, *optional*): IVF-PQ sub-quantisers; must divide ``dim``; defaults to the largest divisor of
            ``dim`` that is at most ``dim / 4`` (``dim / 8`` with fast scan).
        pq_nbits (`int`, *optional*): Bits per IVF-PQ code: 8 by default, 4 (the only choice) with fast scan;
            training needs ``2**pq_nbits`` keys.
        pq_fast_scan (`bool`, *optional*): IVF-PQ as ``faiss.IndexIVFPQFastScan`` (4-bit codes scanned with SIMD
            lookups: several times faster to build and search); on by default only for ``"auto"``.
        rerank (`int`, *optional*): Approximate candidates per query re-scored exactly from the stored vectors, the
            best k of them returned; defaults to :func:`default_rerank` (64 per million keys, at least 64) for IVF-PQ
            and 0 (off) for IVF-Flat / HNSW, whose scores are already exact.
        train_size (`int`, *optional*): Keys (a seeded random sample) that IVF / PQ k-means trains on; defaults to
            ``64 * nlist``, at least 16 384, at most all keys.
    """

    nlist: int | None = option(None, "IVF lists (default about sqrt(keys), at most keys / 39)")
    nprobe: int = option(16, "IVF lists searched per query, at most nlist (default 16)")
    hnsw_m: int = option(32, "HNSW graph degree (default 32)")
    ef_construction: int = option(80, "HNSW build-time beam width (default 80)")
    ef_search: int = option(64, "HNSW search beam width (default 64)")
    pq_m: int | None = option(None, "IVF-PQ sub-quantisers; must divide the dimension")
    pq_nbits: int | None = option(None, "bits per IVF-PQ code (8, or 4 with fast scan)")
    pq_fast_scan: bool | None = option(None, "IVF-PQ as faiss IndexIVFPQFastScan (4-bit codes; on by default for auto)")
    rerank: int | None = option(
        None, "candidates re-scored exactly per query (IVF-PQ default: 64 per million keys, at least 64; others 0)"
    )
    train_size: int | None = option(None, "keys IVF/PQ k-means trains on (default 64 per list, at least 16 384)")

    @classmethod
    def from_options(cls, params: IndexParams | None = None, **options: Any) -> IndexParams:
        """``params`` (or the defaults) with the named ``options`` replacing its fields.

        Raises:
            `TypeError`: an option that is not a field, as for an unknown keyword argument.
        """
        unknown = sorted(set(options) - set(index_option_names()))
        if unknown:
            raise TypeError(f"unknown index option(s) {unknown}; the options are {index_option_names()}")
        return replace(params if params is not None else cls(), **options)


def index_option_names() -> tuple[str, ...]:
    """The names of :class:`IndexParams`' fields, in order (the ``index`` command's index settings)."""
    return tuple(option.name for option in fields(IndexParams))


@dataclass(frozen=True)
class SearchSetting:
    """A parameter :meth:`KeyIndex.set_search_params` may change after the build (saved with the index).

    Attributes:
        owners (`str`): What has it, for the refusal on a type without it, e.g. ``"IVF indexes"``.
        check (`Callable[[Any, Mapping, int], Any]`): ``(value, index params, key count) -> value to store``; raises
            `BioscanInputError` on a value out of range.
        apply (`Callable[[faiss.Index, Any], None]`): Sets the stored value on the faiss index (nothing for a setting
            the search reads from the manifest).
    """

    owners: str
    check: Callable[[Any, Mapping[str, Any], int], Any]
    apply: Callable[[faiss.Index, Any], None] = lambda index, value: None


def _selector_only(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    return faiss.SearchParameters(sel=selector)


@dataclass(frozen=True)
class IndexTypeEntry:
    """How :class:`KeyIndex` builds, searches and reopens one index type.

    Attributes:
        description (`str`): One line for help texts.
        exact (`bool`): Whether search returns the true nearest keys (nothing to measure with ``recall_at_k``).
        resolve (`Callable[[IndexParams, int, int], dict]`): ``(params, count, dim) -> index_params``: the validated
            parameters this type uses (JSON values, saved in the manifest); raises `BioscanInputError` naming a
            parameter and its value.
        new_index (`Callable[[int, Mapping, int], faiss.Index]`): ``(dim, index_params, seed) -> faiss.Index``, empty
            and untrained. Keys are trained on (a sample of ``index_params["train_size"]`` rows, when present) and
            added; scores must be larger-is-better inner products for re-ranking to agree with them.
        search_parameters (`Callable[[faiss.Index, faiss.IDSelector], faiss.SearchParameters]`): The parameters of a
            restricted search: the selector plus the index's own search settings (which faiss would otherwise reset).
        search_settings (`Mapping[str, SearchSetting]`): What :meth:`KeyIndex.set_search_params` may change.
        own_storage (`Callable[[faiss.Index, int], np.ndarray]`, *optional*): The index's own vector storage sized for
            ``count`` rows, which the build fills in place instead of adding (no second copy); ``None``: vectors go
            to a temporary file and are added in batches.
        mmap_on_load (`bool`): Memory-map ``index.faiss`` on load instead of reading it.
        file_layout (`Callable`, *optional*): Walks a saved ``index.faiss`` field by field against the manifest
            before faiss reads it (:mod:`~bioscan_clip.retrieval.index_file`: faiss itself is not hardened against
            hostile files); ``None``: faiss reads the file unchecked (a warning on every load), for a type that is
            never loaded from others.
    """

    description: str
    exact: bool
    resolve: Callable[[IndexParams, int, int], dict[str, Any]]
    new_index: Callable[[int, Mapping[str, Any], int], faiss.Index]
    search_parameters: Callable[[faiss.Index, faiss.IDSelector], faiss.SearchParameters] = _selector_only
    search_settings: Mapping[str, SearchSetting] = field(default_factory=dict)
    own_storage: Callable[[faiss.Index, int], np.ndarray] | None = None
    mmap_on_load: bool = False
    file_layout: Layout | None = None


# ---------------------------------------------------------------------------------------------------- shared checks


def _int_param(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or one error naming the parameter and the value."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise BioscanInputError(f"{name} must be an int {span}, got {value!r}")
    return int(value)


def _search_width(value: Any, name: str, low: int) -> int:
    """A per-query search setting: an int from ``low`` up to :data:`MAX_SEARCH_WIDTH`."""
    value = _int_param(value, name, low)
    if value > MAX_SEARCH_WIDTH:
        raise BioscanInputError(f"{name} must be at most {MAX_SEARCH_WIDTH}, got {value}")
    return value


def _largest_divisor(dim: int, at_most: int) -> int:
    return max(m for m in range(1, max(1, at_most) + 1) if dim % m == 0)


def _default_nlist(count: int) -> int:
    # About sqrt(n) lists, but at least 39 training points per list (below that faiss warns and k-means is poor).
    return max(1, min(int(round(math.sqrt(count))), count // 39))


def default_rerank(count: int) -> int:
    """IVF-PQ candidates re-ranked exactly per query for ``count`` keys: 64 per million keys, at least 64."""
    return min(MAX_SEARCH_WIDTH, max(DEFAULT_RERANK, round(DEFAULT_RERANK * count / RERANK_PER_KEYS)))


def _rerank(value: Any, count: int, default: int) -> int:
    return min(_search_width(default if value is None else value, "rerank", 0), count)


def _ivf_lists(params: IndexParams, count: int) -> dict[str, Any]:
    nlist = _default_nlist(count) if params.nlist is None else params.nlist
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= count:
        raise BioscanInputError(f"nlist must be in [1, {count}] (the key count), got {nlist!r}")
    return {"nlist": int(nlist), "nprobe": min(_search_width(params.nprobe, "nprobe", 1), int(nlist))}


def _train_size(value: Any, count: int, nlist: int, minimum: int) -> int:
    # k-means gains little past ~64 points per list; training on a sample keeps build time and memory bounded.
    train_size = min(count, max(64 * nlist, 16_384)) if value is None else value
    return _int_param(train_size, "train_size", minimum, count)


def _ivf_search_parameters(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    return faiss.SearchParametersIVF(sel=selector, nprobe=int(faiss.extract_index_ivf(index).nprobe))


def _set_nprobe(index: faiss.Index, value: int) -> None:
    faiss.extract_index_ivf(index).nprobe = value


def _check_nprobe(value: Any, params: Mapping[str, Any], count: int) -> int:
    return _search_width(_int_param(value, "nprobe", 1, params["nlist"]), "nprobe", 1)


NPROBE = SearchSetting("IVF indexes", _check_nprobe, _set_nprobe)
# The search reads rerank from the manifest: nothing to set on the faiss index.
RERANK = SearchSetting("approximate indexes", lambda value, params, count: _rerank(value, count, 0))


# ---------------------------------------------------------------------------------------------------- flat


def _resolve_flat(params: IndexParams, count: int, dim: int) -> dict[str, Any]:
    if params.rerank:
        raise BioscanInputError(
            f"rerank applies to approximate indexes; a flat index is exact, got rerank={params.rerank!r}"
        )
    return {}


def _flat_rerank(value: Any, params: Mapping[str, Any], count: int) -> int:
    if value:
        raise BioscanInputError(f"rerank applies to approximate indexes; a flat index is exact, got {value!r}")
    return min(_int_param(value, "rerank", 0), count)


def _flat_storage(index: faiss.IndexFlat, count: int) -> np.ndarray:
    """Sizes a flat index for ``count`` vectors at once and returns its storage as a ``(count, dim)`` float32 view.

    Filling the view is adding the keys: no second copy, and no growth of faiss's vector by doubling on repeated add
    (which briefly holds old and new buffers, up to 3x the bytes).
    """
    index.codes.resize(count * index.code_size)
    index.ntotal = count
    return faiss.rev_swig_ptr(index.get_xb(), count * index.d).reshape(count, index.d)


# ---------------------------------------------------------------------------------------------------- hnsw


def _resolve_hnsw(params: IndexParams, count: int, dim: int) -> dict[str, Any]:
    return {
        "rerank": _rerank(params.rerank, count, 0),
        "hnsw_m": _int_param(params.hnsw_m, "hnsw_m", 2, 1024),
        "ef_construction": _search_width(params.ef_construction, "ef_construction", 1),
        "ef_search": _search_width(params.ef_search, "ef_search", 1),
    }


def _new_hnsw(dim: int, params: Mapping[str, Any], seed: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["ef_construction"]
    index.hnsw.efSearch = params["ef_search"]
    return index


def _set_ef_search(index: faiss.Index, value: int) -> None:
    index.hnsw.efSearch = value


def _hnsw_search_parameters(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    return faiss.SearchParametersHNSW(sel=selector, efSearch=int(index.hnsw.efSearch))


# ---------------------------------------------------------------------------------------------------- ivf


def _resolve_ivf(params: IndexParams, count: int, dim: int) -> dict[str, Any]:
    resolved = {"rerank": _rerank(params.rerank, count, 0), **_ivf_lists(params, count)}
    if params.pq_fast_scan:
        raise BioscanInputError("pq_fast_scan applies to index_type 'ivfpq', got index_type 'ivf'")
    resolved["train_size"] = _train_size(params.train_size, count, resolved["nlist"], resolved["nlist"])
    return resolved


def _new_ivf(dim: int, params: Mapping[str, Any], seed: int) -> faiss.Index:
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.nprobe = params["nprobe"]
    return index


# ---------------------------------------------------------------------------------------------------- ivfpq


def _resolve_ivfpq(params: IndexParams, count: int, dim: int) -> dict[str, Any]:
    resolved = {"rerank": _rerank(params.rerank, count, default_rerank(count)), **_ivf_lists(params, count)}
    fast_scan = bool(params.pq_fast_scan)
    pq_nbits = (4 if fast_scan else 8) if params.pq_nbits is None else params.pq_nbits
    pq_nbits = _int_param(pq_nbits, "pq_nbits", 1, 16)
    if fast_scan and pq_nbits != 4:
        raise BioscanInputError(f"pq_fast_scan codes are 4-bit: pq_nbits must be 4, got {pq_nbits}")
    pq_m = _largest_divisor(dim, dim // (8 if fast_scan else 4)) if params.pq_m is None else params.pq_m
    pq_m = _int_param(pq_m, "pq_m", 1, dim)
    if dim % pq_m != 0:
        raise BioscanInputError(f"pq_m must divide the dimension {dim}, got {pq_m}")
    if count < 2**pq_nbits:
        raise BioscanInputError(
            f"IVF-PQ with pq_nbits={pq_nbits} needs at least {2**pq_nbits} keys to train, got {count}"
        )
    resolved.update({"pq_m": pq_m, "pq_nbits": pq_nbits, "pq_fast_scan": fast_scan})
    minimum_train = max(resolved["nlist"], 2**pq_nbits)
    resolved["train_size"] = _train_size(params.train_size, count, resolved["nlist"], minimum_train)
    return resolved


def _new_ivfpq(dim: int, params: Mapping[str, Any], seed: int) -> faiss.Index:
    kind = faiss.IndexIVFPQFastScan if params["pq_fast_scan"] else faiss.IndexIVFPQ
    index = kind(
        faiss.IndexFlatIP(dim), dim, params["nlist"], params["pq_m"], params["pq_nbits"], faiss.METRIC_INNER_PRODUCT
    )
    index.pq.cp.seed = seed
    index.cp.seed = seed
    index.nprobe = params["nprobe"]
    return index


# ---------------------------------------------------------------------------------------------------- the table


def _ivf_family(description: str, resolve: Callable, new_index: Callable, file_layout: Layout) -> IndexTypeEntry:
    """An IVF index type: searched with its nprobe (kept in a restricted search too), re-ranked on request."""
    return IndexTypeEntry(
        description=description,
        exact=False,
        resolve=resolve,
        new_index=new_index,
        search_parameters=_ivf_search_parameters,
        search_settings={"nprobe": NPROBE, "rerank": RERANK},
        file_layout=file_layout,
    )


INDEX_TYPES: dict[str, IndexTypeEntry] = {
    "flat": IndexTypeEntry(
        description="exact (faiss IndexFlatIP)",
        exact=True,
        resolve=_resolve_flat,
        new_index=lambda dim, params, seed: faiss.IndexFlatIP(dim),
        search_settings={"rerank": SearchSetting("approximate indexes", _flat_rerank)},
        own_storage=_flat_storage,
        mmap_on_load=True,  # the vectors themselves: mapped, not read (faiss >= 1.11 maps IndexFlat codes)
        file_layout=flat_layout,
    ),
    "ivf": _ivf_family("IVF-Flat, approximate", _resolve_ivf, _new_ivf, ivf_layout),
    "hnsw": IndexTypeEntry(
        description="HNSW-Flat, approximate",
        exact=False,
        resolve=_resolve_hnsw,
        new_index=_new_hnsw,
        search_parameters=_hnsw_search_parameters,
        search_settings={
            "ef_search": SearchSetting(
                "HNSW indexes",
                lambda value, params, count: _search_width(value, "ef_search", 1),
                _set_ef_search,
            ),
            "rerank": RERANK,
        },
        file_layout=hnsw_layout,
    ),
    "ivfpq": _ivf_family(
        "IVF-PQ, approximate and compressed for millions of keys, re-ranked exactly",
        _resolve_ivfpq,
        _new_ivfpq,
        ivfpq_layout,
    ),
}


def build_index_types() -> tuple[str, ...]:
    """What ``KeyIndex.build`` accepts as ``index_type``: ``"auto"`` and every name in :data:`INDEX_TYPES`."""
    return (AUTO, *INDEX_TYPES)


def check_index_type(index_type: Any) -> None:
    """Raises `BioscanInputError` unless ``index_type`` is one of :func:`build_index_types`."""
    choices = build_index_types()
    if index_type not in choices:
        raise BioscanInputError(f"index_type must be one of {choices}, got {index_type!r}")


def auto_description() -> str:
    """What ``"auto"`` chooses, in one line for help texts."""
    return f"exact flat below {AUTO_FLAT_MAX_KEYS:,} keys, else IVF-PQ fast scan re-ranked exactly"


def _auto(count: int, params: IndexParams) -> tuple[str, IndexParams]:
    if count < AUTO_FLAT_MAX_KEYS:
        return "flat", params
    return "ivfpq", params if params.pq_fast_scan is not None else replace(params, pq_fast_scan=True)


def resolve_index_params(
    index_type: str, count: int, dim: int, params: IndexParams | None = None, **options: Any
) -> tuple[str, dict[str, Any]]:
    """The index type and parameters :meth:`KeyIndex.build` uses for ``count`` keys of ``dim``, every one validated.

    ``"auto"`` becomes ``"flat"`` (exact) below :data:`AUTO_FLAT_MAX_KEYS` keys and ``"ivfpq"`` from there up, with
    4-bit fast-scan codes of ``dim / 8`` sub-quantisers and candidates re-ranked exactly (:func:`default_rerank`).

    Args:
        index_type (`str`): ``"auto"`` or a name in :data:`INDEX_TYPES`.
        count (`int`): Number of keys.
        dim (`int`): Their dimension.
        params (`IndexParams`, *optional*): The caller's settings; defaults to ``IndexParams()``.
        **options: :class:`IndexParams` fields by name (``nlist=...``), replacing those of ``params``.

    Returns:
        `tuple[str, dict]`: the concrete index type and its parameters (what the manifest's ``index_params`` holds).

    Raises:
        `BioscanInputError`: an unknown type or a parameter out of range, naming the parameter and the value.
        `TypeError`: an option that is not an :class:`IndexParams` field.
    """
    record = IndexParams.from_options(params, **options)
    check_index_type(index_type)
    resolved: dict[str, Any] = {}
    if index_type == AUTO:
        index_type, record = _auto(count, record)
        resolved["auto"] = True
    resolved.update(INDEX_TYPES[index_type].resolve(record, count, dim))
    return index_type, resolved


def search_setting(index_type: str, name: str) -> SearchSetting:
    """The setting ``name`` of ``index_type`` for :meth:`KeyIndex.set_search_params`.

    Raises:
        `BioscanInputError`: the type does not have it (naming the types that do).
        `TypeError`: no index type has it, as for an unknown keyword argument.
    """
    settings = INDEX_TYPES[index_type].search_settings
    if name in settings:
        return settings[name]
    owners = [entry.search_settings[name].owners for entry in INDEX_TYPES.values() if name in entry.search_settings]
    if not owners:
        raise TypeError(f"set_search_params() got an unexpected keyword argument {name!r}")
    raise BioscanInputError(f"{name} applies to {owners[0]}, not to this {index_type} index")
