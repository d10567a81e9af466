"""The web demo: one page with Generate, Edit and Chat tabs, all served by one loaded model.

The MLLM is loaded once: the pipeline conditions SANA with it, and the chat answers with the very same module
(`InternVLChat(pipe.mllm, pipe.tokenizer)`). The handlers are plain methods of `DemoApp`, so they can be called
and tested without a browser; `DemoApp.build()` only wires them to gradio components. One model cannot serve two
requests at once, so every handler holds `DemoApp.lock` while it runs (and gradio's queue runs one event at a
time). Bad input is shown as a `gr.Error` message in the page, never as a traceback, and logged on the server as one
line. The page's events skip gradio's own parsing of their inputs (`preprocess=False`; gradio still checks that
uploads are its own files): it would fail on NaN, text in a number field or an upload that is no image before any
handler could say what is wrong, so the handlers take raw values and check them. Messages name uploads by their file
name, never by the server's temporary path, and the temporary files of uploads and results are deleted an hour after
they were written (and all of them when the server stops).
"""

from __future__ import annotations

import logging
import re
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

logger = logging.getLogger(__name__)

# Bounds that keep one visitor from holding a shared demo for minutes (README "Limits").
MAX_IMAGES = 8
MAX_STEPS = 100
MAX_SIDE = 2048
MAX_NEW_TOKENS = 2048
MAX_TEXT_CHARS = 4000  # a prompt, instruction or question (the MLLM reads ~4 characters per token)
MAX_ATTACHMENTS = 4  # images per chat message
MAX_UPLOAD_SIZE = "20mb"  # per uploaded file, enforced by gradio before the file is stored
CACHE_LIFETIME_S = 3600  # uploads and results are deleted this long after they were written

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
    """Integers (and their text) exactly, however large; the page's floats (42.0) when they are whole."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        value = number(value, name, low, high)
        if value != int(value):
            raise OpenUniError(f"{name} must be a whole number, got {value:g}")
        value = int(value)
    if not low <= value <= high:
        raise OpenUniError(f"{name} must be between {low} and {high}, got {value}")
    return value


def required_text(value, name: str) -> str:
    if value is not None and not isinstance(value, str):
        raise OpenUniError(f"the {name} must be text, got {type(value).__name__}")
    if not value or not value.strip():
        raise OpenUniError(f"the {name} is empty")
    return bounded_text(value.strip(), name)


def optional_text(value, name: str = "negative prompt") -> str | None:
    """An empty negative prompt means the pipeline's default one."""
    return bounded_text(value.strip(), name) if isinstance(value, str) and value.strip() else None


