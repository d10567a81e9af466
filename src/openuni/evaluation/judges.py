"""Open VLM judges from transformers, standing in for the official ones (mPLUG for DPG-Bench, GPT-4o for WISE).

Any chat VLM that `AutoModelForImageTextToText` and `AutoProcessor` load works; answers are greedy. Scores made with
these judges are proxies: they are labelled so in every report and are not comparable with published numbers.
"""

from __future__ import annotations

import re

import PIL.Image
import torch

from ..devices import resolve_dtype
from ..errors import OpenUniError
from . import DEFAULT_JUDGE
from .wise import RUBRIC

YES_NO_SUFFIX = " Answer with yes or no."


class TransformersJudge:
    proxy = True

    def __init__(self, model: str = DEFAULT_JUDGE, device: str = "cpu", dtype: torch.dtype | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = resolve_dtype(dtype, device)
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval()
        except Exception as error:  # offline, unknown architecture: say which flag takes a local copy
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise OpenUniError(f"could not load the judge {model!r} ({reason}); pass --judge with a local VLM "
                               "directory that AutoModelForImageTextToText loads") from None
        self.name = model
        self.device = device

    @torch.no_grad()
    def ask(self, image: PIL.Image.Image, text: str, max_new_tokens: int) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        chat = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        # Float inputs (pixels) follow the model's dtype; ids stay integer.
        inputs = self.processor(images=[image], text=[chat], return_tensors="pt").to(self.device, self.model.dtype)
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def answer(self, image: PIL.Image.Image, question: str) -> str:
        """DPG-Bench: "yes" or "no" (the first word of the reply, lower case)."""
        reply = self.ask(image, question + YES_NO_SUFFIX, max_new_tokens=4)
        words = re.findall(r"[a-z]+", reply.lower())
        return words[0] if words else ""

    def judge(self, image: PIL.Image.Image, prompt: str, explanation: str) -> str:
        """WISE: the reply to our rubric, three "Name: score" lines."""
        return self.ask(image, RUBRIC.format(prompt=prompt, explanation=explanation), max_new_tokens=40)
