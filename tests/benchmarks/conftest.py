"""Scripts in ``benchmarks/`` are not a package: put the folder on the path so their helpers import."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
