"""Data readers, the per-rank sample stream, collation."""

from __future__ import annotations

import logging

import pytest
import torch

from training_helpers import CAPTIONS, take, write_json_dataset, write_latent_dataset, write_webdataset


def test_json_layout_reads_images_and_both_caption_formats(tmp_path):
    from openuni.data.sources import JsonImageFolder

    source = JsonImageFolder(write_json_dataset(tmp_path, count=4))
    samples = [source[i] for i in range(4)]
    assert [s["caption"] for s in samples] == CAPTIONS[:4]  # .txt for even, .json for odd items
    assert samples[0]["image"].size == (80, 64)


def test_corrupt_samples_are_skipped_counted_and_logged(tmp_path, caplog):
    from openuni.data.sources import JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    source = JsonImageFolder(write_json_dataset(tmp_path, count=6, corrupt=(1, 4), no_caption=(2,)))
    stream = SampleStream([source], [1.0], StreamLayout(seed=3, per_device_batch=3), resolution=64)
    with caplog.at_level(logging.WARNING):
        samples = take(stream, 6)  # one pass over the 6 items
    assert len(samples) == 6
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 3  # each bad file reported once, with its path
    assert all(any(name in w for w in warnings) for name in ("0001.png", "0002.txt", "0004.png"))
    assert sum(s["skipped"] for s in samples) >= 3  # every pass over a bad item counts
    assert all(s["pixels"].shape == (3, 64, 64) and s["pixels"].abs().max() <= 1 for s in samples)


def test_all_bad_data_fails_with_a_clear_error(tmp_path):
    from openuni.data.sources import JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout
    from openuni.errors import OpenUniError

    source = JsonImageFolder(write_json_dataset(tmp_path, count=3, corrupt=(0, 1, 2)))
    with pytest.raises(OpenUniError, match="unusable samples in a row"):
        take(SampleStream([source], [1.0], StreamLayout(seed=0, per_device_batch=1), resolution=64), 1)


def test_two_ranks_together_see_exactly_what_one_rank_sees(tmp_path):
    from openuni.data.sources import JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    source = JsonImageFolder(write_json_dataset(tmp_path, count=8))
    one = take(SampleStream([source], [1.0], StreamLayout(seed=5, per_device_batch=4), resolution=64), 12)
    ranks = [take(SampleStream([source], [1.0], StreamLayout(seed=5, per_device_batch=2, rank=r, world_size=2),
                               resolution=64), 6) for r in range(2)]
    merged = [s for step in range(3) for r in range(2) for s in ranks[r][2 * step:2 * step + 2]]
    assert [s["index"] for s in merged] == [s["index"] for s in one]
    assert all(torch.equal(a["pixels"], b["pixels"]) and a["caption"] == b["caption"] for a, b in zip(merged, one))


def test_resumed_stream_continues_where_it_stopped(tmp_path):
    from openuni.data.sources import JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    source = JsonImageFolder(write_json_dataset(tmp_path, count=5))
    layout = StreamLayout(seed=1, per_device_batch=2, grad_accum=2)
    whole = take(SampleStream([source], [1.0], layout, resolution=64), 12)
    later = take(SampleStream([source], [1.0], layout, start_step=2, resolution=64), 4)
    assert [s["index"] for s in later] == [s["index"] for s in whole[8:12]]
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(later, whole[8:12]))


def test_dataloader_workers_keep_the_order(tmp_path):
    from torch.utils.data import DataLoader

    from openuni.data.sources import JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    source = JsonImageFolder(write_json_dataset(tmp_path, count=6))
    stream = SampleStream([source], [1.0], StreamLayout(seed=2, per_device_batch=2), resolution=64)
    plain = take(stream, 6)
    workers = take(DataLoader(stream, batch_size=None, num_workers=2), 6)
    assert [s["index"] for s in workers] == [s["index"] for s in plain]
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(workers, plain))


def test_sources_are_mixed_by_their_ratios(tmp_path):
    from openuni.data.sources import CachedLatents, JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    images = JsonImageFolder(write_json_dataset(tmp_path / "images", count=4))
    latents = CachedLatents(write_latent_dataset(tmp_path / "latents", count=4))
    stream = SampleStream([images, latents], [1.0, 3.0], StreamLayout(seed=0, per_device_batch=4), resolution=64)
    share = sum(stream.choose_source(g) == 1 for g in range(4000)) / 4000
    assert 0.72 < share < 0.78
    samples = take(stream, 40)
    assert {("latents" in s) for s in samples} == {True, False}


def test_webdataset_shards_stream_and_skip_corrupt_records(tmp_path, caplog):
    from openuni.data.sources import WebDatasetShards
    from openuni.data.stream import SampleStream, StreamLayout

    urls = write_webdataset(tmp_path, shards=2, per_shard=3, corrupt=(4,))
    source = WebDatasetShards(urls)
    assert len(source.shards) == 2
    with caplog.at_level(logging.WARNING):
        samples = take(SampleStream([source], [1.0], StreamLayout(seed=0, per_device_batch=5), resolution=64), 5)
    assert sum(s["skipped"] for s in samples) == 1
    assert sorted(s["caption"] for s in samples) == sorted(CAPTIONS[i] for i in (0, 1, 2, 3, 5))


