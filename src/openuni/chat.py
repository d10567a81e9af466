"""Image understanding with the frozen InternVL3 that OpenUni generates with, used as InternVL3 itself is used.

Only the MLLM and its tokenizer are loaded (no SANA, no VAE). Each image is cut into up to 12 tiles of the vision
tower's size (448 px for the real models) on the grid whose aspect ratio is closest to the image's, plus a
thumbnail of the whole image when there is more than one tile; every tile becomes `image_seq_length` (256)
`<IMG_CONTEXT>` tokens between `<img>` and `</img>`. transformers' `GotOcr2ImageProcessorPil` implements exactly
that rule (it is what the `-hf` InternVL3 repos use), so it does the tiling here. Prompts follow InternVL3's
chat template (`internvl2_5`: ChatML with InternVL's system message), and decoding is transformers' own
`InternVLForConditionalGeneration.generate`, greedy or sampled, optionally streamed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from transformers import GotOcr2ImageProcessorPil, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .checks import integer, real
from .errors import OpenUniError
from .images import load_image
from .model import IMAGENET_MEAN, IMAGENET_STD
from .prompting import IMG_CONTEXT, IMG_END, IMG_START

# InternVL3's own system message (its `internvl2_5` conversation template), sent unless the caller overrides it.
INTERNVL_SYSTEM_PROMPT = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
MAX_TILES = 12
END_OF_TURN = "<|im_end|>"
IMAGE_PLACEHOLDER = "<image>"

ImageSource = str | Path | PIL.Image.Image


@dataclass
class Turn:
    question: str  # with one IMAGE_PLACEHOLDER per image, in order
    tiles: list[torch.Tensor]  # per image: [num_tiles, 3, tile, tile], normalised
    answer: str


@dataclass
class Conversation:
    """The turns so far; its images are sent again with every new question (the LLM has no memory of its own)."""

    system_prompt: str | None = INTERNVL_SYSTEM_PROMPT
    turns: list[Turn] = field(default_factory=list)


class InternVLChat:
    """Ask InternVL3 about images, or just chat: `InternVLChat.from_pretrained(...).ask("What is this?", ["a.jpg"])`."""

    def __init__(self, model, tokenizer, max_tiles: int = MAX_TILES):
        if not 1 <= max_tiles <= 40:
            raise OpenUniError(f"max_tiles must be between 1 and 40, got {max_tiles}")
        self.model = model
        self.tokenizer = tokenizer
        size = model.config.vision_config.image_size
        self.tile_size = size[0] if isinstance(size, (list, tuple)) else size
        patch = model.config.vision_config.patch_size
        self.patch_size = patch[0] if isinstance(patch, (list, tuple)) else patch
        self.tokens_per_tile = model.config.image_seq_length
        self.image_processor = GotOcr2ImageProcessorPil(
            crop_to_patches=True, min_patches=1, max_patches=max_tiles,
            size={"height": self.tile_size, "width": self.tile_size},
            image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        )
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    @classmethod
    def from_pretrained(
        cls, mllm: str | Path | None = None, variant: str = "openuni-b-512", tokenizer: str | Path | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None, local_files_only: bool = False,
        max_tiles: int = MAX_TILES,
    ) -> "InternVLChat":
        """The MLLM of `variant` from the Hub, or `mllm` (a local directory in either InternVL layout, or a Hub id)."""
        from .devices import resolve_device, resolve_dtype
        from .loading import load_language_parts, resolve_mllm_dirs
        from .variants import get_variant

        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        mllm_dir, tokenizer_dir = resolve_mllm_dirs(mllm or get_variant(variant).mllm_repo, tokenizer, local_files_only)
        tokenizer_obj, model = load_language_parts(mllm_dir, tokenizer_dir, dtype, device)
        return cls(model, tokenizer_obj, max_tiles)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- images -> tiles -> tokens ----------------------------------------------------------------------------

    def tile(self, image: ImageSource) -> torch.Tensor:
        """One image -> its normalised tiles [num_tiles, 3, tile_size, tile_size] (grid tiles, then the thumbnail)."""
        rgb = load_image(image, min_side=self.patch_size)
        return self.image_processor(images=[rgb], return_tensors="pt").pixel_values

    def image_tokens(self, num_tiles: int) -> str:
        return IMG_START + IMG_CONTEXT * (self.tokens_per_tile * num_tiles) + IMG_END

    @staticmethod
    def question_with_images(question: str, num_images: int) -> str:
        """InternVL's layout: `<image>\\n` before the question, numbered `Image-k: ` when there are several."""
        if num_images == 1:
            return f"{IMAGE_PLACEHOLDER}\n{question}"
        return "".join(f"Image-{k + 1}: {IMAGE_PLACEHOLDER}\n" for k in range(num_images)) + question

    def build_prompt(self, conversation: Conversation, question: str, tiles: list[torch.Tensor]) -> str:
        """The whole chat so far in InternVL3's template, ending where the assistant's answer starts."""
        parts = []
        if conversation.system_prompt:
            parts.append(f"<|im_start|>system\n{conversation.system_prompt}{END_OF_TURN}\n")
        for turn in conversation.turns:
            parts.append(f"<|im_start|>user\n{turn.question}{END_OF_TURN}\n<|im_start|>assistant\n{turn.answer}"
                         f"{END_OF_TURN}\n")
        parts.append(f"<|im_start|>user\n{question}{END_OF_TURN}\n<|im_start|>assistant\n")
        prompt = "".join(parts)
        all_tiles = [t for turn in conversation.turns for t in turn.tiles] + tiles
        pieces = prompt.split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 != len(all_tiles):
            raise OpenUniError(f"the text contains {len(pieces) - 1} '{IMAGE_PLACEHOLDER}' markers for "
                               f"{len(all_tiles)} images; leave '{IMAGE_PLACEHOLDER}' out of questions")
        out = [pieces[0]]
        for image_tiles, piece in zip(all_tiles, pieces[1:]):
            out += [self.image_tokens(image_tiles.shape[0]), piece]
        return "".join(out)

    def prepare(self, question: str, images: Sequence[ImageSource] | ImageSource = (),
                conversation: Conversation | None = None):
        """Model inputs for the next answer, and the turn's (question, tiles) for the history. `images` is one image
        (a path or PIL image) or a sequence of them."""
        if not isinstance(question, str) or not question.strip():
            raise OpenUniError("the question is empty")
        if isinstance(images, (str, Path, PIL.Image.Image)):
            images = [images]  # a path is one image, not a sequence of characters
        elif images is None:
            images = []
        images = list(images)
        window = self.model.config.text_config.max_position_embeddings
        if len(images) * self.tokens_per_tile > window:  # each image takes at least one tile: refuse before tiling
            raise OpenUniError(f"{len(images)} images take at least {len(images) * self.tokens_per_tile} tokens, over "
                               f"the model's {window}; ask about fewer images at once")
        markers = [m for m in (IMAGE_PLACEHOLDER, IMG_START, IMG_END, IMG_CONTEXT) if m in question]
        if markers:
            raise OpenUniError(f"leave '{markers[0]}' out of the question: images are placed by the chat")
        conversation = conversation or Conversation()
        tiles = [self.tile(image) for image in images]
        question = self.question_with_images(question, len(tiles)) if tiles else question
        prompt = self.build_prompt(conversation, question, tiles)
        tokens = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self.device)
        inputs = dict(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        all_tiles = [t for turn in conversation.turns for t in turn.tiles] + tiles
        if all_tiles:
            vision_dtype = self.model.model.vision_tower.dtype
            inputs["pixel_values"] = torch.cat(all_tiles).to(self.device, vision_dtype)
        return inputs, question, tiles

    # -- answering --------------------------------------------------------------------------------------------

    def generation_arguments(self, prompt_length: int, max_new_tokens: int, do_sample: bool, temperature: float,
                             top_p: float) -> dict:
        max_new_tokens = integer(max_new_tokens, "max_new_tokens", low=1)
        temperature, top_p = real(temperature, "temperature"), real(top_p, "top_p")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
            raise OpenUniError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
        limit = self.model.config.text_config.max_position_embeddings
        if prompt_length + max_new_tokens > limit:
            raise OpenUniError(
                f"the conversation is {prompt_length} tokens (images take {self.tokens_per_tile} per tile); with "
                f"{max_new_tokens} new tokens that exceeds the model's {limit}. Use fewer images, fewer tiles "
                "(--max-tiles), or start a new conversation"
            )
        arguments = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=self.end_of_turn_id,
                         pad_token_id=self.tokenizer.pad_token_id)
        if do_sample:
            arguments.update(temperature=temperature, top_p=top_p, top_k=0)
        return arguments

    def ask(
        self, question: str, images: Sequence[ImageSource] = (), conversation: Conversation | None = None, *,
        max_new_tokens: int = 512, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
        streamer=None,
    ) -> str:
        """The answer to `question` about `images` (none for plain text chat). With a `conversation`, the earlier
        turns are part of the prompt and this turn is added to it. `streamer` is any transformers streamer."""
        request = self.request(question, images, conversation, max_new_tokens, do_sample, temperature, top_p)
        return self.answer(request, conversation, streamer)

    def stream(
        self, question: str, images: Sequence[ImageSource] = (), conversation: Conversation | None = None, *,
        max_new_tokens: int = 512, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
    ) -> Iterator[str]:
        """`ask`, yielding the answer's text piece by piece as it is generated; the turn is recorded at the end.
        Bad input fails here, before anything is generated."""
        request = self.request(question, images, conversation, max_new_tokens, do_sample, temperature, top_p)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        request["settings"]["stopping_criteria"] = StoppingCriteriaList([StopWhenSet(stop)])
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                self.answer(request, conversation, streamer)
            except BaseException as error:  # re-raised in the caller's thread
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            # A reader that stops early (a closed web page, Ctrl-C) stops the generation too, and nothing runs on
            # the model once this generator is closed; the turn keeps the answer as far as it went.
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    def request(self, question, images, conversation, max_new_tokens, do_sample, temperature, top_p) -> dict:
        """Everything `answer` needs, checked: model inputs, generation settings, the turn to record."""
        inputs, turn_question, tiles = self.prepare(question, images, conversation)
        settings = self.generation_arguments(inputs["input_ids"].shape[1], max_new_tokens, do_sample, temperature,
                                             top_p)
        return dict(inputs=inputs, settings=settings, turn=(turn_question, tiles))

    @torch.no_grad()
    def answer(self, request: dict, conversation: Conversation | None, streamer=None) -> str:
        inputs = request["inputs"]
        output = self.model.generate(**inputs, **request["settings"], streamer=streamer)
        answer = self.decode(output[0, inputs["input_ids"].shape[1]:])
        if conversation is not None:
            conversation.turns.append(Turn(*request["turn"], answer))
        return answer

    def decode(self, token_ids: torch.Tensor) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


class StopWhenSet(StoppingCriteria):
    """Ends `generate` after the current token once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
