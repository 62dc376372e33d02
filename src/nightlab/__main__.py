"""`python -m nightlab`: the `nightlab` command."""

from nightlab.entry import main

main()
