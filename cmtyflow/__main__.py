"""``python -m cmtyflow``: the same as the ``cmtyflow`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())  # its exit code, as the script's
