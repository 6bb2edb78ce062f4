"""The run's folders are checked before Hydra creates them: `paths.outputs` and `hydra.run.dir` (a
multirun: `hydra.sweep.dir`) under a file, unwritable or on a full disk are one line naming the key
and exit 2, where Hydra's own error is a traceback. A Hydra callback (`conf/train.yaml`,
`conf/eval.yaml`, `conf/bootstrap.yaml`: `hydra.callbacks.output_folders`)."""
from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lsp_exp.errors import ConfigError
from lsp_exp.run.console import say
from lsp_exp.run.validation import check_writable


class OutputFolders(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_folders(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_folders(config, "hydra.sweep.dir")


def check_folders(config: DictConfig, run_key: str) -> None:
    """`paths.outputs` created and written; the run folder's nearest existing folder written (the run
    folder itself is left to Hydra: its name holds the time, resolved again when Hydra makes it)."""
    try:
        for key, create in (("paths.outputs", True), (run_key, False)):
            folder = OmegaConf.select(config, key, default=None)
            if folder:
                check_writable(Path(str(folder)), key, create=create)
    except ConfigError as err:
        say(f"error: {err}", err=True)
        raise SystemExit(2) from None  # (Hydra passes a callback's SystemExit on; it warns of any other error)
