"""Run under `accelerate launch --multi_gpu --num_processes 2`: the training loss of two processes, each holding
half of a global batch, equals the single-process ``forward(return_loss=True)`` on the whole batch, and so do the
gradients after DDP's averaging; the same holds for the gathered loss with same-species positives. Used by
tests/test_train.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from bioscan_clip.training.loop import training_loss
from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel, contrastive_loss


def tiny_model() -> BioscanClipModel:
    bert = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip
    torch.manual_seed(0)  # the same weights in every process, as DDP's broadcast would make them
    config = BioscanClipConfig(
        modalities=["dna", "text"],
        projection_dim=8,
        dna_config={**bert, "vocab_size": 1027, "max_position_embeddings": 16},
        text_config={**bert, "vocab_size": 50, "max_position_embeddings": 8},
    )
    return BioscanClipModel(config).eval()


def check_model_loss(accelerator: Accelerator) -> None:
    generator = torch.Generator().manual_seed(1)
    batch = {
        "dna_input_ids": torch.randint(3, 1027, (8, 12), generator=generator),
        "dna_attention_mask": torch.ones(8, 12, dtype=torch.long),
        "input_ids": torch.randint(0, 50, (8, 6), generator=generator),
        "attention_mask": torch.ones(8, 6, dtype=torch.long),
        "species_id": torch.tensor([0, 1, 1, 2, 3, 3, 3, -1]),
    }
    reference_model = tiny_model()
    reference = reference_model(**{k: v for k, v in batch.items() if k != "species_id"}, return_loss=True).loss
    reference.backward()
    rank = accelerator.process_index
    model = accelerator.prepare(tiny_model())
    local = {name: value[rank * 4 : rank * 4 + 4] for name, value in batch.items()}
    loss = training_loss(model, local)
    (loss * accelerator.num_processes).backward()  # as the training loop does; DDP averages the gradients
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    for (name, param), reference_param in zip(
        accelerator.unwrap_model(model).named_parameters(), reference_model.parameters(), strict=True
    ):
        if reference_param.grad is not None:
            torch.testing.assert_close(param.grad, reference_param.grad, atol=1e-6, rtol=1e-4, msg=name)


def check_gathered_embeddings(accelerator: Accelerator) -> None:
    generator = torch.Generator().manual_seed(0)
    full = {m: F.normalize(torch.randn(8, 6, generator=generator), dim=-1) for m in ("image", "dna", "text")}
    species = torch.tensor([0, 1, 1, 2, 3, 3, 3, -1])
    scale = torch.tensor(10.0)
    rank = accelerator.process_index
    for positives in (False, True):
        local = {m: v[rank * 4 : rank * 4 + 4].clone().requires_grad_(True) for m, v in full.items()}
        loss = contrastive_loss(
            local, scale, species_ids=species[rank * 4 : rank * 4 + 4], same_species_positives=positives, gather=True
        )
        (loss * accelerator.num_processes).backward()
        reference_inputs = {m: v.clone().requires_grad_(True) for m, v in full.items()}
        reference = contrastive_loss(reference_inputs, scale, species_ids=species, same_species_positives=positives)
        reference.backward()
        torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
        # Each process holds num_processes x the global loss's gradient of its own rows; DDP's average over
        # processes then gives exactly the single-process gradient.
        for m in full:
            gathered = accelerator.gather(local[m].grad) / accelerator.num_processes
            torch.testing.assert_close(gathered, reference_inputs[m].grad, atol=1e-6, rtol=1e-5)


def main() -> None:
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.num_processes
    assert str(accelerator.distributed_type) == "DistributedType.MULTI_CPU", accelerator.distributed_type
    check_gathered_embeddings(accelerator)
    check_model_loss(accelerator)
    accelerator.print(f"ok: {accelerator.num_processes} processes, loss and gradients equal")


if __name__ == "__main__":
    main()
