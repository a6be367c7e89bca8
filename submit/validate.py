"""Validate before upload: `python submit/validate.py [RUN or EXPORT ...] [--submission FILE] [--template FILE]
[--videos DIR] [--ground-truth FILE]`. Exit status 0 only when every run and the file are valid."""
import sys

from abaw_ce.cli.validate import validate_main

if __name__ == "__main__":
    sys.exit(validate_main())
