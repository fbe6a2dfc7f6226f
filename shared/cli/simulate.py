"""`pulse simulate`: run the provider simulator (Gamma + Data API shapes, with faults).

Point the system at it with PULSE_POLYMARKET_GAMMA_URL and PULSE_POLYMARKET_DATA_URL set
to the printed URL. Faults can be changed while it runs: POST /_sim/faults.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shared.cli.common import fail
from shared.providers.simulator import MAX_MARKETS, SimConfig, parse_fault, serve


def simulate(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to bind (0: any free port, printed)")] = 8765,
    markets: Annotated[int, typer.Option(min=0, max=MAX_MARKETS, help="markets in the catalogue")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of every generated record and fault")] = 1,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="ENDPOINT:KIND=RATE, repeatable; endpoints markets|trades, kinds "
            "5xx|429|slow|malformed|bad_records (e.g. --fault markets:5xx=0.2)"
        ),
    ] = None,
    frozen: Annotated[bool, typer.Option(help="sim time stands still (moves only via POST /_sim/advance)")] = False,
    move_every_s: Annotated[float, typer.Option(min=0.001, help="sim seconds between price steps")] = 60.0,
    trades_every_s: Annotated[float, typer.Option(min=0.001, help="sim seconds between new trades")] = 5.0,
    trade_backlog: Annotated[int, typer.Option(min=0, help="trades already there at start")] = 200,
    slow_s: Annotated[float, typer.Option(min=0, help="delay of a 'slow' answer, in seconds")] = 30.0,
    retry_after_s: Annotated[float, typer.Option(min=0, help="Retry-After sent with a 429, in seconds")] = 1.0,
) -> None:
    """Serve simulated Polymarket markets and trades, with injectable faults, until Ctrl-C."""
    faults: dict[str, dict[str, float]] = {}
    try:
        for text in fault or []:
            endpoint, kind, rate = parse_fault(text)
            faults.setdefault(endpoint, {})[kind] = rate
        config = SimConfig(
            markets=markets,
            seed=seed,
            faults=faults,
            frozen=frozen,
            move_every_s=move_every_s,
            trades_every_s=trades_every_s,
            trade_backlog=trade_backlog,
            slow_s=slow_s,
            retry_after_s=retry_after_s,
        )
    except ValueError as exc:
        fail(str(exc))
    try:
        serve(config, host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host")


def register(app: typer.Typer) -> None:
    """Add `pulse simulate` to `app`."""
    app.command("simulate")(simulate)


if __name__ == "__main__":  # `python -m shared.cli.simulate ...`: the command alone
    typer.run(simulate)
