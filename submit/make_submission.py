"""Stage 5: ``python submit/make_submission.py --videos test/ [--models RUN ...] [--template FILE]``."""
import sys

from abaw_ce.cli.submit import main

if __name__ == "__main__":
    sys.exit(main())
