"""The models behind GenEval's rules, from transformers instead of mmdet and open_clip.

- Detector: Mask2Former COCO instance segmentation (default `facebook/mask2former-swin-small-coco-instance`, the
  same Swin-S architecture as the official mmdet checkpoint, but the original authors' weights). Candidates are made
  as mmdet's Mask2Former makes them: the 100 best (query, class) pairs by class probability, masks binarised at
  logit 0 after bilinear upsampling to the image, score = class probability x mean mask probability, box = the
  mask's extent (x2, y2 exclusive). The input is resized as mmdet's test pipeline does (short side 800, long <= 1333).
- Colours: CLIP ViT-L/14 (`openai/clip-vit-large-patch14`), zero-shot over the ten colours with the three official
  templates (text embeddings normalised, averaged over templates, renormalised), on each object's crop with the
  pixels outside its mask painted grey (#999999).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..errors import OpenUniError
from . import DEFAULT_CLIP, DEFAULT_DETECTOR
from .geneval import COLOR_TEMPLATES, COLORS, Detection

MAX_CANDIDATES = 100
GREY = (0x99, 0x99, 0x99)
# GenEval's object_names.txt is COCO's 80 classes in COCO order, three of them renamed.
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


def _load(loader, name: str, what: str, flag: str):
    try:
        return loader(name)
    except Exception as error:  # offline, missing files: the user must point at a local copy
        raise OpenUniError(f"could not load the {what} {name!r} ({str(error).splitlines()[0] if str(error) else error}); "
                           f"download it where there is internet and pass {flag} PATH") from None


class Mask2FormerDetector:
    """image -> {GenEval class name: candidate detections}; class i of the COCO model is line i of object_names."""

    def __init__(self, checkpoint: str = DEFAULT_DETECTOR, class_names: list[str] | None = None, device: str = "cpu"):
        import importlib.util

        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        if importlib.util.find_spec("scipy") is None:
            raise OpenUniError("GenEval scoring needs scipy (transformers' Mask2Former uses it): "
                               "pip install -e '.[eval]'")

        self.model = _load(Mask2FormerForUniversalSegmentation.from_pretrained, checkpoint, "detector", "--detector")
        self.model.to(device).eval()
        self.processor = Mask2FormerImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333}, size_divisor=32)
        labels = self.model.config.id2label
        self.class_names = class_names or [GENEVAL_NAMES.get(labels[i], labels[i]) for i in range(len(labels))]
        if len(self.class_names) != self.model.config.num_labels:
            raise OpenUniError(f"--detector {checkpoint}: {self.model.config.num_labels} classes, expected "
                               f"{len(self.class_names)} (COCO's 80 in GenEval's order)")
        self.device = device

    @torch.no_grad()
    def __call__(self, image: PIL.Image.Image) -> dict[str, list[Detection]]:
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        outputs = self.model(pixel_values=inputs.pixel_values)
        class_logits = outputs.class_queries_logits[0].float()  # [Q, C + 1]
        mask_logits = outputs.masks_queries_logits[0:1].float()  # [1, Q, h, w]
        mask_logits = torch.nn.functional.interpolate(mask_logits, size=inputs.pixel_values.shape[-2:],
                                                      mode="bilinear", align_corners=False)
        mask_logits = torch.nn.functional.interpolate(mask_logits, size=(image.height, image.width),
                                                      mode="bilinear", align_corners=False)[0]
        return self.candidates(class_logits, mask_logits)

    def candidates(self, class_logits: torch.Tensor, mask_logits: torch.Tensor) -> dict[str, list[Detection]]:
        num_classes = class_logits.shape[-1] - 1
        probabilities = class_logits.softmax(-1)[:, :-1]
        scores, flat = probabilities.flatten().topk(min(MAX_CANDIDATES, probabilities.numel()))
        masks = mask_logits[flat // num_classes]
        binary = masks > 0
        mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        found: dict[str, list[Detection]] = {}
        for score, label, mask in zip((scores * mask_scores).tolist(), (flat % num_classes).tolist(), binary):
            mask = mask.cpu().numpy()
            found.setdefault(self.class_names[label], []).append(Detection(mask_box(mask), score, mask))
        return found


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The mask's extent as (x1, y1, x2, y2), x2/y2 one past the last pixel; zeros for an empty mask (as mmdet)."""
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(columns) == 0 or len(rows) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))


def masked_crop(image: PIL.Image.Image, detection: Detection) -> PIL.Image.Image:
    """The object on grey: pixels outside its mask replaced, then cropped to its box (PIL rounds the box)."""
    if detection.mask is not None:
        grey = PIL.Image.new("RGB", image.size, GREY)
        image = PIL.Image.composite(image, grey, PIL.Image.fromarray(detection.mask.astype(np.uint8) * 255, "L"))
    return image.crop(detection.box)


class ClipColorClassifier:
    """(image, class name, detections) -> colour per detection, by CLIP zero-shot classification."""

    def __init__(self, checkpoint: str = DEFAULT_CLIP, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.model = _load(CLIPModel.from_pretrained, checkpoint, "CLIP model", "--clip").to(device).eval()
        self.processor = _load(CLIPProcessor.from_pretrained, checkpoint, "CLIP processor", "--clip")
        self.device = device
        self.classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def classifier(self, class_name: str) -> torch.Tensor:
        """[colours, dim] unit text embeddings, one per colour averaged over the templates."""
        if class_name not in self.classifiers:
            rows = []
            for color in COLORS:
                texts = [t.format(color=color, object=class_name) for t in COLOR_TEMPLATES]
                tokens = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
                embeds = self.model.get_text_features(**tokens).pooler_output.float()
                embeds = torch.nn.functional.normalize(embeds, dim=-1).mean(0)
                rows.append(torch.nn.functional.normalize(embeds, dim=-1))
            self.classifiers[class_name] = torch.stack(rows)
        return self.classifiers[class_name]

    @torch.no_grad()
    def __call__(self, image: PIL.Image.Image, class_name: str, detections: list[Detection]) -> list[str]:
        crops = [masked_crop(image, d) for d in detections]
        pixels = self.processor(images=crops, return_tensors="pt").pixel_values.to(self.device, self.model.dtype)
        embeds = torch.nn.functional.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output.float(),
                                               dim=-1)
        return [COLORS[i] for i in (embeds @ self.classifier(class_name).T).argmax(-1).tolist()]


def read_object_names(path: str | Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise OpenUniError(f"--object-names {path}: {error}") from None
