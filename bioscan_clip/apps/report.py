"""``bioscan-clip predict --report report.html``: one self-contained HTML page that a curator checking a batch of
specimens reads: a summary at the top, then per query its photo, the nearest key photos, the barcode hits, the
answer at each rank with its confidence, the unknown-species flag and where the ranks or the modalities disagree.

The page is made from the rows ``predict`` writes (its part files, in order: the output's rows), with the queries
they answer (for the query photos) and the identifier (for the key photos): it says what the table says. It is read
twice, one part at a time: once for the summary, once to write the queries, so memory holds one part's rows and one
photo at a time (and a bounded cache of key thumbnails), whatever the number of queries. Photos are decoded by the
package's safe loader and embedded as small JPEG ``data:`` URIs; the page has no script and loads nothing when it is
opened. Every string from the data (ids, file names, processids, taxon names: they come from the user's files) is
escaped. Words shared with the demo come from :mod:`bioscan_clip.apps.wording`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from bioscan_clip.apps.wording import (
    KNOWN_SPECIES,
    NO_CONFIDENT_RANK,
    QUERY_DESCRIPTIONS,
    READING_NOTES,
    SYNTHETIC_PREFIX,
    UNKNOWN_SPECIES,
    identity_text,
    synthetic_warning,
)
from bioscan_clip.features import AVERAGED
from bioscan_clip.identification.barcode_search import Hits, call_rank
from bioscan_clip.identification.identifier import Identifier
from bioscan_clip.safe_io import atomic_output_file
from modeling_bioscanclip import BioscanInputError, load_image_safely
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

QUERY_THUMBNAIL = 320  # pixels, longest side: a specimen in a plate well stays recognisable, ~15 kB as JPEG
KEY_THUMBNAIL = 160
KEY_PHOTOS = 5  # key photos per query (the table below them lists every neighbour)
JPEG_QUALITY = 75
KEY_THUMBNAIL_CACHE = 512  # encoded key thumbnails kept: a key near many queries is decoded once (~4 kB each)
PROVENANCE = ("bioscan_clip_version", "model", "model_revision", "keys_manifest_sha256")
NONE_CONFIDENT = "none"  # the deepest confident rank of an answer with no confident rank, in the summary


def check_report_path(path: Path, out: Path) -> None:
    """Refuses a ``--report`` that cannot be written (or would replace the table), before anything is identified."""
    if path.is_dir():
        raise BioscanInputError(f"--report {path}: is a folder; give a file name (report.html)")
    if path.resolve() == out.resolve():
        raise BioscanInputError(f"--report {path}: is the --out table; give another file name (report.html)")


def write_report(
    out: Path,
    parts: Sequence[str],
    queries: Sequence[Mapping[str, Any]],
    identifier: Identifier,
    *,
    agreement: Mapping[str, Sequence[int]] | None = None,
    keys: str = "",
) -> None:
    """Writes the report of predict's rows to ``out`` through a temporary file renamed when complete.

    Args:
        out (`Path`): the HTML file to write.
        parts (`Sequence[str]`): predict's part files (Parquet), in order; together, one row per query.
        queries (`Sequence[Mapping]`): the queries, in the same order (``id``, ``image`` path when a photo).
        identifier ([`Identifier`]): what answered them; its key records give the key photos.
        agreement (`Mapping`, *optional*): per rank ``(right, labelled)``, the agreement with the query table's own
            labels that predict prints (absent: the table had no labels).
        keys (`str`, *optional*): how the key folder was named on the command line, for the heading.
    """
    summary = _Overview()
    for answer in _answers(parts, queries):
        summary.add(answer)
    key_photo = functools.lru_cache(maxsize=KEY_THUMBNAIL_CACHE)(functools.partial(_key_photo, identifier))
    with contextlib.ExitStack() as stack:
        temporary = stack.enter_context(atomic_output_file(out, "report"))
        # A lone surrogate (a file name that was not UTF-8) is written as its escape, not refused.
        page = stack.enter_context(open(temporary, "w", encoding="utf-8", errors="backslashreplace"))
        page.write(_head())
        page.write(_summary_html(summary, agreement or {}, keys, _synthetic(identifier)))
        for answer in _answers(parts, queries):
            page.write(_query_html(answer, key_photo))
        page.write(_notes_html())
        page.write("</main>\n</body>\n</html>\n")


# ---- the rows, read back -----------------------------------------------------------------------------------------
@dataclass
class _Answer:
    """One output row, as the page shows it."""

    number: int  # 1-based position in the output
    query: Mapping[str, Any]
    row: dict[str, Any]
    neighbours: list[dict[str, Any]]
    labels: dict[str, str] = field(default_factory=dict)  # the query table's own taxonomy

    @property
    def kind(self) -> str:
        return QUERY_DESCRIPTIONS.get(self.row.get("query_feature"), str(self.row.get("query_feature")))

    @property
    def deepest(self) -> str | None:
        return self.row.get("deepest_confident_rank")

    def label(self, rank: str) -> str | None:
        return self.row.get(rank)

    def differs_from_table(self) -> list[str]:
        """The ranks where the query table's own label is not the answer."""
        return [rank for rank, truth in self.labels.items() if self.label(rank) != truth]

    def disagreements(self) -> list[str]:
        """Where the answer is not of one piece, as HTML: ranks the photo + barcode embedding answered against the
        barcode's hits, and pairs of ranks whose taxa no listed key holds together."""
        notes = []
        hit_calls = _hit_calls(self.neighbours) if self.row.get("query_feature") == AVERAGED else {}
        for rank, hit_label in hit_calls.items():
            if hit_label is not None and self.label(rank) != hit_label:
                notes.append(
                    f"<b>{rank}</b>: the photo + barcode embedding answered <i>{_e(self.label(rank))}</i>, the "
                    f"barcode's hits say <i>{_e(hit_label)}</i> (the barcode is not confident there)"
                )
        for coarse, fine in zip(TAXONOMIC_RANKS[:-1], TAXONOMIC_RANKS[1:], strict=True):
            upper, lower = self.label(coarse), self.label(fine)
            if upper is None or lower is None or not self.neighbours:
                continue
            if not any(
                n["taxonomy"].get(coarse) == upper and n["taxonomy"].get(fine) == lower for n in self.neighbours
            ):
                notes.append(
                    f"<b>{fine}</b> <i>{_e(lower)}</i> and <b>{coarse}</b> <i>{_e(upper)}</i>: no listed key is both"
                )
        return notes


