"""``python -m examples.reproduce``: see :mod:`examples.reproduce.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
