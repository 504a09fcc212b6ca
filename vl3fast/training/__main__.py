"""`python -m vl3fast.training --config ...`: the entry the launchers run (see vl3fast.training.cli)."""
from .cli import main

raise SystemExit(main())
