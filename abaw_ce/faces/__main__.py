"""`python -m abaw_ce.faces ...`: see abaw_ce.faces.cli."""
import sys

from abaw_ce.faces.cli import main

if __name__ == "__main__":
    sys.exit(main())
