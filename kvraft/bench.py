"""``kvraft bench``: a closed-loop load test against a running cluster.

C workers share one :class:`AsyncClient` (one keep-alive connection pool); each has
one operation in flight. Reads are linearizable gets of keys written in an untimed
preload phase. The run is bounded by ``--n`` operations and ``--max-seconds``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import click

from kvraft import credentials, errors
from kvraft.client import AsyncClient
from kvraft.credentials import Credentials


@dataclass(slots=True)
class BenchResult:
    ops: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    def summary(self, **extra: Any) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0

        return {**extra, "ops": self.ops, "errors": self.errors,
                "elapsed_s": round(self.elapsed_s, 3),
                "ops_per_s": round(self.ops / self.elapsed_s, 1) if self.elapsed_s else 0.0,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": round(lat[-1] * 1000, 3) if lat else 0.0}


def key_of(i: int, key_size: int) -> str:
    return f"k{i:0{key_size - 1}d}"[-key_size:] if key_size > 1 else str(i)


async def run_bench(addrs: str, *, n: int, concurrency: int, value_size: int, key_size: int,
                    read_ratio: float, keyspace: int, max_seconds: float, seed: int,
                    client: AsyncClient | None = None,
                    creds: Credentials | None = None) -> BenchResult:
    own = client is None
    creds = creds or Credentials()
    c = client or AsyncClient(addrs, timeout_s=10.0, attempt_timeout_s=5.0, tls=creds.tls,
                              token=creds.token)
    value = "v" * value_size
    rng = random.Random(seed)
    plan = [(rng.random() < read_ratio, rng.randrange(keyspace)) for _ in range(n)]
    res = BenchResult()
    next_op = 0
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal next_op
        while next_op < len(plan) and time.monotonic() < deadline:
            is_read, k = plan[next_op]
            next_op += 1
            t0 = time.perf_counter()
            try:
                if is_read:
                    await c.get(key_of(k, key_size))
                else:
                    await c.put(key_of(k, key_size), value)
            except errors.KvraftError:
                res.errors += 1
                continue
            res.latencies_s.append(time.perf_counter() - t0)
            res.ops += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.elapsed_s = time.perf_counter() - start
    finally:
        if own:
            await c.close()
    return res


async def _preload(addrs: str, keyspace: int, key_size: int, value_size: int,
                   creds: Credentials) -> None:
    async with AsyncClient(addrs, timeout_s=10.0, tls=creds.tls, token=creds.token) as c:
        value = "v" * value_size
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await c.put(key_of(i, key_size), value)

        await asyncio.gather(*(one(i) for i in range(keyspace)))


@click.command()
@click.option("--addr", "addrs", envvar="KVRAFT_ADDRS",
              default="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003", show_default=True)
@click.option("--n", type=click.IntRange(1), default=10_000, show_default=True,
              help="Operations per concurrency level.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 4096), multiple=True,
              default=(1, 16, 64), show_default=True, help="Repeat for several levels.")
@click.option("--value-size", type=click.IntRange(0), default=100, show_default=True)
@click.option("--key-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--reads", "read_ratio", type=click.FloatRange(0, 1), default=0.0,
              show_default=True, help="Fraction of operations that are (linearizable) gets.")
@click.option("--keys", "keyspace", type=click.IntRange(1), default=10_000, show_default=True,
              help="Number of distinct keys.")
@click.option("--max-seconds", type=float, default=60.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per level.")
@credentials.options
def bench(addrs: str, n: int, concurrency: tuple[int, ...], value_size: int, key_size: int,
          read_ratio: float, keyspace: int, max_seconds: float, seed: int,
          as_json: bool, creds: Credentials) -> None:
    """Measure throughput and latency against a running cluster."""
    from kvraft.cli import install_fast_loop

    install_fast_loop()
    if read_ratio > 0:
        asyncio.run(_preload(addrs, keyspace, key_size, value_size, creds))
    for c in concurrency:
        r = asyncio.run(run_bench(addrs, n=n, concurrency=c, value_size=value_size,
                                  key_size=key_size, read_ratio=read_ratio, keyspace=keyspace,
                                  max_seconds=max_seconds, seed=seed, creds=creds))
        s = r.summary(concurrency=c, reads=read_ratio, value_size=value_size)
        if as_json:
            click.echo(json.dumps(s))
        else:
            click.echo(f"c={c:<4} reads={read_ratio:.2f} ops={s['ops']:<7} "
                       f"errors={s['errors']:<4} {s['ops_per_s']:>9.1f} ops/s  "
                       f"p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
                       f"max {s['max_ms']:.2f} ms")
