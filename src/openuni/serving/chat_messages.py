"""OpenAI chat messages -> the question, its images and the conversation before it, as `InternVLChat` takes them.

System (and developer) messages become the system prompt (InternVL3's own when there is none); user and assistant
messages alternate into turns, each earlier turn keeping its images, as InternVL3 expects to see them again; the
last message is the question. Images come as `data:` URLs, or as http(s) URLs only where the server allows them.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.error
import urllib.request

import PIL.Image

from ..chat import IMAGE_PLACEHOLDER, INTERNVL_SYSTEM_PROMPT, Conversation, InternVLChat, Turn
from ..errors import OpenUniError
from ..images import load_image_bytes
from ..prompting import IMG_CONTEXT, IMG_END, IMG_START
from .config import ServerConfig
from .protocol import ChatMessage, bad_request

DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(?P<data>.*)", re.DOTALL)
MARKERS = (IMAGE_PLACEHOLDER, IMG_START, IMG_END, IMG_CONTEXT)


def conversation_from_messages(chat: InternVLChat, messages: list[ChatMessage], config: ServerConfig
                               ) -> tuple[str, list[PIL.Image.Image], Conversation]:
    system = [text_of(m, f"messages.{i}") for i, m in enumerate(messages) if m.role in ("system", "developer")]
    dialogue = merged_turns([(i, m) for i, m in enumerate(messages) if m.role not in ("system", "developer")])
    if not dialogue or dialogue[-1][0] != "user":
        raise bad_request("the last message must come from the user", param="messages")
    if dialogue[0][0] != "user":
        raise bad_request("the conversation must start with a user message (after any system message)",
                          param="messages")
    counted = sum(len(urls) for role, (_, _, urls) in dialogue)
    if counted > config.max_chat_images:
        raise bad_request(f"{counted} images in the conversation; this server takes at most "
                          f"{config.max_chat_images}", param="messages")
    conversation = Conversation(system_prompt="\n".join(system) if system else INTERNVL_SYSTEM_PROMPT)
    for (_, (index, question, sources)), (_, (_, answer, _)) in zip(dialogue[:-1:2], dialogue[1::2]):
        images = [read_image(source, f"messages.{index}.content", config) for source in sources]
        tiles = [tiles_of(chat, image, f"messages.{index}.content") for image in images]
        text = chat.question_with_images(question, len(tiles)) if tiles else question
        conversation.turns.append(Turn(text, tiles, answer))
    index, question, sources = dialogue[-1][1]
    images = [read_image(source, f"messages.{index}.content", config) for source in sources]
    return question, images, conversation


def merged_turns(messages: list[tuple[int, ChatMessage]]) -> list[tuple[str, tuple[int, str, list[str]]]]:
    """(role, (index of its first message, text, image URLs)), consecutive messages of one role joined."""
    turns: list[tuple[str, tuple[int, str, list[str]]]] = []
    for index, message in messages:
        text, urls = split_content(message)
        if message.role == "assistant" and urls:
            raise bad_request("assistant messages cannot hold images", param=f"messages.{index}.content")
        if message.role == "user":
            check_markers(text, f"messages.{index}.content")
        if turns and turns[-1][0] == message.role:
            first, earlier_text, earlier_urls = turns[-1][1]
            turns[-1] = (message.role, (first, f"{earlier_text}\n{text}".strip(), earlier_urls + urls))
        else:
            turns.append((message.role, (index, text, urls)))
    for role, (index, text, _) in turns:
        if role == "user" and not text.strip():
            raise bad_request("a user message needs text (a question) beside its images",
                              param=f"messages.{index}.content")
    return turns


def split_content(message: ChatMessage) -> tuple[str, list[str]]:
    if message.content is None or isinstance(message.content, str):
        return (message.content or "").strip(), []
    texts = [part.text for part in message.content if part.type == "text"]
    urls = [part.image_url.url for part in message.content if part.type == "image_url"]
    return "\n".join(texts).strip(), urls


def text_of(message: ChatMessage, param: str) -> str:
    text, urls = split_content(message)
    if urls:
        raise bad_request(f"{message.role} messages cannot hold images", param=f"{param}.content")
    return text


def check_markers(text: str, param: str) -> None:
    found = [marker for marker in MARKERS if marker in text]
    if found:
        raise bad_request(f"leave '{found[0]}' out of messages: images are placed by the server", param=param)


def read_image(url: str, param: str, config: ServerConfig) -> PIL.Image.Image:
    return decode_image(image_bytes(url, param, config), param, config)


def image_bytes(url: str, param: str, config: ServerConfig) -> bytes:
    """The bytes of an image_url part: a base64 data URL, or a download where the server allows it."""
    match = DATA_URL.fullmatch(url.strip())
    if match:
        if len(match["data"]) > config.max_upload_bytes * 4 // 3 + 4:
            raise too_large(param, config)
        try:
            return base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("the image data URL is not valid base64", param=param) from None
    if not re.match(r"https?://", url, re.IGNORECASE):
        raise bad_request("image_url must be a data URL (data:image/png;base64,...)" +
                          (" or an http(s) URL" if config.allow_remote_images else ""), param=param)
    if not config.allow_remote_images:
        raise bad_request("remote image URLs are refused by this server: send the image as a data URL "
                          "(data:image/png;base64,...), or start the server with --allow-remote-images",
                          param=param, code="remote_images_disabled")
    return download(url, param, config)


def download(url: str, param: str, config: ServerConfig) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=config.remote_image_timeout) as response:  # noqa: S310 (http(s) only)
            data = response.read(config.max_upload_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise bad_request(f"cannot download the image at {url}: {error}", param=param) from None
    if len(data) > config.max_upload_bytes:
        raise too_large(param, config)
    return data


def too_large(param: str, config: ServerConfig):
    return bad_request(f"the image is over the server's limit of {config.max_upload_bytes / 2**20:g} MiB",
                       param=param, code="image_too_large")


def decode_image(data: bytes, param: str, config: ServerConfig) -> PIL.Image.Image:
    try:
        return load_image_bytes(data, name="the image", max_pixels=config.max_image_pixels)
    except OpenUniError as error:
        raise bad_request(str(error), param=param, code="invalid_image") from None


def tiles_of(chat: InternVLChat, image: PIL.Image.Image, param: str):
    try:
        return chat.tile(image)
    except OpenUniError as error:
        raise bad_request(str(error), param=param, code="invalid_image") from None
