"""The MLflow UI in a real browser (headless Chromium): the views a new user opens from the links a
sweep prints, screenshotted by experiments/ui_screenshots/shoot.py (slow: a sweep, a UI server and
a browser; skipped without Chromium)."""
import shutil
import subprocess
import sys

import pytest

from lsp_exp.run.config import PROJECT_ROOT

from tests.helpers.tiny_run import tiny_overrides

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_the_ui_shows_a_sweep_its_charts_and_sample_table(shared_outputs, tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = subprocess.run(
        [sys.executable, "-m", "lsp_exp.cli.train", "-m", "game=lsp_zero,grpo_data",
         *tiny_overrides(shared_outputs, "trainer.max_steps=2", "eval.samples=0", "eval.judge_pairs=0",
                         "trainer.checkpoint_every=0"),
         f"logger.tracking_uri={store}", f"logger.artifact_location={tmp_path}/artifacts",
         f"hydra.sweep.dir={tmp_path}/sweep"], capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    shots = subprocess.run([sys.executable, str(PROJECT_ROOT / "experiments/ui_screenshots/shoot.py"), store,
                            str(tmp_path / "shots")], capture_output=True, text=True, timeout=600)
    assert shots.returncode == 0, shots.stdout[-2000:] + shots.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "shots").glob("*.png"))
    assert len(names) == 9 and all((tmp_path / "shots" / n).stat().st_size > 20_000 for n in names), names
