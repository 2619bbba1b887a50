"""``python -m odyssey_sync.local``: the same as ``odyssey-sync serve``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
