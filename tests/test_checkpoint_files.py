"""What resume trusts in an FSDP or DeepSpeed checkpoint: a crafted pickle in the files their loaders unpickle in
full (DCP's `.metadata`, DeepSpeed's `*.pt`) is refused before anything loads it, and never runs."""

from __future__ import annotations

import pickle

import pytest
import torch

from openuni.errors import OpenUniError
from openuni.training.checkpoint_files import check_checkpoint_files


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_fsdp_metadata_is_refused_and_never_runs(tmp_path):
    checkpoint, marker = tmp_path / "step-00000002", tmp_path / "marker"
    (checkpoint / "pytorch_model_fsdp_0").mkdir(parents=True)
    (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(OpenUniError, match=r"\.metadata is not the metadata torch's distributed checkpoint writes "
                                           r"\(it references posix\.system\)"):
        check_checkpoint_files(checkpoint, "fsdp")
    assert not marker.exists()


def test_a_crafted_deepspeed_shard_is_refused_and_never_runs(tmp_path):
    checkpoint, marker = tmp_path / "step-00000002", tmp_path / "marker"
    (checkpoint / "pytorch_model").mkdir(parents=True)
    (checkpoint / "latest").write_text("pytorch_model")
    torch.save({"module": {}, "planted": Planted(marker)}, checkpoint / "pytorch_model" / "mp_rank_00_model_states.pt")
    with pytest.raises(OpenUniError, match="mp_rank_00_model_states.pt is torn or not what openuni writes"):
        check_checkpoint_files(checkpoint, "deepspeed")
    assert not marker.exists()


def test_a_file_of_another_engine_is_refused(tmp_path):
    checkpoint = tmp_path / "step-00000002"
    checkpoint.mkdir()
    torch.save({}, checkpoint / "pytorch_model.bin")  # harmless, but nothing openuni's DDP checkpoints hold
    with pytest.raises(OpenUniError, match="holds pytorch_model.bin, which a DDP checkpoint of openuni never holds"):
        check_checkpoint_files(checkpoint, "ddp")
