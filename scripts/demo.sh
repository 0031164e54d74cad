#!/usr/bin/env bash
# The main job on the embedded default bucket: set up, then check that everything a mount
# needs is in place (FUSE, the cache directory, the bucket, a write round trip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/wsfuse doctor --write-test "$@"
