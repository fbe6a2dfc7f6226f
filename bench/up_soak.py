"""The stall check: `pulse up` with simulated markets for N minutes, checked every 30 s.

Starts `pulse up --no-status` in its own data folder (its own nats-server and store, chosen
by `--store` / PULSE_LOCAL_STORE), sets the simulator's catalogue to `--markets`, and every
`--interval` seconds checks that the system is not stalled:

- whale_sync: a new completed run within the last `--whale-window` seconds (its schedule
  is every minute);
- market_sync: a completed run within the last `--market-sync-window` seconds (every 5
  minutes, plus the time one run takes);
- every service (and the simulator) answers its readiness URL with 200 within 2 s;
- a direct read of the store (`runs`, by `_id`-less query) answers within 2 s;
- `pulse up` itself is still running.

It prints one line per check and a final verdict, and exits 1 on a stall (any failed
check), 0 otherwise. On a stall the data folder (logs of every process, the store's log)
is kept for the post-mortem; its path is printed. This is a bench, not a CI test: it
takes `--minutes` (default 30).

    uv run --frozen python bench/up_soak.py --minutes 30 > soak.log 2>&1 &
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

from shared.localstack import STORE_KINDS
from shared.names import Collections
from shared.settings import load_settings

_READY_RE = re.compile(r"ready (\w+) \(port (\d+), pid (\d+)\)")
_STORE_READ_TIMEOUT_S = 2.0
_READY_TIMEOUT_S = 2.0


@dataclass
class Stack:
    """What the soak learned about the running `pulse up` from its output."""

    process: subprocess.Popen[bytes]
    output: Path
    ready_urls: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    mongo_url: str = ""


def _start_up(data_dir: Path, store: str, minutes: float) -> Stack:
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_NATS_URL", "PULSE_MONGO_URL")}
    env["PULSE_LOCAL_STORE"] = store
    output = data_dir / "pulse-up.out"
    data_dir.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as out:
        process = subprocess.Popen(
            # --for is a backstop only (a soak killed with -9 cannot stop it): the soak
            # stops `pulse up` itself at the end.
            [
                *(sys.executable, "-m", "shared.cli", "up", "--no-status", "--data-dir", str(data_dir)),
                *("--for", str(int(minutes * 60 + 600)), "--ready-timeout", "180"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Stack(process, output)


def _wait_until_up(stack: Stack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = stack.output.read_text(errors="replace")
        for name, port, pid in _READY_RE.findall(text):
            path = "/_sim/health" if name == "simulator" else "/readyz"
            stack.ready_urls[name] = f"http://127.0.0.1:{port}{path}"
            stack.pids[name] = int(pid)
        if "marketpulse is up" in text:
            # The services were started with the store's URL: read it from one of them.
            environ = Path(f"/proc/{stack.pids['ticker']}/environ").read_bytes().split(b"\0")
            stack.mongo_url = next(v.split(b"=", 1)[1] for v in environ if v.startswith(b"PULSE_MONGO_URL=")).decode()
            return
        if stack.process.poll() is not None:
            raise SystemExit(f"pulse up exited with code {stack.process.returncode} at start-up:\n{text[-3000:]}")
        time.sleep(0.5)
    raise SystemExit(f"pulse up was not up within {timeout_s:g}s; its output ({stack.output}) ends:\n{text[-3000:]}")


async def _set_catalogue(stack: Stack, markets: int) -> None:
    base = stack.ready_urls["simulator"].removesuffix("/_sim/health")
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.post(f"{base}/_sim/catalogue", json={"markets": markets})
        response.raise_for_status()


@dataclass
class Verdicts:
    checks: int = 0
    failed: int = 0
    first_failure: str = ""


async def _newest_completed(db: object, job: str) -> tuple[int, datetime | None]:
    runs = db[Collections.RUNS]  # type: ignore[index]
    query = {"job": job, "status": "completed"}
    count: int = await runs.count_documents(query)
    newest = await runs.find(query, {"ended_at": 1}).sort("ended_at", -1).limit(1).to_list()
    ended = newest[0]["ended_at"].replace(tzinfo=UTC) if newest else None
    return count, ended


async def _check_ready(http: httpx.AsyncClient, urls: dict[str, str]) -> list[str]:
    async def one(name: str, url: str) -> str | None:
        try:
            response = await http.get(url, timeout=_READY_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return f"{name}: {type(exc).__name__}"
        return None if response.status_code == 200 else f"{name}: HTTP {response.status_code}"

    results = await asyncio.gather(*(one(name, url) for name, url in urls.items()))
    return [r for r in results if r]


async def _soak(args: argparse.Namespace, stack: Stack) -> Verdicts:
    settings = load_settings()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        stack.mongo_url, serverSelectionTimeoutMS=5000, socketTimeoutMS=30_000
    )
    db = client[settings.mongo_db]
    verdicts = Verdicts()
    started = time.monotonic()
    end = started + args.minutes * 60
    try:
        async with httpx.AsyncClient() as http:
            while time.monotonic() < end:
                await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))
                elapsed = time.monotonic() - started
                now = datetime.now(UTC)
                problems: list[str] = []
                if stack.process.poll() is not None:
                    problems.append(f"pulse up exited with code {stack.process.returncode}")
                not_ready = await _check_ready(http, stack.ready_urls)
                problems += not_ready

                read_started = time.monotonic()
                try:
                    await asyncio.wait_for(db[Collections.RUNS].find_one({}), _STORE_READ_TIMEOUT_S)
                    read_ms = (time.monotonic() - read_started) * 1000
                except TimeoutError:
                    read_ms = float("nan")
                    problems.append(f"store read took more than {_STORE_READ_TIMEOUT_S:g}s")
                except Exception as exc:  # the store refused or dropped the connection
                    read_ms = float("nan")
                    problems.append(f"store read failed: {type(exc).__name__}: {exc}"[:200])

                whale = market = "?"
                try:
                    whale_count, whale_end = await asyncio.wait_for(_newest_completed(db, "whale_sync"), 10)
                    market_count, market_end = await asyncio.wait_for(_newest_completed(db, "market_sync"), 10)
                except TimeoutError:
                    problems.append("the run queries did not answer within 10s")
                except Exception as exc:
                    problems.append(f"run query failed: {type(exc).__name__}: {exc}"[:200])
                else:
                    whale_age = (now - whale_end).total_seconds() if whale_end else None
                    market_age = (now - market_end).total_seconds() if market_end else None
                    whale = f"{whale_count} done, newest {whale_age:.0f}s ago" if whale_age is not None else "none yet"
                    market = (
                        f"{market_count} done, newest {market_age:.0f}s ago" if market_age is not None else "none yet"
                    )
                    if elapsed > args.whale_window and (whale_age is None or whale_age > args.whale_window):
                        problems.append(f"no whale_sync completed in the last {args.whale_window:g}s")
                    if elapsed > args.market_sync_window and (
                        market_age is None or market_age > args.market_sync_window
                    ):
                        problems.append(f"no market_sync completed in the last {args.market_sync_window:g}s")

                verdicts.checks += 1
                status = "OK   " if not problems else "STALL"
                print(
                    f"{now:%H:%M:%S} +{elapsed / 60:5.1f}m {status} read {read_ms:6.1f} ms | "
                    f"whale_sync {whale} | market_sync {market} | "
                    f"ready {len(stack.ready_urls) - len(not_ready)}/{len(stack.ready_urls)}"
                    + (f" | {'; '.join(problems)}" if problems else ""),
                    flush=True,
                )
                if problems:
                    verdicts.failed += 1
                    verdicts.first_failure = verdicts.first_failure or f"+{elapsed / 60:.1f}m: {'; '.join(problems)}"
    finally:
        await client.close()
    return verdicts


def _stop(stack: Stack) -> None:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
        try:
            stack.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.process.kill()
            stack.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--markets", type=int, default=1000, help="simulated markets (default 1,000)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between checks (default 30)")
    parser.add_argument(
        "--store",
        choices=STORE_KINDS,
        default=os.environ.get("PULSE_LOCAL_STORE", "embedded"),
        help="local store pulse up starts (default: PULSE_LOCAL_STORE or embedded)",
    )
    parser.add_argument("--whale-window", type=float, default=150.0, help="max age of the newest whale_sync (s)")
    parser.add_argument("--market-sync-window", type=float, default=390.0, help="max age of the newest market_sync (s)")
    parser.add_argument("--data-dir", type=Path, default=None, help="data folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder even when nothing stalled")
    args = parser.parse_args()
    if args.minutes <= 0 or args.interval <= 0 or args.markets < 1:
        parser.error("--minutes and --interval must be positive, --markets at least 1")

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="marketpulse-soak-"))
    print(
        f"soak: pulse up on the {args.store} store, {args.markets} markets, {args.minutes:g} min, "
        f"a check every {args.interval:g}s; data in {data_dir}",
        flush=True,
    )
    stack = _start_up(data_dir, args.store, args.minutes)
    verdicts = Verdicts()
    try:
        _wait_until_up(stack, 240)
        asyncio.run(_set_catalogue(stack, args.markets))
        print(f"soak: up; store at {stack.mongo_url}; checking {', '.join(stack.ready_urls)}", flush=True)
        verdicts = asyncio.run(_soak(args, stack))
    finally:
        _stop(stack)
    if verdicts.failed:
        print(
            f"VERDICT: STALLED — {verdicts.failed} of {verdicts.checks} checks failed; first at "
            f"{verdicts.first_failure}. Logs kept in {data_dir}",
            flush=True,
        )
        return 1
    print(f"VERDICT: no stall — {verdicts.checks} of {verdicts.checks} checks passed", flush=True)
    if not args.keep and args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
