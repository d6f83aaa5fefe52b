"""Every argument rule of the model, checked locally before anything is sent."""

from __future__ import annotations

import base64
import io
import itertools
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shortwan import ImageToVideo, InvalidRequestError, JobSnapshot, JobStatus
from shortwan._convert import request_args, request_from_args
from shortwan.testing._rules import check_create

URL = "https://example.com/a.png"
AUDIO = "https://example.com/a.mp3"
CLIP = "https://example.com/c.mp4"
# A real image that keeps every image rule: the fake checks the bytes of data URIs.
_PNG = io.BytesIO()
Image.new("RGB", (320, 240), (200, 80, 40)).save(_PNG, "PNG")
PNG_URI = "data:image/png;base64," + base64.b64encode(_PNG.getvalue()).decode()
MEDIA = ("first_frame_image", "last_frame_image", "driving_audio_url", "first_clip_video_url")
VALUES = {
    "first_frame_image": URL,
    "last_frame_image": URL,
    "driving_audio_url": AUDIO,
    "first_clip_video_url": CLIP,
}
ACCEPTED = {
    frozenset({"first_frame_image"}),
    frozenset({"first_frame_image", "driving_audio_url"}),
    frozenset({"first_frame_image", "last_frame_image"}),
    frozenset({"first_frame_image", "last_frame_image", "driving_audio_url"}),
    frozenset({"first_clip_video_url"}),
    frozenset({"first_clip_video_url", "last_frame_image"}),
}


def problems(**args: Any) -> tuple[str, ...]:
    """Return the problems ImageToVideo finds in ``args`` (empty when it is valid)."""
    if not any(name in args for name in MEDIA):
        args["first_frame_image"] = URL
    try:
        ImageToVideo(**args)
    except InvalidRequestError as exc:
        return exc.problems
    return ()


class TestTextRules:
    @pytest.mark.parametrize(("length", "ok"), [(0, True), (5000, True), (5001, False)])
    def test_prompt_length(self, length: int, ok: bool) -> None:
        """A prompt may have 5000 characters, not 5001."""
        assert (problems(prompt="x" * length) == ()) is ok

    @pytest.mark.parametrize(("length", "ok"), [(500, True), (501, False)])
    def test_negative_prompt_length(self, length: int, ok: bool) -> None:
        """A negative prompt may have 500 characters, not 501."""
        assert (problems(negative_prompt="x" * length) == ()) is ok

    def test_chinese_prompt_counts_characters(self) -> None:
        """The limit counts characters, so 5000 Chinese characters pass."""
        assert problems(prompt="狐" * 5000) == ()

    @pytest.mark.parametrize("value", [5, b"bytes", ["a"]])
    def test_prompt_must_be_text(self, value: object) -> None:
        """A prompt that is not a string is refused by name."""
        assert any("prompt must be a string" in p for p in problems(prompt=value))


class TestResolutionAndDuration:
    @pytest.mark.parametrize("value", ["720p", "1080p"])
    def test_resolutions_accepted(self, value: str) -> None:
        """Both documented resolutions are accepted."""
        assert problems(resolution=value) == ()

    @pytest.mark.parametrize("value", ["1080P", "4k", "480p", "", None, 1080])
    def test_other_resolutions_refused(self, value: object) -> None:
        """Anything but exactly '720p' or '1080p' is refused."""
        assert any("resolution" in p for p in problems(resolution=value))

    @pytest.mark.parametrize("value", [2, 5, 15])
    def test_durations_in_range(self, value: int) -> None:
        """2 to 15 whole seconds are accepted."""
        assert problems(duration=value) == ()

    @pytest.mark.parametrize("value", [1, 16, 0, -3, 2.0, 5.5, True, False, "5", None])
    def test_durations_refused(self, value: object) -> None:
        """Out of range, fractional, boolean and text durations are refused."""
        assert any("duration" in p for p in problems(duration=value))

    @pytest.mark.parametrize("value", [1, 0, "true", None])
    def test_prompt_extend_must_be_bool(self, value: object) -> None:
        """prompt_extend accepts only True or False."""
        assert any("prompt_extend" in p for p in problems(prompt_extend=value))

    def test_cost_is_exact_decimal(self) -> None:
        """The estimate is 0.085 × duration as an exact Decimal."""
        assert ImageToVideo(first_frame_image=URL, duration=7).estimated_cost == Decimal("0.595")


