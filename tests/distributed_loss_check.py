"""Run under `accelerate launch --multi_gpu --num_processes 2`: the gathered contrastive loss of two processes,
each holding half of a global batch, equals the single-process loss on the whole batch, and so do the gradients
after DDP's averaging. Used by tests/test_train.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import train_accelerate
from modeling_bioscanclip import contrastive_loss


def main() -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.num_processes
    assert str(accelerator.distributed_type) == "DistributedType.MULTI_CPU", accelerator.distributed_type
    generator = torch.Generator().manual_seed(0)
    full = {m: F.normalize(torch.randn(8, 6, generator=generator), dim=-1) for m in ("image", "dna", "text")}
    species = torch.tensor([0, 1, 1, 2, 3, 3, 3, -1])
    scale = torch.tensor(10.0)
    rank = accelerator.process_index
    for positives in (False, True):
        local = {m: v[rank * 4 : rank * 4 + 4].clone().requires_grad_(True) for m, v in full.items()}
        loss = train_accelerate.global_contrastive_loss(
            accelerator, local, scale, species[rank * 4 : rank * 4 + 4], positives
        )
        (loss * accelerator.num_processes).backward()
        # The single-process reference on the whole global batch.
        reference_inputs = {m: v.clone().requires_grad_(True) for m, v in full.items()}
        targets = train_accelerate.contrastive_targets(species, positives)
        names = list(reference_inputs)
        reference = torch.stack([
            contrastive_loss(scale * reference_inputs[a] @ reference_inputs[b].t(), targets)
            for i, a in enumerate(names) for b in names[i + 1 :]
        ]).mean()  # fmt: skip
        reference.backward()
        torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
        # Each process holds num_processes x the global loss's gradient of its own rows; DDP's average over
        # processes then gives exactly the single-process gradient.
        for m in names:
            gathered = accelerator.gather(local[m].grad) / accelerator.num_processes
            torch.testing.assert_close(gathered, reference_inputs[m].grad, atol=1e-6, rtol=1e-5)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    accelerator.print(f"ok: {accelerator.num_processes} processes, loss and gradients equal")


if __name__ == "__main__":
    main()