def bounded_text(value: str, name: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise OpenUniError(f"the {name} is {len(value)} characters long; this demo takes at most {MAX_TEXT_CHARS}")
    return value


def upload_path(value) -> str | PIL.Image.Image | Path | None:
    """An upload as the page or the API hands it over: a path, gradio's {"path": ...} record, or a PIL image."""
    if isinstance(value, dict):
        if value.get("path") is None and value.get("url"):
            raise OpenUniError("send the image as an uploaded file")
        value = value.get("path")
    if value is not None and not isinstance(value, (str, Path, PIL.Image.Image)):
        raise OpenUniError(f"expected an uploaded image, got {type(value).__name__}")
    return value


def message_parts(message) -> tuple[object, list]:
    """(text, attachments) of a chat message: text alone, or gradio's {"text": ..., "files": [...]}."""
    if isinstance(message, dict):
        files = message.get("files") or []
        return message.get("text"), list(files) if isinstance(files, (list, tuple)) else [files]
    return message, []  # anything but text is refused as the question


def public_message(message: str, uploads) -> str:
    """The message without the server's temporary folders: an upload is named by its file name only."""
    for upload in uploads:
        upload = upload.get("path") if isinstance(upload, dict) else upload
        if isinstance(upload, (str, Path)):
            message = message.replace(str(upload), Path(upload).name)
    folder = re.escape(gradio_upload_folder())
    return re.sub(folder + r"[^\s'\"]*/", "", message)


def gradio_upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return str(Path(get_upload_folder()))


class DemoApp:
    """The demo's handlers around one pipeline; `build()` gives the gradio page."""

    def __init__(self, pipe, chat: InternVLChat | None = None, rewrite: bool = False):
        """`rewrite`: the MLLM expands each Generate prompt first (`openuni demo --rewrite`); the images then carry
        the rewritten prompt as their caption."""
        self.pipe, self.rewrite = pipe, rewrite
        self.chat_model = chat if chat is not None else InternVLChat(pipe.mllm, pipe.tokenizer)
        self.lock = threading.Lock()

    @contextmanager
    def serving(self, what: str, uploads=()):
        """One request at a time on the model; its user errors become messages in the page (naming uploads by
        their file names), logged as one line on the server, not as a traceback."""
        with self.lock:
            try:
                yield
            except OpenUniError as error:
                message = public_message(str(error), uploads)
                logger.warning("demo %s: %s", what, message)
                raise gr.Error(message, print_exception=False) from None
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.warning("demo %s: out of GPU memory", what)
                raise gr.Error("out of GPU memory: ask for fewer images or a smaller size",
                               print_exception=False) from None

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
                 height=None, num_images=1) -> list:
        """Text to images; an empty width or height means the model's own resolution. With rewriting on, each
        image comes with its caption: (image, the rewritten prompt)."""
        with self.serving("generate"):
            prompt = required_text(prompt, "prompt")
            width = self.pipe.default_resolution if width is None else self.size(width, "width")
            height = self.pipe.default_resolution if height is None else self.size(height, "height")
            settings = self.sampling(negative_prompt, seed, steps, cfg_scale, num_images, height, width)
            if not self.rewrite:
                return self.pipe(prompt, **settings.pipeline_kwargs()).images
            from .rewriting import rewrite_prompts

            (rewritten,) = rewrite_prompts(self.pipe, [prompt])
            images = self.pipe(rewritten, **settings.pipeline_kwargs()).images
            return [(image, f"rewritten prompt: {rewritten}") for image in images]

    def edit(self, image: ImageInput, instruction: str, negative_prompt: str = "", seed=42, steps=20,
             cfg_scale=4.5, num_images=1) -> list[PIL.Image.Image]:
        """The source image changed as the instruction says, at the source's aspect ratio."""
        with self.serving("edit", [image]):
            image = upload_path(image)
            if image is None:
                raise OpenUniError("upload an image to edit first")
            instruction = required_text(instruction, "edit instruction")
            settings = self.sampling(negative_prompt, seed, steps, cfg_scale, num_images)
            return self.pipe.edit(image, instruction, **settings.pipeline_kwargs()).images

    def chat(self, message: dict | str, history: list | None, conversation: Conversation | None,
             max_new_tokens=512, temperature=0.0) -> Iterator[tuple[list, Conversation, dict]]:
        """Answer the message (text and attached images) in the conversation so far, streaming: yields
        (chat history to show, the conversation, the cleared input box) as the answer grows."""
        text, images = message_parts(message)
        conversation = conversation if conversation is not None else Conversation()
        cleared = {"text": "", "files": []}
        with ExitStack() as stack:
            stack.enter_context(self.serving("chat", images))
            images = [upload_path(image) for image in images]
            stack.enter_context(self.pipe.stage(self.pipe.mllm))
            text = required_text(text, "question")
            if len(images) > MAX_ATTACHMENTS:
                raise OpenUniError(f"{len(images)} images attached; this demo takes at most {MAX_ATTACHMENTS} per "
                                   "message")
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
        """`chat` for the page: the history goes both to the chatbot and to the session state. Bad input is a
        warning toast, and the page stays usable: the chat shows what it showed before and the message box keeps
        the text but drops the attachments (Enter must not send a bad file again)."""
        try:
            for history, conversation, cleared in self.chat(message, shown, conversation, max_new_tokens,
                                                            temperature):
                shown = history
                yield history, history, conversation, cleared
        except gr.Error as error:
            gr.Warning(error.message)
            text = message_parts(message)[0]
            yield shown or [], shown or [], conversation, {"text": text if isinstance(text, str) else "", "files": []}

    # -- the page ---------------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        """The page; launch it with `max_file_size=MAX_UPLOAD_SIZE` (as `openuni demo` does)."""
        resolution, multiple = self.pipe.default_resolution, self.pipe.size_multiple
        with gr.Blocks(title="OpenUni", delete_cache=(CACHE_LIFETIME_S // 4, CACHE_LIFETIME_S)) as page:
            gr.Markdown("# OpenUni\nGenerate images from text, edit an image with an instruction, or ask the "
                        "model about images. One request runs at a time.")
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", lines=3, max_length=MAX_TEXT_CHARS)
                        negative = gr.Textbox(label="Negative prompt (empty: the model's default)",
                                              max_length=MAX_TEXT_CHARS)
                        with gr.Row():
                            width = gr.Number(resolution, label="Width", precision=0, step=multiple)
                            height = gr.Number(resolution, label="Height", precision=0, step=multiple)
                        seed, steps, cfg, count = sampling_controls()
                        run = gr.Button("Generate", variant="primary")
                    gallery = result_gallery("Images")
                run.click(self.generate, [prompt, negative, seed, steps, cfg, width, height, count], gallery,
                          api_name="generate", preprocess=False)
            with gr.Tab("Edit"):
                with gr.Row():
                    with gr.Column():
                        source = gr.Image(label="Image", type="filepath")
                        instruction = gr.Textbox(label="Instruction", lines=2, max_length=MAX_TEXT_CHARS)
                        negative = gr.Textbox(label="Negative prompt (empty: \"Keep the image as it is.\")",
                                              max_length=MAX_TEXT_CHARS)
                        seed, steps, cfg, count = sampling_controls()
                        run = gr.Button("Edit", variant="primary")
                    edited = result_gallery("Edited")
                run.click(self.edit, [source, instruction, negative, seed, steps, cfg, count], edited,
                          api_name="edit", preprocess=False)
            with gr.Tab("Chat"):
                # The shown history lives in the session state too, so it is never read back from the page (the
                # chatbot's own value changes form between gradio versions and on its way through the API).
                conversation, shown = gr.State(None), gr.State([])
                chatbot = gr.Chatbot(label="InternVL3", height=480)
                message = gr.MultimodalTextbox(label="Message", show_label=False, file_types=["image"],
                                               placeholder="Ask about images (attach them here) or just chat",
                                               file_count="multiple")
                with gr.Row():
                    length = gr.Slider(16, MAX_NEW_TOKENS, 512, step=16, label="Longest answer (tokens)")
                    temperature = gr.Slider(0, 1.5, 0, step=0.05, label="Temperature (0: greedy)")
                    restart = gr.Button("New conversation")
                message.submit(self.chat_event, [message, shown, conversation, length, temperature],
                               [chatbot, shown, conversation, message], api_name="chat", preprocess=False)
                restart.click(lambda: ([], [], None), None, [chatbot, shown, conversation], api_name=False)
        page.queue(default_concurrency_limit=1)
        return page


def result_gallery(label: str) -> gr.Gallery:
    """Images shown whole, at their own aspect ratio (the default thumbnails crop them to squares)."""
    return gr.Gallery(label=label, columns=2, object_fit="contain", height="auto", preview=False)


def sampling_controls():
    with gr.Row():
        seed = gr.Number(42, label="Seed", precision=0)
        steps = gr.Slider(1, MAX_STEPS, 20, step=1, label="Steps")
    with gr.Row():
        cfg = gr.Slider(0, 20, 4.5, step=0.5, label="Guidance scale")
        count = gr.Slider(1, MAX_IMAGES, 1, step=1, label="Images")
    return seed, steps, cfg, count
