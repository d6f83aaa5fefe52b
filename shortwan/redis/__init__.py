"""Share the spend cap, the query rate, job ends and callback tokens between processes via Redis.

Install the extra (``pip install 'shortwan[redis]'``), connect once per process and give the
state to the client::

    import shortwan.redis

    async with await shortwan.redis.connect("redis://localhost:6379", namespace="myapp") as shared:
        async with AsyncShortWan(shared=shared) as client:
            outcomes = await client.gather(requests, max_spend="100")  # one cap for every process
            video = await client.attach(job_id).result()  # no query if another process saw it

The pieces can be used on their own too: ``await shared.spend_counter("100", window="day")`` is a
cap for every process, ``await shared.jobs.wait(job_id)`` an end another process saw.

Nothing of the API key is written to Redis. See the README's section "Several processes: sharing
through Redis" for what each piece does when Redis fails.
"""

from ._bucket import BucketState, RateBucket, WindowCounters, WindowStats
from ._budget import SharedQueryBudget
from ._core import SCHEMA, SCHEMA_VERSION
from ._jobs import DEFAULT_END_TTL, JobEnd, JobView
from ._spend import SharedSpendCounter, SpendFigures
from ._state import SharedState, connect
from ._tokens import JOB_TTL, PENDING_TTL, Forwarded, TokenEntry, TokenRegistry

__all__ = [
    "BucketState",
    "DEFAULT_END_TTL",
    "Forwarded",
    "JOB_TTL",
    "JobEnd",
    "JobView",
    "PENDING_TTL",
    "RateBucket",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SharedQueryBudget",
    "SharedSpendCounter",
    "SharedState",
    "SpendFigures",
    "TokenEntry",
    "TokenRegistry",
    "WindowCounters",
    "WindowStats",
    "connect",
]
