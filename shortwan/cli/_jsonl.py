"""The input of ``shortwan batch``: a JSONL file, one request per line, checked line by line.

A line holds the model's arguments, plus an optional ``key`` and ``output``; image arguments may
be local paths, relative to the file. Every line becomes a :class:`Line`: a request ready to send,
or the reason it cannot be, named by its number.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import Generator
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from .._convert import request_from_args
from .._errors import InvalidRequestError, quoted
from .._files import output_target
from .._media import image_input_or_problem, is_remote
from .._models import BatchItem, ImageToVideo
from ._names import RESERVED_NAMES

__all__ = ["Line", "check_file", "checked_lines", "read_lines"]

_IMAGE_FIELDS = ("first_frame_image", "last_frame_image")


@attrs.frozen
class Line:
    """One line of the input: a request ready to send, or why it cannot be.

    ``key`` and ``output`` are the line's own, kept even when the line is invalid so that its row
    in ``results.jsonl`` names it and no other line can take them.
    """

    number: int
    item: BatchItem | None
    problem: str | None = None
    key: str | None = None
    output: str | None = None


def _parse(number: int, text: str, base: Path) -> Line:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Line(number, None, f"not JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return Line(number, None, "not usable JSON: nested too deeply")
    except ValueError as exc:  # an integer of more digits than Python converts
        return Line(number, None, f"not usable JSON: {str(exc).split(';')[0]}")
    if not isinstance(data, dict):
        return Line(number, None, f"a line must be a JSON object, got {type(data).__name__}")
    args: dict[str, Any] = dict(data)
    key, output = args.pop("key", None), args.pop("output", None)
    problems: list[str] = []
    # The library's own rules for keys and output names; a bad one is dropped from the row.
    try:
        BatchItem(request={}, key=key)
    except InvalidRequestError as exc:
        problems.extend(exc.problems)
        key = None
    try:
        BatchItem(request={}, output=output)
    except InvalidRequestError as exc:
        problems.extend(exc.problems)
        output = None
    for name in _IMAGE_FIELDS:
        value = args.get(name)
        if isinstance(value, str) and not is_remote(value):
            # A local path, relative to the file that names it.
            value, problem = image_input_or_problem(base / value, name=name)
            if problem is not None:
                problems.append(problem)
            args[name] = value
    if problems:
        return Line(number, None, "; ".join(problems), key, output)
    try:
        item = BatchItem(request=request_from_args(args), key=key, output=output)
    except InvalidRequestError as exc:
        return Line(number, None, "; ".join(exc.problems), key, output)
    return Line(number, item, None, key, output)


def read_lines(path: Path) -> Generator[Line, None, None]:
    """Yield every non-blank line of a JSONL file, parsed and checked (local images included).

    Each line is decoded on its own, so one that is not UTF-8 is reported and the others still
    count; a UTF-8 byte order mark at the start of the file is accepted.
    """
    base = path.parent
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            data = (
                raw[len(codecs.BOM_UTF8) :]
                if number == 1 and raw.startswith(codecs.BOM_UTF8)
                else raw
            )
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 text: byte {data[exc.start]:#04x} at byte {exc.start + 1}"
                yield Line(number, None, problem)
                continue
            if not text.strip():
                continue
            try:
                yield _parse(number, text, base)
            except Exception as exc:  # one odd line is that line's problem, never the batch's
                yield Line(number, None, f"could not be read: {type(exc).__name__}: {exc}")


class _Checker:
    """Checks across lines: unique keys, unique outputs, outputs that fit the folder."""

    def __init__(self, source: Path, out: Path) -> None:
        self.folder = out.resolve()
        self.reserved = {name.casefold() for name in RESERVED_NAMES}
        source = source.resolve()
        if source.is_relative_to(self.folder) and source != self.folder:
            # The input file itself, when it lives in the folder, must not be overwritten.
            self.reserved.add(source.relative_to(self.folder).parts[0].casefold())
        self.keys: dict[str, int] = {}
        self.targets: dict[Path, int] = {}

    def check(self, line: Line) -> Line:
        """Return ``line``, made invalid if an earlier line or the folder rules it out."""
        problems = [] if line.problem is None else [line.problem]
        if line.key is not None:
            first = self.keys.setdefault(line.key, line.number)
            if first != line.number:
                problems.append(f"key {quoted(line.key)} is also the key of line {first}")
        if line.output is not None:
            target, problem = output_target(self.folder, line.output)
            if problem is None:
                top = target.relative_to(self.folder).parts[0]
                if top.casefold() in self.reserved:
                    problem = (
                        f"output {quoted(line.output)} would overwrite {top!r}, which the batch "
                        "keeps in its folder"
                    )
            if problem is None:
                first = self.targets.setdefault(target, line.number)
                if first != line.number:
                    problem = f"output {quoted(line.output)} is also the output of line {first}"
            if problem is not None:
                problems.append(problem)
        if len(problems) == (0 if line.problem is None else 1):
            return line
        return Line(line.number, None, "; ".join(problems), line.key, line.output)


def checked_lines(source: Path, out: Path) -> Generator[Line, None, None]:
    """Yield :func:`read_lines`, with the checks across lines for a batch into ``out`` added."""
    checker = _Checker(source, out)
    with contextlib.closing(read_lines(source)) as lines:
        for line in lines:
            yield checker.check(line)


def check_file(source: Path, out: Path) -> tuple[int, Decimal, list[Line]]:
    """Read the whole file: return the count of valid lines, their cost, and the invalid ones.

    Besides each line's own checks, keys and outputs must be unique, and every output must be a
    usable name inside ``out`` that is not one of the batch's own files.
    """
    count, cost, bad = 0, Decimal(0), []
    for line in checked_lines(source, out):
        if line.item is None:
            bad.append(line)
            continue
        count += 1
        request = line.item.request
        assert isinstance(request, ImageToVideo)  # noqa: S101 - built by request_from_args
        cost += request.estimated_cost
    return count, cost, bad
