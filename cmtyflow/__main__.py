"""``python -m cmtyflow``: the same as the ``cmtyflow`` command."""

from .cli import main

if __name__ == "__main__":
    main()
