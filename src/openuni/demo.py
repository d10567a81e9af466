"""The web demo: one page with Generate, Edit and Chat tabs, all served by one loaded model.

The MLLM is loaded once: the pipeline conditions SANA with it, and the chat answers with the very same module
(`InternVLChat(pipe.mllm, pipe.tokenizer)`). The handlers are plain methods of `DemoApp`, so they can be called
and tested without a browser; `DemoApp.build()` only wires them to gradio components. One model cannot serve two
requests at once, so every handler holds `DemoApp.lock` while it runs (and gradio's queue runs one event at a
time). Bad input is shown as a `gr.Error` message in the page, never as a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import gradio as gr
import PIL.Image
import torch

from .chat import Conversation, InternVLChat
from .errors import OpenUniError
from .sampling import SamplingOptions

# Bounds that keep one visitor from holding a shared demo for minutes.
MAX_IMAGES = 8
MAX_STEPS = 100
MAX_SIDE = 2048
MAX_NEW_TOKENS = 2048

ImageInput = str | Path | PIL.Image.Image | None


def number(value, name: str, low: float, high: float) -> float:
    """A form field as a number in [low, high] (gradio hands numbers over as floats, or None when left empty)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OpenUniError(f"{name} must be a number, got {value!r}") from None
    if not low <= value <= high:  # also refuses NaN
        raise OpenUniError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def whole_number(value, name: str, low: int, high: int) -> int:
    value = number(value, name, low, high)
    if value != int(value):
        raise OpenUniError(f"{name} must be a whole number, got {value:g}")
    return int(value)


def required_text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OpenUniError(f"the {name} is empty")
    return value.strip()


def optional_text(value) -> str | None:
    """An empty negative prompt means the pipeline's default one."""
    return value.strip() if isinstance(value, str) and value.strip() else None


