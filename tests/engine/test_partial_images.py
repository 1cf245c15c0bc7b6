"""engine/partial_images.py: the partial images a stream watches for, rendered only at their evenly spaced steps of
the first sampler node that offers them."""

from __future__ import annotations

import pytest
import torch

from dalle_nodes.engine import partial_images


@pytest.mark.parametrize(
    ("count", "total", "steps"),
    [(1, 50, [25]), (2, 50, [17, 33]), (3, 50, [12, 25, 38]), (2, 6, [2, 4]), (3, 2, [1]), (1, 1, [])],
)
def test_partial_steps_are_evenly_spaced_and_never_the_last(count: int, total: int, steps: list[int]) -> None:
    assert partial_images.partial_steps(count, total) == steps


def test_only_the_watched_steps_of_the_first_node_are_rendered() -> None:
    got, rendered = [], []

    def render(step: int):
        def picture() -> torch.Tensor:
            rendered.append(step)
            return torch.full((2, 3, 4, 4), -1.0 + step / 3)

        return picture

    partial_images.watch("job", 2, lambda index, pictures: got.append((index, pictures)))
    try:
        for step in range(1, 7):
            partial_images.offer("job", "6", step, 6, render(step))
            partial_images.offer("job", "9", step, 6, render(100 + step))  # a later sampler: not watched
            partial_images.offer("other job", "6", step, 6, render(200 + step))
    finally:
        partial_images.unwatch("job")
    assert rendered == [2, 4]
    assert [index for index, _ in got] == [0, 1]
    first = got[0][1]
    assert (
        len(first) == 2 and first[0].size == (4, 4) and first[0].getpixel((0, 0)) == (85, 85, 85)
    )  # (-1 + 2/3 + 1) * 127.5
    partial_images.offer("job", "6", 2, 6, render(2))  # unwatched: nothing more
    assert rendered == [2, 4]


@pytest.mark.parametrize("count", [0, 4])
def test_a_count_outside_one_to_three_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="count is 1 to 3"):
        partial_images.watch("job", count, lambda *_: None)
