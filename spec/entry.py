"""The frozen executable's entry point (spec/mlxd.spec).

Not mlxd/__main__.py: PyInstaller puts the entry script's folder on its search path, and mlxd/http.py
would then shadow the standard library's http package for every module in the binary.
"""

import sys

from mlxd.cli import main

if __name__ == "__main__":
    sys.exit(main())
