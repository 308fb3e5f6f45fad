"""`python -m training <command>`: see training/cli.py."""

from training.cli import main

raise SystemExit(main())
