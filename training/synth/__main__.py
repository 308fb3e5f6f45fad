"""`python -m training.synth <step>`: the same steps as `python -m training synth <step>` (see cli.py)."""

from training.synth.cli import main

raise SystemExit(main())
