import numpy as np
import pandas as pd
import pytest

from orandnet_lib.data import stats as datastats
from orandnet_lib.data.voc import VOCDataset


def test_dataset_tables_count_images_pixels_and_objects(tiny_voc):
    ds = VOCDataset(tiny_voc, "train")  # 3 images: a disc in each, a bar in images 0 and 2, row 0 ignored
    classes, objects = datastats.dataset_tables(ds)
    assert classes.set_index("class")["images"].to_dict() == {"background": 3, "disc": 3, "bar": 2}
    masks = [ds.load_mask(i) for i in ds.ids]
    bar_pixels = sum(int((m == 2).sum()) for m in masks)
    assert bar_pixels == 2 * 3 * 6
    total = sum(int((m != 255).sum()) for m in masks)
    assert classes.set_index("class").loc["bar", "pixel_fraction"] == pytest.approx(bar_pixels / total)
    assert objects["class"].value_counts().to_dict() == {"disc": 3, "bar": 2}
    assert sorted(objects.query("`class` == 'bar'")["pixels"]) == [18, 18]
    assert datastats.classes_per_image(ds).tolist() == [2, 1, 2]


def test_size_bins_by_terciles():
    areas = pd.Series([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    edges = datastats.size_edges(areas)
    assert edges[0] == pytest.approx(np.quantile(areas, 1 / 3)) and edges[1] == pytest.approx(np.quantile(areas, 2 / 3))
    assert datastats.size_bins(areas, edges).tolist() == ["small", "small", "medium", "medium", "large", "large"]


def test_context_table_measures_the_preferred_background_rate(tiny_voc):
    ds = VOCDataset(tiny_voc, "train")
    scenes = {"train_0": {"background": "grass"}, "train_1": {"background": "grass"}, "train_2": {"background": "moon"}}
    matrix, rates = datastats.context_table(ds, scenes, {"disc": "grass", "bar": "brick"}, n_backgrounds=4)
    assert matrix.loc["disc", "grass"] == pytest.approx(2 / 3)
    assert matrix.loc["bar", "moon"] == pytest.approx(1 / 2)
    r = rates.set_index("class")
    assert r.loc["disc", "p_preferred"] == pytest.approx(2 / 3) and r.loc["bar", "p_preferred"] == 0.0
    assert r.loc["disc", "p_no_bias"] == 0.25
