"""Image-to-image data: edit pairs (JSON, WebDataset), reconstruction of any image data, task mixing, edit prompts."""

from __future__ import annotations

import logging

import PIL.Image
import pytest
import torch

from training_helpers import (edit_pair, instruction_of, pixels_of, synthetic_image, take, write_edit_dataset,
                              write_edit_latent_dataset, write_edit_webdataset, write_json_dataset,
                              write_latent_dataset, write_webdataset)


def test_edit_pairs_are_read_in_the_reference_layout_and_resized_not_cropped(tmp_path):
    from openuni.data.readers import open_source
    from openuni.data.stream import SampleStream, StreamLayout

    source = open_source("json", str(write_edit_dataset(tmp_path, count=4)), "edit")
    raw = source[1]  # a .json annotation (even items have .txt ones)
    assert raw["instruction"] == instruction_of(1) and raw["source"].size == (80, 64)
    stream = SampleStream([source], [1.0], StreamLayout(seed=0, per_device_batch=2), resolution=64)
    for sample in take(stream, 4):
        item = int(sample["key"][:4])
        source, target = edit_pair(item, 64)  # the whole 80x64 images, squeezed to 64x64
        assert sample["task"] == "image2image" and sample["instruction"] == instruction_of(item)
        assert torch.equal(sample["source_pixels"], pixels_of(source))
        assert torch.equal(sample["pixels"], pixels_of(target))


def test_reconstruction_turns_any_image_source_into_one_random_square_crop_as_source_and_target(tmp_path):
    from openuni.data.readers import open_source
    from openuni.data.stream import SampleStream, StreamLayout
    from openuni.prompting import RECONSTRUCTION_INSTRUCTION

    # Captions missing or empty do not matter: reconstruction reads only the images (as ReconstructDataset).
    index = write_json_dataset(tmp_path / "json", count=4, no_caption=(0, 1, 2, 3))
    shards = write_webdataset(tmp_path / "wds", shards=1, per_shard=4)
    for kind, path in (("json", index), ("webdataset", shards)):
        stream = SampleStream([open_source(kind, str(path), "reconstruct")], [1.0],
                              StreamLayout(seed=1, per_device_batch=4), resolution=48)
        samples = take(stream, 4)
        assert all(s["instruction"] == RECONSTRUCTION_INSTRUCTION for s in samples)
        assert all(s["source_pixels"] is s["pixels"] and s["pixels"].shape == (3, 48, 48) for s in samples)
        # crop2square then resize: one of the 17 square windows of the 80x64 image, resized (not the whole, squeezed).
        for sample in samples:
            image = synthetic_image(int(sample["key"].rsplit(":", 1)[-1].split(".")[0]))
            windows = [pixels_of(image.crop((left, 0, left + 64, 64)).resize((48, 48), PIL.Image.BICUBIC))
                       for left in range(17)]
            assert any(torch.equal(sample["pixels"], window) for window in windows), (kind, sample["key"])


def test_webdataset_edit_records_read_src_tgt_and_txt(tmp_path):
    from openuni.data.readers import open_source
    from openuni.data.stream import SampleStream, StreamLayout

    source = open_source("webdataset", write_edit_webdataset(tmp_path, shards=2, per_shard=2), "edit")
    samples = take(SampleStream([source], [1.0], StreamLayout(seed=0, per_device_batch=4), resolution=64), 4)
    assert sorted(s["key"].rsplit(":", 1)[1] for s in samples) == [f"{i:06d}" for i in range(4)]
    for sample in samples:
        item = int(sample["key"].rsplit(":", 1)[1])
        assert sample["instruction"] == instruction_of(item)
        assert torch.equal(sample["pixels"], pixels_of(edit_pair(item, 64)[1]))


def test_bad_edit_samples_are_skipped_counted_and_named(tmp_path, caplog):
    from openuni.data.readers import open_source
    from openuni.data.stream import SampleStream, StreamLayout

    index = write_edit_dataset(tmp_path / "json", count=6, missing_source=(1,), missing_target=(3,),
                               empty_instruction=(4,))
    stream = SampleStream([open_source("json", str(index), "edit")], [1.0], StreamLayout(seed=3, per_device_batch=3),
                          resolution=64)
    with caplog.at_level(logging.WARNING):
        samples = take(stream, 6)  # one pass over the 6 pairs
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 3 and all(any(name in w for w in warnings)
                                      for name in ("0001-src.png", "0003-tgt.png", "0004.txt"))
    assert sum(s["skipped"] for s in samples) >= 3
    assert {int(s["key"][:4]) for s in samples} <= {0, 2, 5}

    shards = write_edit_webdataset(tmp_path / "wds", shards=1, per_shard=4, missing_target=(2,))
    stream = SampleStream([open_source("webdataset", shards, "edit")], [1.0], StreamLayout(seed=0, per_device_batch=3),
                          resolution=64)
    samples = take(stream, 3)
    assert sum(s["skipped"] for s in samples) == 1 and all(not s["key"].endswith("000002") for s in samples)


