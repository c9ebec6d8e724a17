"""How each policy spreads 1,000 picks over three backends (weights 5, 3, 2).

Run: python examples/policy_spread.py
"""

import random

import lbmiddleware as lb

BACKENDS = [
    lb.Backend("http://127.0.0.1:8001", weight=5),
    lb.Backend("http://127.0.0.1:8002", weight=3),
    lb.Backend("http://127.0.0.1:8003", weight=2),
]


def spread(policy: str, picks: int = 1000) -> dict[str, int]:
    """Pick ``picks`` times (keys for ip_hash: 1,000 client addresses) and count per backend."""
    pool = lb.Balancer(BACKENDS, policy=policy, rng=random.Random(7))
    counts = {backend.url: 0 for backend in BACKENDS}
    for i in range(picks):
        key = f"198.51.100.{i % 250}:{i // 250}" if policy == "ip_hash" else None
        with pool.attempt(key=key) as backend:
            counts[backend.url] += 1
    return counts


def main() -> None:
    header = f"{'policy':<12}" + "".join(f"{b.url[-4:]} (w={b.weight})".rjust(14) for b in BACKENDS)
    print(header)
    print("-" * len(header))
    for policy in lb.POLICIES:
        counts = spread(policy)
        print(f"{policy:<12}" + "".join(f"{counts[b.url]:>14}" for b in BACKENDS))
    print("\n(latency and least_conn see one request at a time here, so cost ties decide;"
          "\n the demo with real backends shows them under concurrent load.)")


if __name__ == "__main__":
    main()
