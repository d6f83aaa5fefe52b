"""Reading the service's answers: lenient about extras, strict about what matters."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shortwan import JobStatus, MalformedResponseError, ShortWanError
from shortwan._convert import CreateData, snapshot_from_data, structure_answer

URL = "https://cdn.example.com/v.mp4"


class TestSnapshots:
    @pytest.mark.parametrize(
        "result",
        [
            {"videos": [{"url": URL}]},
            {"images": [{"url": URL}]},
            {"url": URL},
            {"video_url": URL},
            {"videos": [URL]},
            {"videos": [], "images": [{"url": URL}]},
        ],
    )
    def test_every_result_shape(self, result: dict[str, Any]) -> None:
        """videos, then images, then a bare url or video_url all give the URL."""
        snap = snapshot_from_data({"id": "j", "status": 2, "result": result})
        assert snap.urls == (URL,)
        assert snap.video is not None

    def test_extra_and_missing_fields(self) -> None:
        """Unknown keys are ignored and only the status is required."""
        snap = snapshot_from_data({"status": 1, "progress": 0.5, "shiny": {"x": 1}}, job_id="j")
        assert snap.status is JobStatus.RUNNING
        assert snap.id == "j"
        assert snap.error is None

    def test_lenient_scalars(self) -> None:
        """A status as text, credit as a number and refunded as text are read correctly."""
        snap = snapshot_from_data(
            {"id": "j", "status": "3", "credit": 0.425, "refunded": "false", "error": "boom"}
        )
        assert snap.raw_status == 3
        assert snap.credit == Decimal("0.425")
        assert snap.refunded is False
        assert snap.error == "boom"

    @pytest.mark.parametrize(
        "extra",
        [
            {"args": '{"prompt": "x"}'},
            {"model": {"name": "wan"}},
            {"created_at": {"t": 1}},
            {"refunded": "yes"},
            {"credit": "NaN"},
            {"key_name": ["k"]},
        ],
    )
    def test_an_unreadable_extra_never_fails_a_finished_job(self, extra: dict[str, Any]) -> None:
        """Fields that only describe the job are dropped when odd; the video still counts."""
        snap = snapshot_from_data({"id": "j", "status": 2, "result": {"url": URL}, **extra})
        assert snap.video is not None
        assert snap.video.url == URL
        (name,) = extra
        assert getattr(snap, name) is None

    @pytest.mark.parametrize("status", [None, "abc", True, 1.5, [2]])
    def test_bad_status_names_the_path(self, status: object) -> None:
        """A missing or unreadable status is a MalformedResponseError naming data.status."""
        with pytest.raises(MalformedResponseError) as info:
            snapshot_from_data({"id": "j", "status": status} if status is not None else {"id": "j"})
        assert any("data.status" in path for path in info.value.paths)

    def test_no_job_id_anywhere(self) -> None:
        """An answer that names no job and was asked about none is malformed."""
        with pytest.raises(MalformedResponseError):
            snapshot_from_data({"status": 2})


class TestCreateData:
    def test_amount_is_decimal(self) -> None:
        """The amount string becomes an exact Decimal."""
        data = structure_answer({"job_id": "abc", "amount": "0.425"}, CreateData, what="create")
        assert data == CreateData(job_id="abc", amount=Decimal("0.425"))

    @pytest.mark.parametrize("amount", ["NaN", "Infinity", "lots", True, {"usd": 1}])
    def test_bad_amounts_refused(self, amount: object) -> None:
        """Non-finite, textual, boolean and object amounts are malformed answers."""
        with pytest.raises(MalformedResponseError) as info:
            structure_answer({"job_id": "abc", "amount": amount}, CreateData, what="create")
        assert any("amount" in path for path in info.value.paths)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "status",
                    "id",
                    "result",
                    "videos",
                    "url",
                    "credit",
                    "refunded",
                    "error",
                    "job_id",
                    "amount",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


class TestFuzz:
    @settings(max_examples=500, deadline=None)
    @given(json_values)
    def test_query_answers_never_crash(self, value: object) -> None:
        """Any JSON as query data gives a snapshot or a shortwan error, nothing else."""
        with contextlib.suppress(ShortWanError):
            snapshot_from_data(value, job_id="j")

    @settings(max_examples=500, deadline=None)
    @given(json_values)
    def test_create_answers_never_crash(self, value: object) -> None:
        """Any JSON as create data gives CreateData or a shortwan error, nothing else."""
        with contextlib.suppress(ShortWanError):
            structure_answer(value, CreateData, what="create")

    @settings(max_examples=500, deadline=None)
    @given(json_values)
    def test_fast_path_agrees_with_converter(self, value: object) -> None:
        """Where the plain reader accepts an answer, the converter reads it the same way."""
        from shortwan._convert import QueryData, _plain_fields

        fast = _plain_fields(value)
        if fast is not None:
            read = QueryData(**fast)
            converted = structure_answer(value, QueryData, what="query")
            # NaN (which the stdlib reader accepts) is never equal to itself: then the two
            # readings must at least print the same.
            assert read == converted or repr(read) == repr(converted)
