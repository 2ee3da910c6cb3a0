"""What the subcommands share: the data options (parsed from :class:`~bioscan_clip.data.DataSpec`'s fields),
the query options and readers, and writing a table of rows atomically. A subcommand imports this
module and the library, never another subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from bioscan_clip.data.spec import DataSpec
from bioscan_clip.safe_io import atomic_output_file, staging_dir
from dataset_scripts.queries import BARCODE_COLUMNS, read_fasta, read_query_table
from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import IMAGE_FORMATS

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *, alias: str | None = None, **kwargs: Any
) -> None:
    """``parser.add_argument(name, ...)`` with the command-line style of every command (``--with_underscores``);
    ``alias`` (default: the dashed spelling of ``name``, when it differs) is accepted but not shown in ``--help``."""
    parser.add_argument(name, **kwargs)
    alias = alias or name.replace("_", "-")
    if alias != name:
        hidden = {key: value for key, value in kwargs.items() if key not in ("help", "default", "required")}
        parser.add_argument(alias, dest=name.lstrip("-"), help=argparse.SUPPRESS, default=argparse.SUPPRESS, **hidden)


# ---- options declared as dataclass fields --------------------------------------------------------------------------
def add_field_arguments(
    group: argparse._ArgumentGroup, record: type, *, defaults: dict[str, Any] | None = None
) -> None:
    """One ``--NAME`` per field of the dataclass ``record``, with the help (and ``choices``) of the field's metadata,
    declared there only. ``defaults`` overrides a field's default on this command line. A ``bool`` field is a flag;
    a ``bool | None`` one is ``--NAME/--no-NAME`` (unset: None); ``X | None`` parses as ``X``."""
    import dataclasses
    import typing

    types = typing.get_type_hints(record)  # resolved here: the fields' own ``type`` may be a string
    for item in dataclasses.fields(record):
        kwargs: dict[str, Any] = dict(item.metadata)
        default = (defaults or {}).get(item.name, item.default)
        kind = types[item.name]
        argument_type = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if kind is bool:  # a flag: given or not (it defaults to False)
            kwargs["action"] = "store_true"
        elif argument_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif argument_type is not str:
            kwargs["type"] = argument_type
        group.add_argument(f"--{item.name}", default=default, **kwargs)


def add_data_arguments(parser: argparse.ArgumentParser, *, default_source: str | None = "mini") -> None:
    """The options every command uses to name a dataset: one per field of :class:`DataSpec` (help and choices are
    the field's); ``default_source`` overrides the default of ``--source``."""
    add_field_arguments(parser.add_argument_group("data"), DataSpec, defaults={"source": default_source})


def data_spec(args: argparse.Namespace) -> DataSpec:
    _show_data_summaries()
    return DataSpec.from_options(args)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after the handler is made)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_data_summaries() -> None:
    """Shows the data layer's one-line read summaries (rows read, kept, dropped by reason) on stderr."""
    data_logger = logging.getLogger("dataset_scripts")
    if not data_logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        data_logger.addHandler(handler)
        data_logger.setLevel(logging.INFO)
        data_logger.propagate = False


# ---- query inputs ---------------------------------------------------------------------------------------------------
def collect_queries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Queries from the command line: images, a folder of images, a FASTA file or a CSV/TSV table."""
    queries: list[dict[str, Any]] = []
    for image in args.images or []:
        queries.append({"id": file_query_id(Path(image)), "image": image})
    if args.images_dir:
        found = sorted(p for p in Path(args.images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise BioscanInputError(f"{args.images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        queries += [{"id": file_query_id(p), "image": str(p)} for p in found]
    if args.fasta:
        queries = pair_by_id(queries, read_fasta(args.fasta), args.fasta)
    if args.table:
        table_queries, summary = read_query_table(args.table)
        print(summary.describe())
        queries += table_queries
    if not queries:
        raise BioscanInputError("no queries: give --images, --images_dir, --fasta and/or --table")
    return queries


def printable_path(path: str | os.PathLike[str]) -> str:
    """A file name as text any output can hold: the bytes of a name that is not UTF-8 (which Python keeps as lone
    surrogates, refused by every UTF-8 writer) escaped as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_query_id(path: Path) -> str:
    """An image query's id: its file name without the suffix, escaped if it is not UTF-8 (with a warning naming the
    file), so that the query is answered and written with the others instead of failing the whole output."""
    escaped = printable_path(path.stem)
    if escaped != path.stem:
        logger.warning(f"{printable_path(path)}: the file name is not UTF-8; its query id is written as {escaped}")
    return escaped


