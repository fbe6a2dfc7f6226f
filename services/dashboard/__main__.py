"""Run the operators' dashboard: `python -m services.dashboard`.

Wiring only, like every service: the FastStream app (`Dashboard.app()`: the broker whose
connection the dashboard uses, `/healthz`, `/readyz`, `/metrics`, and the pages) is run
by the runtime's `run_app` on `PULSE_DASHBOARD_HOST`:`PULSE_DASHBOARD_PORT`. It starts
even while NATS or MongoDB is down and shows a banner until they answer (`/readyz` says
503 meanwhile). Read-only unless `PULSE_DASHBOARD_TOKEN` is set. SIGTERM/SIGINT end the
open live streams and stop it (exit 0); a bad setting or a busy port is one log line and
exit 2.
"""

from __future__ import annotations

from services.dashboard.app import Dashboard
from shared.runtime import run_app


def main() -> None:
    run_app("dashboard", lambda settings: Dashboard(settings).app(), listen="dashboard")


if __name__ == "__main__":
    main()
