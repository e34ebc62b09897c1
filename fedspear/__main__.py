"""``python -m fedspear`` is the ``fedspear`` command."""

from fedspear.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
