"""The collatz example model: for each record's number n, the steps its Collatz sequence takes to
reach 1 and the highest value on the way. Standard library only.

    python3 collatz.py INPUT OUTPUT

INPUT is a JSON list of records like {"n": "27"} (CSV values arrive as text); OUTPUT gets one
{"n": 27, "steps": 111, "peak": 9232, "parity": "odd"} per record, in order. A record whose n is
not a positive whole number gets null steps and peak.
"""

import json
import sys


def collatz(n: int) -> tuple[int, int]:
    steps, peak = 0, n
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps, peak = steps + 1, max(peak, n)
    return steps, peak


def main(source: str, target: str) -> int:
    with open(source, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        print("the input is not a JSON list of records", file=sys.stderr)
        return 2
    out = []
    for record in records:
        text = str(record.get("n", "")).strip() if isinstance(record, dict) else ""
        n = int(text) if text.isdigit() and int(text) > 0 else None
        steps, peak = collatz(n) if n else (None, None)
        out.append({"n": n, "steps": steps, "peak": peak,
                    "parity": None if n is None else "even" if n % 2 == 0 else "odd"})
    with open(target, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: collatz.py INPUT OUTPUT", file=sys.stderr)
        sys.exit(1)
    sys.exit(main(sys.argv[1], sys.argv[2]))
