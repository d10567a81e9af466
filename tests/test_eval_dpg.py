"""DPG-Bench aggregation on hand-built answers: dependency zeroing, tiles, categories, the question file."""

from __future__ import annotations

import csv

import PIL.Image
import pytest

from openuni.errors import OpenUniError
from openuni.evaluation import dpg
from openuni.evaluation.dpg import ItemQuestions, read_questions, split_tiles, summarize, tile_score, zero_dependents

TILE_COLORS = ["red", "green", "blue", "white"]  # row-major tiles of the test grids


def test_a_no_zeroes_its_children_and_chains_propagate_forwards():
    dependencies = {1: [0], 2: [1], 3: [2], 4: [0], 5: [1, 4]}
    raw = {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}
    assert zero_dependents(raw, dependencies) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 0.0}
    assert zero_dependents({1: 1.0, 2: 1.0, 3: 1.0, 4: 0.0, 5: 1.0}, dependencies) == {
        1: 1.0, 2: 1.0, 3: 1.0, 4: 0.0, 5: 0.0}
    assert raw[2] == 1.0  # the raw answers are kept for the category scores


def test_tile_score_counts_only_exact_yes():
    score, raw = tile_score({1: "yes", 2: "no", 3: "yes", 4: "yes."}, {1: [0], 2: [0], 3: [2], 4: [0]})
    assert raw == {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}
    assert score == pytest.approx(1 / 4)  # 3 is zeroed through its parent 2


def grid_image(tile=16):
    image = PIL.Image.new("RGB", (2 * tile, 2 * tile))
    for index, color in enumerate(TILE_COLORS):
        image.paste(PIL.Image.new("RGB", (tile, tile), color), ((index % 2) * tile, (index // 2) * tile))
    return image


class TileJudge:
    """Answers from a table keyed by (tile colour, question): a hand-written judge for the interface."""

    name, proxy = "table", True

    def __init__(self, table):
        self.table, self.asked = table, []

    def answer(self, image, question):
        color = {(255, 0, 0): "red", (0, 128, 0): "green", (0, 0, 255): "blue", (255, 255, 255): "white"}[
            image.getpixel((0, 0))]
        self.asked.append((color, question))
        return self.table.get((color, question), "no")


def test_tiles_are_row_major_and_each_tile_is_asked_everything():
    tiles = split_tiles(grid_image())
    assert [t.getpixel((3, 3)) for t in tiles] == [(255, 0, 0), (0, 128, 0), (0, 0, 255), (255, 255, 255)]
    item = ItemQuestions({1: "is there a cat?", 2: "is the cat black?"}, {1: "entity - whole (cat)",
                         2: "attribute - color (cat, black)"}, {1: [0], 2: [1]})
    table = {("red", "is there a cat?"): "yes", ("red", "is the cat black?"): "yes",
             ("green", "is the cat black?"): "yes",  # zeroed: no cat on this tile
             ("white", "is there a cat?"): "yes"}
    judge = TileJudge(table)
    result = dpg.score_item(grid_image(), item, judge)
    assert len(judge.asked) == 8
    assert result["tile_scores"] == [1.0, 0.0, 0.0, 0.5]
    assert result["score"] == pytest.approx(1.5 / 4)
    assert result["category_scores"] == {1: 1.0, 2: 0.0}  # the last tile's raw answers, as the official script
    with pytest.raises(OpenUniError):
        split_tiles(PIL.Image.new("RGB", (32, 16)))


def test_summary_overall_and_categories_in_percent():
    questions = {"a": ItemQuestions({1: "q", 2: "q"}, {1: "entity - whole (x)", 2: "attribute - color (x)"}),
                 "b": ItemQuestions({1: "q"}, {1: "entity - part (y)"})}
    results = {"a": {"score": 0.5, "category_scores": {1: 1.0, 2: 0.0}},
               "b": {"score": 1.0, "category_scores": {1: 0.0}}}
    summary = summarize(results, questions)
    assert summary["overall"] == pytest.approx(75.0)
    assert summary["categories"] == {"entity": pytest.approx(50.0), "attribute": 0.0}
    assert summary["subcategories"] == {"attribute - color": 0.0, "entity - part": 0.0, "entity - whole": 100.0}


def write_csv(path, rows):
    fields = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
              "tuple", "question_natural_language"]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fields)
        writer.writeheader()
        for item_id, qid, dependency, tuple_, question in rows:
            writer.writerow(dict(item_id=item_id, text="t", keywords="k", proposition_id=qid, dependency=dependency,
                                 category_broad="c", category_detailed="d", tuple=tuple_,
                                 question_natural_language=question))


def test_question_file_is_read_like_the_official_script(tmp_path):
    path = tmp_path / "dpg_bench.csv"
    write_csv(path, [("1", 1, "0", "entity - whole (a)", "first?"), ("1", 2, "0", "entity - whole (b)", "second?"),
                     ("1", 3, "1,2", "relation - spatial (a, b, on)", "third?"), ("7", 1, "0", "global - (x)", "x?")])
    questions = read_questions(path)
    assert list(questions) == ["1", "7"]
    assert questions["1"].questions == {2: "second?", 3: "third?"}  # the first data row is skipped
    assert questions["1"].dependencies == {2: [0], 3: [1, 2]}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(OpenUniError, match="not the DPG-Bench question file"):
        read_questions(tmp_path / "bad.csv")


def test_score_folder_skips_images_without_questions(tmp_path):
    grid_image().save(tmp_path / "5.png")
    grid_image().save(tmp_path / "6.png")
    questions = {"5": ItemQuestions({1: "is there a cat?"}, {1: "entity - whole (cat)"}, {1: [0]})}
    results, skipped = dpg.score_folder(tmp_path, questions, TileJudge({("blue", "is there a cat?"): "yes"}))
    assert list(results) == ["5"] and skipped == ["6"] and results["5"]["score"] == 0.25
    with pytest.raises(OpenUniError):
        dpg.score_folder(tmp_path / "empty", questions, TileJudge({}))


def test_a_truncated_image_is_a_clear_error(tmp_path):
    grid_image().save(tmp_path / "5.png")
    data = (tmp_path / "5.png").read_bytes()
    (tmp_path / "5.png").write_bytes(data[: len(data) // 2])  # as an interrupted external write leaves it
    questions = {"5": ItemQuestions({1: "is there a cat?"}, {1: "entity - whole (cat)"}, {1: [0]})}
    with pytest.raises(OpenUniError, match="5.png is corrupt or truncated.*generation again"):
        dpg.score_folder(tmp_path, questions, TileJudge({}))
