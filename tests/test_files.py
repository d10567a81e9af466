"""Atomic writes: the final name holds a complete file or nothing new, and failures leave no partial file."""

from __future__ import annotations

import PIL.Image
import pytest

from openuni.files import save_image_atomically, write_atomically, write_text_atomically


def test_text_and_image_are_written_under_the_final_name_only(tmp_path):
    write_text_atomically(tmp_path / "deep" / "a.txt", "hello")
    assert (tmp_path / "deep" / "a.txt").read_text() == "hello"
    save_image_atomically(PIL.Image.new("RGB", (4, 4), "red"), tmp_path / "b.jpg")
    with PIL.Image.open(tmp_path / "b.jpg") as image:
        assert image.format == "JPEG"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.jpg", "deep"]


def test_a_failed_write_removes_its_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def half_then_fail(partial):
        partial.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_then_fail)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with pytest.raises(OSError):  # PIL cannot write RGBA as JPEG: same clean-up
        save_image_atomically(PIL.Image.new("RGBA", (4, 4)), tmp_path / "c.jpg")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_link_planted_under_the_partial_name_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.txt.partial").symlink_to(victim)
    write_text_atomically(tmp_path / "out.txt", "new")
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.txt").read_text() == "new" and not (tmp_path / "out.txt").is_symlink()


def test_weights_and_shards_get_the_mode_the_umask_allows_like_pngs(tiny_pipe, tmp_path):
    """safetensors creates its files 0600; ours are readable as the umask allows (0644 under 022), like PNGs."""
    import os
    import stat

    import PIL.Image
    import torch
    from safetensors.torch import save_file

    from openuni.files import save_image_atomically, write_atomically

    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    shard = tmp_path / "shard.safetensors"
    write_atomically(shard, lambda partial: save_file({"latents": torch.zeros(2)}, partial))
    save_image_atomically(PIL.Image.new("RGB", (8, 8)), tmp_path / "image.png")
    tiny_pipe.save_pretrained(tmp_path / "saved")
    files = [shard, tmp_path / "image.png", *(p for p in (tmp_path / "saved").rglob("*") if p.is_file())]
    assert any(p.suffix == ".safetensors" for p in files[2:])
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in files} == {str(p): expected for p in files}
