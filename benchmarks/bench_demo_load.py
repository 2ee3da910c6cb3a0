"""A bounded loopback load test of the demo: N clients uploading and identifying at once.

The demo is launched in this process on ``127.0.0.1`` (an ephemeral port, its own upload cache folder); each client
is a thread with its own ``X-Forwarded-For`` address (the demo trusts it here, as on a Space behind the proxy), and
loops until the time is up or its request budget is spent: upload a photo-sized file, then ask ``/identify`` for a
barcode and wait for the answer. ``429``/``503`` responses are counted and, with back-off, the client sleeps for
their ``Retry-After``. Reported: p50/p99 latency of answered identifications, responses by status, the largest
upload-cache size seen (sampled every 50 ms) against its cap, and the server's RSS.

Usage::

    python benchmarks/bench_demo_load.py                      # 50 clients, 20 s, a built tiny model and keys
    python benchmarks/bench_demo_load.py --clients 8 --no-backoff --model DIR --keys DIR

Nothing leaves loopback; every request has a timeout, and the run stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

BARCODE = "AACATTATATTTTATTTTTGGTATTTGATCAGGAATAGTAGGAACATCTTTAAGAATTTTAATTCGAGCTGAATTAGGACAACCAGGATCATTAATTGG"


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    backoff: bool
    answered: int = 0
    p50_s: float | None = None
    p99_s: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)  # "upload 200", "identify 503", ...
    retry_after_missing: int = 0  # 429/503 responses without a Retry-After header
    max_cache_bytes: int = 0
    cache_cap_bytes: int = 0
    server_rss_mb: float | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def flood(
    url: str,
    cache_dir: Path,
    *,
    clients: int,
    duration_s: float,
    upload_bytes: int = 1024 * 1024,
    backoff: bool = True,
    max_requests_per_client: int = 200,
    cache_cap_bytes: int = 0,
) -> LoadReport:
    """Runs the clients against ``url`` for at most ``duration_s`` and reports what they saw."""
    url = url.rstrip("/")
    report = LoadReport(clients, duration_s, backoff, cache_cap_bytes=cache_cap_bytes)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    stop = threading.Event()
    payload = b"\xff\xd8\xff\xe0" + os.urandom(max(upload_bytes - 4, 0))  # a JPEG-looking blob (never decoded)

    def note(kind: str, response: httpx.Response) -> None:
        with lock:
            statuses[f"{kind} {response.status_code}"] += 1
            if response.status_code in (429, 503) and "retry-after" not in response.headers:
                report.retry_after_missing += 1
        if response.status_code in (429, 503) and backoff:
            wait = float(response.headers.get("retry-after", "1"))
            time.sleep(max(0.0, min(wait, deadline - time.monotonic())))

    def client(number: int) -> None:
        headers = {"X-Forwarded-For": f"10.0.{number // 250}.{number % 250 + 1}"}
        with httpx.Client(base_url=url, headers=headers, timeout=15) as http:
            for _ in range(max_requests_per_client):
                if time.monotonic() >= deadline:
                    return
                try:
                    uploaded = http.post("/gradio_api/upload", files={"files": ("specimen.jpg", payload)})
                    note("upload", uploaded)
                    started = time.monotonic()
                    joined = http.post("/gradio_api/call/identify", json={"data": [None, BARCODE, 1]})
                    note("identify", joined)
                    if joined.status_code != 200:
                        continue
                    event = joined.json()["event_id"]
                    with http.stream("GET", f"/gradio_api/call/identify/{event}") as stream:
                        outcome = "".join(line + "\n" for line in stream.iter_lines())
                    if "event: complete" in outcome:
                        with lock:
                            latencies.append(time.monotonic() - started)
                    else:
                        with lock:
                            statuses["identify error"] += 1
                except httpx.HTTPError as error:
                    with lock:
                        statuses[f"transport {type(error).__name__}"] += 1

    def monitor() -> None:
        while not stop.is_set():
            size = folder_bytes(cache_dir)
            with lock:
                report.max_cache_bytes = max(report.max_cache_bytes, size)
            stop.wait(0.05)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + 30)
    stop.set()
    watcher.join(timeout=5)
    report.answered = len(latencies)
    report.p50_s, report.p99_s = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    report.statuses = dict(sorted(statuses.items()))
    report.server_rss_mb = rss_mb()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (the run stops by itself)")
    parser.add_argument("--upload-mb", type=float, default=1.0)
    parser.add_argument("--cache-mb", type=int, default=None, help="upload-cache cap (default: the demo's)")
    parser.add_argument("--backoff", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--keys", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as scratch:
        root = Path(scratch)
        cache_dir = root / "gradio-cache"
        cache_dir.mkdir()
        os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
        from bioscan_clip.apps.demo import build_demo, guard, launch

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the untrained folders' helper
        from demo_folders import write_untrained_demo_folders

        model_dir, key_dir = (args.model, args.keys) if args.model else write_untrained_demo_folders(root)
        cap_mb = args.cache_mb or guard.UPLOAD_CACHE_CAP_MB
        demo = build_demo(model_dir, key_dir, examples_dir=root / "examples")
        _, url, _ = launch(
            demo,
            port=free_port(),
            upload_cache_mb=cap_mb,
            trust_forwarded_for=True,
            prevent_thread_lock=True,
            quiet=True,
        )
        try:
            report = flood(
                url,
                cache_dir,
                clients=args.clients,
                duration_s=args.duration,
                upload_bytes=int(args.upload_mb * 1024 * 1024),
                backoff=args.backoff,
                cache_cap_bytes=cap_mb * 1024 * 1024,
            )
        finally:
            demo.close()
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
