"""shortwan: an asyncio SDK for ShortAPI's ``alibaba/wan-2.7/image-to-video`` model.

It never pays twice, never loses a paid job and checks every request before money is spent.
"""

from importlib.metadata import PackageNotFoundError, version

from ._client import DEFAULT_BASE_URL, AsyncShortWan
from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Limits,
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
    JobFailedError,
    JobTimeoutError,
    MalformedResponseError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    ShortWanError,
    SubmissionUncertainError,
    TransportError,
)
from ._media import image_input
from ._models import (
    MODEL_ID,
    PRICE_PER_SECOND,
    ImageToVideo,
    Job,
    JobSnapshot,
    JobStatus,
    Video,
)

try:
    __version__ = version("shortwan")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "MODEL_ID",
    "PRICE_PER_SECOND",
    "APIError",
    "AsyncShortWan",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "ImageToVideo",
    "InsufficientBalanceError",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "JobSnapshot",
    "JobStatus",
    "JobTimeoutError",
    "Limits",
    "MalformedResponseError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "ShortWanError",
    "SubmissionUncertainError",
    "Timeouts",
    "TransportError",
    "Video",
    "__version__",
    "image_input",
]
