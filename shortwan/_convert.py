"""The wire format: one cattrs converter, lenient for answers.

Requests omit unset arguments; the arguments users hand in are checked by
:func:`request_from_args`, which refuses unknown keys. Answers ignore unknown keys and tolerate
missing optional ones; a shape that cannot be read becomes one
:class:`~shortwan.MalformedResponseError` naming each path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from ._errors import InvalidRequestError, MalformedResponseError, snippet
from ._models import ImageToVideo, JobSnapshot, JobStatus, job_id_problem

logger = logging.getLogger("shortwan")

__all__ = [
    "CreateData",
    "QueryData",
    "converter",
    "request_args",
    "request_from_args",
    "snapshot_from_data",
    "create_from_data",
    "structure_answer",
]


def _structure_decimal(value: object, _type: object) -> Decimal:
    # Money arrives as a string; a JSON number is accepted through its text, never through a float.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"expected a decimal string, got {type(value).__name__}")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {str(value)[:40]!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


def _structure_int(value: object, _type: object) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _structure_text(value: object, _type: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _structure_bool(value: object, _type: object) -> bool:
    # bool("false") is True: read the spellings a JSON service may use, never truthiness.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise TypeError(f"expected true or false, got {value!r:.40}")


def _make_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(Decimal, _structure_decimal)
    conv.register_unstructure_hook(Decimal, str)
    # Answers are lenient about scalar spellings ("2" for 2) but never read a bool as a number.
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(str, _structure_text)
    conv.register_structure_hook(bool, _structure_bool)
    # Optional request arguments left unset are omitted from the body, never sent as null.
    omit_unset: dict[str, Any] = {
        a.name: override(omit_if_default=True)
        for a in attrs.fields(ImageToVideo)
        if a.default is None
    }
    conv.register_unstructure_hook(
        ImageToVideo, make_dict_unstructure_fn(ImageToVideo, conv, **omit_unset)
    )
    return conv


@attrs.frozen(kw_only=True)
class CreateData:
    """The ``data`` of a create answer."""

    job_id: str
    amount: Decimal | None = None


@attrs.frozen(kw_only=True)
class QueryData:
    """The ``data`` of a query answer (and of a callback), before it becomes a JobSnapshot."""

    status: int
    id: str | None = None
    result: Any = None
    error: Any = None
    refunded: bool | None = None
    credit: Decimal | None = None
    model: str | None = None
    args: dict[str, Any] | None = None
    key_name: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None


converter: Final = _make_converter()
"""Lenient: reads answers, ignoring unknown keys."""


def request_args(request: ImageToVideo) -> dict[str, Any]:
    """Return the ``args`` object of a create body: unset optional arguments are left out."""
    args: dict[str, Any] = converter.unstructure(request)
    return args


def request_from_args(args: Mapping[str, Any]) -> ImageToVideo:
    """Build a request from a mapping of arguments, refusing unknown keys.

    Raises:
        InvalidRequestError: naming every unknown key and every broken rule.
    """
    if not isinstance(args, Mapping):
        raise InvalidRequestError([f"arguments must be an object, got {type(args).__name__}"])
    known = {a.name for a in attrs.fields(ImageToVideo)}
    unknown = sorted(str(k) for k in args if k not in known)
    problems = [f"unknown argument {k!r}" for k in unknown]
    kwargs = {k: v for k, v in args.items() if k in known}
    try:
        request = ImageToVideo(**kwargs)
    except InvalidRequestError as exc:
        raise InvalidRequestError(problems + list(exc.problems)) from None
    if problems:
        raise InvalidRequestError(problems)
    return request


def _plain_fields(data: object) -> dict[str, Any] | None:
    """Return the fields of a well-formed query answer, checked as the converter would, or None.

    The answers of a healthy service all look alike; this reads them in a fraction of the
    converter's time. Anything unusual returns None and goes through the converter, which reads
    the lenient spellings and names every bad path.
    """
    if type(data) is not dict:
        return None
    get = data.get
    status = get("status")
    if type(status) is not int:
        return None
    ident, model, key_name = get("id"), get("model"), get("key_name")
    created_at, updated_at, finished_at = get("created_at"), get("updated_at"), get("finished_at")
    for value in (ident, model, key_name, created_at, updated_at, finished_at):
        if value is not None and type(value) is not str:
            return None
    refunded, credit, args = get("refunded"), get("credit"), get("args")
    if (
        (refunded is not None and type(refunded) is not bool)
        or (credit is not None and type(credit) is not str)
        or (args is not None and type(args) is not dict)
    ):
        return None
    try:
        amount = None if credit is None else _structure_decimal(credit, Decimal)
    except (TypeError, ValueError):
        return None
    return {
        "status": status,
        "id": ident,
        "result": get("result"),
        "error": get("error"),
        "refunded": refunded,
        "credit": amount,
        "model": model,
        "args": args,
        "key_name": key_name,
        "created_at": created_at,
        "updated_at": updated_at,
        "finished_at": finished_at,
    }


def _snapshot(fields: Mapping[str, Any], ident: str) -> JobSnapshot:
    """Build the snapshot of a query answer from its fields (the ones of :class:`QueryData`)."""
    error = fields["error"]
    if error is not None and not isinstance(error, str):
        error = str(error)
    status = fields["status"]
    return JobSnapshot(
        id=ident,
        status=JobStatus.from_raw(status),
        raw_status=status,
        urls=_result_urls(fields["result"]),
        error=error or None,
        refunded=fields["refunded"],
        credit=fields["credit"],
        model=fields["model"],
        args=fields["args"],
        key_name=fields["key_name"],
        created_at=fields["created_at"],
        updated_at=fields["updated_at"],
        finished_at=fields["finished_at"],
    )


def create_from_data(data: object) -> tuple[CreateData, str | None]:
    """Read a create answer's ``data``: the job id must be plausible, the amount may be lost.

    Returns:
        The answer, and a note when its amount could not be read (it is then ``None``): a job
        whose id is known is never given up for a bad amount.

    Raises:
        MalformedResponseError: no plausible job id in the answer.
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise MalformedResponseError(
            "malformed create answer: data is not an object",
            body=snippet(repr(data)),
            paths=["data"],
        )
    job_id = data.get("job_id")
    problem = job_id_problem(job_id)
    if problem is not None:
        raise MalformedResponseError(
            f"malformed create answer: {problem}",
            body=snippet(repr(data)),
            paths=["data.job_id"],
        )
    assert isinstance(job_id, str)  # noqa: S101 - checked above
    raw = data.get("amount")
    if raw is None:
        return CreateData(job_id=job_id), None
    try:
        amount = _structure_decimal(raw, Decimal)
    except (TypeError, ValueError) as exc:
        return CreateData(job_id=job_id), f"unreadable amount: {exc}"
    if amount < 0:
        return CreateData(job_id=job_id), f"negative amount: {amount}"
    return CreateData(job_id=job_id, amount=amount), None


