"""`python -m headprof` (also what `torchrun -m headprof score ...` runs)."""

from headprof.cli import main

main()
