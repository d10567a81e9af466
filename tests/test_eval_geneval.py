"""GenEval's rules on hand-built detections: thresholds, counts, exclusion, colours, positions and margins."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from openuni.errors import OpenUniError
from openuni.evaluation import geneval
from openuni.evaluation.geneval import Detection, evaluate, keep_detections, relative_position, summarize


def box(cx, cy, w=10, h=10, score=0.95):
    return Detection((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), score)


def fixed_colors(*colors):
    """A colour classifier that answers the given colours in detection order (stands in for CLIP)."""
    return lambda image, name, detections: list(colors[:len(detections)])


def test_thresholds_depend_on_the_task_and_are_strict():
    found = {"dog": [box(10, 10, score=0.3), box(20, 20, score=0.31), box(30, 30, score=0.9), box(40, 40, score=0.91)]}
    assert [d.score for d in keep_detections(found, "single_object")["dog"]] == [0.91, 0.9, 0.31]
    assert [d.score for d in keep_detections(found, "counting")["dog"]] == [0.91]
    assert keep_detections({"cat": [box(1, 1, score=0.2)]}, "two_object") == {}


def test_at_most_sixteen_per_class_most_confident_first():
    found = {"apple": [box(i, i, score=0.4 + i / 100) for i in range(20)]}
    kept = keep_detections(found, "colors")["apple"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.59) and kept[-1].score == pytest.approx(0.44)


def test_counts_include_and_exclude():
    metadata = {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}]}
    assert evaluate(metadata, {"clock": [box(10, 10), box(50, 50)]})[0]
    assert not evaluate(metadata, {"clock": [box(10, 10)]})[0]
    correct, reason = evaluate(metadata, {"clock": [box(10, 10), box(50, 50), box(90, 90)]})
    assert not correct and "expected clock<3, found 3" in reason
    assert not evaluate({"include": [{"class": "cat", "count": 1}]}, {"dog": [box(5, 5)]})[0]


def test_colour_uses_the_most_confident_objects_and_argmax_colour():
    metadata = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    detections = {"car": [box(10, 10), box(50, 50)]}
    assert evaluate(metadata, detections, fixed_colors("red", "blue"))[0]
    correct, reason = evaluate(metadata, detections, fixed_colors("blue", "red"))  # only the first is checked
    assert not correct and "found 0 red" in reason and "1 blue" in reason


def test_colour_attribute_needs_every_clause():
    metadata = {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "green"},
                                                 {"class": "cup", "count": 1, "color": "purple"}]}
    by_class = {"bus": "green", "cup": "purple"}
    classify = lambda image, name, found: [by_class[name]] * len(found)  # noqa: E731
    assert evaluate(metadata, {"bus": [box(10, 10)], "cup": [box(60, 60)]}, classify)[0]
    by_class["cup"] = "pink"
    assert not evaluate(metadata, {"bus": [box(10, 10)], "cup": [box(60, 60)]}, classify)[0]


@pytest.mark.parametrize("offset, relation", [((-30, 0), "left of"), ((30, 0), "right of"),
                                              ((0, -30), "above"), ((0, 30), "below")])
def test_each_position_relation(offset, relation):
    a, b = box(50 + offset[0], 50 + offset[1]), box(50, 50)
    assert relative_position(a, b) == {relation}
    metadata = {"tag": "position", "include": [{"class": "kite", "count": 1},
                                               {"class": "dog", "count": 1, "position": [relation, 0]}]}
    assert evaluate(metadata, {"kite": [b], "dog": [a]})[0]
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    metadata["include"][1]["position"] = [opposite, 0]
    assert not evaluate(metadata, {"kite": [b], "dog": [a]})[0]


def test_position_margin_is_a_tenth_of_the_summed_sizes():
    # Two 10-px boxes: the margin is 0.1 * (10 + 10) = 2 px, taken off the offset; what is left must exceed half
    # the offset's length, so a relation needs more than 4 px.
    assert relative_position(box(51.9, 50), box(50, 50)) == set()  # inside the margin
    assert relative_position(box(53.9, 50), box(50, 50)) == set()
    assert relative_position(box(54.1, 50), box(50, 50)) == {"right of"}
    assert relative_position(box(54.1, 50, w=12), box(50, 50)) == set()  # a bigger box widens the margin
    # Diagonal: the shrunk offset must keep more than half the length along an axis to count there.
    assert relative_position(box(70, 70), box(50, 50)) == {"right of", "below"}
    assert relative_position(box(70, 53), box(50, 50)) == {"right of"}


def test_position_without_a_matched_target_fails():
    metadata = {"tag": "position", "include": [{"class": "kite", "count": 1},
                                               {"class": "dog", "count": 1, "position": ["above", 0]}]}
    correct, reason = evaluate(metadata, {"dog": [box(5, 5)]})
    assert not correct and "no target for dog" in reason


def test_summary_is_the_mean_of_task_scores_not_of_images():
    rows = [{"tag": "single_object", "correct": c, "metadata": "a"} for c in (True, True, True, False)]
    rows += [{"tag": "counting", "correct": False, "metadata": "b"}]
    summary = summarize(rows)
    assert summary["tasks"] == {"single_object": 0.75, "counting": 0.0}
    assert summary["overall"] == pytest.approx(0.375)
    assert summary["correct_images"] == pytest.approx(0.6) and summary["correct_prompts"] == pytest.approx(0.5)
    with pytest.raises(OpenUniError):
        summarize([])


def test_score_image_writes_the_official_row(tmp_path):
    image_path = tmp_path / "0000.png"
    PIL.Image.new("RGB", (64, 64), "red").save(image_path)
    metadata = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    detect = lambda image: {"bench": [Detection((1.0, 2.0, 30.0, 40.0), 0.8, np.ones((64, 64), bool))]}  # noqa: E731
    row = geneval.score_image(image_path, metadata, detect, fixed_colors())
    assert row["correct"] is True and row["tag"] == "single_object" and json.loads(row["metadata"]) == metadata
    assert json.loads(row["details"]) == {"bench": [[1.0, 2.0, 30.0, 40.0, 0.8]]}


def test_masked_crop_paints_the_background_grey_and_box_from_mask():
    from openuni.evaluation.geneval_models import mask_box, masked_crop

    mask = np.zeros((20, 30), bool)
    mask[5:10, 8:12] = True
    mask[7, 15] = True
    assert mask_box(mask) == (8.0, 5.0, 16.0, 10.0)
    assert mask_box(np.zeros((4, 4), bool)) == (0.0, 0.0, 0.0, 0.0)
    crop = np.asarray(masked_crop(PIL.Image.new("RGB", (30, 20), "red"), Detection(mask_box(mask), 0.9, mask)))
    assert crop.shape == (5, 8, 3)
    assert tuple(crop[0, 0]) == (255, 0, 0) and tuple(crop[0, 5]) == (0x99, 0x99, 0x99)


def test_score_image_refuses_a_truncated_file_clearly(tmp_path):
    image_path = tmp_path / "0000.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image_path)
    image_path.write_bytes(image_path.read_bytes()[:300])
    metadata = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    with pytest.raises(OpenUniError, match="0000.png is corrupt or truncated.*generation again"):
        geneval.score_image(image_path, metadata, lambda image: {}, fixed_colors())
