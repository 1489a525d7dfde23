"""Times vector queries against a running Heimdex, one at a time over one keep-alive
connection: POST /vectors/search with a random unit vector (fixed seed), `limit` 10.

    python3 bench/vector_queries.py <base-url> <token> <queries> [dim]

Prints `p50 <ms> p99 <ms>`. Standard library only. A random vector costs the store what a
real query's does (the scan or the graph walk does not depend on where the vector points);
the embedding of a text query is left out on purpose, so the figure is the service's own.
"""

import http.client
import json
import math
import random
import sys
import time
import urllib.parse


def main() -> None:
    url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dim = int(sys.argv[4]) if len(sys.argv) > 4 else 384
    rng = random.Random(5)
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies = []
    for _ in range(n):
        v = [rng.gauss(0.0, 1.0) for _ in range(dim)]
        norm = math.sqrt(sum(x * x for x in v))
        body = json.dumps({"vector": [x / norm for x in v], "limit": 10})
        start = time.perf_counter()
        conn.request("POST", "/vectors/search", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        latencies.append(time.perf_counter() - start)
        if resp.status != 200:
            sys.exit(f"HTTP {resp.status}: {data[:300]!r}")
    latencies.sort()
    print(f"p50 {latencies[n // 2] * 1e3:.3f} p99 {latencies[min(n - 1, n * 99 // 100)] * 1e3:.3f}")


if __name__ == "__main__":
    main()