def _answers(parts: Sequence[str], queries: Sequence[Mapping[str, Any]]) -> Iterator[_Answer]:
    """The output's rows in order, one part in memory at a time, each with the query it answers."""
    number = 0
    for path in parts:
        for row in pq.read_table(path).to_pylist():
            row = {name: _missing_as_none(value) for name, value in row.items()}
            query = queries[number]
            if _comparable(query["id"]) and str(query["id"]) != str(row["id"]):  # the rows are the queries' in order
                raise RuntimeError(f"report: row {number + 1} is {row['id']!r}, the query there {query['id']!r}")
            number += 1
            labels = {r: row[f"label_{r}"] for r in TAXONOMIC_RANKS if row.get(f"label_{r}") not in (None, "")}
            yield _Answer(number, query, row, json.loads(row.get("neighbours") or "[]"), labels)


def _comparable(query_id: Any) -> bool:
    """Whether an id is written to the output as it is (one from a file name that was not UTF-8 may be spelled
    otherwise there)."""
    try:
        str(query_id).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _missing_as_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _hit_calls(neighbours: list[dict[str, Any]]) -> dict[str, str | None]:
    """Per rank, what the barcode's listed hits say (the barcode identifier's own rule, on the hits shown)."""
    hits = [n for n in neighbours if n.get("percent_identity") is not None]
    if not hits:
        return {}
    listed = Hits(
        rows=np.arange(len(hits)),
        identity=np.array([n["percent_identity"] / 100 for n in hits]),
        overlap=np.array([n.get("overlap") or 0 for n in hits]),
    )
    return {
        rank: call_rank(listed, np.array([n["taxonomy"].get(rank) for n in hits], dtype=object))[0]
        for rank in TAXONOMIC_RANKS
    }


