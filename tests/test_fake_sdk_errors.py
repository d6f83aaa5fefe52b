"""The SDK against the fake's refusals in both error transports: typed errors, no job, no retry."""

from __future__ import annotations

import base64
import io
from decimal import Decimal
from typing import Literal

import pytest
from helpers import client_for, req
from PIL import Image

from shortwan import (
    MODEL_ID,
    APIError,
    AsyncShortWan,
    AuthenticationError,
    BadRequestError,
    ImageToVideo,
    InsufficientBalanceError,
    InvalidRequestError,
)
from shortwan.testing import ErrorCodes, FakeShortAPI

Transport = Literal["envelope", "http"]


def clear_png_uri() -> str:
    """A data URI of a fully transparent PNG, which the service's rules refuse."""
    buffer = io.BytesIO()
    Image.new("RGBA", (320, 240), (0, 0, 0, 0)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class TestRefusalsInEachTransport:
    @pytest.mark.parametrize(
        ("transport", "codes", "error", "status", "code"),
        [
            ("http", ErrorCodes(), AuthenticationError, 401, 401),
            ("envelope", ErrorCodes(), APIError, 200, 401),
            ("envelope", ErrorCodes(unauthorized=40123), APIError, 200, 40123),
        ],
        ids=["http", "envelope", "envelope-unknown-code"],
    )
    @pytest.mark.anyio
    async def test_wrong_key(
        self, transport: Transport, codes: ErrorCodes, error: type[APIError], status: int, code: int
    ) -> None:
        """A wrong key: AuthenticationError over HTTP 401; in the envelope a plain APIError that
        keeps the code, even one the SDK has never heard of. Sent once, no job."""
        async with (
            FakeShortAPI(run_time=0, error_transport=transport, error_codes=codes) as fake,
            AsyncShortWan("ak-wrong", base_url=fake.url) as client,
        ):
            with pytest.raises(APIError) as info:
                await client.submit(req())
        assert type(info.value) is error
        assert (info.value.status, info.value.code) == (status, code)
        assert "invalid api key" in str(info.value)
        assert (fake.stats.creates_received, fake.stats.jobs_created) == (1, 0)

    @pytest.mark.parametrize(
        ("transport", "error"), [("http", InsufficientBalanceError), ("envelope", APIError)]
    )
    @pytest.mark.anyio
    async def test_low_balance(self, transport: Transport, error: type[APIError]) -> None:
        """A create the balance cannot pay is refused in either transport; no job, no retry."""
        async with (
            FakeShortAPI(run_time=0, balance=Decimal("0.1"), error_transport=transport) as fake,
            client_for(fake) as client,
        ):
            with pytest.raises(APIError) as info:
                await client.submit(req())
        assert type(info.value) is error
        assert info.value.code == 402
        assert (fake.stats.creates_received, fake.stats.jobs_created) == (1, 0)

    @pytest.mark.parametrize(
        ("transport", "error"), [("http", BadRequestError), ("envelope", APIError)]
    )
    @pytest.mark.anyio
    async def test_image_the_rules_refuse(
        self, transport: Transport, error: type[APIError]
    ) -> None:
        """A transparent PNG data URI sent past the request model reaches the fake, which refuses
        it naming the rule; the transport maps the refusal in either style."""
        args = {"prompt": "clear", "first_frame_image": clear_png_uri()}
        async with (
            FakeShortAPI(run_time=0, error_transport=transport) as fake,
            client_for(fake) as client,
        ):
            with pytest.raises(APIError) as info:
                await client._transport.create(MODEL_ID, args)
        assert type(info.value) is error
        assert info.value.code == 400
        assert "transparency" in str(info.value)
        assert (fake.stats.creates_received, fake.stats.jobs_created) == (1, 0)

    @pytest.mark.anyio
    async def test_the_sdk_refuses_that_image_before_sending(self) -> None:
        """The same image in a batch line is refused by the SDK, naming the rule: nothing sent."""
        line = {"prompt": "clear", "first_frame_image": clear_png_uri()}
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            (outcome,) = await client.gather([line])
        assert isinstance(outcome.error, InvalidRequestError)
        assert "transparent" in str(outcome.error)
        assert fake.stats.creates_received == 0
        with pytest.raises(InvalidRequestError, match="transparent"):
            ImageToVideo(**line)

    @pytest.mark.parametrize("transport", ["envelope", "http"])
    @pytest.mark.anyio
    async def test_unknown_job(self, transport: Transport) -> None:
        """Querying an unknown id is an APIError with code 1 naming the job, in both."""
        async with (
            FakeShortAPI(run_time=0, error_transport=transport) as fake,
            client_for(fake) as client,
        ):
            with pytest.raises(APIError) as info:
                await client.get_job("ffffffffffffffffffffffff")
        assert type(info.value) is APIError
        assert (info.value.status, info.value.code) == (200, 1)
        assert info.value.job_id == "ffffffffffffffffffffffff"
