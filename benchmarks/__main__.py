"""``python -m benchmarks [--quick | --full | --tiny] [--peers ...] [--out DIR]``."""

import sys

from benchmarks.cli import main

sys.exit(main())