class DemoApp:
    """The demo's handlers around one pipeline; `build()` gives the gradio page."""

    def __init__(self, pipe, chat: InternVLChat | None = None):
        self.pipe = pipe
        self.chat_model = chat if chat is not None else InternVLChat(pipe.mllm, pipe.tokenizer)
        self.lock = threading.Lock()

    @contextmanager
    def serving(self):
        """One request at a time on the model; its user errors become messages in the page."""
        with self.lock:
            try:
                yield
            except OpenUniError as error:
                raise gr.Error(str(error)) from None
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise gr.Error("out of GPU memory: ask for fewer images or a smaller size") from None

    def sampling(self, negative_prompt, seed, steps, cfg_scale, num_images, height=None, width=None
                 ) -> SamplingOptions:
        return SamplingOptions(
            negative_prompt=optional_text(negative_prompt),
            seed=whole_number(seed, "the seed", 0, 2**63 - 1 - MAX_IMAGES),
            steps=whole_number(steps, "the number of steps", 1, MAX_STEPS),
            cfg_scale=number(cfg_scale, "the guidance scale", 0, 20),
            num_images=whole_number(num_images, "the number of images", 1, MAX_IMAGES),
            height=height, width=width,
        )

    def size(self, value, name: str) -> int:
        multiple = self.pipe.size_multiple
        value = whole_number(value, f"the {name}", multiple, MAX_SIDE)
        if value % multiple:
            raise OpenUniError(f"the {name} must be a multiple of {multiple}, got {value}")
        return value

    # -- the three tabs ---------------------------------------------------------------------------------------

    def generate(self, prompt: str, negative_prompt: str = "", seed=42, steps=20, cfg_scale=4.5, width=None,
                 height=None, num_images=1) -> list[PIL.Image.Image]:
        """Text to images; an empty width or height means the model's own resolution."""
        with self.serving():
            prompt = required_text(prompt, "prompt")
            width = self.pipe.default_resolution if width is None else self.size(width, "width")
            height = self.pipe.default_resolution if height is None else self.size(height, "height")
            settings = self.sampling(negative_prompt, seed, steps, cfg_scale, num_images, height, width)
            return self.pipe(prompt, **settings.pipeline_kwargs()).images

    def edit(self, image: ImageInput, instruction: str, negative_prompt: str = "", seed=42, steps=20,
             cfg_scale=4.5, num_images=1) -> list[PIL.Image.Image]:
        """The source image changed as the instruction says, at the source's aspect ratio."""
        with self.serving():
            if image is None:
                raise OpenUniError("upload an image to edit first")
            instruction = required_text(instruction, "edit instruction")
            settings = self.sampling(negative_prompt, seed, steps, cfg_scale, num_images)
            return self.pipe.edit(image, instruction, **settings.pipeline_kwargs()).images

    def chat(self, message: dict | str, history: list | None, conversation: Conversation | None,
             max_new_tokens=512, temperature=0.0) -> Iterator[tuple[list, Conversation, dict]]:
        """Answer the message (text and attached images) in the conversation so far, streaming: yields
        (chat history to show, the conversation, the cleared input box) as the answer grows."""
        text, images = (message, []) if isinstance(message, str) else (message.get("text"), message.get("files"))
        images = [image["path"] if isinstance(image, dict) else image for image in images or []]
        conversation = conversation if conversation is not None else Conversation()
        cleared = {"text": "", "files": []}
        with ExitStack() as stack:
            stack.enter_context(self.serving())
            stack.enter_context(self.pipe.stage(self.pipe.mllm))
            text = required_text(text, "question")
            max_new_tokens = whole_number(max_new_tokens, "the answer length", 1, MAX_NEW_TOKENS)
            temperature = number(temperature or 0, "the temperature", 0, 2)
            # Closed with this generator (a page closed mid-answer), so the model stops before the lock is released.
            pieces = stack.enter_context(closing(self.chat_model.stream(
                text, images, conversation, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                temperature=temperature or 1.0)))
            asked = [*(history or []), *({"role": "user", "content": {"path": str(image)}} for image in images
                                         if not isinstance(image, PIL.Image.Image)),
                     {"role": "user", "content": text}]
            answer = ""
            for piece in pieces:  # the first piece comes after the input was checked: bad input yields nothing
                answer += piece
                yield [*asked, {"role": "assistant", "content": answer.strip()}], conversation, cleared
            if not answer:
                yield [*asked, {"role": "assistant", "content": ""}], conversation, cleared

    def chat_event(self, message, shown, conversation, max_new_tokens, temperature):
        """`chat` for the page: the history goes both to the chatbot and to the session state."""
        for history, conversation, cleared in self.chat(message, shown, conversation, max_new_tokens, temperature):
            yield history, history, conversation, cleared

    # -- the page ---------------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        resolution, multiple = self.pipe.default_resolution, self.pipe.size_multiple
        with gr.Blocks(title="OpenUni") as page:
            gr.Markdown("# OpenUni\nGenerate images from text, edit an image with an instruction, or ask the "
                        "model about images. One request runs at a time.")
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", lines=3)
                        negative = gr.Textbox(label="Negative prompt (empty: the model's default)")
                        with gr.Row():
                            width = gr.Number(resolution, label="Width", precision=0, step=multiple)
                            height = gr.Number(resolution, label="Height", precision=0, step=multiple)
                        seed, steps, cfg, count = sampling_controls()
                        run = gr.Button("Generate", variant="primary")
                    gallery = gr.Gallery(label="Images", columns=2)
                run.click(self.generate, [prompt, negative, seed, steps, cfg, width, height, count], gallery,
                          api_name="generate")
            with gr.Tab("Edit"):
                with gr.Row():
                    with gr.Column():
                        source = gr.Image(label="Image", type="filepath")
                        instruction = gr.Textbox(label="Instruction", lines=2)
                        negative = gr.Textbox(label="Negative prompt (empty: \"Keep the image as it is.\")")
                        seed, steps, cfg, count = sampling_controls()
                        run = gr.Button("Edit", variant="primary")
                    edited = gr.Gallery(label="Edited", columns=2)
                run.click(self.edit, [source, instruction, negative, seed, steps, cfg, count], edited,
                          api_name="edit")
            with gr.Tab("Chat"):
                # The shown history lives in the session state too, so it is never read back from the page (the
                # chatbot's own value changes form between gradio versions and on its way through the API).
                conversation, shown = gr.State(None), gr.State([])
                chatbot = gr.Chatbot(label="InternVL3", height=480)
                message = gr.MultimodalTextbox(placeholder="Ask about images (attach them here) or just chat",
                                               file_types=["image"], file_count="multiple")
                with gr.Row():
                    length = gr.Slider(16, MAX_NEW_TOKENS, 512, step=16, label="Longest answer (tokens)")
                    temperature = gr.Slider(0, 1.5, 0, step=0.05, label="Temperature (0: greedy)")
                    restart = gr.Button("New conversation")
                message.submit(self.chat_event, [message, shown, conversation, length, temperature],
                               [chatbot, shown, conversation, message], api_name="chat")
                restart.click(lambda: ([], [], None), None, [chatbot, shown, conversation], api_name=False)
        page.queue(default_concurrency_limit=1)
        return page


def sampling_controls():
    with gr.Row():
        seed = gr.Number(42, label="Seed", precision=0)
        steps = gr.Slider(1, MAX_STEPS, 20, step=1, label="Steps")
    with gr.Row():
        cfg = gr.Slider(0, 20, 4.5, step=0.5, label="Guidance scale")
        count = gr.Slider(1, MAX_IMAGES, 1, step=1, label="Images")
    return seed, steps, cfg, count
