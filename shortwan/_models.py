"""The models: requests, jobs, snapshots and videos. JSON is ``_convert``'s business."""

from __future__ import annotations

import base64
import binascii
import enum
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol
from urllib.parse import urlsplit

import attrs

from ._errors import InvalidRequestError, ShortWanError
from ._media import data_image_problem, image_input_or_problem, oversize_problem
from ._spec import (
    ACCEPTED_COMBINATIONS,
    DEFAULT_DURATION,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_RESOLUTION,
    IMAGE_MEDIA_TYPES,
    MAX_DURATION,
    MAX_IMAGE_BYTES,
    MAX_NEGATIVE_PROMPT,
    MAX_PROMPT,
    MEDIA_FIELDS,
    MIN_DURATION,
    MODEL_ID,
    RESOLUTIONS,
    Resolution,
    estimated_cost,
)

__all__ = [
    "BatchItem",
    "ImageToVideo",
    "Job",
    "JobSnapshot",
    "JobStatus",
    "Outcome",
    "Video",
]

MAX_JOB_ID: Final = 256

_SPACE = re.compile(r"\s")
_DATA_URI = re.compile(r"data:(?P<type>image/[a-z0-9.+-]+);base64,(?P<payload>.*)", re.DOTALL)


def _url_problem(name: str, value: str) -> str | None:
    """Return why ``value`` is not a usable http(s) URL, or None."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"{name} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{name} must be an http:// or https:// URL, got scheme {parts.scheme or '(none)'!r}"
    if not parts.hostname:
        return f"{name} must name a host: {value[:80]!r}"
    if _SPACE.search(value):
        return f"{name} must not contain white space"
    return None


def _image_problem(name: str, value: str) -> str | None:
    """Return why ``value`` is neither an image URL nor an image data URI, or None."""
    if not value.startswith("data:"):
        return _url_problem(name, value)
    match = _DATA_URI.fullmatch(value)
    if match is None:
        return f"{name}: a data URI must look like 'data:image/<type>;base64,<data>'"
    if match["type"] not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(IMAGE_MEDIA_TYPES)
        return f"{name}: image type {match['type']!r} is not accepted (allowed: {allowed})"
    payload = match["payload"]
    if not payload:
        return f"{name}: the data URI holds no data"
    # Decoded size from the encoded length, so a 27 MB string is not decoded just to be measured.
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > MAX_IMAGE_BYTES:
        return oversize_problem(name, size)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return f"{name}: the data URI is not valid base64"
    return data_image_problem(data, name)


def _optional_str(name: str, value: object, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{name} must be a string, got {type(value).__name__}")
        return None
    return value


@attrs.frozen(kw_only=True)
class ImageToVideo:
    """A request to ``alibaba/wan-2.7/image-to-video``.

    One or more images (and optionally audio or a clip) become a 720p or 1080p video of 2 to 15 s.

    Every documented rule is checked when the request is built; a request that breaks any raises
    :class:`~shortwan.InvalidRequestError` listing all of them, so nothing is sent or spent for it.

    Accepted media combinations:

    - ``first_frame_image``, optionally with ``driving_audio_url``;
    - ``first_frame_image`` + ``last_frame_image``, optionally with ``driving_audio_url``;
    - ``first_clip_video_url``, optionally with ``last_frame_image``.

    Attributes:
        prompt: what should happen, at most 5000 characters (Chinese or English).
        negative_prompt: what should not, at most 500 characters.
        resolution: ``"720p"`` or ``"1080p"``.
        duration: whole seconds, 2 to 15; the price is $0.085 a second.
        prompt_extend: let the service rewrite the prompt.
        first_frame_image: http(s) URL or ``data:image/...;base64,`` URI (see
            :func:`shortwan.image_input` for local files).
        last_frame_image: same forms as ``first_frame_image``.
        driving_audio_url: http(s) URL of a WAV or MP3, 2 to 30 s, at most 15 MB.
        first_clip_video_url: http(s) URL of an MP4 or MOV, 2 to 10 s, at most 100 MB.
    """

    model: ClassVar[str] = MODEL_ID

    prompt: str | None = None
    negative_prompt: str | None = None
    resolution: Resolution = DEFAULT_RESOLUTION
    duration: int = DEFAULT_DURATION
    prompt_extend: bool = False
    first_frame_image: str | None = None
    last_frame_image: str | None = None
    driving_audio_url: str | None = None
    first_clip_video_url: str | None = None

    def __attrs_post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise InvalidRequestError(problems)

    def _problems(self) -> list[str]:
        problems: list[str] = []
        prompt = _optional_str("prompt", self.prompt, problems)
        if prompt is not None and len(prompt) > MAX_PROMPT:
            problems.append(f"prompt is {len(prompt)} characters, the limit is {MAX_PROMPT}")
        negative = _optional_str("negative_prompt", self.negative_prompt, problems)
        if negative is not None and len(negative) > MAX_NEGATIVE_PROMPT:
            problems.append(
                f"negative_prompt is {len(negative)} characters, the limit is {MAX_NEGATIVE_PROMPT}"
            )
        if self.resolution not in RESOLUTIONS:
            allowed = " or ".join(repr(r) for r in RESOLUTIONS)
            problems.append(f"resolution must be {allowed}, got {self.resolution!r}")
        duration = self.duration
        if isinstance(duration, bool) or not isinstance(duration, int):
            problems.append(f"duration must be a whole number of seconds, got {duration!r}")
        elif not MIN_DURATION <= duration <= MAX_DURATION:
            problems.append(
                f"duration must be {MIN_DURATION} to {MAX_DURATION} seconds, got {duration}"
            )
        extend: object = self.prompt_extend
        if not isinstance(extend, bool):
            problems.append(f"prompt_extend must be true or false, got {extend!r}")

        present: set[str] = set()
        for name in MEDIA_FIELDS:
            value = _optional_str(name, getattr(self, name), problems)
            if value is None:
                continue
            present.add(name)
            if name.endswith("_image"):
                problem = _image_problem(name, value)
            else:
                problem = _url_problem(name, value)
            if problem is not None:
                problems.append(problem)
        if present and frozenset(present) not in ACCEPTED_COMBINATIONS:
            given = " + ".join(n for n in MEDIA_FIELDS if n in present)
            problems.append(f"{given} is not an accepted input combination; {_COMBINATIONS_TEXT}")
        elif not present:
            problems.append(f"no input media given; {_COMBINATIONS_TEXT}")
        return problems

    @property
    def estimated_cost(self) -> Decimal:
        """Return what the service will charge for this request, in USD."""
        return estimated_cost(self.duration)

    @classmethod
    def from_files(
        cls,
        *,
        first_frame_image: str | os.PathLike[str] | bytes | None = None,
        last_frame_image: str | os.PathLike[str] | bytes | None = None,
        **args: Any,
    ) -> ImageToVideo:
        """Build a request whose frame images may be local files, checked and encoded here.

        A ``str`` that starts with ``http://``, ``https://`` or ``data:`` is kept as it is; any
        other ``str``, a path or ``bytes`` is read, checked against the documented image rules and
        encoded as a data URI (this needs the ``media`` extra:
        ``pip install 'shortwan[media]'``). Reading is blocking file work: in async code call it
        through ``anyio.to_thread.run_sync``.

        Raises:
            InvalidRequestError: listing every broken rule, of the images and of the other args.
        """
        problems: list[str] = []
        frames: dict[str, Any] = {}
        for name, source in (
            ("first_frame_image", first_frame_image),
            ("last_frame_image", last_frame_image),
        ):
            frames[name], problem = image_input_or_problem(source, name=name)
            if problem is not None:
                problems.append(problem)
                # Stand in a valid URL so the other arguments are still checked and reported.
                frames[name] = "https://image.invalid/unusable"
        try:
            request = cls(**frames, **args)
        except InvalidRequestError as exc:
            problems.extend(exc.problems)
        if problems:
            raise InvalidRequestError(problems)
        return request


_COMBINATIONS_TEXT: Final = "accepted: " + "; ".join(
    " + ".join(n for n in MEDIA_FIELDS if n in combo) for combo in ACCEPTED_COMBINATIONS
)


class JobStatus(enum.IntEnum):
    """The state of a job as the service reports it.

    A number the SDK does not know becomes ``UNKNOWN``; the raw number is kept on
    :attr:`JobSnapshot.raw_status`. Numbers 3 and above all mean a terminal failure.
    """

    UNKNOWN = -1
    QUEUED = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3

    @classmethod
    def _missing_(cls, value: object) -> JobStatus:
        return cls.UNKNOWN

    @classmethod
    def from_raw(cls, raw: int) -> JobStatus:
        """Map a raw status number to a member, ``UNKNOWN`` for numbers without one."""
        return _STATUS_BY_RAW.get(raw, JobStatus.UNKNOWN)


# A dict lookup: calling the enum class costs several times more, once per query answer.
_STATUS_BY_RAW: Final[dict[int, JobStatus]] = {member.value: member for member in JobStatus}


def is_terminal(raw_status: int) -> bool:
    """Return whether a raw status number means the job has ended."""
    return raw_status >= JobStatus.SUCCEEDED


def parse_timestamp(raw: str | None) -> datetime | None:
    """Parse an ISO-8601 timestamp, or return None when ``raw`` is not one."""
    if not raw:
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class Video:
    """A finished video.

    Attributes:
        job_id: the job that made it.
        url: the first result URL; it expires about 24 hours after the job ends.
        urls: every result URL the service returned.
        credit: what the job was charged, when the service said.
    """

    job_id: str
    url: str
    urls: tuple[str, ...] = ()
    credit: Decimal | None = None


@attrs.frozen(kw_only=True)
class JobSnapshot:
    """What one query said about a job.

    Attributes:
        id: the job id.
        status: the status, ``UNKNOWN`` for a number the SDK does not know.
        raw_status: the number the service sent.
        urls: result URLs, on success.
        error: the failure reason, on failure.
        refunded: whether a failed job's charge was returned.
        credit: what the job was charged.
        model: the model id echoed by the service.
        args: the request arguments echoed by the service.
        created_at: the raw creation timestamp; :attr:`created` parses it.
        updated_at: the raw timestamp of the last change.
        finished_at: the raw end timestamp; :attr:`finished` parses it.
    """

    id: str
    status: JobStatus
    raw_status: int
    urls: tuple[str, ...] = ()
    error: str | None = None
    refunded: bool | None = None
    credit: Decimal | None = None
    model: str | None = None
    args: Mapping[str, Any] | None = None
    key_name: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended, successfully or not."""
        return is_terminal(self.raw_status)

    @property
    def succeeded(self) -> bool:
        """Whether the job ended with a video."""
        return self.raw_status == JobStatus.SUCCEEDED

    @property
    def failed(self) -> bool:
        """Whether the job ended in failure (status 3, or any number above it)."""
        return self.raw_status >= JobStatus.FAILED

    @property
    def video(self) -> Video | None:
        """Return the video of a succeeded job that returned at least one URL, else None."""
        if not self.succeeded or not self.urls:
            return None
        return Video(job_id=self.id, url=self.urls[0], urls=self.urls, credit=self.credit)

    @property
    def created(self) -> datetime | None:
        """The creation time, when the service sent an ISO-8601 timestamp."""
        return parse_timestamp(self.created_at)

    @property
    def finished(self) -> datetime | None:
        """The end time, when the service sent an ISO-8601 timestamp."""
        return parse_timestamp(self.finished_at)


