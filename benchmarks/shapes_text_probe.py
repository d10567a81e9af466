"""Does the shapes model's frozen text path carry the caption? A diagnostic beside `benchmarks/shapes.py`.

The frozen MLLM of `openuni shapes model` (random weights) is what the training run conditions on; if its states at
the query positions lost the words or their order, no amount of SANA training could follow the prompt. This script
trains only the learned queries and a connector of the preset's size, with one linear read-out per caption attribute
(first object's colour and shape, second object's colour and shape or none, relation or none, count), on training
captions, and reports how often each attribute is read back right on training captions and on the held-out ones,
whose colour-shape pairs it never saw. About 30 s on one CPU thread.

    python benchmarks/shapes_text_probe.py [--steps 300]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch
from torch import nn

from openuni.connector import OpenUniConnector
from openuni.data.shapes import NUMBERS, PALETTE, RELATIONS, SHAPES, held_out_prompts, training_samples
from openuni.shapes_model import SHAPES_TRANSFORMER, query_states, shapes_text_path
from openuni.training.config import PRESETS

ATTRIBUTES = ("colour 1", "shape 1", "colour 2", "shape 2", "relation", "count")
CAPTION_CHANNELS = SHAPES_TRANSFORMER["caption_channels"]  # the connector's output width


def attributes(record: dict) -> list[int]:
    colours, shapes, relations = list(PALETTE), list(SHAPES), list(RELATIONS)
    first, second = record["include"][0], (record["include"][1:] or [None])[0]
    return [colours.index(first["color"]), shapes.index(first["class"]),
            colours.index(second["color"]) if second else len(colours),
            shapes.index(second["class"]) if second else len(shapes),
            relations.index(first["position"][0]) if "position" in first else len(relations), first["count"] - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer, language_model = shapes_text_path(Path(folder), seed=0)
    torch.manual_seed(0)
    geometry = PRESETS["shapes-tiny"]["connector"]
    connector = OpenUniConnector(**geometry, caption_channels=CAPTION_CHANNELS)
    sizes = (len(PALETTE), len(SHAPES), len(PALETTE) + 1, len(SHAPES) + 1, len(RELATIONS) + 1, len(NUMBERS))
    heads = nn.ModuleList(nn.Linear(CAPTION_CHANNELS * geometry["num_queries"], size) for size in sizes)

    def features(records: list[dict]) -> torch.Tensor:
        return connector(query_states(tokenizer, language_model, connector, [r["prompt"] for r in records])).flatten(1)

    train = [record for record, _ in training_samples(3000, seed=0)]
    optimizer = torch.optim.AdamW([*connector.parameters(), *heads.parameters()], lr=1e-3)
    for step in range(args.steps):
        batch = random.Random(step).sample(train, 32)
        found, truth = features(batch), torch.tensor([attributes(r) for r in batch])
        loss = sum(nn.functional.cross_entropy(head(found), truth[:, i]) for i, head in enumerate(heads))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"| captions | {' | '.join(ATTRIBUTES)} | all six |")
    print("|---|" + "---|" * (len(ATTRIBUTES) + 1))
    with torch.no_grad():
        for name, records in (("training", train[:300]), ("held-out", held_out_prompts(20, seed=0))):
            found, truth = features(records), torch.tensor([attributes(r) for r in records])
            right = torch.stack([head(found).argmax(1) == truth[:, i] for i, head in enumerate(heads)])
            rates = [*right.float().mean(dim=1).tolist(), float(right.all(0).float().mean())]
            cells = [f"{rate:.3f}" for rate in rates]
            print(f"| {name} ({len(records)}) | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
