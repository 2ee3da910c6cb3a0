"""The bad-input table: every case gets one clear line that names the input, exit code 2, no traceback and no
partial output (a file already at ``--out`` is left byte for byte as it was).

Cases run in this process through ``bioscan_clip.apps.cli.main`` (the same error boundary as the console script), the
processor, the builders and the demo's handler. RELIABILITY.md lists the classes; tests/test_reliability_doc.py
checks it against this table.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import pytest
from reliability_fixtures import BARCODE, key_records, png_bytes, save_tiny_model

from bioscan_clip.apps.cli import main
from bioscan_clip.identification.build import build_key_folder
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError

SENTINEL = b"an earlier output that the user kept"
GOOD_FASTA = f">Q1\n{BARCODE}\n".encode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb is refused from the header alone)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64


def gif_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buffer, format="GIF")
    return buffer.getvalue()


DIR = object()  # a folder where a file is expected
FILES = {
    "empty": b"",
    "nonutf8.fasta": b">Q1\n\xff\xfe\xfaACGT\n",
    "binary.fasta": b"\x00\x01\x02\x03\x89PNG",
    "header_only.fasta": b">Q1\n",
    "seq_first.fasta": b"ACGT\n>Q1\nACGT\n",
    "bad_base.fasta": f">GOOD1\n{BARCODE}\n>BADREC7\n{BARCODE[:300]}XQZ{BARCODE[:300]}\n".encode(),
    "digits.fasta": f">DIG3\n{BARCODE[:200]}12345\n".encode(),
    "second_empty.fasta": f">Q1\n{BARCODE}\n>EMPTY2\n".encode(),
    "dir.fasta": DIR,
    "empty.csv": b"",
    "header_only.csv": b"processid,dna_barcode\n",
    "pipe.csv": f"processid|dna_barcode\nQ1|{BARCODE}\n".encode(),
    "ragged.csv": f"processid,dna_barcode\nQ1,{BARCODE}\nQ2,{BARCODE},extra,fields\n".encode(),
    "bom_bad.csv": f"\ufeffprocessid,dna_barcode\nBOMREC1,{BARCODE[:100]}JJJ\n".encode(),
    "no_barcode.csv": b"a,b\n1,2\n",
    "nonutf8.csv": b"processid,dna_barcode\nQ1,\xff\xfeACGT\n",
    "bad_row.csv": f"processid,dna_barcode\nQ1,{BARCODE}\nROWBAD2,ACGT-!!ACGT\n".encode(),
    "dir.csv": DIR,
    "img_missing.csv": b"processid,image\nIM1,nowhere.jpg\n",
    "img_dir.csv": b"processid,image\nIM2,subdir\n",
    "img_text.csv": b"processid,image\nIM3,notes.jpg\n",
    "subdir": DIR,
    "notes.jpg": b"these are field notes, not a photo",
    "zero.jpg": b"",
    "truncated.png": png_bytes(1, 64)[:120],
    "bomb.png": png_header_only(50_000, 50_000),
    "anim.gif": gif_bytes(),
    "dir.jpg": DIR,
    "empty_images": DIR,
    "bad_images": DIR,
    "bold_empty.tsv": b"",
    "bold_nonutf8.tsv": b"processid\tnuc\tspecies\nP1\t\xff\xfeACGT\tA b\n",
    "bold_ragged.tsv": f"processid\tnuc\torder\nP1\t{BARCODE}\tDiptera\nP2\t{BARCODE}\tDiptera\textra\n".encode(),
    "bold_dir.tsv": DIR,
    "bold_no_columns.tsv": b"a\tb\n1\t2\n",
    "not_keys": DIR,
    "out_dir.parquet": DIR,
}


def strip_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4000, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_processor):
    root = tmp_path_factory.mktemp("bad-inputs")
    model_dir = save_tiny_model(root / "model", tiny_processor, seed=0)
    model = BioscanClipModel.from_pretrained(model_dir).eval()
    build_key_folder(
        model, BioscanClipProcessor.from_pretrained(model_dir), key_records(8), root / "keys", show_progress=False
    )
    corrupt = root / "corrupt_keys"
    shutil.copytree(root / "keys", corrupt)
    faiss_file = corrupt / "dna" / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    faiss_file.write_bytes(bytes(data))
    inputs = root / "inputs"
    inputs.mkdir()
    for name, content in {**FILES, "strip.png": strip_png()}.items():
        if content is DIR:
            (inputs / name).mkdir()
        else:
            (inputs / name).write_bytes(content)
    (inputs / "bad_images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (inputs / "good.fasta").write_bytes(GOOD_FASTA)
    return {"root": root, "model": model_dir, "keys": root / "keys", "corrupt": corrupt, "inputs": inputs}


# (case id, argv template, what the error line must name). {in} is the inputs folder, {model}/{keys} the fixtures.
PREDICT = "predict --model {model} --keys {keys}"
EMBED = "embed --model {model}"
CLI_CASES = [
    # FASTA
    ("predict-fasta-missing", PREDICT + " --fasta {in}/missing.fasta", "missing.fasta"),
    ("predict-fasta-empty", PREDICT + " --fasta {in}/empty", "empty"),
    ("predict-fasta-nonutf8", PREDICT + " --fasta {in}/nonutf8.fasta", "nonutf8.fasta"),
    ("predict-fasta-binary", PREDICT + " --fasta {in}/binary.fasta", "binary.fasta"),
    ("predict-fasta-header-only", PREDICT + " --fasta {in}/header_only.fasta", "header_only.fasta"),
    ("predict-fasta-sequence-first", PREDICT + " --fasta {in}/seq_first.fasta", "seq_first.fasta"),
    ("predict-fasta-bad-base", PREDICT + " --fasta {in}/bad_base.fasta", "BADREC7"),
    ("predict-fasta-digits", PREDICT + " --fasta {in}/digits.fasta", "DIG3"),
    ("predict-fasta-record-without-sequence", PREDICT + " --fasta {in}/second_empty.fasta", "EMPTY2"),
    ("predict-fasta-directory", PREDICT + " --fasta {in}/dir.fasta", "dir.fasta"),
    # CSV/TSV tables
    ("predict-table-missing", PREDICT + " --table {in}/missing.csv", "missing.csv"),
    ("predict-table-empty", PREDICT + " --table {in}/empty.csv", "empty.csv"),
    ("predict-table-header-only", PREDICT + " --table {in}/header_only.csv", "header_only.csv"),
    ("predict-table-pipe-delimited", PREDICT + " --table {in}/pipe.csv", "pipe.csv"),
    ("predict-table-ragged", PREDICT + " --table {in}/ragged.csv", "ragged.csv"),
    ("predict-table-bom-id-kept", PREDICT + " --table {in}/bom_bad.csv", "BOMREC1"),
    ("predict-table-no-barcode-column", PREDICT + " --table {in}/no_barcode.csv", "no_barcode.csv"),
    ("predict-table-nonutf8", PREDICT + " --table {in}/nonutf8.csv", "nonutf8.csv"),
    ("predict-table-bad-row", PREDICT + " --table {in}/bad_row.csv", "ROWBAD2"),
    ("predict-table-directory", PREDICT + " --table {in}/dir.csv", "dir.csv"),
    ("predict-table-image-missing", PREDICT + " --table {in}/img_missing.csv", "nowhere.jpg"),
    ("predict-table-image-directory", PREDICT + " --table {in}/img_dir.csv", "subdir"),
    ("predict-table-image-not-an-image", PREDICT + " --table {in}/img_text.csv", "notes.jpg"),
    # images
    ("predict-image-missing", PREDICT + " --images {in}/missing.jpg", "missing.jpg"),
    ("predict-image-directory", PREDICT + " --images {in}/dir.jpg", "dir.jpg"),
    ("predict-image-zero-bytes", PREDICT + " --images {in}/zero.jpg", "zero.jpg"),
    ("predict-image-text", PREDICT + " --images {in}/notes.jpg", "notes.jpg"),
    ("predict-image-truncated", PREDICT + " --images {in}/truncated.png", "truncated.png"),
    ("predict-image-bomb", PREDICT + " --images {in}/bomb.png", "bomb.png"),
    ("predict-image-strip", PREDICT + " --images {in}/strip.png", "strip.png"),
    ("predict-image-gif", PREDICT + " --images {in}/anim.gif", "anim.gif"),
    ("predict-images-dir-missing", PREDICT + " --images_dir {in}/nowhere", "nowhere"),
    ("predict-images-dir-empty", PREDICT + " --images_dir {in}/empty_images", "empty_images"),
    ("predict-images-dir-corrupt", PREDICT + " --images_dir {in}/bad_images", "broken"),
    # options, keys, model, output
    ("predict-no-queries", PREDICT, "--fasta"),
    ("predict-restrict-malformed", PREDICT + " --fasta {in}/good.fasta --restrict order", "order"),
    ("predict-restrict-unknown-rank", PREDICT + " --fasta {in}/good.fasta --restrict kingdom=Animalia", "kingdom"),
    ("predict-k-zero", PREDICT + " --fasta {in}/good.fasta --k 0", "k"),
    ("predict-keys-missing", "predict --model {model} --keys {in}/nokeys --fasta {in}/good.fasta", "nokeys"),
    ("predict-keys-not-a-key-folder", "predict --model {model} --keys {in}/not_keys --fasta {in}/good.fasta",
     "not_keys"),
    ("predict-keys-corrupted", "predict --model {model} --keys {corrupt} --fasta {in}/good.fasta", "corrupt_keys"),
    ("predict-model-missing", "predict --model {in}/nomodel --keys {keys} --fasta {in}/good.fasta", "nomodel"),
    ("predict-out-is-a-folder", PREDICT + " --fasta {in}/good.fasta --out {in}/out_dir.parquet", "out_dir.parquet"),
    # embed
    ("embed-fasta-missing", EMBED + " --fasta {in}/missing.fasta", "missing.fasta"),
    ("embed-fasta-empty", EMBED + " --fasta {in}/empty", "empty"),
    ("embed-fasta-nonutf8", EMBED + " --fasta {in}/nonutf8.fasta", "nonutf8.fasta"),
    ("embed-fasta-bad-base", EMBED + " --fasta {in}/bad_base.fasta", "BADREC7"),
    ("embed-fasta-directory", EMBED + " --fasta {in}/dir.fasta", "dir.fasta"),
    ("embed-table-ragged", EMBED + " --table {in}/ragged.csv", "ragged.csv"),
    ("embed-table-pipe-delimited", EMBED + " --table {in}/pipe.csv", "pipe.csv"),
    ("embed-table-bom-id-kept", EMBED + " --table {in}/bom_bad.csv", "BOMREC1"),
    ("embed-table-bad-row", EMBED + " --table {in}/bad_row.csv", "ROWBAD2"),
    ("embed-table-empty", EMBED + " --table {in}/empty.csv", "empty.csv"),
    ("embed-image-missing", EMBED + " --images {in}/missing.jpg", "missing.jpg"),
    ("embed-image-directory", EMBED + " --images {in}/dir.jpg", "dir.jpg"),
    ("embed-image-truncated", EMBED + " --images {in}/truncated.png", "truncated.png"),
    ("embed-image-bomb", EMBED + " --images {in}/bomb.png", "bomb.png"),
    ("embed-image-text", EMBED + " --images {in}/notes.jpg", "notes.jpg"),
    ("embed-no-queries", EMBED, "--fasta"),
    ("embed-model-missing", "embed --model {in}/nomodel --fasta {in}/good.fasta", "nomodel"),
    ("embed-split-unknown", EMBED + " --source bold --data_dir {in}/bold_ragged.tsv --split nosuchsplit",
     "bold_ragged.tsv"),
    # index
    ("index-out-not-a-key-folder", "index --model {model} --source mini --out {in}/subdir_with_file", "subdir_with_file"),
    ("index-out-is-a-file", "index --model {model} --source mini --out {in}/notes.jpg", "notes.jpg"),
    ("index-bold-missing", "index --model {model} --source bold --data_dir {in}/nowhere.tsv --out {root}/k1",
     "nowhere.tsv"),
    ("index-bold-empty", "index --model {model} --source bold --data_dir {in}/bold_empty.tsv --out {root}/k2",
     "bold_empty.tsv"),
    ("index-bold-nonutf8", "index --model {model} --source bold --data_dir {in}/bold_nonutf8.tsv --out {root}/k3",
     "bold_nonutf8.tsv"),
    ("index-bold-ragged", "index --model {model} --source bold --data_dir {in}/bold_ragged.tsv --out {root}/k4",
     "bold_ragged.tsv"),
    ("index-bold-directory", "index --model {model} --source bold --data_dir {in}/bold_dir.tsv --out {root}/k5",
     "bold_dir.tsv"),
    ("index-bold-no-columns", "index --model {model} --source bold --data_dir {in}/bold_no_columns.tsv "
     "--out {root}/k6", "bold_no_columns.tsv"),
    ("index-dataset-path-missing", "index --model {model} --dataset_path {in}/nodataset --out {root}/k7",
     "nodataset"),
    ("index-model-missing", "index --model {in}/nomodel --source bold --data_dir {in}/bold_ragged.tsv "
     "--out {root}/k8", "bold_ragged.tsv"),
    # evaluate
    ("evaluate-bold-missing", "evaluate --model {model} --source bold --data_dir {in}/nowhere.tsv --out {root}/e1",
     "nowhere.tsv"),
    ("evaluate-bold-empty", "evaluate --model {model} --source bold --data_dir {in}/bold_empty.tsv --out {root}/e2",
     "bold_empty.tsv"),
    ("evaluate-bold-nonutf8", "evaluate --model {model} --source bold --data_dir {in}/bold_nonutf8.tsv "
     "--out {root}/e3", "bold_nonutf8.tsv"),
    ("evaluate-bold-ragged", "evaluate --model {model} --source bold --data_dir {in}/bold_ragged.tsv "
     "--out {root}/e4", "bold_ragged.tsv"),
    ("evaluate-dataset-path-missing", "evaluate --model {model} --dataset_path {in}/nodataset --out {root}/e5",
     "nodataset"),
    ("evaluate-model-missing", "evaluate --model {in}/nomodel --source mini --out {root}/e6", "nomodel"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "template", "named"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_named_line_and_exit_2(world, tmp_path, capsys, case, template, named):
    inputs = world["inputs"]
    if case == "index-out-not-a-key-folder":
        (inputs / "subdir_with_file").mkdir(exist_ok=True)
        (inputs / "subdir_with_file" / "important.txt").write_text("mine")
    out = tmp_path / "out.parquet"
    out.write_bytes(SENTINEL)
    argv = template.format(
        model=world["model"], keys=world["keys"], corrupt=world["corrupt"], root=tmp_path, **{"in": inputs}
    ).split()
    if argv[0] in ("predict", "embed") and "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"bioscan-clip {argv[0]}: error: "), err[-2000:]
    assert named in lines[0], lines[0]
    assert out.read_bytes() == SENTINEL  # a failed run removes and replaces nothing the user had
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # and leaves nothing half-written beside it
    if case == "index-out-not-a-key-folder":
        assert (inputs / "subdir_with_file" / "important.txt").read_text() == "mine"


def test_debug_shows_the_traceback(world, capsys):
    code = main(["embed", "--model", str(world["model"]), "--fasta", str(world["inputs"] / "missing.fasta"), "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("bioscan-clip embed: error:")


# ---- the processor: each refused record is named -------------------------------------------------------------------
PROCESSOR_DNA = [
    ("dna-letter-z", "ACGTZACGT"),
    ("dna-digit", "ACGT1ACGT"),
    ("dna-empty", ""),
    ("dna-whitespace", "   \n "),
    ("dna-punctuation", "ACGT!?ACGT"),
    ("dna-unicode", "ACGTÄACGT"),
    ("dna-two-fasta-records", f">a\n{BARCODE}\n>b\n{BARCODE}"),
    ("dna-fasta-header-only", ">only a header"),
    ("dna-not-a-string", 12345),
    ("dna-none", None),
    ("dna-bytes", b"ACGT"),
    ("dna-all-gaps", "-----"),
    ("dna-null-byte", "ACGT\x00ACGT"),
]
PROCESSOR_IMAGES = [
    ("image-missing-path", "{in}/missing.jpg"),
    ("image-directory", "{in}/dir.jpg"),
    ("image-zero-bytes", "{in}/zero.jpg"),
    ("image-text-file", "{in}/notes.jpg"),
    ("image-truncated", "{in}/truncated.png"),
    ("image-bomb", "{in}/bomb.png"),
    ("image-strip", "{in}/strip.png"),
    ("image-gif", "{in}/anim.gif"),
    ("image-random-bytes", b"\x00\x01garbage"),
    ("image-integer", 7),
]


@pytest.mark.parametrize(("case", "value"), PROCESSOR_DNA, ids=[c[0] for c in PROCESSOR_DNA])
def test_processor_names_the_refused_barcode(tiny_processor, case, value):
    with pytest.raises(BioscanInputError) as caught:
        tiny_processor(dna=[BARCODE, value], names=["OK1", "REC-BAD-9"])
    assert "REC-BAD-9" in str(caught.value) and "\n" not in str(caught.value).strip()


@pytest.mark.parametrize(("case", "value"), PROCESSOR_IMAGES, ids=[c[0] for c in PROCESSOR_IMAGES])
def test_processor_names_the_refused_image(world, tiny_processor, case, value):
    if isinstance(value, str):
        value = value.format(**{"in": world["inputs"]})
    with pytest.raises(BioscanInputError) as caught:
        tiny_processor(images=[png_bytes(0), value], names=["OK1", "IMG-BAD-4"])
    assert "IMG-BAD-4" in str(caught.value) and "\n" not in str(caught.value).strip()


# ---- the builders (dataset_scripts): a bad export is one error naming the file -------------------------------------
BUILDER_CASES = ["bold_empty.tsv", "bold_nonutf8.tsv", "bold_ragged.tsv", "bold_dir.tsv", "bold_no_columns.tsv",
                 "nowhere.tsv", "binary.fasta"]  # fmt: skip


@pytest.mark.parametrize("name", BUILDER_CASES)
def test_bold_builder_names_the_bad_file(world, tmp_path, name):
    from dataset_scripts import load_bioscan

    path = world["inputs"] / name
    with pytest.raises(BioscanInputError) as caught:
        load_bioscan("bold", str(path), cache_dir=str(tmp_path / "cache"))
    assert name in str(caught.value)


# ---- the demo's handler: a gr.Error with a short message, never a traceback ----------------------------------------
DEMO_CASES = [
    ("demo-empty", None, ""),
    ("demo-whitespace-barcode", None, "   \n\t"),
    ("demo-bad-base", None, "ACGTZZZACGT"),
    ("demo-barcode-too-long", None, "A" * 200_000),
    ("demo-two-fasta-records", None, f">a\n{BARCODE}\n>b\n{BARCODE}"),
    ("demo-image-text", "{in}/notes.jpg", ""),
    ("demo-image-truncated", "{in}/truncated.png", ""),
    ("demo-image-bomb", "{in}/bomb.png", ""),
    ("demo-image-zero", "{in}/zero.jpg", ""),
    ("demo-image-directory", "{in}/dir.jpg", ""),
    ("demo-image-missing", "{in}/gone.png", ""),
    ("demo-image-gif", "{in}/anim.gif", ""),
]


@pytest.fixture(scope="module")
def demo_handler(world):
    from bioscan_clip.apps.demo.page import DemoHandler
    from bioscan_clip.identification.identifier import Identifier

    return DemoHandler(Identifier.load(world["model"], world["keys"]))


@pytest.mark.parametrize(("case", "image", "barcode"), DEMO_CASES, ids=[c[0] for c in DEMO_CASES])
def test_demo_handler_answers_bad_input_with_a_short_message(world, demo_handler, case, image, barcode):
    import gradio as gr

    image = image.format(**{"in": world["inputs"]}) if image else None
    with pytest.raises(gr.Error) as caught:
        demo_handler(image, barcode, 5)
    message = str(caught.value.message)
    assert message and len(message) < 400 and "Traceback" not in message and str(world["root"]) not in message


def test_the_table_has_at_least_100_bad_inputs():
    total = len(CLI_CASES) + len(PROCESSOR_DNA) + len(PROCESSOR_IMAGES) + len(BUILDER_CASES) + len(DEMO_CASES)
    assert total >= 100, total