class _Overview:
    """The summary at the top, gathered over every row."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: Counter[str] = Counter()
        self.deepest: Counter[str] = Counter()
        self.unknown = 0
        self.index: list[tuple[int, str, str, str, str, bool, int, list[str]]] = []  # one line per query (answer: HTML)
        self.provenance: dict[str, str] = {}
        self.labelled = False  # whether the query table had labels

    def add(self, answer: _Answer) -> None:
        self.count += 1
        self.kinds[answer.kind] += 1
        self.deepest[answer.deepest or NONE_CONFIDENT] += 1
        self.unknown += bool(answer.row.get("unknown_species"))
        if not self.provenance:
            self.provenance = {name: str(answer.row.get(name)) for name in PROVENANCE if answer.row.get(name)}
        if answer.deepest:
            taxon = f"<i>{_e(answer.label(answer.deepest))}</i>"
        else:  # the coarsest call, marked unsure
            taxon = f'<i>{_e(answer.label(TAXONOMIC_RANKS[0]))}</i> <span class="no">(not confident)</span>'
        self.index.append((
            answer.number, str(answer.row["id"]), answer.kind, taxon, answer.deepest or NONE_CONFIDENT,
            bool(answer.row.get("unknown_species")), len(answer.disagreements()), answer.differs_from_table(),
        ))  # fmt: skip
        self.labelled = self.labelled or bool(answer.labels)


# ---- photos ------------------------------------------------------------------------------------------------------
def _data_uri(image: Image.Image, size: int) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _key_photo(identifier: Identifier, row: int) -> str | None:
    image = identifier.key_image(row)
    return None if image is None else _data_uri(image, KEY_THUMBNAIL)


def _synthetic(identifier: Identifier) -> bool:
    records = identifier.records
    if records is None or not len(records):
        return False
    return bool(pc.all(pc.starts_with(records.data.column("processid"), SYNTHETIC_PREFIX)).as_py())


# ---- HTML --------------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Any value from the data, escaped for text and attributes."""
    return html.escape("—" if value is None else str(value), quote=True)


def _markdown(text: str) -> str:
    """Our own wording (:mod:`~bioscan_clip.apps.wording`, never data) from its Markdown subset to HTML."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:0 0 8px}h3{font-size:14px;margin:12px 0 6px}
.meta{color:#57606a;font-size:12px;word-break:break-all}
.banner{background:#fff4ce;border:1px solid #e3b341;border-radius:6px;padding:8px 12px;margin:10px 0}
table{border-collapse:collapse;margin:4px 0 8px;background:#fff}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.query{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;margin:18px 0;
break-inside:avoid}
.top{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
figure{margin:0}figcaption{font-size:12px;color:#57606a;max-width:320px;word-break:break-word}
.query-photo img{max-width:320px;max-height:320px;border:1px solid #d0d7de}
.keys{display:flex;gap:10px;flex-wrap:wrap;margin:8px 0}.keys figure{width:164px}
.key-photo{width:160px;height:160px;object-fit:contain;background:#eef1f4;border:1px solid #d0d7de}
.yes{color:#1a7f37;font-weight:600}.no{color:#9a6700}.flag{color:#cf222e;font-weight:600}
.disagree{background:#fff8f5;border-left:3px solid #cf222e;padding:4px 10px;margin:8px 0}
.disagree ul{margin:2px 0;padding-left:18px}.none{color:#57606a}
.kind{font-weight:400;color:#57606a;font-size:13px}
@media print{body{background:#fff}.query{border-color:#999}}
"""


def _head() -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Nothing may be fetched when the page is opened: no script at all, images only from data: URIs.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">\n"
        f"<title>BIOSCAN-CLIP identification report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table from cells that are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>\n"


