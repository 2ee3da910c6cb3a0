"""``bioscan-clip embed``: unit-length embeddings of files or dataset records to Parquet, sharded over processes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bioscan_clip.apps.commands.options import (
    add_data_arguments,
    add_query_arguments,
    batches,
    collect_queries,
    data_spec,
    query_name,
    write_rows,
)
from bioscan_clip.data.specimens import SpecimenDataset, available_modalities, image_file_records, with_modalities
from bioscan_clip.features import DNA, IMAGE, embed_dataset, embed_inputs, labels_of, loader_workers
from bioscan_clip.resolve import load_pretrained
from modeling_bioscanclip import BioscanInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export unit-length embeddings to Parquet: of image files, FASTA/CSV barcodes, or the records of a dataset "
        "split (--split, with the data options). One row per item: id, feature, embedding, and the taxonomy for "
        "dataset records. Under `accelerate launch --num_processes N` (on CPU add --multi_gpu: without it Accelerate "
        "starts one process) each process embeds a contiguous shard of the items on its own device and the main "
        "process writes the one output, the same rows in the same order as one process writes."
    )
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub model repository id")
    add_query_arguments(parser)
    add_data_arguments(parser, default_source=None)
    parser.add_argument("--split", help="embed the records of this split of the dataset")
    parser.add_argument("--out", default="embeddings.parquet", help="output .parquet")
    parser.add_argument("--batch_size", type=int, default=64)


# One shard's result: feature -> (columns, embeddings); the columns hold "id" and, for dataset records, the taxonomy.
EmbeddedShard = dict[str, tuple[dict[str, list[Any]], Any]]


def _embed_split_shard(args: argparse.Namespace, model: Any, processor: Any, shard: Any) -> EmbeddedShard:
    """This process's contiguous shard of the split's records (after dropping those that lack a modality)."""
    with shard.main_first():  # one process prepares a builder's cache; the others then read it
        splits, _ = data_spec(args).load()
        if args.split not in splits:
            raise BioscanInputError(f"--split {args.split!r}: the dataset has {sorted(splits)}")
    records = splits[args.split]
    if "image" in records.column_names:
        import datasets

        records = records.cast_column("image", datasets.Image(decode=False))
    modalities = available_modalities(records, model.config.modalities, what=f"split {args.split}")
    records = with_modalities(records, modalities)
    shard.announce({"records": len(records)})
    dataset = SpecimenDataset(records.select(range(*shard.bounds(len(records)))), processor, modalities)
    workers = loader_workers(dataset, args.batch_size, shard.local_size)  # this machine's processes share its cores
    features = embed_dataset(
        model, dataset, batch_size=args.batch_size, num_workers=workers, show_progress=shard.is_main
    )
    labels = labels_of(dataset)
    columns = {"id": labels.pop("processid"), **labels}
    return {name: (columns, matrix) for name, matrix in features.items()}


def _embed_query_shard(
    queries: list[dict[str, Any]], model: Any, processor: Any, shard: Any, batch_size: int
) -> EmbeddedShard:
    """This process's contiguous shards of the image queries and of the barcode queries."""
    from tqdm.auto import tqdm

    result: EmbeddedShard = {}
    images = [q for q in queries if q.get("image") is not None]
    barcodes = [q for q in queries if q.get("barcode") is not None]
    shard.announce({"images": len(images), "barcodes": len(barcodes)})
    images, barcodes = shard.take(images), shard.take(barcodes)
    if images:  # decoded and resized in loader workers, overlapped with the forward
        dataset = SpecimenDataset(
            image_file_records([q["image"] for q in images], [query_name(q) for q in images]), processor, [IMAGE]
        )
        workers = loader_workers(dataset, batch_size, shard.local_size)
        embeds = embed_dataset(
            model, dataset, batch_size=batch_size, num_workers=workers, description="images", combined=False,
            show_progress=shard.is_main,
        )[IMAGE]  # fmt: skip
        result[IMAGE] = ({"id": [q["id"] for q in images]}, embeds)
    parts = []
    for batch in tqdm(list(batches(barcodes, batch_size)), desc="barcodes", leave=False, disable=not shard.is_main):
        barcode_batch, batch_names = [q["barcode"] for q in batch], [str(q["id"]) for q in batch]
        # As embed_dataset embeds keys: the model's DNA reading frames averaged.
        parts.append(embed_inputs(model, processor, barcodes=barcode_batch, names=batch_names)[DNA].numpy())
    if parts:
        result[DNA] = ({"id": [q["id"] for q in barcodes]}, np.concatenate(parts))
    return result


def _merge_shards(shards: list[EmbeddedShard]) -> list[dict[str, Any]]:
    """The output rows: feature by feature (in the order they first appear), each feature's shards in rank order."""
    rows: list[dict[str, Any]] = []
    names = list(dict.fromkeys(name for part in shards for name in part))
    for name in names:
        pieces = [part[name] for part in shards if name in part]
        matrix = np.concatenate([embeds for _, embeds in pieces])
        columns = {column: [v for values, _ in pieces for v in values[column]] for column in pieces[0][0]}
        others = [column for column in columns if column != "id"]
        for i, vector in enumerate(matrix):
            rows.append(
                {"id": columns["id"][i], "feature": name, "embedding": vector.tolist(),
                 **{column: columns[column][i] for column in others}}
            )  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> int:
    from bioscan_clip.sharding import ShardFailedError, process_shard

    # Inputs are checked before the model loads and before any split: a bad input fails every process the same way.
    queries = None if args.split else collect_queries(args)
    shard = process_shard()
    try:
        model, processor = load_pretrained(args.model)
        model.to(shard.device)
        if args.split:
            result = _embed_split_shard(args, model, processor, shard)
        else:
            result = _embed_query_shard(queries, model, processor, shard, args.batch_size)
        shards = shard.gather(result)  # the only collective, once every shard is done
    except ShardFailedError as error:  # one line, not a traceback: the failed process has printed the cause
        raise SystemExit(f"bioscan-clip embed: {error}; nothing was written") from None
    finally:
        shard.close()
    if not shard.is_main:
        return 0  # the main process writes the one output
    rows = _merge_shards(shards)
    out = Path(args.out)
    write_rows(rows, out)
    dims = {row["feature"]: len(row["embedding"]) for row in rows}
    processes = f" ({shard.world_size} processes)" if shard.world_size > 1 else ""
    print(f"wrote {len(rows)} embeddings ({', '.join(f'{k}: {v}-d' for k, v in dims.items())}) to {out}{processes}")
    return 0
