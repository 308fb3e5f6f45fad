"""Speed and quality benchmarks that print tables (see benchmarks/README.md); never timed assertions in tests."""
