"""A requests Session whose calls to ``http://service/`` are spread over LB_BACKENDS.

Starts nothing itself: point it at running backends. With the demo's backends (fast,
slow and flaky), in one terminal::

    python -m lbmiddleware.demo.backends          # prints LB_BACKENDS=http://127.0.0.1:...

and in another, with the line it printed::

    LB_BACKENDS=http://127.0.0.1:41001,http://127.0.0.1:41002,http://127.0.0.1:41003 \\
        LB_POLICY=latency python examples/requests_client.py

Any HTTP servers do: ``LB_BACKENDS="http://10.0.0.1:8080 weight=2, http://10.0.0.2:8080"``.
Every other ``LB_*`` setting applies (``LB_RETRIES``, ``LB_MAX_FAILS``, ``LB_HASH_KEY``,
``LB_PRESERVE_HOST``, ...). The flaky backend's 503s and dropped connections are retried
on another backend, so every call succeeds; the table shows who served what.
"""

from __future__ import annotations

import sys

import requests

import lbmiddleware as lb
from lbmiddleware.adapter import LoadBalancingAdapter

CALLS = 200


def main() -> int:
    try:
        adapter = LoadBalancingAdapter.from_env()      # LB_BACKENDS, LB_POLICY, ...
    except lb.ConfigError as exc:
        print(f"{exc}\n(see the top of {__file__} for how to run it)", file=sys.stderr)
        return 2
    session = requests.Session()
    session.mount("http://service/", adapter)

    errors = 0
    for i in range(CALLS):
        try:
            response = session.get("http://service/items", params={"page": i % 5}, timeout=5)
            response.raise_for_status()
        except requests.RequestException as exc:      # NoHealthyBackend included
            errors += 1
            print(f"call {i}: {exc}", file=sys.stderr)

    print(f"{CALLS} calls with policy {adapter.balancer.policy}: {errors} errors\n")
    print(f"{'backend':<28}{'state':<10}{'requests':>9}{'failures':>9}{'latency ms':>12}")
    for row in adapter.balancer.stats():
        latency = "-" if row["latency"] is None else f"{row['latency'] * 1000:.1f}"
        print(f"{row['url']:<28}{row['state']:<10}{row['requests']:>9}{row['failures']:>9}"
              f"{latency:>12}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
