"""The tests always exercise this tree's package, whatever else is installed."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
