"""Bounded loopback load tests of the demo: a greedy client beside a polite one, floods of large bodies, uploads.

The runner's cases (``measure``) serve the demo in a child process (``bioscan-clip demo`` on ``127.0.0.1``, an
ephemeral port, its own upload folder), so that its RSS is the server's alone and the clients' threads do not share
its interpreter; each client is one loopback source address (``127.0.0.2``, ``127.0.0.3``, ...), which is what the
demo counts quotas by when it does not trust ``X-Forwarded-For`` (the default off a Space):

- polite alone: one client identifies a barcode, waits for the answer, honours ``Retry-After``, pauses 1 s, again
  (the baseline of the next case);
- greedy: the same polite client while one other address runs 50 threads that post identifications as fast as they
  can and ignore every ``Retry-After``; reported: how many of the polite client's identifications were answered and
  their p50/p99 latency (from the first try to the answer), and what the greedy client was answered;
- large bodies: 8 threads send 20-300 MB bodies to ``queue/join`` and ``/call/identify``, declared and chunked,
  while the server's RSS is sampled; reported: the RSS after the flood against the RSS before it.

``python benchmarks/bench_demo_load.py --case uploads`` keeps the earlier upload flood (N clients uploading and
identifying at once, the demo in this process trusting ``X-Forwarded-For``), whose figures RELIABILITY.md quotes.

Usage::

    python benchmarks/run.py --only demo_load --update          # the runner's cases into RESULTS.md
    python benchmarks/bench_demo_load.py --size smoke            # the same cases on their own, figures as JSON
    python benchmarks/bench_demo_load.py --case uploads --clients 8 --no-backoff

Nothing leaves loopback; every request has a timeout, every loop a deadline, and the run stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Figure  # noqa: E402

SECTION = "Demo under load (loopback)"
BARCODE = "AACATTATATTTTATTTTTGGTATTTGATCAGGAATAGTAGGAACATCTTTAAGAATTTTAATTCGAGCTGAATTAGGACAACCAGGATCATTAATTGG"
POLITE, GREEDY, FLOODER = "127.0.0.3", "127.0.0.2", "127.0.0.4"  # one loopback source address per client
# seconds of each case, greedy threads, large-body threads and sizes (MB), by size
PLANS = {
    "smoke": {"polite_s": 4, "greedy_s": 4, "greedy_threads": 4, "flood_s": 4, "flood_threads": 2, "mb": (20,)},
    "default": {"polite_s": 10, "greedy_s": 25, "greedy_threads": 50, "flood_s": 20, "flood_threads": 8,
                "mb": (20, 100, 300)},
    "large": {"polite_s": 20, "greedy_s": 30, "greedy_threads": 50, "flood_s": 30, "flood_threads": 8,
              "mb": (20, 100, 300)},
}  # fmt: skip
START_TIMEOUT_S = 180


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


def rss_mb(pid: int | str = "self") -> float | None:
    """The resident memory of process ``pid`` (this one by default), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
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


def client_at(url: str, address: str, timeout: float = 15) -> httpx.Client:
    """An HTTP client whose connections come from the loopback address ``address`` (the server sees it as the peer)."""
    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=address))


# --- one large body, sent the way a careless or hostile client would --------------------------------------------------


@dataclass
class BodyAnswer:
    status: int | None  # None: no answer before the connection closed or the timeout
    headers: dict[str, str]
    body: bytes
    sent_bytes: int  # of the body, when the answer came (or when sending stopped)