def structure_answer(data: object, cls: type[Any], *, what: str, status: int | None = None) -> Any:
    """Structure the ``data`` of an answer into ``cls``, or raise one readable error.

    Raises:
        MalformedResponseError: listing every path that could not be read.
    """
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # every structuring failure becomes one SDK error
        if isinstance(exc, (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError)):
            paths = cattrs.transform_error(exc, path="data")
        else:
            paths = [f"data: {exc}"]
        raise MalformedResponseError(
            f"malformed {what} answer: " + "; ".join(paths),
            status=status,
            body=snippet(repr(data)),
            paths=paths,
        ) from exc


def _result_urls(result: object) -> tuple[str, ...]:
    """Find the result URLs: ``videos``, then ``images``, then ``url`` or ``video_url``."""
    if isinstance(result, str):
        return (result,) if result else ()
    if type(result) is not dict and not isinstance(result, Mapping):
        return ()
    for key in ("videos", "images"):
        items = result.get(key)
        if isinstance(items, list) and items:
            urls = tuple([u for u in map(_item_url, items) if u])
            if urls:
                return urls
    for key in ("url", "video_url"):
        value = result.get(key)
        if isinstance(value, str) and value:
            return (value,)
    return ()


def _item_url(item: object) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        url = item.get("url")
        if isinstance(url, str):
            return url
    return None


# Fields an answer may carry that say nothing about whether the job is done or where its video is:
# one the SDK cannot read is dropped, never allowed to fail the answer (and with it a paid job).
_EXTRA_QUERY_FIELDS: Final[tuple[tuple[str, Any], ...]] = (
    ("refunded", bool),
    ("credit", Decimal),
    ("model", str),
    ("args", dict[str, Any]),
    ("key_name", str),
    ("created_at", str),
    ("updated_at", str),
    ("finished_at", str),
)


def _without_unreadable_extras(data: object) -> object:
    """Return ``data`` with the extra fields it cannot be read with set to None."""
    if not isinstance(data, Mapping):
        return data
    cleaned = dict(data)
    for name, cls in _EXTRA_QUERY_FIELDS:
        value = cleaned.get(name)
        if value is None:
            continue
        try:
            converter.structure(value, cls)
        except Exception:  # any unreadable value is merely dropped
            logger.debug("ignoring the unreadable field %r of an answer: %.60r", name, value)
            cleaned[name] = None
    return cleaned


def snapshot_from_data(data: object, *, job_id: str | None = None) -> JobSnapshot:
    """Read the ``data`` of a query answer into a :class:`JobSnapshot`.

    ``job_id`` is the id that was asked for; it is used when the answer does not echo one.

    Raises:
        MalformedResponseError: ``status`` is missing or not a number, or no job id is known.
    """
    # The plain reader's fields for a well-formed answer (no QueryData made), else the converter's.
    fields = _plain_fields(data)
    if fields is None:
        read = structure_answer(_without_unreadable_extras(data), QueryData, what="query")
        fields = attrs.asdict(read, recurse=False)
    ident = fields["id"] or job_id
    if not ident:
        raise MalformedResponseError("query answer names no job id", body=snippet(repr(data)))
    return _snapshot(fields, ident)
