"""Takes tokens from one shared bucket as fast as it may for a while, then prints a JSON line.

    python -m tests.e2e.workers.ratelimit_taker BUCKET SECONDS

Prints {"count": n, "start": unix, "end": unix} (wall clock, comparable across processes).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from shared.bus import connect_nats, ensure_kv, kv_configs
from shared.runtime._ratelimit import RateLimiter
from shared.settings import load_settings


async def main(bucket: str, seconds: float) -> None:
    settings = load_settings()
    client = await connect_nats(settings, name="ratelimit-taker")
    js = client.jetstream()
    config = next(c for c in kv_configs(settings) if c.bucket == settings.names.ratelimit_bucket)
    limiter = RateLimiter(await ensure_kv(js, config), dict(settings.rate_limits))
    count = 0
    start = time.time()
    end_at = time.monotonic() + seconds
    while time.monotonic() < end_at:
        try:
            await limiter.acquire(bucket, max_wait_s=max(0.0, end_at - time.monotonic()))
        except Exception:
            break
        count += 1
    print(json.dumps({"count": count, "start": start, "end": time.time()}), flush=True)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
