"""How fast does the local S3 test server serve ranged GETs?

Starts `S3TestServer`, uploads a 1 GiB object (multipart, 8 MiB parts, no emulated latency),
then reads it back as 8 MiB ranges with 8 parallel boto3 readers and prints MB/s. The
benchmarks that compare wsfuse with its peers need the server to be well above the speed they
measure: the target is > 500 MB/s (stock moto manages ~14 MB/s, see measurements.md).

    .venv/bin/python bench/s3_server_ranges.py [--size-mib 1024] [--readers 8] [--range-mib 8]
        [--rounds 3] [--latency-ms 0] [--stock]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wsfuse.testing.ramp import ramp
from wsfuse.testing.s3server import S3TestServer

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--range-mib", type=int, default=8)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="time to first byte")
    parser.add_argument(
        "--stock", action="store_true", help="let moto answer ranges itself (for comparison)"
    )
    args = parser.parse_args()
    size = args.size_mib * MIB
    part = args.part_mib * MIB
    rng = args.range_mib * MIB

    with S3TestServer(fast_ranges=not args.stock) as server:
        server.create_bucket("bench")
        client = server.client()

        t0 = time.perf_counter()
        with server.no_latency():
            upload_id = client.create_multipart_upload(Bucket="bench", Key="big")["UploadId"]

            def put_part(number: int) -> Any:
                length = min(part, size - (number - 1) * part)
                resp = client.upload_part(
                    Bucket="bench",
                    Key="big",
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=ramp("big", (number - 1) * part, length),
                )
                return {"PartNumber": number, "ETag": resp["ETag"]}

            with ThreadPoolExecutor(8) as pool:
                parts = list(pool.map(put_part, range(1, -(-size // part) + 1)))
            t_parts = time.perf_counter()
            client.complete_multipart_upload(
                Bucket="bench", Key="big", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        t1 = time.perf_counter()
        print(
            f"upload {args.size_mib} MiB: {size / (t1 - t0) / 1e6:.0f} MB/s "
            f"(parts {t_parts - t0:.2f}s, complete {t1 - t_parts:.2f}s)"
        )

        server.latency = args.latency_ms / 1000
        offsets = list(range(0, size, rng))

        def read(offset: int) -> int:
            end = min(offset + rng, size) - 1
            resp = client.get_object(Bucket="bench", Key="big", Range=f"bytes={offset}-{end}")
            data = resp["Body"].read()
            assert len(data) == end - offset + 1, (len(data), offset, end)
            return len(data)

        rates = []
        with ThreadPoolExecutor(args.readers) as pool:
            for round_ in range(args.rounds):
                server.reset_stats()
                t0 = time.perf_counter()
                total = sum(pool.map(read, offsets))
                elapsed = time.perf_counter() - t0
                assert total == size
                rate = total / elapsed / 1e6
                rates.append(rate)
                print(
                    f"round {round_ + 1}: {len(offsets)} x {args.range_mib} MiB ranges, "
                    f"{args.readers} readers: {rate:.0f} MB/s ({server.count('GET')} GETs, "
                    f"{server.bytes_sent('GET') / MIB:.0f} MiB sent)"
                )
        print(f"median {statistics.median(rates):.0f} MB/s (target > 500 MB/s)")
        for offset in offsets[:: max(1, len(offsets) // 8)]:  # and the bytes are right
            length = min(rng, size - offset)
            resp = client.get_object(
                Bucket="bench", Key="big", Range=f"bytes={offset}-{offset + length - 1}"
            )
            assert resp["Body"].read() == ramp("big", offset, length), offset
        client.close()


if __name__ == "__main__":
    main()
