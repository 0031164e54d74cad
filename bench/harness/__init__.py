"""Plumbing shared by the benchmarks, one module per concept.

- `env`: paths, sizes, the scrubbed environment (fake credentials, no proxies), `log`;
- `procs`: CPU/RSS of processes and of the machine, quiet-wait, drop_caches, stopping children;
- `server`: the local S3 server in its own process and a boto3 client for it;
- `mount`: a FUSE daemon started as a child, waited for and always unmounted;
- `meter`: one measured workload (`Sample`) and the `Meter` that fills it;
- `watchdog`: a time bound that aborts a hung FUSE connection;
- `gitstate`: which commit a result belongs to.
"""
