"""`python -m abaw_ce.faces ...`: see abaw_ce.cli.faces."""
import sys

from abaw_ce.cli.faces import main

if __name__ == "__main__":
    sys.exit(main())
