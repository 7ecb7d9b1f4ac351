"""The frozen executable's entry point (spec/mlxd.spec).

Not mlxd/__main__.py: PyInstaller puts the entry script's folder on its search path, so mlxd's own
subpackages (api, engine, models, ...) would become top-level names in the binary; from here
nothing inside the package can shadow another module.
"""

import sys

from mlxd.cli import main

if __name__ == "__main__":
    sys.exit(main())
