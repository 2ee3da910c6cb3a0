"""The model card and the README's main-job table come from results.json, never from hand-typed figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import load_script
from huggingface_hub import ModelCard

from bioscan_clip.apps.cli import main
from bioscan_clip.evaluation.reports import CARD_RESULTS_END, CARD_RESULTS_START, results_markdown

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "model_card.md"


def results_block(text: str) -> str:
    return text[text.index(CARD_RESULTS_START) + len(CARD_RESULTS_START) : text.index(CARD_RESULTS_END)]


def expected_model_index(summary: dict) -> dict[tuple[str, str], float]:
    """(task name, metric name) -> value (%) that the card must carry for an evaluation, from results.json."""
    expected = {}
    for pair, metrics in summary["results"].items():
        for group in ("seen", "unseen", "hm"):
            value = metrics.get(f"{group}/species/macro/top1")
            if value is not None:
                expected[("taxonomic retrieval", f"{pair}: species macro top-1 ({group})")] = round(100 * value, 2)
    return expected


def card_model_index(path: Path) -> dict[tuple[str, str], float]:
    """What the Hub reads from a card's model-index (huggingface_hub's own parser)."""
    card = ModelCard.load(path)
    return {(r.task_name, r.metric_name): r.metric_value for r in card.data.eval_results}


def test_the_repository_card_is_a_template_without_figures():
    text = TEMPLATE.read_text()
    card = ModelCard(text)
    assert card.data.eval_results is None and "model-index:" not in text
    block = results_block(text)
    assert "TEMPLATE" in block and not re.search(r"\d", block)
    assert not re.search(r"\d+(\.\d+)? ?%", text)  # no accuracy anywhere in the prose either


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, trained_tiny, mini_dir, mini_cache):
    out = tmp_path_factory.mktemp("card") / "evaluation"
    card = out.parent / "card.md"
    card.write_text(TEMPLATE.read_text())
    argv = ["evaluate", "--model", str(trained_tiny), "--source", "mini", "--data_dir", str(mini_dir), "--cache_dir",
            str(mini_cache), "--out", str(out), "--model_card", str(card), "--examples", "0"]  # fmt: skip
    assert main(argv) == 0
    return out / "results.json", card


def test_evaluate_fills_the_template_from_its_results_json(evaluation):
    results, card = evaluation
    summary = json.loads(results.read_text())
    assert card_model_index(card) == expected_model_index(summary) and len(expected_model_index(summary)) >= 20
    text = card.read_text()
    assert results_block(text).strip() == results_markdown(summary)
    assert f"against all {summary['keys']:,} keys" in text and "SYNTHETIC" in text
    template = ModelCard(TEMPLATE.read_text())
    filled = ModelCard(text)
    for key in ("license", "library_name", "tags"):
        assert getattr(filled.data, key) == getattr(template.data, key)
    # The template's prose is kept; only its results paragraph is replaced.
    prose = TEMPLATE.read_text().split("---\n", 2)[2]
    assert prose[: prose.index(CARD_RESULTS_START)] in text and "TEMPLATE" not in text


def test_push_model_writes_the_same_card_from_the_same_results_json(evaluation, trained_tiny, tmp_path, capsys):
    results, card = evaluation
    out = tmp_path / "repo"
    argv = ["push", "model", "--repo_id", "my-lab/tiny", "--model", str(trained_tiny), "--results", str(results),
            "--card", str(TEMPLATE), "--dry_run", str(out)]  # fmt: skip
    assert main(argv) == 0
    published = out / "README.md"
    assert card_model_index(published) == card_model_index(card)
    assert ModelCard.load(published).data.model_name == "tiny"
    assert results_block(published.read_text()) == results_block(card.read_text())
    absent = ["push", "model", "--repo_id", "my-lab/tiny", "--model", str(trained_tiny), "--card",
              str(tmp_path / "absent.md"), "--dry_run", str(tmp_path / "repo2")]  # fmt: skip
    assert main(absent) == 2 and not (tmp_path / "repo2").exists()
    assert "absent.md: no such file" in capsys.readouterr().err


def test_the_readme_main_job_table_is_the_snapshot_rendered():
    """Fast: README.md's main-job block is exactly the committed snapshot of a main-job run, rendered by the script
    (a figure typed into the README fails here)."""
    table = load_script("main_job_table")
    assert table.main(["--check"]) == 0
    snapshot = json.loads(table.SNAPSHOT.read_text())
    assert snapshot["command"] == table.COMMAND and snapshot["seed"] == 0
    readme = table.README.read_text()
    # The documented command is the README's first command line (the main job), and the block cites its seed.
    assert readme.split("```bash\n", 1)[1].splitlines()[0].endswith(table.COMMAND)
    block = table.readme_block(readme)
    image_species = snapshot["trained"]["results"]["image->image"]["seen/species/macro/top1"]
    assert f"| image→image | species | {100 * image_species:.1f} |" in block
    # The seed-spread table comes from three seeds' runs, the first of them the run of the table above.
    spread = json.loads(table.SPREAD_SNAPSHOT.read_text())
    assert spread["command"] == table.COMMAND and list(spread["seeds"]) == ["0", "1", "2"]
    assert spread["seeds"]["0"]["results"] == snapshot["trained"]["results"]
    assert table.readme_block(readme, table.SPREAD_START, table.SPREAD_END) == table.render_spread(spread)