def send_body(url: str, path: str, size: int, *, chunked: bool, address: str = "127.0.0.1", timeout: float = 20,
              piece: int = 256 * 1024) -> BodyAnswer:  # fmt: skip
    """POSTs ``size`` bytes to ``path``, declared by ``Content-Length`` or chunked, over a raw socket; it stops
    sending as soon as the server answers (a server that reads the body whole answers only after the last byte)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    block = b"{" + b" " * (piece - 1)  # the start of a JSON object that never ends
    sent, received = 0, b""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout, source_address=(address, 0)) as sock:
        try:
            sock.sendall(head.encode())
            while sent < size and time.monotonic() < deadline:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the body ended
                part = block[: min(piece, size - sent)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                sent += len(part)
            if chunked and sent >= size:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed while we were still sending: read what it said
            pass
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            head_text, _, rest = received.partition(b"\r\n\r\n")
            headers = dict(
                line.split(": ", 1) for line in head_text.decode("latin-1").split("\r\n")[1:] if ": " in line
            )
            headers = {key.lower(): value for key, value in headers.items()}
            length = int(headers.get("content-length", "0"))
            while len(rest) < length and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            status = int(head_text.split(b" ", 2)[1]) if head_text.startswith(b"HTTP/") else None
            return BodyAnswer(status, headers, rest[:length], sent)
    return BodyAnswer(None, {}, b"", sent)


# --- the cases ---------------------------------------------------------------------------------------------------------


@dataclass
class PoliteReport:
    asked: int = 0
    answered: int = 0
    p50_s: float | None = None
    p99_s: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)


def polite_client(url: str, duration_s: float, *, address: str = POLITE, pause_s: float = 1.0) -> PoliteReport:
    """One identification at a time: wait for the answer, honour ``Retry-After``, pause, again, until the time is up."""
    report, statuses, latencies = PoliteReport(), Counter(), []
    deadline = time.monotonic() + duration_s
    with client_at(url, address) as http:
        while time.monotonic() < deadline:
            report.asked += 1
            started = time.monotonic()
            while time.monotonic() < deadline + 10:  # a started identification may finish after the case's end
                try:
                    joined = http.post("/gradio_api/call/identify", json={"data": [None, BARCODE, 1]})
                except httpx.HTTPError as error:
                    statuses[f"transport {type(error).__name__}"] += 1
                    time.sleep(1)
                    continue
                statuses[f"join {joined.status_code}"] += 1
                if joined.status_code in (429, 503):
                    time.sleep(min(float(joined.headers.get("retry-after", "1")), 10))
                    continue
                if joined.status_code == 200:
                    answer = http.get(f"/gradio_api/call/identify/{joined.json()['event_id']}", timeout=30).text
                    if "event: complete" in answer:
                        latencies.append(time.monotonic() - started)
                        report.answered += 1
                    else:
                        statuses["identify error"] += 1
                break
            time.sleep(pause_s)
    report.p50_s, report.p99_s = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    report.statuses = dict(sorted(statuses.items()))
    return report


@dataclass
class GreedyReport:
    threads: int
    duration_s: float
    statuses: dict[str, int] = field(default_factory=dict)
    retry_after_missing: int = 0  # 429/503 answers without Retry-After
    polite: PoliteReport | None = None


def greedy_beside_polite(url: str, *, threads: int, duration_s: float, address: str = GREEDY) -> GreedyReport:
    """``threads`` threads from ``address`` post identifications without pause (never reading an answer, ignoring
    every ``Retry-After``) while :func:`polite_client` runs from its own address."""
    report, statuses, lock = GreedyReport(threads, duration_s), Counter(), threading.Lock()
    deadline = time.monotonic() + duration_s

    def greedy() -> None:
        with client_at(url, address, timeout=10) as http:
            while time.monotonic() < deadline:
                try:
                    response = http.post("/gradio_api/call/identify", json={"data": [None, BARCODE, 1]})
                except httpx.HTTPError as error:
                    with lock:
                        statuses[f"transport {type(error).__name__}"] += 1
                    continue
                with lock:
                    statuses[str(response.status_code)] += 1
                    if response.status_code in (429, 503) and "retry-after" not in response.headers:
                        report.retry_after_missing += 1

    workers = [threading.Thread(target=greedy, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(min(1.0, duration_s / 4))  # the greedy client is at full speed before the polite one starts
    report.polite = polite_client(url, deadline - time.monotonic())
    for worker in workers:
        worker.join(timeout=30)
    report.statuses = dict(sorted(statuses.items()))
    return report


@dataclass
class FloodReport:
    threads: int
    duration_s: float
    sizes_mb: tuple[int, ...]
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    offered_mb: float = 0.0  # the bodies' declared or intended sizes, summed
    sent_mb: float = 0.0  # what was sent before the server answered
    statuses: dict[str, int] = field(default_factory=dict)


def large_body_flood(url: str, pid: int, *, threads: int, duration_s: float, sizes_mb: tuple[int, ...],
                     address: str = FLOODER, spread: bool = True, settle_s: float = 3.0) -> FloodReport:  # fmt: skip
    """``threads`` threads send bodies of ``sizes_mb`` to ``queue/join`` and ``/call/identify``, declared and
    chunked in turn, while the server's RSS is sampled; the end RSS is taken ``settle_s`` after the flood. With
    ``spread``, each body comes from another loopback address (``127.0.10+T.N``), else all from ``address``."""
    report, statuses, lock = FloodReport(threads, duration_s, sizes_mb), Counter(), threading.Lock()
    report.rss_start_mb = report.rss_peak_mb = rss_mb(pid) or 0.0
    deadline, stop = time.monotonic() + duration_s, threading.Event()
    routes = ("/gradio_api/queue/join", "/gradio_api/call/identify")

    def flooder(number: int) -> None:
        turn = number
        while time.monotonic() < deadline:
            size, route, chunked = sizes_mb[turn % len(sizes_mb)], routes[turn % 2], bool(turn // 2 % 2)
            turn += 1
            try:
                # a new address each time, so that the body cap, not the call quota, is what answers
                source = f"127.0.{10 + number}.{turn % 250 + 1}" if spread else address
                answer = send_body(url, route, size * 1024 * 1024, chunked=chunked, address=source)
            except OSError as error:
                with lock:
                    statuses[f"transport {type(error).__name__}"] += 1
                continue
            with lock:
                statuses[f"{'chunked' if chunked else 'declared'} {answer.status}"] += 1
                report.offered_mb += size
                report.sent_mb += answer.sent_bytes / 1024 / 1024

    def monitor() -> None:
        while not stop.is_set():
            report.rss_peak_mb = max(report.rss_peak_mb, rss_mb(pid) or 0.0)
            stop.wait(0.1)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    workers = [threading.Thread(target=flooder, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=duration_s + 60)
    time.sleep(settle_s)
    stop.set()
    watcher.join(timeout=5)
    report.rss_end_mb = rss_mb(pid) or 0.0
    report.statuses = dict(sorted(statuses.items()))
    return report


@contextlib.contextmanager
def served_in_child(root: Path, model_dir: Path | str, key_dir: Path | str) -> Iterator[tuple[str, int]]:
    """``bioscan-clip demo`` on ``127.0.0.1`` in a child process, with every default limit; ``(url, pid)``."""
    port = free_port()
    command = [sys.executable, "-m", "bioscan_clip.apps.cli", "demo", "--model", str(model_dir), "--keys",
               str(key_dir), "--host", "127.0.0.1", "--port", str(port), "--upload_dir", str(root / "uploads"),
               "--examples_dir", str(root / "examples"), "--no-trust_forwarded_for"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SPACE_ID", None)
    log = open(root / "server.log", "wb")  # noqa: SIM115  (closed below, after the child)
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"the demo exited {child.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/config", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError(f"the demo did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield url, child.pid
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=20)
        log.close()


def measure(size: str) -> list[Figure]:
    """The runner's cases (module docstring) on a built tiny model and 60 keys, the demo in a child process."""
    plan = PLANS[size]
    sys.path.insert(0, str(HERE.parent / "tests"))  # the untrained folders' helper
    from demo_folders import write_untrained_demo_folders

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as scratch:
        root = Path(scratch)
        model_dir, key_dir = write_untrained_demo_folders(root / "folders")
        with served_in_child(root, model_dir, key_dir) as (url, pid):
            warm = polite_client(url, 2, pause_s=0.2)  # code paths and the model warmed before anything is timed
            assert warm.answered, f"the demo answered nothing while warming up: {warm}"
            alone = polite_client(url, plan["polite_s"])
            rss_before_greedy = rss_mb(pid) or float("nan")
            greedy = greedy_beside_polite(url, threads=plan["greedy_threads"], duration_s=plan["greedy_s"])
            time.sleep(2)  # the greedy client's last admitted jobs drain
            rss_after_greedy = rss_mb(pid) or float("nan")
            flood = large_body_flood(
                url, pid, threads=plan["flood_threads"], duration_s=plan["flood_s"], sizes_mb=plan["mb"]
            )
            after = polite_client(url, 2, pause_s=0.2)
    polite = greedy.polite
    shared = f"2-core VM shared with other work (load average {load:.1f} at the start): measured under load"
    refused = greedy.statuses.get("429", 0)
    greedy_calls = sum(greedy.statuses.values())
    figures = [
        Figure(
            name=f"polite client answered while one greedy client ({plan['greedy_threads']} threads, "
            f"{plan['greedy_s']} s, Retry-After ignored) floods identifications",
            value=polite.answered / max(polite.asked, 1),
            unit="share of its identifications",
            target="all answered",
            met=polite.asked > 0 and polite.answered == polite.asked,
            note=f"{polite.answered} of {polite.asked}; its answers {polite.statuses}; {shared}",
        ),
        Figure(
            name="polite client p99 latency (first try to answer) beside the greedy client",
            value=polite.p99_s if polite.p99_s is not None else float("nan"),
            unit="s",
            baseline="the same client alone",
            baseline_value=alone.p99_s,
            target="< 5 s",
            met=polite.p99_s is not None and polite.p99_s < 5,
            note=f"p50 {polite.p50_s or float('nan'):.2f} s beside the greedy client, {alone.p50_s or float('nan'):.2f}"
            f" s alone ({alone.answered} of {alone.asked} answered alone)",
            lower_is_better=True,
        ),
        Figure(
            name="greedy client's identifications refused with 429",
            value=refused / max(greedy_calls, 1),
            unit="share of its calls",
            target="every refusal says when to retry",
            met=greedy.retry_after_missing == 0 and refused > 0,
            note=f"answers {greedy.statuses}; {greedy.retry_after_missing} without Retry-After; server RSS "
            f"{rss_before_greedy:.0f} MB before, {rss_after_greedy:.0f} MB 2 s after",
        ),
        Figure(
            name=f"server RSS after a flood of {'/'.join(map(str, plan['mb']))} MB bodies to queue/join and call "
            f"({plan['flood_threads']} threads, {plan['flood_s']} s, declared and chunked)",
            value=flood.rss_end_mb / flood.rss_start_mb if flood.rss_start_mb else float("nan"),
            unit="x its RSS before",
            target="<= 1.10",
            met=bool(flood.rss_start_mb) and flood.rss_end_mb <= 1.10 * flood.rss_start_mb,
            note=f"RSS {flood.rss_start_mb:.0f} MB before, peak {flood.rss_peak_mb:.0f} MB, {flood.rss_end_mb:.0f} MB "
            f"3 s after; {flood.offered_mb:,.0f} MB offered, {flood.sent_mb:,.1f} MB sent before the answers "
            f"{flood.statuses}; then {after.answered} of {after.asked} identifications answered",
            lower_is_better=True,
        ),
    ]
    return figures


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
    """The upload flood: ``clients`` threads, each its own ``X-Forwarded-For`` address (a demo that trusts it),
    upload a photo-sized file and identify a barcode in a loop for at most ``duration_s``; reports what they saw."""
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


