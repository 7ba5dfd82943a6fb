"""``python -m fedtab``: the same as the ``fedtab`` command."""

from fedtab.cli import main

if __name__ == "__main__":
    main()
