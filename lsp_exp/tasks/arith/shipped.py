"""The worlds shipped with the package, so a fresh clone trains without building them.

`assets/manifest.json` lists, per world (named as its task config, `conf/task/<name>.yaml`), the
cache keys the build computes from that config (build.py `world_key`, reward_model.py
`tiny_rm_dir`), the sha256 of every file of its base model and tiny reward model, and the sha256 of
its data splits. The files sit in `assets/worlds/<name>/base_model/` and `.../reward_model/`.

The splits are not shipped: the world's seed draws them again (data.py `make_splits`) when a world
is installed into the cache; a copied file or a regenerated split whose sha256 differs from the
manifest's stops the install with one line naming it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from lsp_exp.errors import LspError

ASSETS = Path(__file__).resolve().parent / "assets"
MANIFEST = "manifest.json"
ABOUT = ("The shipped worlds (lsp_exp/tasks/arith/shipped.py): per world, the cache key and sha256 of every file of "
         "its base model and tiny reward model, the sha256 of the data splits its seed regenerates, and how each "
         "was built. Written by tools/ship_world.py.")


class ShippedAssetError(LspError, ValueError):
    """A shipped file, or a split drawn again, is not the one the manifest records."""


def manifest() -> dict:
    return json.loads((ASSETS / MANIFEST).read_text())


def shipped(role: str, key: str) -> tuple[str, dict] | None:
    """(world name, manifest entry) of the shipped `role` ("base_model" or "reward_model") whose
    cache key is `key`, or None when no shipped world has it."""
    for name, world in manifest()["worlds"].items():
        if world[role]["key"] == key:
            return name, world
    return None


def role_dir(name: str, role: str) -> Path:
    return ASSETS / "worlds" / name / role


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_files(folder: Path, digests: dict[str, str], what: str) -> None:
    """Every file of `digests` is in `folder` with that sha256, or ShippedAssetError (one line)."""
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file():
            raise ShippedAssetError(f"{path}: missing; {what} lists it in {ASSETS / MANIFEST}")
        actual = sha256(path)
        if actual != digest:
            raise ShippedAssetError(f"{path}: sha256 {actual[:16]}... is not {digest[:16]}... as {ASSETS / MANIFEST} "
                                    f"records for {what}; reinstall the package, or rebuild with "
                                    f"`lsp-bootstrap force=true`")


def copy_checked(name: str, role: str, target: Path) -> dict:
    """Copy the shipped `role` of world `name` into `target`, each file checked against the manifest;
    returns the manifest's record of how it was built (its info.json)."""
    entry = manifest()["worlds"][name][role]
    source = role_dir(name, role)
    check_files(source, entry["files"], f"the {role} of world {name!r}")
    target.mkdir(parents=True, exist_ok=True)
    for file in entry["files"]:
        shutil.copyfile(source / file, target / file)
    return entry["build"]


def ship(name: str, world_dir: Path, rm_dir: Path) -> dict:
    """Ship a built world: copy the model files of `world_dir` (outputs/toy_world/<key>) and `rm_dir`
    (outputs/toy_rm/<key>) into assets/worlds/<name>/, and record in the manifest their keys, the
    sha256 of each file and of the world's data splits, and their info.json (how they were built)."""
    entry = {}
    for role, built, models in (("base_model", world_dir, world_dir / "model"), ("reward_model", rm_dir, rm_dir)):
        info = json.loads((built / "info.json").read_text())
        target = role_dir(name, role)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        files = sorted(p.name for p in models.iterdir() if p.is_file() and p.name not in ("info.json", "DONE"))
        for file in files:
            shutil.copyfile(models / file, target / file)
        entry[role] = {"key": info.pop("key"), "files": {f: sha256(target / f) for f in files}, "build": info}
    entry["data"] = {p.name: sha256(p) for p in sorted((world_dir / "data").iterdir())}
    full = manifest() if (ASSETS / MANIFEST).is_file() else {"about": ABOUT, "worlds": {}}
    full["worlds"][name] = {"base_model": entry["base_model"], "data": entry["data"],
                            "reward_model": entry["reward_model"]}
    (ASSETS / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")
    return full["worlds"][name]
