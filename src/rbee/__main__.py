"""``python -m rbee``: the same entry point as ``rbee.pyz``."""

from rbee.cli import main

if __name__ == "__main__":
    main()
