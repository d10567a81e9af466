"""Image understanding with the tiny InternVL3: tiling, the chat template, real `generate`, streaming, history,
the CLI and bad input."""

from __future__ import annotations

import io
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from openuni.chat import INTERNVL_SYSTEM_PROMPT, Conversation, InternVLChat
from openuni.errors import OpenUniError
from openuni.model import IMAGENET_MEAN, IMAGENET_STD
from openuni.prompting import IMG_CONTEXT, IMG_START

ANSWER = dict(max_new_tokens=6)


@pytest.fixture(scope="module")
def chat(tiny):
    return InternVLChat.from_pretrained(mllm=tiny.mllm, device="cpu")


def random_image(seed: int, size=(64, 64)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def normalise(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


# Tiles for (width, height) with tile size 64, max 12 tiles: the grid (at most 12 tiles) whose ratio is closest to
# the image's, plus a thumbnail whenever the grid has more than one tile.
@pytest.mark.parametrize("size, tiles", [
    ((64, 64), 1),  # 1:1 -> one tile, no thumbnail
    # Equal ratios tie; the larger grid wins while the image covers more than half of it (InternVL's rule):
    ((100, 100), 5),  # 2x2 (10000 px > half of 128^2) but not 3x3 (< half of 192^2) + thumbnail
    ((200, 200), 10),  # 3x3 + thumbnail
    ((128, 64), 3),  # 2:1 -> 2x1 grid + thumbnail
    ((64, 128), 3),  # 1:2 -> 1x2 grid + thumbnail
    ((192, 64), 4),  # 3:1 -> 3x1 + thumbnail
    ((500, 400), 13),  # 5:4 -> closest allowed 4:3 (12 tiles) + thumbnail
    ((1000, 100), 11),  # 10:1 -> 10x1 + thumbnail
    ((2000, 100), 13),  # 20:1 -> capped at 12x1 + thumbnail
])
def test_tiling_gives_the_right_number_of_image_tokens(chat, size, tiles):
    inputs, _, per_image = chat.prepare("What is this?", [random_image(0, size)])
    assert per_image[0].shape == (tiles, 3, chat.tile_size, chat.tile_size)
    assert inputs["pixel_values"].shape[0] == tiles
    image_token = chat.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    assert int((inputs["input_ids"] == image_token).sum()) == tiles * chat.tokens_per_tile
    assert chat.tokens_per_tile == chat.model.config.image_seq_length


def test_max_tiles_bounds_the_grid(tiny):
    few = InternVLChat.from_pretrained(mllm=tiny.mllm, device="cpu", max_tiles=4)
    assert few.tile(random_image(0, (1000, 100))).shape[0] == 5  # 4x1 + thumbnail


def test_tiles_are_the_image_cut_and_normalised(chat):
    image = random_image(1, (128, 64))
    tiles = chat.tile(image)
    pixels = np.asarray(image)
    torch.testing.assert_close(tiles[0], normalise(pixels[:, :64]), atol=1e-5, rtol=0)  # left half, no resize
    torch.testing.assert_close(tiles[1], normalise(pixels[:, 64:]), atol=1e-5, rtol=0)
    thumbnail = np.asarray(image.resize((64, 64), PIL.Image.Resampling.BICUBIC))
    torch.testing.assert_close(tiles[2], normalise(thumbnail), atol=2e-2, rtol=0)


def test_prompt_follows_internvl_template(chat):
    inputs, _, _ = chat.prepare("Compare them.", [random_image(0), random_image(1)])
    text = chat.tokenizer.decode(inputs["input_ids"][0])
    image = IMG_START + IMG_CONTEXT * chat.tokens_per_tile + "</img>"
    assert text == (f"<|im_start|>system\n{INTERNVL_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
                    f"Image-1: {image}\nImage-2: {image}\nCompare them.<|im_end|>\n<|im_start|>assistant\n")
    inputs, _, _ = chat.prepare("Hi", [], Conversation(system_prompt=None))
    assert chat.tokenizer.decode(inputs["input_ids"][0]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert "pixel_values" not in inputs


def test_answers_come_from_generate_and_stream_the_same_text(chat):
    image = random_image(2)
    answer = chat.ask("What is in this picture?", [image], **ANSWER)
    assert isinstance(answer, str) and answer
    assert chat.ask("What is in this picture?", [image], **ANSWER) == answer  # greedy is deterministic
    streamed = list(chat.stream("What is in this picture?", [image], **ANSWER))
    assert len(streamed) > 1
    assert "".join(streamed).strip() == answer


def test_a_reader_that_stops_early_stops_the_generation(chat):
    """The tiny model never says <|im_end|> within 300 tokens; closing the stream must end generate() at once."""
    conversation = Conversation()
    pieces = chat.stream("Describe it.", conversation=conversation, max_new_tokens=300)
    first = next(piece for piece in pieces if piece)
    pieces.close()
    assert first and len(conversation.turns) == 1  # generate() returned before close() did
    generated = len(chat.tokenizer(conversation.turns[0].answer, add_special_tokens=False).input_ids)
    assert generated < 100


class RecordingStreamer(BaseStreamer):
    """What `generate` hands a streamer: the prompt first, then each new token."""

    def __init__(self):
        self.calls, self.ended = [], False

    def put(self, value):
        self.calls.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_tokens_are_generated_by_the_model(chat):
    image = random_image(2)
    recorder = RecordingStreamer()
    answer = chat.ask("What is in this picture?", [image], streamer=recorder, **ANSWER)
    inputs, _, _ = chat.prepare("What is in this picture?", [image])
    prompt, new_tokens = recorder.calls[0], [t for call in recorder.calls[1:] for t in call]
    assert recorder.ended and prompt == inputs["input_ids"][0].tolist()
    assert 0 < len(new_tokens) <= ANSWER["max_new_tokens"]
    assert chat.decode(torch.tensor(new_tokens)) == answer
    with torch.no_grad():  # greedy: the first new token is the model's argmax after the prompt
        assert new_tokens[0] == int(chat.model(**inputs).logits[0, -1].argmax())


def test_the_model_sees_the_image(chat):
    logits = []
    for seed in (3, 4):
        inputs, _, _ = chat.prepare("What is in this picture?", [random_image(seed)])
        with torch.no_grad():
            logits.append(chat.model(**inputs).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-4


def test_sampling_is_seeded_and_differs_from_greedy(chat):
    image = random_image(5)
    sampled = []
    for _ in range(2):
        torch.manual_seed(0)
        sampled.append(chat.ask("Describe it.", [image], max_new_tokens=12, do_sample=True, temperature=1.5))
    assert sampled[0] == sampled[1]
    assert sampled[0] != chat.ask("Describe it.", [image], max_new_tokens=12)


def test_multi_turn_keeps_history_and_images(chat):
    conversation = Conversation()
    first = chat.ask("What is in this picture?", [random_image(6, (128, 64))], conversation, **ANSWER)
    inputs, _, _ = chat.prepare("And the colours?", [], conversation)
    text = chat.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|im_start|>user") == 2 and first in text
    assert inputs["pixel_values"].shape[0] == 3  # the first turn's tiles are sent again
    second = chat.ask("And the colours?", [], conversation, **ANSWER)
    assert [turn.answer for turn in conversation.turns] == [first, second]


def test_text_only_chat(chat):
    assert isinstance(chat.ask("Tell me a story.", **ANSWER), str)


def test_hf_layout_answers_like_the_original_layout(tiny, chat):
    hf_chat = InternVLChat.from_pretrained(mllm=tiny.mllm_hf, tokenizer=tiny.tokenizer, device="cpu")
    image = random_image(7)
    assert hf_chat.ask("What is this?", [image], **ANSWER) == chat.ask("What is this?", [image], **ANSWER)


@pytest.mark.parametrize("question, images, settings, message", [
    ("", [], {}, "question is empty"),
    ("What is <image> this?", [], {}, "leave '<image>' out"),
    ("What is <IMG_CONTEXT> this?", [], {}, "leave '<IMG_CONTEXT>' out"),
    ("What?", ["/nonexistent/photo.jpg"], {}, "no such file"),
    ("What?", [PIL.Image.new("RGB", (8, 100))], {}, "smaller than one 16-pixel patch"),
    ("What?", [], dict(max_new_tokens=0), "at least 1"),
    ("What?", [], dict(max_new_tokens=40000), "exceeds the model's"),
    ("What?", [], dict(do_sample=True, temperature=0.0), "temperature > 0"),
])
def test_bad_input(chat, question, images, settings, message):
    with pytest.raises(OpenUniError, match=message):
        chat.ask(question, images, **settings)
    with pytest.raises(OpenUniError, match=message):
        next(iter(chat.stream(question, images, **settings)))


# -- the command ---------------------------------------------------------------------------------------------------

def test_cli_answers_a_question_about_images(tiny, tmp_path, capsys):
    from openuni.cli import main

    paths = []
    for seed in (0, 1):
        paths += ["--image", str(tmp_path / f"{seed}.png")]
        random_image(seed, (128, 64)).save(tmp_path / f"{seed}.png")
    assert main(["chat", *paths, "What is in these pictures?", "--mllm", str(tiny.mllm), "--device", "cpu",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip()


def test_cli_interactive_conversation(tiny, tmp_path, capsys, monkeypatch):
    from openuni.cli import main

    random_image(0).save(tmp_path / "a.png")
    lines = f"hello\n/image {tmp_path / 'a.png'}\nwhat is it?\n/image {tmp_path / 'missing.png'}\n/reset\nbye\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--mllm", str(tiny.mllm), "--device", "cpu", "--max-new-tokens", "4",
                 "--temperature", "0.7", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert len([line for line in captured.out.splitlines()]) == 3  # three answers
    assert "missing.png: no such file" in captured.err


def test_cli_bad_input(tiny, tmp_path, capsys):
    from openuni.cli import main

    common = ["--mllm", str(tiny.mllm), "--device", "cpu"]
    assert main(["chat", "--image", str(tmp_path / "none.jpg"), "What?", *common]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not really a jpeg")
    assert main(["chat", "--image", str(tmp_path / "broken.jpg"), "What?", *common]) == 2
    assert "not an image format" in capsys.readouterr().err
    assert main(["chat", "  ", *common]) == 2
    assert main(["chat", "What?", "--top-p", "1.5", *common]) == 2
