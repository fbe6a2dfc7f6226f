"""Write the NATS authorization block of the deployment from `shared/permissions.py`.

    .venv/bin/python deploy/generate_nats_config.py           # rewrite the file
    .venv/bin/python deploy/generate_nats_config.py --check   # exit 1 if it is stale

The output, `deploy/k8s/base/nats/auth.conf`, is committed (kustomize reads it into the
NATS ConfigMap) and `tests/deploy/test_policy.py` fails when it differs from what the
code derives, so the deployed permissions never drift from the subjects in use.
Production has an empty namespace, so the file is rendered for `Names()`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from any directory
    sys.path.insert(0, str(ROOT))

from shared.names import Names  # noqa: E402
from shared.permissions import render_authorization  # noqa: E402

AUTH_CONF = ROOT / "deploy" / "k8s" / "base" / "nats" / "auth.conf"


def main(argv: list[str]) -> int:
    """Write (or with `--check`, verify) the authorization file; returns the exit code."""
    wanted = render_authorization(Names())
    if argv == ["--check"]:
        if AUTH_CONF.is_file() and AUTH_CONF.read_text() == wanted:
            return 0
        print(f"{AUTH_CONF.relative_to(ROOT)} is stale: run python deploy/generate_nats_config.py", file=sys.stderr)
        return 1
    if argv:
        print("usage: generate_nats_config.py [--check]", file=sys.stderr)
        return 2
    AUTH_CONF.write_text(wanted)
    print(f"wrote {AUTH_CONF.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
