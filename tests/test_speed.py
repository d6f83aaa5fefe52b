"""The speed extra: orjson reads and writes exactly what the stdlib does, uvloop runs the command,
and the core works, importing neither, where they are not installed."""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from helpers import client_for, req, run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shortwan import ImageToVideo, _json
from shortwan._callback_wire import payload
from shortwan._http import decode_envelope
from shortwan._retry import AttemptFailed
from shortwan.callbacks import CallbackReceiver
from shortwan.cli._common import LOOP_ENV, backend_options
from shortwan.testing import FakeShortAPI

try:
    import uvloop  # noqa: F401 - only whether it is there
except ImportError:
    HAS_UVLOOP = False
else:
    HAS_UVLOOP = True

needs_orjson = pytest.mark.skipif(
    not _json.orjson_available(), reason="the speed extra (orjson) is not installed"
)
needs_uvloop = pytest.mark.skipif(
    not HAS_UVLOOP, reason="the speed extra (uvloop) is not installed"
)

DEEP = [100, 255, 256, 257, 300, 990, 1000, 1023, 1024, 1025, 5000]

# Bodies the service (or a proxy in front of it) could send that a JSON reader may take in more
# than one way: the two readers must agree on every one.
CORPUS: list[bytes] = [
    b'{"code":0,"data":{"job_id":"abc","amount":NaN}}',
    b'{"code":0,"data":{"status":2,"credit":Infinity}}',
    b'{"code":0,"data":{"status":-Infinity}}',
    b'{"code":0,"data":{"status":2,"credit":1e400}}',
    b'{"code":0,"data":{"status":1e-400}}',
    b'{"code":0,"data":{"status":18446744073709551616}}',
    b'{"code":0,"data":{"status":18446744073709551615}}',
    b'{"code":0,"data":{"status":9223372036854775808}}',
    b'{"code":0,"data":{"status":-9223372036854775809}}',
    b'{"code":0,"data":{"status":' + b"9" * 5000 + b"}}",
    b'{"code":0,"data":{"status":0.' + b"1" * 5000 + b"}}",
    b'{"code":99999999999999999999,"data":{}}',
    b'{"code":1,"code":0,"data":{"job_id":"abc"}}',
    b'{"code":0,"data":{"job_id":"a"},"data":{"job_id":"b"}}',
    b'{"code":0,"data":{"status":2,"status":"x"}}',
    b'{"code":0,"data":{"id":"\xff"}}',
    b'{"code":0,"data":{"id":"\xe2\x82"}}',
    b'{"code":0,"data":{"id":"\xc0\xaf"}}',
    b'{"code":0,"data":{"id":"\xed\xa0\x80"}}',
    b'{"code":0,"data":{"id":"\\ud800"}}',
    b'{"code":0,"data":{"id":"\\udfff\\ud800"}}',
    b'{"code":0,"data":{"id":"\\ud83d\\ude00"}}',
    b'{"code":0,"data":{"id":"\\u0000"}}',
    b'{"code":0,"data":{"id":"a\x01b"}}',
    b'\xef\xbb\xbf{"code":0,"data":{"job_id":"abc"}}',
    '{"code":0,"data":{"job_id":"abc"}}'.encode("utf-16"),
    '{"code":0,"data":{"job_id":"abc"}}'.encode("utf-16-le"),
    '{"code":0,"data":{"job_id":"abc"}}'.encode("utf-16-be"),
    '{"code":0,"data":{"job_id":"abc"}}'.encode("utf-32"),
    '{"code":0,"data":{"job_id":"é"}}'.encode("latin-1"),
    b'{"code":0,"data":{"job_id":"abc"}} trailing',
    b'{"code":0,"data":{"job_id":"abc"}',
    b'{"code":0,"data":{"job_id":"abc",}}',
    b"{'code':0}",
    b'  \n\t{"code":0,"data":{}}\r\n ',
    b'\x0c{"code":0}',
    b"",
    b"   ",
    b"null",
    b"[]",
    b'"text"',
    b"01",
    b"-",
    b"1.",
    b".5",
    b"1e",
    b"-0",
    b"-0.0",
    b'{"code":"0","data":{}}',
    b'{"code":true,"data":{}}',
    b'{"code":0.0,"data":{}}',
    b'{"code":0,"data":[]}',
    b'{"code":0,"data":"x"}',
    b'{"code":0,"data":null}',
    b'{"code":3000,"message":"busy"}',
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"code":0,"data":{"status":2,"result":{"videos":[{"url":"' + b"u" * 100_000 + b'"}]}}}',
    *(b'{"code":0,"data":{"args":' + b"[" * d + b"]" * d + b"}}" for d in DEEP),
    *(b'{"code":0,"data":' + b'{"a":' * d + b"1" + b"}" * d + b"}" for d in DEEP),
]


