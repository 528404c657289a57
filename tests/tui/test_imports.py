"""Opening the app must not pull the model stack or the data stack."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("jax", "keras", "keras_hub", "pandas", "pandera", "pyarrow", "datasets", "torch")


def test_importing_the_app_imports_no_heavy_library() -> None:
    code = (
        "import json, sys\n"
        "import gemma_tui, gemma_tui.app\n"
        "app = gemma_tui.app.GemmaTuiApp()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
