"""``bioscan-clip evaluate``: the paper's retrieval tables, and the DNA identifiers compared with species held out."""

from __future__ import annotations

import argparse

from bioscan_clip.apps.commands.options import add_data_arguments, data_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a trained model with the paper's protocol: seen and unseen queries of a split against all keys, "
        "top-1/3/5 micro and macro accuracy per rank with the seen/unseen harmonic mean, for every query -> key "
        "combination the model and data allow. Prints the tables; writes results.json, accuracy.png, "
        "retrieval_examples.png and, with --model_card, the model card's results. With --protocol species_held_out "
        "(for a CLIBD partition, e.g. `--source bold --partition clibd` on your own BOLD export), the other split's "
        "unseen species are also taken out of the keys and queried as novel species, and the DNA identifiers "
        "(model, alignment identity, model + alignment re-ranking) are compared on the precision of their confident "
        "calls, the novel-species AUROC and their 'unknown species' flags."
    )
    parser.add_argument("--model", required=True, help="a saved model folder (e.g. runs/quickstart/model)")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which query splits (default: test)")
    parser.add_argument(
        "--protocol",
        choices=("open_set", "species_held_out"),
        default="open_set",
        help="open_set: the paper's (every species has keys); species_held_out: adds novel species, absent from "
        "the keys and from training (the other split's unseen species), and the identifiers' comparison",
    )
    parser.add_argument("--out", help="output folder (default: <model>/../evaluation-<split>)")
    parser.add_argument(
        "--model_card",
        help="write the model-index metadata and the results table, from the results.json written here, into this "
        "card (created when missing; its other text and metadata are kept; e.g. a copy of the model_card.md template)",
    )
    parser.add_argument(
        "--no_kmer_baseline",
        action="store_true",
        help="skip the DNA->DNA nearest-neighbour baseline on 5-mer count profiles",
    )
    parser.add_argument(
        "--no_identity_baseline",
        action="store_true",
        help="skip the DNA->DNA 1-NN by alignment identity (edlib, candidates from the 5-mer top 20)",
    )
    parser.add_argument("--batch_size", type=int, default=128, help="embedding batch size (default: 128)")
    parser.add_argument("--examples", type=int, default=6, help="queries in the retrieval-examples figure")


def run(args: argparse.Namespace) -> int:
    from bioscan_clip.evaluation.protocol import evaluate, format_identification, format_table

    report = evaluate(
        args.model,
        data_spec(args),
        split=args.split,
        out=args.out,
        model_card=args.model_card,
        kmer_baseline=not args.no_kmer_baseline,
        identity_baseline=not args.no_identity_baseline,
        batch_size=args.batch_size,
        examples=args.examples,
        protocol=args.protocol,
    )
    print(format_table(report.results, average="macro"))
    print()
    print(format_table(report.results, average="micro"))
    if "identification" in report.summary:
        print()
        print(format_identification(report.summary["identification"]))
    written = [
        report.out / "results.json",
        report.out / "accuracy.png",
        *([args.model_card] if args.model_card else []),
    ]
    print("\nwrote " + ", ".join(str(path) for path in written))
    return 0
