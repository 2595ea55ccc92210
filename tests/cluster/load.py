"""Commits through the emulator, timed one by one, with the emulator's memory sampled as they go.

Each commit is what the aws backend does for a PUT: ``ConfigService.put`` over ``AwsStore`` (head read, S3
``PutObject``, revision read, one ``TransactWriteItems`` of head + counter + version + change-log entry).
Keys cycle over a small set so heads are updated in place while the table keeps growing (versions and the
change log), which is what made plain moto slow down.

By hand (prints a curve; ``--commits 20000`` is the issue's target)::

    python -m tests.cluster.load --commits 20000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.aws.support import REGION, create_resources


@dataclass
class Sample:
    commits: int
    rss_bytes: int
    cpu_seconds: float  # the emulator's own CPU time so far: its work, whatever else the machine is doing


@dataclass
class LoadCurve:
    """Per-commit wall times (seconds), and samples of the emulator every ``sample_every`` commits."""

    seconds: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def window_median(self, start: int, stop: int) -> float:
        return statistics.median(self.seconds[start:stop])

    def at(self, commits: int) -> Sample:
        """The sample taken after exactly ``commits`` commits."""
        return next(sample for sample in self.samples if sample.commits == commits)

    def growth(self, start: int, stop: int) -> tuple[int, float]:
        """(RSS bytes, CPU seconds) the emulator gained between two sampled commit counts."""
        first, last = self.at(start), self.at(stop)
        return last.rss_bytes - first.rss_bytes, last.cpu_seconds - first.cpu_seconds


def drive_commits(
    endpoint: str,
    count: int,
    measure: Callable[[], tuple[int, float]],
    *,
    keys: int = 10,
    sample_every: int = 100,
    deadline: float | None = None,
    on_sample: Callable[[LoadCurve], None] | None = None,
) -> LoadCurve:
    """``count`` sequential commits; ``measure()`` gives the emulator's (RSS bytes, CPU seconds). Stops early,
    with what it has, on a sample boundary past ``deadline`` (monotonic clock)."""
    from tessera.core.backends.aws import AwsClients, AwsStore, KmsKeyService
    from tessera.core.crypto import CachingKeyService
    from tessera.core.model import ROOT, Scope
    from tessera.core.service import ConfigService

    clients = AwsClients.create(REGION, endpoint, max_attempts=3)
    table, bucket, _ = create_resources(clients)
    store = AwsStore(table=table, bucket=bucket, dynamodb=clients.dynamodb, s3=clients.s3, calls=clients.calls)
    service = ConfigService(store, CachingKeyService(KmsKeyService(clients.kms, "alias/tessera", clients.calls)))
    scope = Scope()
    curve = LoadCurve()
    curve.samples.append(Sample(0, *measure()))
    for number in range(count):
        started = time.perf_counter()
        service.put(ROOT, scope, f"load.key{number % keys}", number)
        curve.seconds.append(time.perf_counter() - started)
        done = number + 1
        if done % sample_every == 0:
            curve.samples.append(Sample(done, *measure()))
            if on_sample is not None:
                on_sample(curve)
            if deadline is not None and time.monotonic() > deadline:
                break
    return curve


def main() -> None:
    from tests.cluster.emulator import Emulator

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--every", type=int, default=1000, help="print a line every N commits")
    args = parser.parse_args()
    print("commits  wall ms/commit (median of window)  emulator CPU ms/commit (window)  emulator RSS MB", flush=True)

    def show(curve: LoadCurve) -> None:
        previous, sample = curve.samples[-2], curve.samples[-1]
        cpu = (sample.cpu_seconds - previous.cpu_seconds) / (sample.commits - previous.commits)
        wall = curve.window_median(previous.commits, sample.commits)
        print(f"{sample.commits:7d}  {1000 * wall:8.2f}  {1000 * cpu:8.2f}  {sample.rss_bytes / 2**20:10.1f}", flush=True)

    with Emulator() as emulator:
        drive_commits(emulator.url, args.commits, emulator.measure, sample_every=args.every, on_sample=show)


if __name__ == "__main__":
    main()
