"""Run the mcpo loop: `python jobs/mcpo.py [--config X.yaml] [--run-dir D] [--preset smoke] [key=value ...]`.

Under `ray job submit` it joins that cluster; alone it starts a local Ray. See docs/operations.md.
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package may not be installed: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apo_pipeline.launch import run_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_job("mcpo", sys.argv[1:]))