class TestMediaRules:
    @pytest.mark.parametrize("field", MEDIA)
    @pytest.mark.parametrize(
        "value",
        [
            "ftp://example.com/a",
            "file:///etc/passwd",
            "https://",
            "example.com/a.png",
            "https://exa mple.com/a.png",
            "",
        ],
    )
    def test_bad_urls_refused(self, field: str, value: str) -> None:
        """Every media argument needs an http(s) URL with a host and no white space."""
        args = dict.fromkeys(MEDIA)
        args["first_frame_image"] = None
        args[field] = value
        if field == "last_frame_image":
            args["first_frame_image"] = URL
        if field == "driving_audio_url":
            args["first_frame_image"] = URL
        found = problems(**{k: v for k, v in args.items() if v is not None})
        assert any(field in p for p in found)

    @pytest.mark.parametrize("field", ["first_frame_image", "last_frame_image"])
    def test_image_data_uri_accepted_for_frames(self, field: str) -> None:
        """Frame images may be image data URIs."""
        assert problems(**{"first_frame_image": URL, field: PNG_URI}) == ()

    @pytest.mark.parametrize("field", ["driving_audio_url", "first_clip_video_url"])
    def test_data_uri_refused_for_audio_and_clip(self, field: str) -> None:
        """Audio and clip must be URLs; a data URI is refused."""
        args = {"first_frame_image": None, field: PNG_URI}
        if field == "driving_audio_url":
            args["first_frame_image"] = URL
        found = problems(**{k: v for k, v in args.items() if v is not None})
        assert any(field in p for p in found)

    @pytest.mark.parametrize(
        "uri",
        [
            "data:image/gif;base64,R0lGODlh",
            "data:image/png;base64,",
            "data:image/png;base64,@@not base64@@",
            "data:text/plain;base64,aGk=",
            "data:image/png,raw",
        ],
    )
    def test_bad_data_uris_refused(self, uri: str) -> None:
        """GIF, empty, non-base64 and non-image data URIs are refused."""
        assert any("first_frame_image" in p for p in problems(first_frame_image=uri))

    def test_oversized_data_uri_refused_without_decoding(self) -> None:
        """A data URI over 20,000,000 decoded bytes is refused, naming the limit."""
        payload = "A" * (20_000_004 * 4 // 3 + 8)
        found = problems(first_frame_image="data:image/png;base64," + payload)
        assert any("20,000,000" in p for p in found)

    @pytest.mark.parametrize(
        "subset",
        [frozenset(c) for n in range(5) for c in itertools.combinations(MEDIA, n)],
        ids=lambda s: "+".join(sorted(s)) or "none",
    )
    def test_all_sixteen_combinations(self, subset: frozenset[str]) -> None:
        """Exactly the six documented media combinations are accepted."""
        if subset in ACCEPTED:
            ImageToVideo(**{k: VALUES[k] for k in subset})
        else:
            with pytest.raises(InvalidRequestError) as info:
                ImageToVideo(**{k: VALUES[k] for k in subset})
            assert any("accepted:" in p for p in info.value.problems)

    def test_every_problem_listed_at_once(self) -> None:
        """One error lists all problems, and it is a ValueError."""
        with pytest.raises(InvalidRequestError) as info:
            ImageToVideo(  # type: ignore[arg-type]
                prompt="x" * 6000, resolution="4k", duration=1, last_frame_image="ftp://x"
            )
        assert len(info.value.problems) >= 4
        assert isinstance(info.value, ValueError)
        assert str(len(info.value.problems)) in str(info.value)

    def test_requests_are_frozen(self) -> None:
        """A built request cannot be changed behind its validation."""
        request = ImageToVideo(first_frame_image=URL)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            request.duration = 99  # type: ignore[misc]


class TestWireArgs:
    def test_unset_optional_args_are_omitted(self) -> None:
        """Unset optional arguments are left out of the body, never sent as null."""
        args = request_args(ImageToVideo(first_frame_image=URL))
        assert args == {
            "first_frame_image": URL,
            "resolution": "1080p",
            "duration": 5,
            "prompt_extend": False,
        }

    def test_unknown_argument_refused_with_the_rest(self) -> None:
        """Argument mappings with unknown keys are refused, listing every problem."""
        with pytest.raises(InvalidRequestError) as info:
            request_from_args({"prompt": "x", "sped": 2, "duration": 40})
        text = "\n".join(info.value.problems)
        assert "sped" in text
        assert "duration" in text


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([URL, AUDIO, CLIP, PNG_URI, "720p", "1080p", "ftp://x"]),
    st.lists(st.integers(), max_size=2),
)
arg_names = st.sampled_from(
    [
        "prompt",
        "negative_prompt",
        "resolution",
        "duration",
        "prompt_extend",
        *MEDIA,
        "unknown",
    ]
)


