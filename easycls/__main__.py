"""`python -m easycls ...` (and `accelerate launch -m easycls ...`) runs the CLI."""

from .cli import main

main()
