"""The loadtest scripts import each other as top-level modules (they run as scripts)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