class TestProperties:
    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(arg_names, json_values, max_size=8))
    def test_any_mapping_is_a_request_or_invalid(self, args: dict[str, Any]) -> None:
        """Any mapping of arguments gives a valid request or InvalidRequestError, nothing else."""
        try:
            request = request_from_args(args)
        except InvalidRequestError:
            return
        assert request_from_args(request_args(request)) == request

    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(arg_names, json_values, max_size=8))
    def test_client_and_fake_server_agree(self, args: dict[str, Any]) -> None:
        """What the client accepts the fake server accepts too, and the other way round."""
        try:
            request = request_from_args(args)
        except InvalidRequestError:
            client_ok = False
        else:
            client_ok = True
            args = request_args(request)
        server_problems, _ = check_create({"model": ImageToVideo.model, "args": args})
        assert client_ok == (not server_problems), server_problems


class TestStatusAndSnapshot:
    @pytest.mark.parametrize("raw", [-1, 4, 7, 99])
    def test_unknown_numbers_are_unknown(self, raw: int) -> None:
        """A status number without a member becomes UNKNOWN."""
        assert JobStatus.from_raw(raw) is JobStatus.UNKNOWN

    @pytest.mark.parametrize(
        ("raw", "terminal", "failed", "succeeded"),
        [
            (0, False, False, False),
            (1, False, False, False),
            (2, True, False, True),
            (3, True, True, False),
            (7, True, True, False),
        ],
    )
    def test_terminal_and_failed(
        self, raw: int, terminal: bool, failed: bool, succeeded: bool
    ) -> None:
        """2 ends well; 3 and above end in failure; 0 and 1 are still going."""
        snap = JobSnapshot(id="j", status=JobStatus.from_raw(raw), raw_status=raw, urls=("u",))
        assert (snap.is_terminal, snap.failed, snap.succeeded) == (terminal, failed, succeeded)
        assert (snap.video is not None) is succeeded

    def test_video_needs_a_url(self) -> None:
        """A success without URLs has no video."""
        snap = JobSnapshot(id="j", status=JobStatus.SUCCEEDED, raw_status=2)
        assert snap.video is None

    @pytest.mark.parametrize(
        ("raw", "parsed"),
        [
            ("2026-01-02T03:04:05Z", True),
            ("2026-01-02T03:04:05.123+08:00", True),
            ("yesterday", False),
            ("", False),
            (None, False),
        ],
    )
    def test_timestamps_parse_when_iso(self, raw: str | None, parsed: bool) -> None:
        """ISO-8601 timestamps parse; anything else is kept raw and parses to None."""
        snap = JobSnapshot(
            id="j", status=JobStatus.QUEUED, raw_status=0, created_at=raw, finished_at=raw
        )
        assert (snap.created is not None) is parsed
        assert (snap.finished is not None) is parsed
        assert snap.created_at == raw
