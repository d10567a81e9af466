"""A toy training run shaped like OpenUni's, under the engine `accelerate launch` asked for (tests/test_engines.py).

The trained model is what accelerate wraps in OpenUni: the real connector (learned queries, a ModuleList of
`ConnectorLayer`s, projector) and a real tiny SANA (a ModuleList of `SanaTransformerBlock`s); a frozen text encoder
is held outside the module tree, as the MLLM is. Its forward returns per-sample flow-matching losses. Samples are
fixed by their index, and a global batch is split into contiguous per-process slices, so any process count sees the
same global batches. Checkpoints use the trainer's layout (openuni.training.checkpointing), resumed through one
decision of the main process.

    engine_toy.py OUTPUT_DIR STEPS [--global-batch 4] [--checkpoint-every 2] [--unshared-output]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from openuni.errors import OpenUniError
from openuni.training import checkpointing
from openuni.training.engines import (DEEPSPEED, FSDP, check_resumable, engine_accelerator, requested_engine,
                                      running_engine)

TOKENS, LATENT = 6, (8, 2, 2)


class ToyOpenUni(nn.Module):
    def __init__(self):
        from diffusers import SanaTransformer2DModel

        from openuni.connector import OpenUniConnector
        from openuni.tiny import TINY_CONNECTOR, TINY_TRANSFORMER

        super().__init__()
        self.connector = OpenUniConnector(**TINY_CONNECTOR, caption_channels=TINY_TRANSFORMER["caption_channels"])
        self.transformer = SanaTransformer2DModel(**TINY_TRANSFORMER)
        encoder = nn.Embedding(50, TINY_CONNECTOR["hidden_size"]).requires_grad_(False)
        self._frozen = (encoder,)  # a tuple: not a submodule, never wrapped or checkpointed

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
        prompt = self._frozen[0](tokens)
        # The queries are read outside the connector's forward, as OpenUni's LLM pass reads them.
        queries = self.connector.meta_queries.expand(len(tokens), -1, -1)
        captions = self.connector(queries + prompt.mean(dim=1, keepdim=True))
        s = sigma.view(-1, 1, 1, 1)
        prediction = self.transformer((1 - s) * latents + s * noise, encoder_hidden_states=captions,
                                      timestep=sigma * 1000, return_dict=False)[0]
        return ((prediction - (noise - latents)) ** 2).flatten(1).mean(dim=1)


def samples(indices: list[int]):
    rows = []
    for index in indices:
        g = torch.Generator().manual_seed(index)
        rows.append((torch.randint(0, 50, (TOKENS,), generator=g), torch.randn(LATENT, generator=g),
                     torch.randn(LATENT, generator=g), torch.rand((), generator=g)))
    return [torch.stack(column) for column in zip(*rows)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--unshared-output", action="store_true", help="each process its own folder, as on nodes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    accelerator = engine_accelerator(mixed_precision="no")
    try:
        train(accelerator, args)
    except OpenUniError as error:
        print(f"engine_toy: error: {error}", file=sys.stderr)
        accelerator.end_training()  # no process is left waiting on the others' collectives
        return 2
    accelerator.end_training()
    return 0


def train(accelerator, args) -> None:
    engine, rank, processes = running_engine(accelerator), accelerator.process_index, accelerator.num_processes
    output_dir = args.output_dir / f"rank-{rank}" if args.unshared_output else args.output_dir
    per_process = args.global_batch // processes
    torch.manual_seed(0)
    model = ToyOpenUni()
    # SGD with momentum, not Adam: Adam turns the float noise of the gradients that are truly 0 (attention key
    # biases) into full-size steps, which differ between process counts more than rounding would.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    if engine == DEEPSPEED:
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=per_process, gradient_accumulation_steps=1, gradient_clipping=1.0)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    step, losses = 0, []
    found = checkpointing.agreed_resume(accelerator, "auto", output_dir,
                                        check=lambda path: check_resumable(path, engine, processes))
    if found is not None:
        accelerator.load_state(str(found))
        state = checkpointing.read_trainer_state(found)
        step, losses = state["step"], state["losses"]
    while step < args.steps:
        first = step * args.global_batch + rank * per_process
        inputs = [t.to(accelerator.device) for t in samples(list(range(first, first + per_process)))]
        loss = wrapped(*inputs).mean()
        accelerator.backward(loss)
        if engine != DEEPSPEED:  # DeepSpeed clips by its config
            accelerator.clip_grad_norm_(wrapped.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        step += 1
        if step % args.checkpoint_every == 0 or step == args.steps:
            save(accelerator, output_dir, step, dict(step=step, losses=losses, engine=engine, processes=processes,
                                                     fsdp_units=fsdp_units(wrapped) if engine == FSDP else []))
    if accelerator.is_main_process:
        print(f"engine_toy: {requested_engine()} asked, {engine} ran on {processes} processes; losses {losses}")


def save(accelerator, output_dir: Path, step: int, state: dict) -> None:
    partial = checkpointing.partial_path(output_dir, step)
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpointing.write_trainer_state(partial, state)
        checkpointing.publish(output_dir, step, keep=2)
    accelerator.wait_for_everyone()


def fsdp_units(wrapped: nn.Module) -> list[str]:
    from torch.distributed.fsdp import FSDPModule

    return [name or "<root>" for name, module in wrapped.named_modules() if isinstance(module, FSDPModule)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
