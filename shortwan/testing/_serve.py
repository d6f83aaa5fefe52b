"""Run the fake by hand: one table of options for ``python -m shortwan.testing`` and the CLI.

Both ``python -m shortwan.testing`` (argparse) and ``shortwan fake-server`` (click) build their
options from :data:`OPTIONS`, and :func:`fake_arguments` turns the values into
:class:`FakeShortAPI` arguments, so the two commands cannot drift apart.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, TypeVar

import anyio
import attrs

from ._answers import ERROR_TEXTS, ERROR_TRANSPORTS
from ._callbacks import CALLBACK_SHAPES
from ._fake import DEFAULT_API_KEY, FakeShortAPI
from ._faults import RETRY_AFTER_STYLES, Endpoint, Fault
from ._jobs import RESULT_SHAPES

__all__ = [
    "FAULT_LEVELS",
    "OPTIONS",
    "Option",
    "add_arguments",
    "click_options",
    "fake_arguments",
    "fault_rates",
    "serve_forever",
]

_F = TypeVar("_F", bound=Callable[..., Any])
FAULT_LEVELS: Final = ("none", "flaky", "chaos")
Kind = Literal["float", "int", "str", "choice", "flag", "amount"]


def fault_rates(level: str) -> dict[Endpoint, dict[Fault, float]]:
    """Return the fault mix of a named level: ``none``, ``flaky`` (safe trouble) or ``chaos``.

    ``flaky`` only adds trouble a client can retry without risk (refusals, 503s, broken query
    answers, cut downloads); ``chaos`` also loses create answers after the job was made, which
    a careful client must report as uncertain rather than resend.
    """
    if level == "none":
        return {}
    safe: dict[Endpoint, dict[Fault, float]] = {
        "create": {Fault.RATE_LIMIT: 0.03, Fault.UNAVAILABLE: 0.03, Fault.CODE_3000: 0.03},
        "query": {
            Fault.RATE_LIMIT: 0.03,
            Fault.UNAVAILABLE: 0.03,
            Fault.HTML_502: 0.03,
            Fault.RESET_BEFORE: 0.03,
        },
        "download": {Fault.TRUNCATED_JSON: 0.1, Fault.UNAVAILABLE: 0.05},
    }
    if level == "flaky":
        return safe
    if level == "chaos":
        safe["create"].update({Fault.RESET_AFTER: 0.02, Fault.HTML_502: 0.02})
        safe["query"].update({Fault.TRUNCATED_JSON: 0.05, Fault.RESET_AFTER: 0.05})
        return safe
    raise ValueError(f"fault level must be one of {', '.join(FAULT_LEVELS)}, got {level!r}")


@attrs.frozen(kw_only=True)
class Option:
    """One option of a hand-run fake.

    Attributes:
        name: the :class:`FakeShortAPI` argument it sets (``faults`` picks a preset of
            ``fault_rates``); the command-line flag is ``--name-with-dashes``.
        kind: how the value is read: ``float``, ``int``, ``str``, ``choice``, ``flag`` (on/off)
            or ``amount`` (a decimal number of USD).
        default: the value when the option is not given (``None``: the fake's own default).
        help: one line for ``--help``.
        choices: the allowed values of a ``choice``.
        low: the smallest number allowed.
        high: the largest number allowed.
        low_open: whether ``low`` itself is refused.
    """

    name: str
    kind: Kind
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    @property
    def metavar(self) -> str:
        """Return the placeholder ``--help`` shows for the value."""
        return {"float": "NUMBER", "int": "INTEGER", "amount": "USD"}.get(self.kind, "TEXT")

    @property
    def flag(self) -> str:
        """Return the command-line flag, such as ``--queue-time``."""
        return "--" + self.name.replace("_", "-")

    def convert(self, text: str) -> Any:
        """Return the value of ``text`` for this option; raise ValueError naming the rule."""
        if self.kind == "amount":
            try:
                amount = Decimal(text)
            except InvalidOperation:
                raise ValueError(f"not an amount in USD: {text!r}") from None
            if not amount.is_finite() or amount < 0:
                raise ValueError(f"must be an amount >= 0: {text!r}")
            return amount
        if self.kind == "choice" and text not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, not {text!r}")
        if self.kind not in ("float", "int"):
            return text
        number: float = int(text) if self.kind == "int" else float(text)
        too_low = self.low is not None and (
            number < self.low or (self.low_open and number == self.low)
        )
        too_high = self.high is not None and number > self.high
        if too_low or too_high or not math.isfinite(number):
            raise ValueError(f"{text!r} is out of range ({self._range()})")
        return number

    def _range(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return ", ".join(part for part in (low, high) if part) or "any number"


def _seconds(name: str, default: float | None, text: str) -> Option:
    return Option(name=name, kind="float", default=default, help=text, low=0)


def _share(name: str, text: str) -> Option:
    return Option(name=name, kind="float", default=None, help=text, low=0, high=1)


def _choice(name: str, choices: tuple[str, ...], text: str) -> Option:
    return Option(name=name, kind="choice", default=choices[0], help=text, choices=choices)


OPTIONS: Final[tuple[Option, ...]] = (
    Option(name="host", kind="str", default="127.0.0.1", help="Address to listen on."),
    Option(name="port", kind="int", default=8080, help="Port (0: a free one).", low=0, high=65535),
    Option(name="api_key", kind="str", default=DEFAULT_API_KEY, help="The key it accepts."),
    _seconds("queue_time", None, "Seconds queued (default: follow each request)."),
    _seconds("run_time", None, "Seconds running (default: grow with duration and 1080p)."),
    _seconds("jitter", None, "Relative spread of times (default 0.25 for request timing)."),
    Option(
        name="speed",
        kind="float",
        default=0.1,
        help="Divide every time by this; 0.1 runs a 5 s 1080p job in about 5 s.",
        low=0,
        low_open=True,
    ),
    Option(name="seed", kind="int", default=0, help="Seed of every random choice."),
    _share("failure_rate", "Share of jobs that fail (default 0; 0.1 with --faults chaos)."),
    _choice("faults", FAULT_LEVELS, "Fault preset: flaky is safe to retry, chaos loses creates."),
    Option(name="retry_after", kind="str", default="0", help="Retry-After of 429 faults."),
    _seconds("slow_delay", 30.0, "Seconds a slow answer waits."),
    Option(
        name="query_rate_limit",
        kind="float",
        default=None,
        help="Queries per second over all jobs; beyond it, 429.",
        low=0,
        low_open=True,
    ),
    Option(
        name="query_burst",
        kind="float",
        default=None,
        help="Token bucket size (default: 0.1 s of the rate, at least 1).",
        low=1,
    ),
    _choice("rate_limit_retry_after", RETRY_AFTER_STYLES, "429 Retry-After: exact or seconds."),
    _share("callback_drop", "Share of callbacks never sent."),
    _share("callback_duplicate", "Share of callbacks sent twice."),
    _seconds("callback_delay", None, "Seconds between a job's end and its callback."),
    _choice("callback_shape", CALLBACK_SHAPES, "Callback body: the envelope, or bare data."),
    _choice("error_transport", ERROR_TRANSPORTS, "Refusals as HTTP 200 + code, or HTTP statuses."),
    _choice("error_text", ERROR_TEXTS, "Text field of a refusal: message, info or both."),
    Option(name="balance", kind="amount", default=None, help="USD to spend (default: unlimited)."),
    _seconds("url_ttl", None, "Seconds a result URL stays valid (then 410)."),
    _choice("result_shape", RESULT_SHAPES, "How result URLs are given."),
    Option(name="extra_fields", kind="flag", default=False, help="Add unknown keys to answers."),
    Option(name="render", kind="flag", default=True, help="Make each video from its image."),
)
_BY_NAME: Final = {option.name: option for option in OPTIONS}


def fake_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return :class:`FakeShortAPI` arguments for option ``values`` (missing ones: defaults)."""
    unknown = set(values) - set(_BY_NAME)
    if unknown:
        raise TypeError(f"unknown fake-server options: {', '.join(sorted(unknown))}")
    chosen = {option.name: values.get(option.name, option.default) for option in OPTIONS}
    faults = chosen.pop("faults")
    if chosen["failure_rate"] is None:
        chosen["failure_rate"] = 0.1 if faults == "chaos" else 0.0
    if isinstance(chosen["balance"], str):
        chosen["balance"] = _BY_NAME["balance"].convert(chosen["balance"])
    arguments = {name: value for name, value in chosen.items() if value is not None}
    arguments["fault_rates"] = fault_rates(faults)
    return arguments


async def serve_forever(*, ready: Callable[[str, str], None], **values: Any) -> None:
    """Run FakeShortAPI until cancelled; ``ready(url, api_key)`` is called once it listens.

    Args:
        ready: told where the fake listens.
        values: option values by name (see :data:`OPTIONS`); missing ones take their defaults.
    """
    async with FakeShortAPI(**fake_arguments(values)) as fake:
        ready(fake.url, fake.api_key)
        await anyio.sleep_forever()


def _argparse_type(option: Option, text: str) -> Any:
    try:
        return option.convert(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of :data:`OPTIONS` to an argparse ``parser``."""
    for option in OPTIONS:
        shown = option.help if option.default is None else f"{option.help} (default: %(default)s)"
        if option.kind == "flag":
            parser.add_argument(
                option.flag,
                action=argparse.BooleanOptionalAction,
                default=option.default,
                help=option.help,
            )
        else:
            parser.add_argument(
                option.flag,
                type=functools.partial(_argparse_type, option),
                default=option.default,
                choices=option.choices or None,
                metavar=None if option.choices else option.metavar,
                help=shown,
            )


def click_options(command: _F) -> _F:
    """Decorate a click command with every option of :data:`OPTIONS` (needs the cli extra)."""
    import click  # noqa: PLC0415 - only the CLI, which has the cli extra, calls this

    def check(option: Option, _ctx: Any, _param: Any, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return option.convert(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    for option in reversed(OPTIONS):
        if option.kind == "flag":
            flags = f"{option.flag}/--no-{option.flag[2:]}"
            decorate = click.option(
                flags, default=option.default, show_default=True, help=option.help
            )
        else:
            decorate = click.option(
                option.flag,
                type=click.Choice(option.choices) if option.choices else str,
                metavar=None if option.choices else option.metavar,
                callback=functools.partial(check, option),
                default=option.default,
                show_default=option.default is not None,
                help=option.help,
            )
        command = decorate(command)
    return command
