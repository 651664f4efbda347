"""The pretraining set's subgroups: each image's modality and body part, through the recipe to its predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.training.archive.pretrain_set import load_pretrain
from medtl.training.pretrain import PretrainRecipe
from medtl.training.spec import PretrainSpec

PARTS = {"CT": "chest", "MR": "head", "CR": "hand"}


def _manifest(folder: Path, body_part: bool = True) -> Path:
    """A labelled ingest folder by hand: 9 patients, 4 images each (3 clusters), modality and body part per patient."""
    rows = []
    for p in range(9):
        modality = ("CT", "MR", "CR")[p % 3]
        for i in range(4):
            rel = f"images/{p}_{i}.png"
            (folder / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 20), 40 * (p % 3) + i, np.uint8)).save(folder / rel)
            rows.append({"image_path": rel, "modality": modality, "body_part": "" if p == 5 else PARTS[modality],
                         "patient_key": f"{p:032x}", "label": i % 3})
    frame = pd.DataFrame(rows)
    (frame if body_part else frame.drop(columns=["body_part"])).to_parquet(folder / "manifest.parquet")
    return folder


def _by_image(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "manifest.parquet").set_index("image_path")


def test_each_image_carries_its_modality_and_body_part(tmp_path):
    folder = _manifest(tmp_path)
    splits = load_pretrain(folder, image_size=16)
    manifest = _by_image(folder)
    assert splits.attribute_names == ("body_part", "modality")
    for _, part in splits.items():
        assert part.attributes["modality"] == tuple(manifest.loc[list(part.ids), "modality"])
        assert part.attributes["body_part"] == tuple(manifest.loc[list(part.ids), "body_part"])
    ct = load_pretrain(folder, modality="CT", image_size=16)
    assert {v for _, part in ct.items() for v in part.attributes["modality"]} == {"CT"}


def test_a_manifest_without_body_part_gives_modality_alone(tmp_path):
    assert load_pretrain(_manifest(tmp_path, body_part=False), image_size=16).attribute_names == ("modality",)


@pytest.mark.parametrize(("arch", "objective"), [("unet", "reconstruction"), ("mobilenet_v3_small", "classification")])
def test_the_pretraining_predictions_carry_them(tmp_path, one_thread, arch, objective):
    folder = _manifest(tmp_path / "data")
    spec = PretrainSpec(arch=arch, data=str(folder), objective=objective, max_epochs=1, batch_size=8, image_size=32)
    recipe = PretrainRecipe.prepare(spec, tmp_path / "work", device="cpu")
    recipe.fit()
    table = pd.read_csv(recipe.test().predictions_path, keep_default_na=False)
    assert list(table.columns[-2:]) == ["subgroup_body_part", "subgroup_modality"]
    manifest = _by_image(folder)
    assert list(table["subgroup_modality"]) == list(manifest.loc[table["id"], "modality"])
    assert list(table["subgroup_body_part"]) == list(manifest.loc[table["id"], "body_part"])
