"""The ETL example (examples/etl/pipeline.yaml) written as Python functions.

Each `@weft.function` is a step; calling them inside `with weft.Pipeline(...)` wires the
DAG, and every output is byte-for-byte the output of the same step of the YAML pipeline
(tests/integration/authoring/test_etl_example.py checks it). Run it against `weft up`:

    python examples/etl_functions.py                # applies `etl-py`, runs it, prints the report
    python examples/etl_functions.py --rows 5000 --target 127.0.0.1:50051

Functions import what they use inside their bodies: a step runs the function's source
alone, with nothing from this file around it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import weft

IMAGE = "python:3.11-slim"


@weft.function(image=IMAGE, outputs="orders")
def generate(rows: int, seed: int) -> Path:
    """`rows` orders as CSV (id, region, amount); the same seed gives the same data."""
    import csv
    import random

    rng = random.Random(seed)
    regions = ["north", "south", "east", "west"]
    path = Path("orders.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "region", "amount"])
        for order in range(rows):
            # About one order in ten is a refund (a negative amount).
            amount = -rng.uniform(5, 80) if rng.random() < 0.1 else rng.uniform(5, 500)
            writer.writerow([order, rng.choice(regions), f"{amount:.2f}"])
    print(f"generated {rows} orders")
    return path


@weft.function(image=IMAGE, outputs="stats", retry=weft.Retry(max_attempts=2, backoff=1), timeout=300)
def transform(orders: Path, shard: int) -> dict[str, Any]:
    """Per-region orders, revenue and refunds of the orders whose id modulo 3 is `shard`."""
    import csv

    stats: dict[str, Any] = {}
    with open(orders, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["id"]) % 3 != shard:
                continue
            amount = float(row["amount"])
            region = stats.setdefault(row["region"], {"orders": 0, "revenue": 0.0, "refunds": 0.0})
            if amount < 0:
                region["refunds"] += -amount
            else:
                region["orders"] += 1
                region["revenue"] += amount
    for region in stats.values():
        region["revenue"] = round(region["revenue"], 2)
        region["refunds"] = round(region["refunds"], 2)
    print(f"shard {shard}: {sum(r['orders'] for r in stats.values())} orders")
    return stats


@weft.function(image=IMAGE, outputs="summary")
def aggregate(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' statistics added up (the join: it runs once every shard has committed)."""
    total: dict[str, Any] = {}
    for shard in shards:
        for name, region in shard.items():
            into = total.setdefault(name, {"orders": 0, "revenue": 0.0, "refunds": 0.0})
            for key, value in region.items():
                into[key] += value
    for region in total.values():
        region["revenue"] = round(region["revenue"], 2)
        region["refunds"] = round(region["refunds"], 2)
    return total


@weft.function(image=IMAGE, outputs="report")
def report(summary: dict[str, Any], rows: str) -> str:
    """The summary as a text table."""
    rows = rows.strip()
    lines = [f"Orders by region ({rows} generated)", ""]
    lines.append(f"{'region':<8} {'orders':>7} {'revenue':>12} {'refunds':>10} {'net':>12} {'avg order':>10}")
    totals = {"orders": 0, "revenue": 0.0, "refunds": 0.0}
    for name in sorted(summary):
        r = summary[name]
        for key in totals:
            totals[key] += r[key]
        avg = r["revenue"] / r["orders"] if r["orders"] else 0.0
        net = r["revenue"] - r["refunds"]
        lines.append(
            f"{name:<8} {r['orders']:>7} {r['revenue']:>12.2f} {r['refunds']:>10.2f} {net:>12.2f} {avg:>10.2f}"
        )
    avg = totals["revenue"] / totals["orders"] if totals["orders"] else 0.0
    net = totals["revenue"] - totals["refunds"]
    lines.append(
        f"{'total':<8} {totals['orders']:>7} {totals['revenue']:>12.2f} {totals['refunds']:>10.2f} "
        f"{net:>12.2f} {avg:>10.2f}"
    )
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def build(name: str = "etl-py") -> weft.Pipeline:
    """The pipeline: generate → transform-0..2 (the fan-out) → aggregate (the join) → report."""
    with weft.Pipeline(name, description="The ETL example as Python functions.", labels={"example": "true"}) as p:
        rows = p.parameter("rows", default="1000", description="How many orders to generate.")
        seed = p.parameter("seed", default="7", description="Seed of the order generator.")
        orders = generate(rows=rows, seed=seed)
        shards = [transform.named(f"transform-{i}")(orders=orders, shard=i) for i in range(3)]
        report(summary=aggregate(shards=shards), rows=rows)
    return p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=weft.DEFAULT_TARGET, help="weft-api address (default: %(default)s)")
    parser.add_argument("--rows", default="1000", help="orders to generate (default: %(default)s)")
    args = parser.parse_args()
    with weft.Client.connect(args.target) as client:
        print(client.apply(build()))
        run = client.create_run("etl-py", parameters={"rows": args.rows}).wait()
        print(run)
        print(run.outputs("report")["report"]["report"].decode(), end="")


if __name__ == "__main__":
    main()
