"""`python -m dsguard.cli ARGS`, as the `dsguard` command."""

from dsguard.cli import main

main()