def test_aspect_buckets_are_multiples_of_32_and_shared_by_a_micro_batch(tmp_path):
    from openuni.data.images import aspect_buckets
    from openuni.data.sources import JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    buckets = aspect_buckets(256)
    assert (256, 256) in buckets and all(h % 32 == 0 and w % 32 == 0 for h, w in buckets)
    assert all(0.8 < h * w / 256**2 < 1.25 for h, w in buckets if min(h, w) >= 128)
    source = JsonImageFolder(write_json_dataset(tmp_path, count=6))
    stream = SampleStream([source], [1.0], StreamLayout(seed=4, per_device_batch=3), resolution=64,
                          buckets=aspect_buckets(64))
    samples = take(stream, 12)
    shapes = [s["pixels"].shape for s in samples]
    assert all(len(set(shapes[i:i + 3])) == 1 for i in range(0, 12, 3))


def test_collation_drops_captions_truncates_and_pads_with_zero(tiny_pipe):
    from openuni.data.collate import pad_sequences, tokenize_prompts, training_prompts
    from openuni.prompting import unconditional_prompt

    prompts = training_prompts(["a cat"] * 1000, list(range(1000)), seed=0, caption_dropout=0.1)
    dropped = sum(p == unconditional_prompt() for p in prompts)
    assert 70 < dropped < 130
    ids, mask = tokenize_prompts(tiny_pipe.tokenizer, ["x " * 300, "a cat"], max_tokens=128)
    assert ids.shape == (2, 128) and mask[0].all() and not mask[1].all()
    assert (ids[1][~mask[1]] == 0).all()
    left_ids, left_mask = pad_sequences([[5, 6, 7], [8]], side="left")
    assert left_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and left_mask.tolist() == [[True] * 3, [False, False, True]]


def test_missing_or_unreadable_webdataset_shards_fail_instead_of_hanging(tmp_path):
    import threading

    from openuni.data.sources import WebDatasetShards
    from openuni.data.stream import SampleStream, StreamLayout
    from openuni.errors import OpenUniError

    with pytest.raises(OpenUniError, match="do not exist"):
        WebDatasetShards(str(tmp_path / "missing-{0..1}.tar"))

    (tmp_path / "garbage.tar").write_bytes(b"not a tar file at all" * 100)
    stream = SampleStream([WebDatasetShards(str(tmp_path / "garbage.tar"))], [1.0], StreamLayout(seed=0, per_device_batch=1),
                          resolution=64)
    outcome = []

    def read_one():
        try:
            take(stream, 1)
        except OpenUniError as error:
            outcome.append(error)

    reader = threading.Thread(target=read_one, daemon=True)  # the old code looped for ever here
    reader.start()
    reader.join(timeout=30)
    assert outcome and "no readable record" in str(outcome[0])


def test_mixed_sources_keep_each_ones_item_order_instead_of_reshuffling_at_every_switch(tmp_path):
    from openuni.data.sources import CachedLatents, JsonImageFolder
    from openuni.data.stream import SampleStream, StreamLayout

    images = JsonImageFolder(write_json_dataset(tmp_path / "images", count=4))
    latents = CachedLatents(write_latent_dataset(tmp_path / "latents", count=4))
    stream = SampleStream([images, latents], [1.0, 1.0], StreamLayout(seed=0, per_device_batch=4), resolution=64)
    first = stream.item_order(0, 0)
    stream.item_order(1, 0)  # the other source's turn
    assert stream.item_order(0, 0) is first  # not recomputed (a permutation of the whole data set)
    assert stream.item_order(0, 1) is not first and sorted(stream.item_order(0, 1)) == sorted(first)


def test_broken_tar_members_are_counted_with_the_skipped_samples(tmp_path):
    import io
    import json
    import tarfile

    import webdataset as wds

    from openuni.data.sources import WebDatasetShards
    from openuni.data.stream import SampleStream, StreamLayout
    from training_helpers import synthetic_image

    shard = tmp_path / "part-0.tar"
    with wds.TarWriter(str(shard)) as writer:
        for index in range(3):
            png = io.BytesIO()
            synthetic_image(index).save(png, format="PNG")
            writer.write({"__key__": f"{index:06d}", "png": png.getvalue(), "txt": CAPTIONS[index],
                          "json": json.dumps({"note": "x" * 600})})
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[-1].offset_data + 100  # inside the last record's extra member: its image and caption are whole
    shard.write_bytes(shard.read_bytes()[:cut])
    samples = take(SampleStream([WebDatasetShards(str(shard))], [1.0], StreamLayout(seed=0, per_device_batch=3),
                                resolution=64), 6)
    assert len(samples) == 6 and sum(s["skipped"] for s in samples) >= 1
