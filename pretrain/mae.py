"""Stage 1, MAE face pretraining: ``accelerate launch pretrain/mae.py [--config FILE] [key=value ...]``."""
from __future__ import annotations

import sys

from abaw_ce.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
