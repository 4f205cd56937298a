"""Print a loopstat file (bench/loopstat/sitecustomize.py): per callback kind, its calls,
CPU and wall time on the event loop's thread; then the slow ones by kind."""

from __future__ import annotations

import collections
import json
import re
import sys


def main(path: str, top: int = 30) -> None:
    with open(path) as f:
        d = json.load(f)
    rows: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for key, n, wall, cpu, longest in d["stats"]:
        r = rows[re.sub(r" at 0x[0-9a-f]+", "", key)[:150]]
        r[0] += n
        r[1] += wall
        r[2] += cpu
        r[3] = max(r[3], longest)
    total_cpu = sum(r[2] for r in rows.values())
    total_wall = sum(r[1] for r in rows.values())
    print(f"callbacks: CPU {total_cpu:.2f} s, wall {total_wall:.2f} s; {d.get('info')}")
    for key, (n, wall, cpu, longest) in sorted(rows.items(), key=lambda kv: -kv[1][2])[:top]:
        print(
            f"{n:7.0f} CPU {cpu * 1e3:8.1f} ms ({cpu / n * 1e3:6.3f}/call) "
            f"wall {wall * 1e3:8.1f} ms max {longest * 1e3:6.1f}  {key}"
        )
    kinds: collections.Counter[str] = collections.Counter()
    for _at, _wall, _cpu, key, _where in d["slow"]:
        kinds[re.sub(r" at 0x[0-9a-f]+", "", key)[:100]] += 1
    print(f"over the slow threshold: {len(d['slow'])}")
    for key, n in kinds.most_common(top):
        print(f"{n:6d} {key}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
