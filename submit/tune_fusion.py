"""Choose fusion and smoothing on labelled videos: ``python submit/tune_fusion.py --videos ROOT --models RUN --out DIR``."""
import sys

from abaw_ce.cli.tune_fusion import main

if __name__ == "__main__":
    sys.exit(main())
