import sys
from pathlib import Path

# Test peers and helpers import as `tests.*`-free modules.
sys.path.insert(0, str(Path(__file__).parent))