def _summary_html(summary: _Overview, agreement: Mapping[str, Sequence[int]], keys: str, synthetic: bool) -> str:
    parts = ['<header id="summary">\n<h1>BIOSCAN-CLIP identification report</h1>\n']
    kinds = ", ".join(f"{_e(kind)}: {count}" for kind, count in summary.kinds.most_common())
    parts.append(f"<p><b>{summary.count}</b> queries ({kinds}) identified against the keys <code>{_e(keys)}</code>."
                 f"</p>\n")  # fmt: skip
    if summary.provenance:
        parts.append('<p class="meta">' + " · ".join(f"{name} {_e(value)}" for name, value in
                                                     summary.provenance.items()) + "</p>\n")  # fmt: skip
    if synthetic:
        parts.append(f'<div class="banner">⚠️ {_markdown(synthetic_warning("These queries were searched against"))}'
                     "</div>\n")  # fmt: skip
    parts.append('<div class="summary">\n<div>\n<h3>Deepest confident rank</h3>\n')
    order = [*TAXONOMIC_RANKS, NONE_CONFIDENT]
    rows = [[_e(rank), str(summary.deepest[rank]), f"{100 * summary.deepest[rank] / max(summary.count, 1):.1f} %"]
            for rank in order if summary.deepest[rank]]  # fmt: skip
    parts.append(_table(["Rank", "Queries", "Share"], rows, numeric=(1, 2)))
    parts.append(f"<p>Unknown species flagged: <b>{summary.unknown}</b> of {summary.count}.</p>\n</div>\n")
    if agreement:
        rows = [[_e(rank), str(right), str(total), f"{100 * right / total:.1f} %"]
                for rank, (right, total) in agreement.items() if total]  # fmt: skip
        parts.append("<div>\n<h3>Agreement with the table's own labels</h3>\n")
        parts.append(_table(["Rank", "Agree", "Labelled", "Agreement"], rows, numeric=(1, 2, 3)))
        parts.append('<p class="meta">over the queries the table labels at that rank</p>\n</div>\n')
    disagreeing = sum(1 for line in summary.index if line[6])
    parts.append(f"<div>\n<h3>Disagreements</h3>\n<p><b>{disagreeing}</b> of {summary.count} queries have ranks "
                 "or modalities that disagree (each query lists them).</p>\n</div>\n</div>\n")  # fmt: skip
    rows = []
    for number, query, kind, taxon, deepest, unknown, notes, differs in summary.index:
        cells = [f'<a href="#q{number}">{number}</a>', _e(query), _e(kind), taxon, _e(deepest),
                 '<span class="flag">yes</span>' if unknown else "no", str(notes) if notes else ""]  # fmt: skip
        if summary.labelled:
            cells.append(_e(", ".join(differs)) if differs else "")
        rows.append(cells)
    headers = ["#", "Query", "Kind", "Answer", "Deepest confident rank", "Unknown species?", "Disagreements"]
    parts.append("<h3>Queries</h3>\n")
    parts.append(_table(headers + (["Differs from the table at"] if summary.labelled else []), rows, numeric=(6,)))
    parts.append('<p><a href="#how-to-read">How to read the results</a></p>\n</header>\n')
    return "".join(parts)


def _query_html(answer: _Answer, key_photo: Any) -> str:
    row = answer.row
    parts = [f'<section class="query" id="q{answer.number}">\n'
             f'<h2>{answer.number}. {_e(row["id"])} <span class="kind">{_e(answer.kind)} · searched against the '
             f'{_e(row.get("key_feature"))} keys</span></h2>\n<div class="top">\n']  # fmt: skip
    image = answer.query.get("image")
    if isinstance(image, str):
        photo = _data_uri(load_image_safely(image, name=f"query {answer.query['id']} ({image})"), QUERY_THUMBNAIL)
        parts.append(f'<figure class="query-photo"><img src="{photo}" alt="photo of query {_e(row["id"])}">'
                     f"<figcaption>{_e(Path(image).name)}</figcaption></figure>\n")  # fmt: skip
    parts.append("<div>\n")
    deepest = answer.deepest
    if deepest is None:
        deepest_text = _e(NO_CONFIDENT_RANK)
    else:
        deepest_text = f"<b>{_e(deepest)}</b>: <i>{_e(answer.label(deepest))}</i>"
    unknown = UNKNOWN_SPECIES if row.get("unknown_species") else KNOWN_SPECIES
    nearest = ""
    if answer.neighbours:
        what = "Best hit" if answer.neighbours[0].get("percent_identity") is not None else "Nearest key"
        nearest = f"<br><b>{what}:</b> {_e(_closeness(answer.neighbours[0]))} ({_e(answer.neighbours[0]['processid'])})"
    parts.append(f"<p><b>Deepest confident rank:</b> {deepest_text}<br><b>Unknown species?</b> "
                 f"{_markdown(unknown)}{nearest}</p>\n")  # fmt: skip
    headers = ["Rank", "Predicted taxon", "Confidence", "Confident?"] + (["Table's label"] if answer.labels else [])
    rows = []
    for rank in TAXONOMIC_RANKS:
        confidence = row.get(f"{rank}_confidence")
        confident = row.get(f"{rank}_confident")
        cells = [_e(rank), f"<i>{_e(answer.label(rank))}</i>",
                 "—" if confidence is None else f"{confidence:.0%}",
                 '<span class="yes">yes</span>' if confident else '<span class="no">no</span>']  # fmt: skip
        if answer.labels:
            truth = answer.labels.get(rank)
            mark = "" if truth is None else (" ✓" if truth == answer.label(rank) else ' <span class="flag">✗</span>')
            cells.append(f"<i>{_e(truth)}</i>{mark}" if truth is not None else '<span class="none">—</span>')
        rows.append(cells)
    parts.append(_table(headers, rows, numeric=(2,)))
    notes = answer.disagreements()
    if notes:
        parts.append('<div class="disagree"><b>Disagreements</b><ul>'
                     + "".join(f"<li>{note}</li>" for note in notes) + "</ul></div>\n")  # fmt: skip
    parts.append("</div>\n</div>\n")
    parts.append(_key_photos_html(answer.neighbours, key_photo))
    parts.append(_neighbours_html(answer.neighbours))
    parts.append("</section>\n")
    return "".join(parts)


