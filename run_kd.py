#!/usr/bin/env python
"""kd command line: `python run_kd.py RECIPE.yaml [key=value ...]`; see `python run_kd.py --help`."""
import sys

from kd.cli import main

if __name__ == "__main__":
    sys.exit(main())
