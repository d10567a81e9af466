"""Image editing on the tiny model: the source image conditions the output, seeds and batching behave as in
text-to-image, and bad requests fail with clear messages."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from openuni.errors import OpenUniError
from tolerances import assert_images_close

STEPS = dict(num_inference_steps=2, output_type="pt")


def random_image(seed: int, size=(64, 64)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_output_depends_on_the_source_image(tiny_pipe):
    first = tiny_pipe.edit(random_image(1), "make it blue", seed=0, **STEPS).images
    again = tiny_pipe.edit(random_image(1), "make it blue", seed=0, **STEPS).images
    other = tiny_pipe.edit(random_image(2), "make it blue", seed=0, **STEPS).images
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_output_depends_on_the_instruction_and_the_negative_prompt(tiny_pipe):
    source = random_image(3)
    base = tiny_pipe.edit(source, "make it blue", seed=0, **STEPS).images
    other_instruction = tiny_pipe.edit(source, "remove the background", seed=0, **STEPS).images
    other_negative = tiny_pipe.edit(source, "make it blue", negative_prompt="blurry", seed=0, **STEPS).images
    assert (base - other_instruction).abs().max() > 1e-3
    assert (base - other_negative).abs().max() > 1e-3


def test_batch_of_edits_equals_edits_one_by_one(tiny_pipe):
    sources, instructions = [random_image(4), random_image(5)], ["make it blue", "add a hat"]
    together = tiny_pipe(instructions, image=sources, seed=7, num_images_per_prompt=2, **STEPS).images
    for index, (source, instruction) in enumerate(zip(sources, instructions)):
        alone = tiny_pipe.edit(source, instruction, seed=7, num_images_per_prompt=2, **STEPS).images
        assert_images_close(together[2 * index:2 * index + 2], alone)
    assert (together[0] - together[1]).abs().max() > 1e-3  # image k uses seed + k


def test_one_source_serves_several_instructions(tiny_pipe):
    source = random_image(6)
    shared = tiny_pipe.edit(source, ["make it blue", "add a hat"], seed=1, **STEPS).images
    assert shared.shape[0] == 2
    assert_images_close(shared[1:], tiny_pipe.edit(source, "add a hat", seed=1, **STEPS).images)


def test_source_can_be_a_path(tiny_pipe, tmp_path):
    path = tmp_path / "source.png"
    random_image(8).save(path)
    from_path = tiny_pipe.edit(path, "make it blue", seed=0, **STEPS).images
    from_image = tiny_pipe.edit(PIL.Image.open(path), "make it blue", seed=0, **STEPS).images
    assert torch.equal(from_path, from_image)


def test_output_size_follows_the_source_aspect_ratio(tiny_pipe):
    wide = tiny_pipe.edit(random_image(9, size=(256, 96)), "make it blue", seed=0, **STEPS).images
    height, width = wide.shape[-2:]
    assert width > height and width % 32 == 0 and height % 32 == 0
    square = tiny_pipe.edit(random_image(9, size=(200, 200)), "make it blue", seed=0, **STEPS).images
    assert square.shape[-2:] == (tiny_pipe.default_resolution, tiny_pipe.default_resolution)
    explicit = tiny_pipe.edit(random_image(9, size=(256, 96)), "make it blue", height=64, width=32, seed=0,
                              **STEPS).images
    assert explicit.shape[-2:] == (64, 32)


def test_pil_output(tiny_pipe):
    images = tiny_pipe.edit(random_image(10), "make it blue", num_inference_steps=1, seed=0).images
    assert isinstance(images[0], PIL.Image.Image) and images[0].mode == "RGB"


@pytest.mark.parametrize("instruction", ["", "   "])
def test_empty_instruction(tiny_pipe, instruction):
    with pytest.raises(OpenUniError, match="non-empty"):
        tiny_pipe.edit(random_image(11), instruction, **STEPS)


def test_image_markers_in_the_instruction(tiny_pipe):
    with pytest.raises(OpenUniError, match="image markers"):
        tiny_pipe.edit(random_image(1), "make <IMG_CONTEXT> blue", **STEPS)


def test_mismatched_images_and_instructions(tiny_pipe):
    with pytest.raises(OpenUniError, match="3 source images for 2 instructions"):
        tiny_pipe.edit([random_image(1)] * 3, ["a", "b"], **STEPS)


def test_sources_of_different_shapes_need_an_explicit_size(tiny_pipe):
    sources = [random_image(1, size=(64, 64)), random_image(2, size=(256, 64))]
    with pytest.raises(OpenUniError, match="different output sizes"):
        tiny_pipe.edit(sources, ["a", "b"], **STEPS)
    assert tiny_pipe.edit(sources, ["a", "b"], height=64, width=64, seed=0, **STEPS).images.shape[0] == 2


def test_source_smaller_than_a_patch(tiny_pipe):
    with pytest.raises(OpenUniError, match="smaller than one 16-pixel patch"):
        tiny_pipe.edit(random_image(1, size=(10, 10)), "make it blue", **STEPS)


def test_missing_source_file(tiny_pipe, tmp_path):
    with pytest.raises(OpenUniError, match="no such file"):
        tiny_pipe.edit(tmp_path / "missing.png", "make it blue", **STEPS)


# -- the command ---------------------------------------------------------------------------------------------------

def test_cli_edits_one_image(tiny, tmp_path, capsys):
    from conftest import tiny_cli_args
    from openuni.cli import main

    random_image(0, size=(160, 96)).save(tmp_path / "source.png")
    output = tmp_path / "edited.png"
    assert main(["edit", str(tmp_path / "source.png"), "make it blue", "--output", str(output), "--steps", "1",
                 *tiny_cli_args(tiny)]) == 0
    edited = PIL.Image.open(output)
    assert edited.width > edited.height  # the source's aspect ratio
    assert str(output) in capsys.readouterr().out


def test_cli_edits_pairs_from_a_file(tiny, tmp_path):
    import json

    from conftest import tiny_cli_args
    from openuni.cli import main

    random_image(1).save(tmp_path / "a.png")
    random_image(2, size=(128, 64)).save(tmp_path / "b.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "a.png", "instruction": "make it blue"}) + "\n\n"
                     + json.dumps({"image": str(tmp_path / "b.png"), "instruction": "add a hat"}) + "\n")
    out = tmp_path / "edits"
    assert main(["edit", "--pairs-file", str(pairs), "--output", str(out), "--steps", "1", "--num-images", "2",
                 *tiny_cli_args(tiny)]) == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["00000-00.png", "00000-01.png", "00001-00.png", "00001-01.png"]
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["make it blue"] * 2 + ["add a hat"] * 2
    # Each record names its source (path and content) and the output size the source's aspect ratio gave.
    assert [r["source"]["path"] for r in records[::2]] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    with PIL.Image.open(out / "00001-00.png") as image:
        assert (records[2]["width"], records[2]["height"]) == image.size
        assert json.loads(image.info["openuni"]) == {k: v for k, v in records[2].items() if k != "file"}
    assert [r["seed"] for r in records] == [42, 43] * 2  # image k of an edit is made from seed + k
    assert PIL.Image.open(out / "00000-00.png").size != PIL.Image.open(out / "00001-00.png").size


@pytest.mark.parametrize("arguments, message", [
    (["{image}", "   "], "instruction is empty"),
    (["{image}"], 'give both an IMAGE and an "instruction"'),
    (["{missing}", "make it blue"], "no such file"),
    (["{broken}", "make it blue"], "not an image format"),
    (["--pairs-file", "{bad_pairs}"], "expected {\"image\": PATH"),
    (["{image}", "make it blue", "--height", "50"], "multiple of 32"),
])
def test_cli_bad_input(tiny, tmp_path, capsys, arguments, message):
    from conftest import tiny_cli_args
    from openuni.cli import main

    random_image(0).save(tmp_path / "image.png")
    (tmp_path / "broken.png").write_bytes(b"\x00\x01 definitely not a png")
    (tmp_path / "bad.jsonl").write_text('{"picture": "x.png"}\n')
    paths = dict(image=tmp_path / "image.png", missing=tmp_path / "missing.png", broken=tmp_path / "broken.png",
                 bad_pairs=tmp_path / "bad.jsonl")
    argv = ["edit", *(a.format(**paths) for a in arguments), "--output", str(tmp_path / "out.png"),
            *tiny_cli_args(tiny)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_without_guidance_only_the_conditional_branch_runs(tiny_pipe):
    source = random_image(12)
    plain = tiny_pipe.edit(source, "make it blue", guidance_scale=1.0, seed=0, **STEPS).images
    guided = tiny_pipe.edit(source, "make it blue", guidance_scale=4.5, seed=0, **STEPS).images
    assert plain.shape == guided.shape and (plain - guided).abs().max() > 1e-3
    # Without guidance the unconditional text plays no part.
    assert torch.equal(plain, tiny_pipe.edit(source, "make it blue", negative_prompt="blurry", guidance_scale=1.0,
                                             seed=0, **STEPS).images)