def test_edit_index_and_cache_mismatches_are_one_clear_error(tmp_path):
    from openuni.data.readers import open_source
    from openuni.errors import OpenUniError

    with pytest.raises(OpenUniError, match='"source_image": ..., "target_image": ...'):
        open_source("json", str(write_json_dataset(tmp_path / "t2i", count=2)), "edit")
    with pytest.raises(OpenUniError, match="give this source `task: edit`"):
        open_source("latents", str(write_edit_latent_dataset(tmp_path / "edit-cache")))
    with pytest.raises(OpenUniError, match="holds edit samples, this source is `task: reconstruct`"):
        open_source("latents", str(tmp_path / "edit-cache"), "reconstruct")
    with pytest.raises(OpenUniError, match="unknown task 'paint'"):
        open_source("json", "x.json", "paint")


def mixed_stream(tmp_path, layout):
    from openuni.data.readers import open_source
    from openuni.data.stream import SampleStream

    sources = [open_source("latents", str(write_latent_dataset(tmp_path / "t2i", count=4))),
               open_source("json", str(write_json_dataset(tmp_path / "t2i-json", count=4))),
               open_source("latents", str(write_edit_latent_dataset(tmp_path / "edits", count=4)), "edit")]
    return SampleStream(sources, [1.0, 1.0, 2.0], layout, resolution=64)


def test_tasks_are_mixed_by_ratio_one_task_per_step_whatever_the_batch_layout(tmp_path):
    from openuni.data.stream import StreamLayout

    one = mixed_stream(tmp_path, StreamLayout(seed=5, per_device_batch=4))
    tasks = [one.choose_task(step * 4) for step in range(2000)]
    assert 0.45 < sum(t == 1 for t in tasks) / 2000 < 0.55  # edits: ratio 2 of 4
    samples = take(one, 40)
    for step in range(10):
        assert len({s["task"] for s in samples[4 * step:4 * step + 4]}) == 1
    assert {s["task"] for s in samples} == {"text2image", "image2image"}
    # Within text-to-image, both of its sources are drawn.
    assert {("latents" in s) for s in samples if s["task"] == "text2image"} == {True, False}

    # Two ranks of batch 1 with 2 accumulation steps see what one process of batch 4 sees, task by task.
    ranks = [take(mixed_stream(tmp_path, StreamLayout(seed=5, per_device_batch=1, grad_accum=2, rank=r,
                                                      world_size=2)), 20) for r in range(2)]
    merged = [ranks[r][2 * step + micro] for step in range(10) for micro in range(2) for r in range(2)]
    assert [s["index"] for s in merged] == [s["index"] for s in samples]
    assert [(s["task"], s.get("instruction"), s.get("caption")) for s in merged] == \
        [(s["task"], s.get("instruction"), s.get("caption")) for s in samples]


def test_edit_prompts_limit_only_the_instruction_and_pad_on_the_left(tiny_pipe):
    from openuni.data.collate import tokenize_edit_prompts
    from openuni.prompting import IMG_CONTEXT, edit_prompt

    tokenizer, num_tokens = tiny_pipe.tokenizer, tiny_pipe.model.num_image_tokens
    context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    long = "make the sky a little more blue " * 40
    ids, mask = tokenize_edit_prompts(tokenizer, [long, "make it blue"], num_tokens, max_instruction_tokens=128)
    assert (ids == context_id).sum(dim=1).tolist() == [num_tokens, num_tokens]  # no image token is ever cut
    full = tokenizer(edit_prompt(long, num_tokens), add_special_tokens=False).input_ids
    template = len(tokenizer(edit_prompt("", num_tokens), add_special_tokens=False).input_ids)
    assert len(full) > template + 128 and abs(int(mask[0].sum()) - (template + 128)) <= 1
    short = tokenizer(edit_prompt("make it blue", num_tokens), add_special_tokens=False).input_ids
    assert ids[1, -len(short):].tolist() == short and (ids[1, :-len(short)] == 0).all()  # left-padded with 0
    assert not mask[1, :-len(short)].any() and mask[1, -len(short):].all()
    assert tokenizer.decode(ids[0][mask[0]]).endswith("<|im_end|>\n<|im_start|>assistant\n<img>")