class _Tracker(Protocol):
    """What a :class:`Job` asks about itself: the client that tracks it."""

    def status_of(self, job_id: str) -> JobStatus: ...

    async def wait_for(self, job_id: str, timeout: float | None) -> Video: ...


@attrs.define(kw_only=True, eq=False)
class Job:
    """A job the service created: it has an id and it was charged.

    Attributes:
        id: the job id; every later call works from it alone, in any process.
        amount: what the create was charged, in USD (``None`` for a job attached by id).
        request: the request it was created from, when this client sent it.
    """

    id: str
    amount: Decimal | None
    request: ImageToVideo | None = None
    _tracker: _Tracker | None = attrs.field(default=None, repr=False, alias="tracker")

    @property
    def status(self) -> JobStatus:
        """The last status the client saw (``QUEUED`` before the first query, ``UNKNOWN`` once
        the client no longer keeps the job: see ``max_finished_jobs``)."""
        if self._tracker is None:
            return JobStatus.QUEUED
        return self._tracker.status_of(self.id)

    async def result(self, timeout: float | None = DEFAULT_JOB_TIMEOUT) -> Video:
        """Wait for the job to end and return its video.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes. The job is not touched
                when the wait times out: it keeps running remotely and can be awaited again.

        Raises:
            JobFailedError: the job ended in failure.
            JobTimeoutError: ``timeout`` passed first (the error names the job and its last status).
            JobDetachedError: the client was closed while waiting.
        """
        seconds = check_timeout(timeout)
        if self._tracker is None:
            raise RuntimeError(
                f"job {self.id} is not tracked by a client; use client.attach({self.id!r})"
            )
        return await self._tracker.wait_for(self.id, seconds)


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """Return ``timeout`` as seconds (``None``: no limit), or raise InvalidRequestError.

    Checked before anything is sent: a NaN, a negative number or a string would otherwise pay for
    a job and then fail the wait.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidRequestError([f"{what} must be a number of seconds or None, got {timeout!r}"])
    if math.isnan(timeout) or timeout < 0:
        raise InvalidRequestError([f"{what} must be >= 0 seconds or None, got {timeout!r}"])
    return None if math.isinf(timeout) else float(timeout)


def job_id_problem(job_id: object) -> str | None:
    """Return why ``job_id`` cannot be a job id, or ``None`` when it can."""
    if not isinstance(job_id, str) or not job_id.strip():
        return f"a job id must be a non-empty string, got {str(job_id)[:40]!r}"
    # Separators other than the ASCII space are not printable, so this refuses all white space.
    if len(job_id) > MAX_JOB_ID or not job_id.isprintable() or " " in job_id:
        return f"not a job id: {job_id[:40]!r}"
    return None


@attrs.frozen(kw_only=True)
class BatchItem:
    """One request of a batch with the name it goes by and, optionally, where its video goes.

    Plain :class:`ImageToVideo` objects and argument mappings are accepted by ``generate_many``
    too; a mapping may carry ``key`` and ``output`` next to the model's arguments (the shape of a
    JSONL line).

    Attributes:
        request: the request, or its arguments.
        key: a name unique within the batch; a journal files the request under it. Without one, a
            hash of the request is used.
        output: the file name (relative to the batch's download folder) for the video.
    """

    request: ImageToVideo | Mapping[str, Any]
    key: str | None = attrs.field(default=None)
    output: str | None = attrs.field(default=None)

    @output.validator
    def _check_output(self, _attribute: object, value: object) -> None:
        if value is not None and (
            not isinstance(value, str) or not value.strip() or "\x00" in value
        ):
            raise InvalidRequestError(
                [f"output must be a non-empty file name without NUL bytes, got {value!r}"]
            )

    @key.validator
    def _check_key(self, _attribute: object, value: object) -> None:
        if value is not None and (not isinstance(value, str) or not value or len(value) > 512):
            raise InvalidRequestError(
                [f"key must be a non-empty string of at most 512 characters, got {value!r}"]
            )
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: no journal could store it
                raise InvalidRequestError(
                    [f"key {value[:40]!r} is not valid Unicode text (a lone surrogate)"]
                ) from None


@attrs.frozen(kw_only=True)
class Outcome:
    """What became of one request of a batch: a video, or the error that stopped it.

    Attributes:
        index: the request's position in the input, from 0.
        request: the request, when it could be built.
        job_id: the job, when one was created (also on failures and timeouts: it was paid for).
        video: the video, when the job succeeded.
        error: why the request did not fully succeed; ``None`` on success. A failed download
            leaves ``video`` set and puts a :class:`DownloadError` here.
        amount: what the job was charged, when one was created.
        key: the request's key, when it has one or a journal is used.
        path: where the video was saved, when the batch downloads.
        replayed: whether this outcome comes from a journal (an earlier run) rather than this run.
    """

    index: int
    request: ImageToVideo | None = None
    job_id: str | None = None
    video: Video | None = None
    error: ShortWanError | None = None
    amount: Decimal | None = None
    key: str | None = None
    path: Path | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the request produced a video (and its file, when the batch downloads)."""
        return self.video is not None and self.error is None
