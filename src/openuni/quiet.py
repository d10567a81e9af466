"""Two library warnings that say nothing true about OpenUni, dropped by their exact text on their own loggers; every
other message of those libraries passes as it is.

- transformers' "You are using a model of type `internvl_chat` to instantiate a model of type ``": AutoTokenizer
  reads the original InternVL3 layout's config.json through the base config class (model type ""), only to look for
  a tokenizer class; nothing is instantiated from it.
- diffusers' "There are modules in ... that should be kept in float32: []": `ModelMixin.to(dtype)` warns even when
  that list is empty, so the README's `pipe.to("cuda", torch.bfloat16)` printed it for every component.
"""

from __future__ import annotations

import logging

DROPPED = {
    "transformers.configuration_utils": "to instantiate a model of type ``.",
    "diffusers.models.modeling_utils": "that should be kept in float32: []. ",
}


class DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def drop_misleading_warnings() -> None:
    """Install the filters (once; calling again changes nothing)."""
    for name, fragment in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(DropMessage(fragment))
