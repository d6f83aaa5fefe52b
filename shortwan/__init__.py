"""shortwan: an asyncio SDK for ShortAPI's ``alibaba/wan-2.7/image-to-video`` model.

It never pays twice, never loses a paid job and checks every request before money is spent.
"""

from importlib.metadata import PackageNotFoundError, version

from ._client import DEFAULT_BASE_URL, AsyncShortWan
from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_POLL,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Limits,
    PollPolicy,
    RetryPolicy,
    Timeouts,
)
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    InsufficientBalanceError,
    InvalidRequestError,
    JobDetachedError,
    JobFailedError,
    JobTimeoutError,
    JournalError,
    MalformedResponseError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SharedStateError,
    ShortWanError,
    SpendLimitError,
    SubmissionUncertainError,
    TransportError,
)
from ._media import image_input
from ._models import (
    BatchItem,
    ImageToVideo,
    Job,
    JobSnapshot,
    JobStatus,
    Outcome,
    Video,
)
from ._poller import PollerStatistics
from ._rate import QueryBudget, RateLimiter, RateStatistics
from ._retry import RetryEvent
from ._shared import SharedStore
from ._sharing import SharingStatistics
from ._spec import DEFAULT_JOB_TIMEOUT, MODEL_ID, PRICE_PER_SECOND
from ._spend import SpendBudget, SpendCounter
from ._stats import CallbackStatistics, ClientStatistics
from ._table import JobEvent, JobRecord, JobState, JobTable, JobTableStatistics

try:
    __version__ = version("shortwan")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "APIError",
    "AsyncShortWan",
    "AuthenticationError",
    "BadRequestError",
    "BatchItem",
    "CallbackStatistics",
    "ClientStatistics",
    "ConfigurationError",
    "DEFAULT_BASE_URL",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_LIMITS",
    "DEFAULT_POLL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "DownloadError",
    "ImageToVideo",
    "InsufficientBalanceError",
    "InvalidRequestError",
    "Job",
    "JobDetachedError",
    "JobEvent",
    "JobFailedError",
    "JobRecord",
    "JobSnapshot",
    "JobState",
    "JobStatus",
    "JobTable",
    "JobTableStatistics",
    "JobTimeoutError",
    "JournalError",
    "Limits",
    "MODEL_ID",
    "MalformedResponseError",
    "Outcome",
    "PRICE_PER_SECOND",
    "PollPolicy",
    "PollerStatistics",
    "QueryBudget",
    "RateLimitError",
    "RateLimiter",
    "RateStatistics",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "SharedStateError",
    "SharedStore",
    "SharingStatistics",
    "ShortWanError",
    "SpendBudget",
    "SpendCounter",
    "SpendLimitError",
    "SubmissionUncertainError",
    "Timeouts",
    "TransportError",
    "Video",
    "__version__",
    "image_input",
]