def _caption(position: int, neighbour: Mapping[str, Any]) -> str:
    """``1. Diptera › Sciaridae › Bradysia``, how close, the processid: the key's known ranks from order down."""
    lineage = " › ".join(
        f"<i>{_e(name)}</i>" for name in (neighbour["taxonomy"].get(r) for r in TAXONOMIC_RANKS) if name
    )
    closeness = _closeness(neighbour)
    return f"{position}. {lineage or '(no taxonomy)'}<br>{_e(closeness)}<br>{_e(neighbour['processid'])}"


def _closeness(neighbour: Mapping[str, Any]) -> str:
    return identity_text(neighbour.get("percent_identity"), neighbour.get("overlap")) or (
        f"similarity {neighbour['similarity']:.3f}"
    )


def _key_photos_html(neighbours: list[dict[str, Any]], key_photo: Any) -> str:
    figures = []
    for position, neighbour in enumerate(neighbours, start=1):
        if len(figures) == KEY_PHOTOS:
            break
        photo = key_photo(int(neighbour["row"]))
        if photo is not None:
            figures.append(f'<figure><img class="key-photo" src="{photo}" alt="key {_e(neighbour["processid"])}">'
                           f"<figcaption>{_caption(position, neighbour)}</figcaption></figure>")  # fmt: skip
    if not figures:
        return ""
    return '<h3>Nearest key photos</h3>\n<div class="keys">' + "".join(figures) + "</div>\n"


def _neighbours_html(neighbours: list[dict[str, Any]]) -> str:
    if not neighbours:
        return ""
    ranks = [rank.capitalize() for rank in TAXONOMIC_RANKS]
    if neighbours[0].get("percent_identity") is not None:  # a barcode's hits, as BOLD and BLAST list them
        rows = [[str(position), _e(n["processid"]), f"{n['percent_identity']:.1f}", _e(n.get("overlap")),
                 _e(n.get("bin")), *(f"<i>{_e(n['taxonomy'].get(rank))}</i>" for rank in TAXONOMIC_RANKS)]
                for position, n in enumerate(neighbours, start=1)]  # fmt: skip
        headers = ["#", "Hit (processid)", "% identity", "Overlap (bp)", "BIN", *ranks]
        return "<h3>Barcode hits</h3>\n" + _table(headers, rows, numeric=(0, 2, 3))
    rows = [[str(position), _e(n["processid"]), *(f"<i>{_e(n['taxonomy'].get(rank))}</i>" for rank in TAXONOMIC_RANKS),
             f"{n['similarity']:.3f}"] for position, n in enumerate(neighbours, start=1)]  # fmt: skip
    return "<h3>Nearest keys</h3>\n" + _table(["#", "Key specimen", *ranks, "Similarity"], rows, numeric=(0, 6))


def _notes_html() -> str:
    notes = [READING_NOTES[name] for name in ("prediction", "confident", "deepest", "unknown")]
    notes.append(
        "**Disagreements**: ranks where a photo with its barcode was answered by the photo + barcode embedding "
        "against what the barcode's hits say (the barcode was not confident there), and pairs of ranks whose taxa "
        "no listed key holds together (the answers at those ranks come from different keys)."
    )
    notes.append(
        "**Table's label**: the query table's own taxonomy beside the answer (✓ the same, ✗ not); the summary's "
        "agreement is over the queries labelled at each rank."
    )
    items = "".join(f"<li>{_markdown(note)}</li>\n" for note in notes)
    return f'<footer id="how-to-read">\n<h3>How to read the results</h3>\n<ul>\n{items}</ul>\n</footer>\n'
