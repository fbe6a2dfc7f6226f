"""A local stand-in for Polymarket's Gamma and Data APIs, with injectable faults.

It serves the same shapes as the real endpoints (`GET /markets/keyset`, also filtered to
one market by `id=` or `condition_ids=`, and `GET /trades`, also by `market=`)
for a catalogue of up to 200,000 markets. Nothing is built up front: market `i` and
trade `j` are computed from the seed and their index on each request, so memory stays
flat whatever the catalogue size.

Time in the simulator ("sim time") runs with the wall clock, or stands still with
`frozen` and only moves through `POST /_sim/advance`. Prices move in steps of
`move_every_s` of sim time (each market at its own pace); a new trade appears every
`trades_every_s`, after a backlog that is already there at start.

Faults, per endpoint (`markets`, `trades`), each a probability per request (or per
record for `bad_records`):

    5xx          503 with a JSON error body
    429          429 with Retry-After (`retry_after_s`)
    slow         the answer waits `slow_s` first (past a client's timeout)
    malformed    200 with a truncated, non-JSON body
    bad_records  records with missing, extra, null, NaN, huge or control-character
                 fields, keys with '.' or '$', nested arrays (chosen per index, so the
                 same records are bad on every request; see `record_kind`)

Control endpoints, for tests and demos:

    GET  /_sim/health              {"ok": true}
    GET  /_sim/stats               requests and faults served, per endpoint
    POST /_sim/faults              {"markets": {"5xx": 0.2}, "trades": {...}} replaces all faults
    POST /_sim/advance             {"seconds": 60} moves sim time forward
    POST /_sim/catalogue           {"markets": N} grows or shrinks the catalogue

Run it with `pulse simulate` (see `shared/cli/simulate.py`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

ENDPOINTS = ("markets", "trades")
FAULT_KINDS = ("5xx", "429", "slow", "malformed", "bad_records")
MAX_MARKETS = 200_000
MAX_PAGE = 1000
#: How many of the newest trades a `market=` query of /trades looks through.
MARKET_SCAN = 5_000
FIRST_MARKET_ID = 500_000

#: Kinds of bad record. Records of INVALID_KINDS must be refused by a correct parser; the
#: others are messy but valid once cleaned (extra keys ignored, text sanitized, numbers
#: given as strings).
INVALID_MARKET_KINDS = (
    "missing_question",
    "null_id",
    "nan_price",
    "nan_volume",
    "infinite_volume",
    "huge_text",
    "bad_encoded_list",
    "nested_arrays",
    "wrong_type",
    "negative_volume",
    "price_count_mismatch",
)
MESSY_MARKET_KINDS = ("control_chars", "unsafe_keys", "extra_fields", "string_numbers")
INVALID_TRADE_KINDS = ("missing_side", "nan_size", "price_out_of_range", "bad_timestamp", "null_wallet")
MESSY_TRADE_KINDS = ("control_chars", "unsafe_keys", "string_numbers")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def unit(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) from the seed and `parts`."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    value: int = struct.unpack(">Q", digest)[0]
    return value / 2.0**64


def hex_id(seed: int, *parts: object, nbytes: int = 32) -> str:
    return "0x" + hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=nbytes).hexdigest()


def record_kind(seed: int, endpoint: str, index: int, rate: float) -> str | None:
    """Which bad-record variant record `index` of `endpoint` is, at this `rate` (None: a clean record)."""
    if rate <= 0 or unit(seed, "bad", endpoint, index) >= rate:
        return None
    kinds = (
        INVALID_MARKET_KINDS + MESSY_MARKET_KINDS if endpoint == "markets" else INVALID_TRADE_KINDS + MESSY_TRADE_KINDS
    )
    return kinds[int(unit(seed, "kind", endpoint, index) * len(kinds))]


def parse_fault(text: str) -> tuple[str, str, float]:
    """Parse `ENDPOINT:KIND=RATE` (e.g. `markets:5xx=0.2`).

    Raises:
        ValueError: naming the part that is wrong and the accepted values.
    """
    try:
        target, rate_text = text.split("=", 1)
        endpoint, kind = target.split(":", 1)
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"fault {text!r}: expected ENDPOINT:KIND=RATE, e.g. markets:5xx=0.2") from None
    if endpoint not in ENDPOINTS:
        raise ValueError(f"fault {text!r}: endpoint must be one of {', '.join(ENDPOINTS)}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault {text!r}: kind must be one of {', '.join(FAULT_KINDS)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fault {text!r}: rate must be from 0 to 1")
    return endpoint, kind, rate


def check_faults(faults: Any) -> dict[str, dict[str, float]]:
    """Validate a `{endpoint: {kind: rate}}` mapping (the body of POST /_sim/faults)."""
    if not isinstance(faults, dict):
        raise ValueError('faults must be an object like {"markets": {"5xx": 0.2}}')
    checked: dict[str, dict[str, float]] = {}
    for endpoint, kinds in faults.items():
        if not isinstance(kinds, dict):
            raise ValueError(f"faults.{endpoint} must be an object of kind: rate")
        for kind, rate in kinds.items():
            parse_fault(f"{endpoint}:{kind}={rate}")
            checked.setdefault(endpoint, {})[kind] = float(rate)
    return checked


@dataclass
class SimConfig:
    """Everything the simulator serves; see the module docstring for the meaning of each part."""

    markets: int = 1000
    seed: int = 1
    faults: dict[str, dict[str, float]] = field(default_factory=dict)
    frozen: bool = False
    move_every_s: float = 60.0
    trades_every_s: float = 5.0
    trade_backlog: int = 200
    slow_s: float = 30.0
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.markets <= MAX_MARKETS:
            raise ValueError(f"markets must be from 0 to {MAX_MARKETS}")
        if self.move_every_s <= 0 or self.trades_every_s <= 0:
            raise ValueError("move_every_s and trades_every_s must be positive")
        if self.trade_backlog < 0 or self.slow_s < 0 or self.retry_after_s < 0:
            raise ValueError("trade_backlog, slow_s and retry_after_s must not be negative")
        self.faults = check_faults(self.faults)


_SUBJECTS = ("the Fed", "Bitcoin", "Ethereum", "the S&P 500", "Team Red", "Team Blue", "the ECB", "Gold", "Oil")
_VERBS = ("cut rates", "reach a new high", "fall below its 2025 low", "win the final", "announce a merger")
_MONTHS = ("January", "March", "June", "September", "December")
_CATEGORIES = ("Economics", "Crypto", "Sports", "Politics", "Commodities")
_BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z: fixed, so records do not depend on start time


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Simulator:
    """The state of one simulator: catalogue size, faults, sim time and counters (an ASGI app)."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.markets = config.markets
        self.faults = config.faults
        self._clock = clock
        self._started = clock()
        self._offset_s = 0.0
        self._rng = random.Random(config.seed)
        self._condition_index: dict[str, int] = {}
        self.requests: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Simulator(markets={self.markets}, requests={dict(self.requests)})"

    # -- time ---------------------------------------------------------------------------
    def sim_elapsed(self) -> float:
        """Seconds of sim time since start."""
        real = 0.0 if self.config.frozen else self._clock() - self._started
        return real + self._offset_s

    def sim_now(self) -> float:
        """Sim time as unix seconds."""
        return self._started + self.sim_elapsed()

    def epoch(self) -> int:
        return math.floor(self.sim_elapsed() / self.config.move_every_s)

    # -- markets ------------------------------------------------------------------------
    def market(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """Market record `index` as served at `epoch` (default: now), bad-record faults included."""
        record = self.clean_market(index, self.epoch() if epoch is None else epoch)
        kind = record_kind(self.config.seed, "markets", index, self.faults.get("markets", {}).get("bad_records", 0.0))
        return spoil_market(record, kind) if kind else record

    def clean_market(self, index: int, epoch: int) -> dict[str, Any]:
        seed = self.config.seed
        pace = 1 + int(unit(seed, "pace", index) * 8)  # moves every 1..8 epochs
        step = epoch // pace
        yes = round(0.01 + 0.98 * unit(seed, "price", index, step), 3)
        market_id = str(FIRST_MARKET_ID + index)
        teams = unit(seed, "teams", index) < 0.1
        outcomes = ["Team Red", "Team Blue"] if teams else ["Yes", "No"]
        question = (
            f"Will {_SUBJECTS[index % len(_SUBJECTS)]} {_VERBS[index % len(_VERBS)]} by "
            f"{_MONTHS[index % len(_MONTHS)]} {2026 + index % 3}? (#{index})"
        )
        record: dict[str, Any] = {
            "id": market_id,
            "question": question,
            "conditionId": hex_id(seed, "condition", index),
            "slug": f"market-{market_id}",
            "outcomes": json.dumps(outcomes),
            "outcomePrices": json.dumps([f"{yes:g}", f"{round(1 - yes, 3):g}"]),
            "clobTokenIds": json.dumps([str(int(unit(seed, "tok", index, k) * 1e18)) for k in (0, 1)]),
            "active": True,
            "closed": unit(seed, "closed", index) < 0.05,
            "archived": False,
            "acceptingOrders": True,
            "negRisk": False,
            "endDate": _iso(_BASE_TIME + 86_400 * (30 + index % 400)),
            "createdAt": _iso(_BASE_TIME - 86_400 * (index % 300)),
            "updatedAt": _iso(_BASE_TIME + step * pace * self.config.move_every_s),
            "events": [{"id": str(30_000 + index // 5), "slug": f"event-{index // 5}", "title": f"Event {index // 5}"}],
        }
        if unit(seed, "category", index) < 0.5:
            record["category"] = _CATEGORIES[index % len(_CATEGORIES)]
        if unit(seed, "new", index) >= 0.1:  # about one market in ten is new: no metrics yet
            volume = round(1000 + 500_000 * unit(seed, "volume", index), 2)
            record.update(
                volume=f"{volume}",
                volumeNum=volume,
                volume24hr=round(volume * 0.05 * unit(seed, "v24", index, step), 2),
                liquidity=f"{round(volume / 10, 2)}",
                liquidityNum=round(volume / 10, 2),
                bestBid=max(0.0, round(yes - 0.01, 3)),
                bestAsk=min(1.0, round(yes + 0.01, 3)),
            )
        return record

    def market_page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
        end = min(offset + limit, self.markets)
        epoch = self.epoch()
        records = [self.market(index, epoch) for index in range(offset, end)]
        return records, (end if end < self.markets else None)

    def market_index(self, *, market_id: str | None = None, condition_id: str | None = None) -> int | None:
        """The index of the market with this Gamma id or condition id, None when the catalogue has none."""
        if market_id is not None:
            index = int(market_id) - FIRST_MARKET_ID if market_id.isdigit() else -1
            return index if 0 <= index < self.markets else None
        if len(self._condition_index) != self.markets:  # built once per catalogue size
            self._condition_index = {hex_id(self.config.seed, "condition", i): i for i in range(self.markets)}
        return self._condition_index.get(condition_id or "")

    # -- trades -------------------------------------------------------------------------
    def _first_trade_ts(self) -> float:
        return self._started - self.config.trade_backlog * self.config.trades_every_s

    def latest_trade_index(self) -> int:
        """Index of the newest trade visible at the current sim time (-1: none yet)."""
        return math.floor((self.sim_now() - self._first_trade_ts()) / self.config.trades_every_s)

    def trade(self, index: int) -> dict[str, Any]:
        """Trade record `index` (newest has the highest index), bad-record faults included."""
        seed = self.config.seed
        market_index = int(unit(seed, "tm", index) * max(1, self.markets))
        notional = 100 * 2000 ** unit(seed, "notional", index)  # log-uniform, $100 to $200,000
        price = round(0.05 + 0.9 * unit(seed, "tp", index), 3)
        outcome_index = 0 if unit(seed, "to", index) < 0.5 else 1
        record: dict[str, Any] = {
            "proxyWallet": hex_id(seed, "wallet", int(unit(seed, "tw", index) * 500), nbytes=20),
            "side": "BUY" if unit(seed, "ts", index) < 0.6 else "SELL",
            "asset": str(int(unit(seed, "tok", market_index, outcome_index) * 1e18)),
            "conditionId": hex_id(seed, "condition", market_index),
            "size": round(notional / price, 2),
            "price": price,
            "timestamp": int(self._first_trade_ts() + index * self.config.trades_every_s),
            "title": f"Market #{market_index}",
            "slug": f"market-{FIRST_MARKET_ID + market_index}",
            "eventSlug": f"event-{market_index // 5}",
            "outcome": "Yes" if outcome_index == 0 else "No",
            "outcomeIndex": outcome_index,
            "name": "",
            "pseudonym": "Quiet-Heron",
            # Two consecutive fills share a transaction: the hash alone is not a key.
            "transactionHash": hex_id(seed, "tx", index // 2),
        }
        kind = record_kind(seed, "trades", index, self.faults.get("trades", {}).get("bad_records", 0.0))
        return spoil_trade(record, kind) if kind else record

    def trades_page(
        self, offset: int, limit: int, min_cash: float | None, market: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; the CASH filter counts 1 % fees in, so a few trades just under it pass.

        `market` (a condition id) keeps that market's trades among the newest `MARKET_SCAN` trades.
        """
        found: list[dict[str, Any]] = []
        skipped = 0
        newest = self.latest_trade_index()
        oldest = max(-1, newest - MARKET_SCAN) if market is not None else -1
        for index in range(newest, oldest, -1):
            record = self.trade(index)
            if market is not None and record.get("conditionId") != market:
                continue
            if min_cash is not None:
                size, price = record.get("size"), record.get("price")
                if isinstance(size, int | float) and isinstance(price, int | float) and size * price * 1.01 < min_cash:
                    continue
            if skipped < offset:
                skipped += 1
                continue
            found.append(record)
            if len(found) >= limit:
                break
        return found

    # -- HTTP ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        body = await _read_body(receive) if scope["method"] == "POST" else b""
        try:
            status, payload, headers = await self.handle(scope["method"], path, query, body)
        except ValueError as exc:
            status, payload, headers = 400, {"type": "validation error", "error": str(exc)}, {}
        await _respond(send, status, payload, headers)

    async def handle(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """Route one request; returns (status, JSON payload or raw bytes, extra headers)."""
        if path.startswith("/_sim/"):
            return self._control(method, path, body)
        endpoint = {"/markets/keyset": "markets", "/trades": "trades"}.get(path)
        if endpoint is None or method != "GET":
            return 404, {"type": "not found", "error": f"no route {method} {path}"}, {}
        self.requests[endpoint] += 1
        fault = await self._request_fault(endpoint)
        if fault is not None:
            return fault
        if endpoint == "markets":
            return self._markets(query)
        return self._trades(query)

    async def _request_fault(self, endpoint: str) -> tuple[int, Any, dict[str, str]] | None:
        rates = self.faults.get(endpoint, {})
        if self._rng.random() < rates.get("slow", 0.0):
            self.faults_served[f"{endpoint}:slow"] += 1
            await asyncio.sleep(self.config.slow_s)
        if self._rng.random() < rates.get("5xx", 0.0):
            self.faults_served[f"{endpoint}:5xx"] += 1
            return 503, {"type": "internal error", "error": "cannot get the information"}, {}
        if self._rng.random() < rates.get("429", 0.0):
            self.faults_served[f"{endpoint}:429"] += 1
            return 429, {"error": "rate limited"}, {"Retry-After": f"{self.config.retry_after_s:g}"}
        if self._rng.random() < rates.get("malformed", 0.0):
            self.faults_served[f"{endpoint}:malformed"] += 1
            return 200, b'{"markets": [{"id": "1", "question": "trunc', {}
        return None

    def _markets(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        if "offset" in query:
            return 422, {"type": "validation error", "error": "offset is not supported, use after_cursor"}, {}
        limit = _int_param(query, "limit", 100, 1, MAX_PAGE)
        if "id" in query or "condition_ids" in query:  # one market (our client asks for one at a time)
            index = self.market_index(market_id=query.get("id"), condition_id=query.get("condition_ids"))
            return 200, {"markets": [] if index is None else [self.market(index)]}, {}
        # Like the real API, `cursor=` is ignored (page 1 again): only `after_cursor` pages.
        offset = _decode_cursor(query["after_cursor"]) if "after_cursor" in query else 0
        records, next_offset = self.market_page(offset, limit)
        page: dict[str, Any] = {"markets": records}
        if next_offset is not None:
            page["next_cursor"] = _encode_cursor(next_offset)
        return 200, page, {}

    def _trades(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        limit = _int_param(query, "limit", 100, 0, 10_000)
        offset = _int_param(query, "offset", 0, 0, 10_000)
        if ("filterType" in query) != ("filterAmount" in query):
            raise ValueError("filterType and filterAmount must be sent together")
        min_cash = None
        if query.get("filterType") == "CASH":
            min_cash = float(query["filterAmount"])
            if not math.isfinite(min_cash) or min_cash < 0:
                raise ValueError("filterAmount must be a number >= 0")
        return 200, self.trades_page(offset, limit, min_cash, query.get("market")), {}

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        data = json.loads(body) if body else {}
        if path == "/_sim/health":
            return 200, {"ok": True}, {}
        if path == "/_sim/stats":
            return 200, self.stats(), {}
        if method != "POST":
            return 405, {"error": f"use POST {path}"}, {}
        if path == "/_sim/faults":
            self.faults = check_faults(data)
        elif path == "/_sim/advance":
            self._offset_s += float(data.get("seconds", 0))
        elif path == "/_sim/catalogue":
            markets = int(data["markets"])
            if not 0 <= markets <= MAX_MARKETS:
                raise ValueError(f"markets must be from 0 to {MAX_MARKETS}")
            self.markets = markets
        else:
            return 404, {"error": f"no control route {path}"}, {}
        return 200, self.stats(), {}

    def stats(self) -> dict[str, Any]:
        return {
            "markets": self.markets,
            "epoch": self.epoch(),
            "sim_now": self.sim_now(),
            "latest_trade_index": self.latest_trade_index(),
            "faults": self.faults,
            "requests": dict(self.requests),
            "faults_served": dict(self.faults_served),
        }


def _string_numbers(bad: dict[str, Any]) -> None:
    if "volumeNum" in bad:
        bad["volumeNum"] = str(bad["volumeNum"])
        bad["volume24hr"] = str(bad["volume24hr"])


#: How each kind of damage changes a market record (in place).
_MARKET_DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "missing_question": lambda bad: bad.pop("question"),
    "null_id": lambda bad: bad.update(id=None),
    "nan_price": lambda bad: bad.update(outcomePrices='["NaN", "0.5"]'),
    "nan_volume": lambda bad: bad.update(volumeNum=math.nan),
    "infinite_volume": lambda bad: bad.update(volume24hr=math.inf),
    "huge_text": lambda bad: bad.update(question="Will it? " * 10_000),
    "bad_encoded_list": lambda bad: bad.update(outcomes="[Yes, No"),
    "nested_arrays": lambda bad: bad.update(outcomes='[["Yes"], ["No"]]'),
    "wrong_type": lambda bad: bad.update(closed="sometimes"),
    "negative_volume": lambda bad: bad.update(volumeNum=-5.0),
    "price_count_mismatch": lambda bad: bad.update(outcomePrices='["0.5"]'),
    "control_chars": lambda bad: bad.update(question="\x00" + bad["question"].replace(" ", " \x07", 1) + "\x1b"),
    "unsafe_keys": lambda bad: bad.update({"a.b": 1, "$where": "1", "nested": {"x.y": math.nan, "$gt": [[1, 2]]}}),
    "extra_fields": lambda bad: bad.update(
        {"umaResolutionStatuses": "[]", "rewards": [[1, 2], [3]], "spread": math.nan}
    ),
    "string_numbers": _string_numbers,
}


def spoil_market(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """Return `record` damaged in the way `kind` names (unchanged for an unknown kind)."""
    bad = dict(record)
    damage = _MARKET_DAMAGE.get(kind)
    if damage is not None:
        damage(bad)
    return bad


def spoil_trade(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """Return trade `record` damaged in the way `kind` names."""
    bad = dict(record)
    if kind == "missing_side":
        del bad["side"]
    elif kind == "nan_size":
        bad["size"] = math.nan
    elif kind == "price_out_of_range":
        bad["price"] = 5
    elif kind == "bad_timestamp":
        bad["timestamp"] = "yesterday"
    elif kind == "null_wallet":
        bad["proxyWallet"] = None
    elif kind == "control_chars":
        bad["outcome"] = "Ye\x00s\x07"
    elif kind == "unsafe_keys":
        bad.update({"a.b": 1, "$set": {"x": 1}})
    elif kind == "string_numbers":
        bad["size"] = str(bad["size"])
        bad["timestamp"] = str(bad["timestamp"])
    return bad


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}")
    return value


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"k:{offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        tag, offset = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if tag != "k":
            raise ValueError(cursor)
        return int(offset)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("after_cursor is not a cursor this API issued") from None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, payload: Any, headers: dict[str, str]) -> None:
    if isinstance(payload, bytes):
        body, content_type = payload, b"application/json"
    else:
        # allow_nan: the upstream's NaN/Infinity literals are part of what we simulate.
        body, content_type = json.dumps(payload, allow_nan=True).encode(), b"application/json"
    raw_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the simulator until SIGINT/SIGTERM; print one JSON line with the URL when ready.

    Args:
        config: what to serve.
        host: address to bind.
        port: port to bind; 0 picks a free one (read it from the printed line).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listen before announcing the URL: connections made while uvicorn starts then wait
    # in the backlog instead of being refused.
    sock.listen(512)
    bound_port = sock.getsockname()[1]
    app = Simulator(config)
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, timeout_keep_alive=30)
    )
    url = f"http://{host}:{bound_port}"
    sys.stdout.write(json.dumps({"simulator": url, "markets": config.markets, "seed": config.seed}) + "\n")
    sys.stdout.flush()
    server.run(sockets=[sock])