def pair_by_id(images: list[dict[str, Any]], fasta: list[tuple[str, str]], source: str) -> list[dict[str, Any]]:
    """The image queries with the barcode of the FASTA record whose id is the image's file name (without suffix),
    then the FASTA records that no image has, in file order: one specimen's photo and barcode are identified
    together only when their names say so, never by position.

    Raises:
        `BioscanInputError`: a FASTA id that two image files share, or that two FASTA records carry, while an image
        has it (the pairing would be a guess).
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for query in images:
        by_id.setdefault(query["id"], []).append(query)
    paired: dict[str, str] = {}
    unpaired = []
    for identifier, sequence in fasta:
        matches = by_id.get(identifier, [])
        if len(matches) > 1:
            files = ", ".join(str(q["image"]) for q in matches)
            raise BioscanInputError(f"{source}: record {identifier!r} matches several images ({files}); rename them")
        if matches and identifier in paired:
            raise BioscanInputError(
                f"{source}: record {identifier!r} appears twice and matches the image {matches[0]['image']}"
            )
        if matches:
            paired[identifier] = sequence
        else:
            unpaired.append({"id": identifier, "barcode": sequence})
    for query in images:
        if query["id"] in paired:
            query["barcode"] = paired[query["id"]]
    if images and fasta and not paired:
        logger.warning(
            f"{source}: no FASTA id is the file name of an image, so images and barcodes are identified apart "
            f"(name a photo Q1.jpg and its record >Q1 to identify them together)"
        )
    return [*images, *unpaired]


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("queries")
    group.add_argument("--images", nargs="+", help=f"image files ({', '.join(IMAGE_FORMATS)})")
    group.add_argument("--images_dir", help="a folder of images")
    group.add_argument(
        "--fasta",
        help="barcodes in FASTA; a record whose id is an image's file name (>Q1 for Q1.jpg) is identified "
        "together with that image",
    )
    group.add_argument(
        "--table",
        help="a BOLD export, or a CSV/TSV with a barcode column (" + ", ".join(BARCODE_COLUMNS) + ") and/or an "
        "'image' column (paths), optional id and taxonomy (order ... species: the report compares with it)",
    )


def query_name(query: dict[str, Any]) -> str:
    """How errors name a query: its id, and the image file it came from (``record Q1 (photos/q1.jpg) (image)``)."""
    image = query.get("image")
    return f"{query['id']} ({image})" if isinstance(image, str) else str(query["id"])


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """Writes a temporary sibling and renames it onto ``out`` when complete (a kill leaves what was there)."""
    frame = pd.DataFrame(rows)
    with atomic_output_file(out) as temporary:
        if out.suffix == ".csv":
            frame.to_csv(temporary, index=False)
        elif out.suffix == ".json":
            temporary.write_text(frame.to_json(orient="records", indent=2))
        else:
            frame.to_parquet(temporary, index=False)


class RowParts:
    """Output rows written in parts as they are made, so memory holds one part whatever the query count; the parts
    are merged in order into the one output by :func:`merge_parts` (from every process of a sharded job: the
    processes share one filesystem, one machine or a shared disk)."""

    def __init__(self, out: Path) -> None:
        # A staging folder: one left by a killed run is removed by the next (its process is gone).
        self.folder = staging_dir(out.with_name(f"{out.name}.parts"))
        self.files: list[str] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        path = self.folder / f"{len(self.files):06d}.parquet"
        pd.DataFrame(rows).to_parquet(path, index=False)
        self.files.append(str(path))


def merge_parts(files: list[str], out: Path, each: Callable[[pd.DataFrame], None] | None = None) -> int:
    """Writes the rows of the part files, in order, to ``out`` (.parquet, .csv or .json) through a temporary file
    renamed when complete, reading one part at a time; ``each`` sees every part's rows. Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")

    def parts() -> Iterator[tuple[pa.Table, pd.DataFrame]]:
        for path in files:  # each part with every column of the output, in the output's types
            table = pq.read_table(path)
            table = pa.Table.from_arrays(
                [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
                 for f in schema], schema=schema,
            )  # fmt: skip
            frame = table.to_pandas()
            if each is not None:
                each(frame)
            yield table, frame

    count = 0
    with atomic_output_file(out) as temporary:
        if out.suffix == ".csv":
            with open(temporary, "w", encoding="utf-8", newline="") as text:
                for _, frame in parts():
                    frame.to_csv(text, header=count == 0, index=False)
                    count += len(frame)
        elif out.suffix == ".json":
            with open(temporary, "w", encoding="utf-8") as text:
                text.write("[")
                for _, frame in parts():
                    if len(frame):
                        text.write(
                            ("," if count else "") + "\n" + frame.to_json(orient="records", indent=2)[1:-1].strip("\n")
                        )
                    count += len(frame)
                text.write("\n]")
        else:
            writer = pq.ParquetWriter(temporary, schema)
            try:
                for table, _ in parts():
                    writer.write_table(table)
                    count += len(table)
            finally:
                writer.close()
    return count


def remove_parts(files: list[str], *folders: Path) -> None:
    """Removes the part files' folders (and ``folders``) once merged or abandoned."""
    for folder in {Path(f).parent for f in files} | set(folders):
        shutil.rmtree(folder, ignore_errors=True)