def verdict(read: Callable[[bytes], Any], raw: bytes) -> tuple[Any, ...]:
    """Return what ``read`` made of ``raw``: its value's repr, or its error's type and text."""
    try:
        return ("value", repr(read(raw)))
    except Exception as exc:  # every failure is compared, whatever it is
        return ("error", type(exc).__name__, str(exc))


def envelope_verdict(raw: bytes, status: int) -> tuple[Any, ...]:
    """Return what decode_envelope made of ``raw``: its data, or the typed failure in full."""
    try:
        return ("data", repr(decode_envelope(status, raw, None)))
    except AttemptFailed as failed:
        error = failed.error
        cause = error.__cause__
        return (
            "failed",
            type(error).__name__,
            str(error),
            failed.safety,
            error.status,
            error.body,
            getattr(error, "code", None),
            None if cause is None else (type(cause).__name__, str(cause)),
        )


def agree(raw: bytes) -> None:
    """Check that both readers, the envelope and the callback reader agree on ``raw``."""
    plain = verdict(json.loads, raw)
    assert verdict(_json.stdlib_loads, raw) == plain
    assert verdict(_json.orjson_loads, raw) == plain
    for status in (200, 429, 500):
        with _json.backend("orjson"):
            fast = envelope_verdict(raw, status)
        with _json.backend("stdlib"):
            stdlib = envelope_verdict(raw, status)
        assert fast == stdlib
    with _json.backend("orjson"):
        fast_payload = repr(payload(raw))
    with _json.backend("stdlib"):
        plain_payload = repr(payload(raw))
    assert fast_payload == plain_payload


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.floats()
    | st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)
)
finite_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=16,
)


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """Draw a JSON text (escaped or raw UTF-8, surrogates included), then break a few bytes."""
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(0, 3))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if how == "replace":
            raw[at] = byte
        elif how == "insert":
            raw.insert(at, byte)
        else:
            del raw[at]
    return bytes(raw)


@needs_orjson
class TestReadersAgree:
    @pytest.mark.parametrize("raw", CORPUS, ids=range(len(CORPUS)))
    def test_corpus_reads_the_same(self, raw: bytes) -> None:
        """Every malformed or tricky body gets the same value or the same error from both."""
        agree(raw)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated_json() | st.binary(max_size=64))
    def test_fuzzed_bodies_read_the_same(self, raw: bytes) -> None:
        """Random JSON, broken JSON and random bytes read the same through both readers."""
        agree(raw)

    def test_typed_errors_are_unchanged(self) -> None:
        """A body orjson refuses still becomes the stdlib's typed error, cause included."""
        with _json.backend("orjson"):
            verdict_ = envelope_verdict(b"<html>oops</html>", 502)
        assert verdict_[1] == "ServerError"
        with _json.backend("orjson"):
            verdict_ = envelope_verdict(b'{"code":0,"data":{"job_id":"a"', 200)
        assert verdict_[1] == "MalformedResponseError"
        assert verdict_[-1][0] == "JSONDecodeError"
        assert "Expecting" in verdict_[-1][1]  # the stdlib's wording, not orjson's


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_stdlib_writer_writes_what_json_dumps_does(value: Any) -> None:
    """The writer made once writes every value, byte for byte, as ``json.dumps`` made per call
    would (surrogates, big integers and non-finite floats included)."""
    assert _json.stdlib_dumps(value) == json.dumps(value, separators=(",", ":")).encode("ascii")


@needs_orjson
class TestWritersAgree:
    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.text(max_size=8), finite_scalars, max_size=6))
    def test_bodies_mean_the_same(self, args: dict[str, Any]) -> None:
        """A body written by orjson reads back as the stdlib's does (lone surrogates included)."""
        body = {"model": "alibaba/wan-2.7/image-to-video", "args": args}
        fast, plain = _json.orjson_dumps(body), _json.stdlib_dumps(body)
        assert repr(json.loads(fast)) == repr(json.loads(plain))

    def test_compact_and_utf8(self) -> None:
        """Both writers give compact JSON; orjson keeps non-ASCII text as UTF-8, unescaped."""
        body = {"prompt": "雪の中の狐", "duration": 5}
        compact = {"separators": (",", ":")}
        assert _json.orjson_dumps(body) == json.dumps(body, ensure_ascii=False, **compact).encode()
        assert _json.stdlib_dumps(body) == json.dumps(body, **compact).encode()

    def test_the_one_difference_non_finite_floats(self) -> None:
        """orjson writes NaN and infinities as null, the stdlib as NaN/Infinity (not JSON); no
        request body holds a float, so no body the client sends differs by it."""
        assert _json.orjson_dumps({"x": math.inf}) == b'{"x":null}'
        assert _json.stdlib_dumps({"x": math.inf}) == b'{"x":Infinity}'
        fields = attrs.fields_dict(ImageToVideo)
        assert not [name for name, field in fields.items() if "float" in str(field.type)]


