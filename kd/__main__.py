"""`python -m kd ...` is the same command line as `python run_kd.py ...` and `kd ...`."""
import sys

from kd.cli import main

sys.exit(main())
