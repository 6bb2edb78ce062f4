"""Ship a built toy world with the package: its base model and tiny reward model, with their keys and
sha256 in lsp_exp/tasks/arith/assets/manifest.json (lsp_exp/tasks/arith/shipped.py).

    make bootstrap ARGS="task=arith force=true"          # builds outputs/toy_world/<key>, outputs/toy_rm/<key>
    .venv/bin/python tools/ship_world.py arith outputs/toy_world/<key> outputs/toy_rm/<key>

The name is the world's task config (conf/task/<name>.yaml). The data splits are not copied: their
sha256 is recorded, and the world's seed draws them again when the world is installed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsp_exp.tasks.arith.shipped import ship


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the world's task config name (conf/task/<name>.yaml)")
    parser.add_argument("world_dir", type=Path, help="a built world: outputs/toy_world/<key>")
    parser.add_argument("rm_dir", type=Path, help="its tiny reward model: outputs/toy_rm/<key>")
    args = parser.parse_args()
    entry = ship(args.name, args.world_dir, args.rm_dir)
    print(json.dumps({role: entry[role]["key"] for role in ("base_model", "reward_model")}))


if __name__ == "__main__":
    main()
