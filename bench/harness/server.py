"""The local S3 server (`python -m wsfuse.testing.s3server`) in its own process.

Its own process so that it does not share a GIL with the clients being measured; it keeps
objects in memory and is driven through its admin path (not counted, never delayed):
`POST /_wsfuse/latency?ms=N` (emulated time-to-first-byte), `GET /_wsfuse/stats` (requests
and response bytes by kind; `reset=1` resets after reading, `prefixes=a/,b/` counts other
keys' requests apart), `POST /_wsfuse/reset`.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.harness.env import ACCESS_KEY, BUCKET, ENV, PYTHON, ROOT, SECRET_KEY, MiB
from bench.harness.procs import stop_process
from wsfuse.testing.tls import self_signed_certificate

PART = 8 * MiB
#: Seconds the server may take to print its URL (it imports moto: a few seconds, more on a busy CI).
START_TIMEOUT = 60.0


def use_tls(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for https://127.0.0.1 (made by the openssl command), which
    every client of this run is then told to trust (`AWS_CA_BUNDLE`, in this process and in
    the environment of every process it starts). Returns (certificate, key)."""
    cert, key = self_signed_certificate(directory)
    os.environ["AWS_CA_BUNDLE"] = ENV["AWS_CA_BUNDLE"] = str(cert)
    return cert, key


class Server:
    def __init__(
        self,
        log_file: Path,
        buckets: tuple[str, ...] = (BUCKET,),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.log_file = log_file
        self.buckets = buckets
        self.tls = tls  # (certificate, key): serve HTTPS
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.latency_ms = 0.0
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls[0]))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def start(self) -> Server:
        # S3 checks upload checksums on its own machines: here that would be CPU taken
        # from the clients under test (and only wsfuse sends them)
        argv = [PYTHON, "-m", "wsfuse.testing.s3server", "--port", "0", "--no-verify-checksums"]
        for b in self.buckets:
            argv += ["--bucket", b]
        if self.tls is not None:
            argv += ["--tls", str(self.tls[0]), str(self.tls[1])]
        with open(self.log_file, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=ENV,
                text=True,
                cwd=ROOT,
            )
        assert self.proc.stdout is not None
        # A server that hangs before printing its URL must not hang the run: the line is
        # read in a thread, for at most START_TIMEOUT s.
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.proc.stdout.readline)
            try:
                line = pending.result(timeout=START_TIMEOUT).strip()
            except TimeoutError:
                stop_process(self.proc)  # its end closes its stdout, which ends the readline
                self.proc = None
                raise RuntimeError(
                    f"S3 server did not start within {START_TIMEOUT:.0f} s, see {self.log_file}"
                ) from None
        if not line.startswith("http"):
            raise RuntimeError(f"S3 server did not start: {line!r}, see {self.log_file}")
        self.url = line
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.url}/_wsfuse/{path}", method=method)
        with self._opener.open(req, timeout=30) as resp:
            return json.loads(resp.read())

    def set_latency(self, ms: float) -> None:
        self._call("POST", f"latency?ms={ms}")
        self.latency_ms = ms

    @contextlib.contextmanager
    def no_latency(self) -> Iterator[None]:
        """The harness's own seeding and clean-up are never delayed."""
        saved = self.latency_ms
        self.set_latency(0)
        try:
            yield
        finally:
            self.set_latency(saved)

    def stats(
        self, reset: bool = False, prefixes: tuple[str, ...] = ()
    ) -> dict[str, dict[str, int]]:
        """Requests and bytes by kind; with `prefixes`, other keys' requests only as
        `"elsewhere"` (`S3TestServer.stats_summary`; no prefix may contain a comma)."""
        if isinstance(prefixes, str) or any("," in p for p in prefixes):
            raise ValueError(f"key prefixes without commas, in a tuple: {prefixes!r}")
        params = {"reset": "1"} if reset else {}
        if prefixes:
            params["prefixes"] = ",".join(prefixes)
        query = urllib.parse.urlencode(params)
        result: dict[str, dict[str, int]] = self._call("GET", f"stats?{query}")
        return result

    def reset(self) -> None:
        self._call("POST", "reset")

    def settled_stats(
        self,
        quiet: float = 0.5,
        max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        prefixes: tuple[str, ...] = (),
    ) -> tuple[dict[str, dict[str, int]], float]:
        """The stats once no request has ended for `quiet` s (at most `max_wait` s), and how
        long that took. A workload's traffic does not end with it: read-ahead still in flight
        when a time-limited pass stops, or a peer's upload after `close`, would otherwise be
        counted in the next workload's numbers. With `prefixes` (the workload's keys), only
        requests for them, or for no key, are the workload's, and only they must go quiet;
        the rest is `"elsewhere"` (a peer still uploading an earlier workload's files)."""
        start = clock()
        stats = self.stats(prefixes=prefixes)
        while clock() - start < max_wait:
            sleep(quiet)
            later = self.stats(prefixes=prefixes)
            if later.get("total") == stats.get("total"):
                break
            stats = later
        return stats, clock() - start

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def s3_client(url: str, pool: int = 32) -> Any:
    """A boto3 client as a careful user would configure it: path style, no checksums the
    server does not need, no retries (a failure should show)."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=pool,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=cfg,
    )


def harness_client(url: str) -> Any:
    """A client for the harness's own checks ("is it in the bucket yet?"): its requests carry
    `x-wsfuse-harness: 1`, so the server neither delays nor counts them and a workload's
    time and traffic are its own."""
    client = s3_client(url, pool=4)
    client.meta.events.register("before-sign.s3", _mark_as_harness)
    return client


def _mark_as_harness(request: Any, **_: Any) -> None:
    request.headers["x-wsfuse-harness"] = "1"


def seed(client: Any, key: str, size: int, threads: int = 8) -> float:
    """Multipart-upload `size` bytes of ramp data as `key`; returns MB/s."""
    from wsfuse.testing.ramp import ramp

    t0 = time.perf_counter()
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

    def put(number: int) -> dict[str, Any]:
        off = (number - 1) * PART
        body = ramp(key, off, min(PART, size - off))
        etag = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body
        )["ETag"]
        return {"PartNumber": number, "ETag": etag}

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(put, range(1, -(-size // PART) + 1)))
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    return size / (time.perf_counter() - t0) / 1e6


def write_local_copy(path: Path, key: str, size: int) -> None:
    """The same ramp bytes as object `key`, in a local file (for the local ceilings)."""
    from wsfuse.testing.ramp import ramp

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for off in range(0, size, PART):
            f.write(ramp(key, off, min(PART, size - off)))
