"""`bench/run`: wsfuse side by side with s3fs-fuse, rclone and the ceilings, in one run.

Modules: `data` (the data sets, seeded without latency), `filesystems` (how each mount is
started, with its exact options), `ceilings` (boto3, local file, passthrough), `workloads`
(what is run on each mount), `report` (table, targets, JSON/Markdown, `--render`), `plot`
(the PNG), `__main__` (options, order, time bounds, clean-up).
"""
