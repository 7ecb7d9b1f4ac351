"""``python -m mlxd`` and the PyInstaller entry point."""

import sys

from mlxd.cli import main

if __name__ == "__main__":
    sys.exit(main())
