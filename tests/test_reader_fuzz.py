"""Fuzzing the readers users point at their own files (FASTA, query tables, BOLD exports), for a bounded time.

Whatever the bytes, a reader either returns records or raises one ``BioscanInputError`` whose message names the
file on a single line: never another exception, never a traceback for the user.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset_scripts.queries import read_fasta, read_query_table
from modeling_bioscanclip import BioscanInputError

# Pieces real files are made of, so that the fuzzer reaches past the first check of each reader.
FASTA_PIECES = [">", ">rec1", ">rec 2 desc", "\n", "\r\n", ";comment", "ACGT", "acgtn", "NNNN", "--", "U", "Z", "\t",
                " ", "\ufeff", "é", ">\n"]  # fmt: skip
TABLE_PIECES = ["processid", "id", "dna_barcode", "nuc", "nucleotides", "marker_code", "COI-5P", "species_name",
                "image", "\t", ",", ";", "|", "\n", "\r\n", '"', "'", "ACGTACGT", "acgu-n", "REC1", "Aus bus",
                "Aus sp. 2ES", "", " ", "\ufeff"]  # fmt: skip
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fuzzed_file(content: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(delete=False, suffix=suffix) as handle:
        handle.write(content)
    return Path(handle.name)


def assert_one_clear_line(error: BioscanInputError, path: Path) -> None:
    message = str(error).strip()
    assert path.name in message, message
    assert "\n" not in message, message


def made_of(pieces: list[str]) -> st.SearchStrategy[bytes]:
    text = st.lists(st.sampled_from(pieces), max_size=40).map("".join)
    return st.one_of(text.map(lambda s: s.encode("utf-8")), st.binary(max_size=300))


@FUZZ
@given(content=made_of(FASTA_PIECES))
def test_fasta_reader_returns_records_or_one_clear_error(content):
    path = fuzzed_file(content, ".fasta")
    try:
        records = read_fasta(path)
    except BioscanInputError as error:
        assert_one_clear_line(error, path)
    else:
        assert records and all(isinstance(i, str) and isinstance(s, str) and s for i, s in records)
    finally:
        path.unlink()


@FUZZ
@given(content=made_of(TABLE_PIECES), suffix=st.sampled_from([".csv", ".tsv", ".txt"]))
def test_query_table_reader_returns_queries_or_one_clear_error(content, suffix):
    path = fuzzed_file(content, suffix)
    try:
        queries, _ = read_query_table(path)
    except BioscanInputError as error:
        assert_one_clear_line(error, path)
    else:
        assert all("id" in query for query in queries)
    finally:
        path.unlink()


@FUZZ
@given(content=made_of(TABLE_PIECES))
def test_bold_builder_reads_or_refuses_with_one_clear_error(content):
    from dataset_scripts import load_bioscan

    path = fuzzed_file(content, ".tsv")
    with tempfile.TemporaryDirectory() as cache:
        try:
            load_bioscan("bold", str(path), cache_dir=cache)
        except BioscanInputError as error:
            assert_one_clear_line(error, path)
        finally:
            path.unlink()


def test_a_header_naming_one_column_twice_is_refused_by_name(tmp_path):
    """Found by the fuzz test above (`"\t ` : two columns that both strip to ''): one error naming the file and
    the name, where a cell could otherwise not say which column it belongs to."""
    from dataset_scripts.tables import read_table

    for header in (b'"\t \n', b'"id"\tid \n1\t2\n'):  # names equal once quotes and spaces go
        path = tmp_path / "twice.tsv"
        path.write_bytes(header)
        with pytest.raises(BioscanInputError, match="more than once") as raised:
            read_table(path)
        assert str(path) in str(raised.value)
