"""`python -m suite ...` runs the `ldbench` command line (the same as the installed script)."""

from suite.console import main

main()
