"""Which of a study's points a run covers: `--points`, and `name@lr` for a point at another lr."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gptpipe.errors import UserError
from gptpipe.studies.runner import Point


class Study(Protocol):  # what of definitions.Study these read
    name: str
    points: Callable[[], Sequence[Point]]


def chosen_points(study: Study, only: Sequence[str]) -> list[Point]:
    """The study's points, or those named in `only` (in the study's order); an unknown name is an error.
    `name@lr` is that point at another learning rate, labelled `<name>-lr<lr>` (an lr sweep)."""
    points = list(study.points())
    labels = [p.label for p in points]
    if unknown := [item for item in only if item.partition("@")[0] not in labels]:
        raise UserError(f"--points: {', '.join(unknown)} not in study {study.name}; its points: {', '.join(labels)}")
    if not only:
        return points
    chosen: dict[str, tuple[int, Point]] = {}  # by label: a point named twice runs once
    for item in only:
        index = labels.index(item.partition("@")[0])
        point = _at_lr(points[index], item, study.name)
        chosen[point.label] = (index, point)
    return [point for _, point in sorted(chosen.values(), key=lambda entry: (entry[0], entry[1].label))]


def _at_lr(point: Point, item: str, study: str) -> Point:
    name, at, lr = item.partition("@")
    if not at:
        return point
    if "train.lr" not in point.overrides:
        raise UserError(f"--points {item}: study {study}'s point {name} sets no learning rate; name it without @")
    try:
        value = float(lr)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UserError(f"--points {item}: {lr!r} is not a positive learning rate; write e.g. {name}@0.01")
    return Point(f"{name}-lr{value:g}", {**point.overrides, "train.lr": value})


def output_name(study: Study, only: Sequence[str]) -> str:
    """What the files of a run of these points are called: the study's name, or <study>-<points>."""
    return "-".join([study.name, *(p.label for p in chosen_points(study, only))]) if only else study.name