def upload_flood_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as scratch:
        root = Path(scratch)
        cache_dir = root / "gradio-cache"
        cache_dir.mkdir()
        os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
        from bioscan_clip.apps.demo import build_demo, guard, launch

        sys.path.insert(0, str(HERE.parent / "tests"))  # the untrained folders' helper
        from demo_folders import write_untrained_demo_folders

        model_dir, key_dir = (args.model, args.keys) if args.model else write_untrained_demo_folders(root)
        cap_mb = args.cache_mb or guard.UPLOAD_CACHE_CAP_MB
        demo = build_demo(model_dir, key_dir, examples_dir=root / "examples")
        _, url, _ = launch(
            demo, port=free_port(), upload_cache_mb=cap_mb, trust_forwarded_for=True, prevent_thread_lock=True,
            quiet=True,
        )  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["runner", "uploads"], default="runner")
    parser.add_argument("--size", choices=sorted(PLANS), default="default", help="the runner's cases: how long")
    parser.add_argument("--clients", type=int, default=50, help="uploads: clients")
    parser.add_argument("--duration", type=float, default=20.0, help="uploads: seconds (the run stops by itself)")
    parser.add_argument("--upload-mb", type=float, default=1.0)
    parser.add_argument("--cache-mb", type=int, default=None, help="upload-cache cap (default: the demo's)")
    parser.add_argument("--backoff", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--keys", default=None)
    args = parser.parse_args()
    if args.case == "uploads":
        return upload_flood_main(args)
    for figure in measure(args.size):
        print(json.dumps(figure.as_dict()))


if __name__ == "__main__":
    main()
