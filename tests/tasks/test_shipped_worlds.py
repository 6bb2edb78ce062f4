"""The shipped worlds: the manifest's keys are what the task configs compute, installing a world copies
its models byte for byte and draws its data splits again exactly, and a damaged file is one line."""
import hashlib
import json
import shutil

import pytest

from lsp_exp.errors import LspError
from lsp_exp.tasks.arith import shipped as shipped_module
from lsp_exp.tasks.arith.build import build_toy_world, world_key
from lsp_exp.tasks.arith.reward_model import build_tiny_rm, tiny_rm_dir
from lsp_exp.tasks.arith.shipped import ShippedAssetError, manifest, role_dir

from tests.helpers.tiny_run import compose_config

WORLDS = sorted(manifest()["worlds"])


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bootstrap_config(name: str, outputs):
    return compose_config("bootstrap", [f"task={name}", f"paths.outputs={outputs}"])


def test_one_base_and_one_reward_model_per_world_of_the_task_configs():
    assert WORLDS == ["arith", "arith_direct"]   # the default world and the first one (task=arith_direct)
    for name in WORLDS:
        assert sorted(p.name for p in (role_dir(name, "base_model").parent).iterdir()) == ["base_model", "reward_model"]


@pytest.mark.parametrize("name", WORLDS)
def test_the_manifest_keys_are_the_ones_the_task_config_computes(name, tmp_path):
    cfg, entry = bootstrap_config(name, tmp_path), manifest()["worlds"][name]
    assert world_key(cfg.task.world, cfg.task.bootstrap) == entry["base_model"]["key"]
    assert tiny_rm_dir(cfg.task.world, cfg.reward.bootstrap, tmp_path).name == entry["reward_model"]["key"]


@pytest.mark.parametrize("name", WORLDS)
def test_each_world_folder_holds_the_files_the_manifest_lists_with_their_sha256(name):
    for role in ("base_model", "reward_model"):
        files = manifest()["worlds"][name][role]["files"]
        assert sorted(p.name for p in role_dir(name, role).iterdir()) == sorted(files)
        assert {f: sha256(role_dir(name, role) / f) for f in files} == files


@pytest.mark.parametrize("name", WORLDS)
def test_installing_a_world_copies_its_models_and_draws_the_same_splits_again(name, tmp_path):
    cfg, entry = bootstrap_config(name, tmp_path), manifest()["worlds"][name]
    world = build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path)
    assert world == tmp_path / "toy_world" / entry["base_model"]["key"] and (world / "DONE").is_file()
    assert {p.name: sha256(p) for p in (world / "model").iterdir()} == entry["base_model"]["files"]
    assert {p.name: sha256(p) for p in (world / "data").iterdir()} == entry["data"]   # byte-identical splits
    assert json.loads((world / "info.json").read_text()) == {"key": world.name, **entry["base_model"]["build"]}
    rm = build_tiny_rm(cfg.task.world, cfg.reward.bootstrap, tmp_path)
    assert rm == tmp_path / "toy_rm" / entry["reward_model"]["key"]
    assert {p.name: sha256(p) for p in rm.iterdir() if p.name not in ("DONE", "info.json")} == \
        entry["reward_model"]["files"]


def damaged_assets(tmp_path, monkeypatch, path: str):
    """A copy of the assets with one byte of `path` (relative to assets/) flipped, used in their place."""
    assets = tmp_path / "assets"
    shutil.copytree(shipped_module.ASSETS, assets)
    data = bytearray((assets / path).read_bytes())
    data[len(data) // 2] ^= 1
    (assets / path).write_bytes(bytes(data))
    monkeypatch.setattr(shipped_module, "ASSETS", assets)
    return assets / path


def test_a_damaged_base_model_file_is_one_line_naming_it(tmp_path, monkeypatch):
    damaged = damaged_assets(tmp_path, monkeypatch, "worlds/arith_direct/base_model/model.safetensors")
    cfg = bootstrap_config("arith_direct", tmp_path)
    with pytest.raises(ShippedAssetError, match="sha256") as err:
        build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "outputs")
    assert str(err.value).startswith(f"{damaged}: sha256 ") and "\n" not in str(err.value)
    assert isinstance(err.value, LspError)   # the entry points print it as one line, exit code 2
    assert not (tmp_path / "outputs" / "toy_world" / world_key(cfg.task.world, cfg.task.bootstrap)).exists()


def test_a_damaged_reward_model_file_is_one_line_naming_it(tmp_path, monkeypatch):
    damaged = damaged_assets(tmp_path, monkeypatch, "worlds/arith/reward_model/config.json")
    cfg = bootstrap_config("arith", tmp_path)
    with pytest.raises(ShippedAssetError, match="sha256") as err:
        build_tiny_rm(cfg.task.world, cfg.reward.bootstrap, tmp_path / "outputs")
    assert str(err.value).startswith(f"{damaged}: sha256 ") and "\n" not in str(err.value)


def test_splits_drawn_differently_from_the_shipped_ones_are_refused(tmp_path, monkeypatch):
    """A change to how problems are drawn would pair the shipped model with other data: refused."""
    from lsp_exp.tasks.arith import build as build_module

    real = build_module.make_splits
    monkeypatch.setattr(build_module, "make_splits", lambda seed, *a: real(seed + 1, *a))
    cfg = bootstrap_config("arith_direct", tmp_path)
    with pytest.raises(ShippedAssetError, match=r"heldout\.jsonl: sha256 .*data splits of world 'arith_direct'"):
        build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "outputs")