@needs_orjson
@needs_uvloop
class TestBothPathsEndToEnd:
    @pytest.mark.parametrize("codec", ["orjson", "stdlib"])
    @pytest.mark.parametrize(
        "anyio_backend",
        [("asyncio", {}), ("asyncio", {"use_uvloop": True})],
        ids=["asyncio", "uvloop"],
    )
    @pytest.mark.anyio
    async def test_batch_with_callbacks(self, codec: str, anyio_backend: Any) -> None:
        """A batch whose results come by callback ends the same on either codec and loop."""
        with _json.backend(codec):  # type: ignore[arg-type]
            async with (
                FakeShortAPI(run_time=0.05) as fake,
                CallbackReceiver() as receiver,
                client_for(fake, callbacks=receiver) as client,
            ):
                reqs = [req(f"a fox {i}", duration=2) for i in range(8)]
                outcomes = await client.gather(reqs, concurrency=4)
                assert [o.ok for o in outcomes] == [True] * 8
                assert receiver.statistics().received >= 8


@needs_uvloop
class TestLoopOfTheCommand:
    def test_uvloop_by_default_when_installed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The command runs on uvloop when it is installed; SHORTWAN_LOOP=asyncio opts out."""
        monkeypatch.delenv(LOOP_ENV, raising=False)
        assert backend_options() == {"use_uvloop": True}
        monkeypatch.setenv(LOOP_ENV, "asyncio")
        assert backend_options() == {}
        monkeypatch.setenv(LOOP_ENV, "uvloop")
        assert backend_options() == {"use_uvloop": True}

    def test_the_runner_really_uses_uvloop(self) -> None:
        """The command's runner starts a uvloop loop, or asyncio's when told to."""
        script = textwrap.dedent(
            """
            import asyncio
            from shortwan.cli._common import run

            async def loop_module():
                return type(asyncio.get_running_loop()).__module__

            print(run(loop_module))
            """
        )
        env = {k: v for k, v in os.environ.items() if k != LOOP_ENV}
        assert run_python(script, env=env).stdout.strip().startswith("uvloop")
        chosen = run_python(script, env={**env, LOOP_ENV: "asyncio"}).stdout.strip()
        assert chosen.startswith("asyncio")


# A child interpreter where orjson and uvloop cannot be imported, as on a machine without them.
WITHOUT_SPEED = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    TRIED = []

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("orjson", "uvloop"):
                TRIED.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())

    import anyio

    from shortwan import AsyncShortWan, ImageToVideo, _json
    from shortwan.callbacks import CallbackReceiver
    from shortwan.cli._common import backend_options
    from shortwan.testing import FakeShortAPI, fast_poll

    async def main():
        async with (
            FakeShortAPI(run_time=0.05) as fake,
            CallbackReceiver() as receiver,
            AsyncShortWan(
                fake.api_key, base_url=fake.url, poll=fast_poll(), callbacks=receiver
            ) as client,
        ):
            reqs = [
                ImageToVideo(prompt=f"a fox {i}", first_frame_image="https://e.com/a.png")
                for i in range(6)
            ]
            outcomes = await client.gather(reqs, concurrency=3)
            return [o.ok for o in outcomes], receiver.statistics().received

    ok, callbacks = anyio.run(main)
    print(json.dumps({"tried": sorted(set(TRIED))}))
    print(json.dumps({
        "ok": ok,
        "callbacks": callbacks,
        "orjson_available": _json.orjson_available(),
        "loaded": sorted(m for m in ("orjson", "uvloop") if m in sys.modules),
        "loop": backend_options(),
    }))
    """
)


def test_core_works_without_the_speed_extra() -> None:
    """With orjson and uvloop absent, a batch with callbacks works and neither is imported;
    the core looks for orjson alone (uvloop is looked for only by the command's loop choice)."""
    done = run_python(WITHOUT_SPEED)
    assert done.returncode == 0, done.stderr
    *_, tried, last = done.stdout.strip().splitlines()
    assert json.loads(tried) == {"tried": ["orjson"]}
    report = json.loads(last)
    assert report["ok"] == [True] * 6
    assert report["callbacks"] >= 6
    assert report["orjson_available"] is False
    assert report["loaded"] == []
    assert report["loop"] == {}


def test_the_library_never_imports_uvloop() -> None:
    """Importing shortwan and running a client's loop leaves uvloop alone: the caller picks."""
    done = run_python("import sys, shortwan; print('uvloop' in sys.modules)")
    assert done.stdout.strip() == "False"
