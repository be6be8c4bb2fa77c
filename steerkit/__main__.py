"""`python -m steerkit ...` (and `torchrun -m steerkit ...`) run the command line."""

from .cli import main

if __name__ == "__main__":
    main()
