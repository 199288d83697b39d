"""The operating-point table reads the right numbers out of a run summary."""

from orandnet_lib.book import claims, operating_point


def _summary():
    return {
        "profile": "default",
        "classifiers": {"cnn": {"val_map": 91.0}, "vit": {"val_map": 80.0}},
        "cams": {"cnn": {"miou": 41.0}, "vit": {"miou": 29.0}},
        "error_overlap": {"fp_shared_of": {"cnn": 0.4, "vit": 0.7}},
        "refinement": {"cnn": {"cam": {"miou": 41.0}, "rw": {"miou": 47.5}}},
        "pseudo_masks": {"cnn": {"miou": 50.0}},
        "segmentation": {"gt": {"constant": {"miou": 70.0}, "curriculum": {"miou": 72.0}},
                         "cnn": {"constant": {"miou": 30.0}, "curriculum": {"miou": 46.0}}},
        "segmentation_headline": {"schedule": "curriculum"},
        "stages": {"00_dataset": {"wall_time_s": 100.0, "peak_rss_mb": 1024.0},
                   "05_segmentation_curriculum": {"wall_time_s": 850.0, "peak_rss_mb": 3072.0}},
        "dataset": {"grid_limits": {"8": {"val": 84.5}}},
    }


def test_rows_take_each_quantity_from_the_summary():
    got = {r["quantity"]: (r["value"], r["met"]) for r in operating_point.rows(_summary())}
    assert got["fully supervised DeepLab, val mIoU"] == (70.0, False)  # the constant schedule is the bound
    assert got["CNN classifier, val mAP (%)"] == (91.0, True)
    assert got["ViT classifier, val mAP (%)"] == (80.0, False)
    assert got["CNN CAM mIoU (train, best background score)"] == (41.0, True)
    assert got["ViT CAM mIoU (train, best background score)"] == (29.0, False)
    assert got["share of the CNN's false-positive pixels the ViT also makes"] == (0.4, True)
    assert got["CNN pseudo-masks: random walk minus CAM, mIoU"] == (6.5, True)
    assert got["DeepLab on CNN pseudo-masks / their mIoU"] == (46.0 / 50.0, True)  # headline schedule
    # shown, never judged: a last execution may have reused cached checkpoints
    assert got["all stages, wall time of their last execution (s)"] == (950.0, None)
    assert got["peak memory of a stage (GiB)"] == (3.0, True)


def test_missing_quantities_are_not_measured():
    rows = operating_point.rows({"profile": "smoke"})
    assert all(r["value"] is None and r["met"] is None and r["shown"] == "not measured" for r in rows)


def test_the_reproduces_page_carries_the_table():
    page = claims.reproduces_page(_summary())
    assert "## The operating point of this run" in page
    assert "| fully supervised DeepLab, val mIoU | >= 75 | 70.0 | **no** | {doc}`../executed/05_segmentation_curriculum` |" in page
    assert "| all stages, wall time of their last execution (s) | <= 900 on a fresh machine | 950 | not judged |  |" in page
    assert "| CNN pseudo-masks: random walk minus CAM, mIoU | >= +5 | +6.5 | yes |" in page
    assert "stride-8 map (DeepLab's grid) can reach on this data: 84.5" in page
    # two decimals where the target sits on a round number: 89.98 must not read as a met 90.0
    near = {**_summary(), "classifiers": {"cnn": {"val_map": 89.98}, "vit": {"val_map": 80.0}}}
    assert "| CNN classifier, val mAP (%) | >= 90 | 89.98 | **no** |" in claims.reproduces_page(near)


def test_calibration_record_reads_every_pilot_as_measured():
    import json
    from importlib import resources

    from orandnet_lib.book.chapters import dataset

    raw = json.loads(resources.files("orandnet_lib.book").joinpath("calibration.json").read_text())
    about, table = dataset.calibration_record()
    assert about == raw["about"] and len(table) == len(raw["pilots"])
    assert list(table.columns) == ["Lever", "Setting", "Quantity", "Value", "Seconds"]
    first = table.iloc[0]
    assert (first["Lever"], first["Value"], first["Seconds"]) == ("before", "38", "")  # 38.0 shown as measured
    assert set(raw["stages_before"]["wall_time_s"]) == {f"0{i}_{n}" for i, n in enumerate(
        ["dataset", "classifiers_and_cams", "or_and_ensembles", "orandnet", "refinement", "segmentation_curriculum"])}


def test_the_replicate_section_lists_each_replicate_with_mean_and_sd():
    from orandnet_lib.book.operating_point import pseudo_ratio, replicate_section

    def run(cnn_cam: float, pseudo: float) -> dict:
        return {"cams": {"cnn": {"miou": cnn_cam}}, "pseudo_masks": {"cnn": {"miou": pseudo, "precision": 50.0}}}

    summary = {**run(40.0, 44.0), "replicates": {"n": 3, "runs": {"1": run(42.0, 46.0), "2": run(44.0, 48.0)}},
               "segmentation": {"cnn": {"curriculum": {"miou": 41.4}}},
               "segmentation_headline": {"schedule": "curriculum"}}
    text = replicate_section(summary)
    assert "| CNN CAM mIoU (train) | 40.0 | 42.0 | 44.0 | 42.0 ± 2.0 |" in text
    assert "| cnn pseudo-masks, precision | 50.0 | 50.0 | 50.0 | 50.0 ± 0.0 |" in text
    assert "ViT" not in text  # a quantity no replicate has is left out
    assert pseudo_ratio(summary) == 41.4 / 46.0  # DeepLab's mean over replicates over the masks' mean
    assert replicate_section(run(40.0, 44.0)) == ""


def test_a_chapter_line_puts_its_numbers_beside_the_other_replicates(tmp_path):
    from orandnet_lib.book.operating_point import replicate_line
    from orandnet_lib.book.stage import Stage
    from orandnet_lib.core import store

    run = tmp_path / "runs"
    for r, value in ((1, 39.0), (2, 41.0)):
        store.write_json(run / "replicates" / f"r{r}" / "03_orandnet" / store.MANIFEST,
                         {"summary": {"cams": {"orandnet": {"miou": value}}}})
    stage = Stage("03_orandnet", "smoke", run, tmp_path, 0)
    others = stage.replicate_summaries()
    assert others == {1: {"cams": {"orandnet": {"miou": 39.0}}}, 2: {"cams": {"orandnet": {"miou": 41.0}}}}
    line = replicate_line("03_orandnet", {"cams": {"orandnet": {"miou": 40.0}}}, others)
    assert "Over the 3 whole-pipeline replicates" in line
    assert "ORANDNet CAM mIoU (train) 40.0 (r1 39.0, r2 41.0; mean 40.0 ± 1.0)" in line
    assert replicate_line("03_orandnet", {"cams": {"orandnet": {"miou": 40.0}}}, {}) == ""


def test_the_transfer_table_judges_issue_24s_targets_on_each_run():
    held = {"classifiers": {"cnn": {"val_map": 82.3}, "vit": {"val_map": 72.6}},
            "cams": {"cnn": {"miou": 26.3}, "vit": {"miou": 16.2}},
            "refinement": {"cnn": {"cam": {"miou": 26.3}, "rw": {"miou": 21.2}, "crf": {"miou": 30.4}}},
            "pseudo_masks": {"cnn": {"miou": 20.3}},
            "segmentation": {"gt": {"constant": {"miou": 44.8}}, "cnn": {"curriculum": {"miou": 15.7}}}}
    rows = {r["quantity"]: r for r in operating_point.transfer_rows({"default data": _summary(), "held-out": held})}
    assert rows["CNN CAM mIoU (train)"]["default data"] == "41.0 (yes)"
    assert rows["CNN CAM mIoU (train)"]["held-out"] == "26.3 (no)"
    assert rows["ViT CAM mIoU (train)"]["default data"] == "29.0 (yes)"  # >= 28 here, not the paper table's 30
    assert rows["CNN random walk minus CAM"]["held-out"] == "-5.1 (no)"
    assert rows["CNN dense CRF minus CAM"]["held-out"] == "+4.1" and rows["CNN dense CRF minus CAM"]["target"] == "shown"
    assert rows["CNN dense CRF minus CAM"]["default data"] == "not measured"
    assert rows["fully supervised DeepLab, val mIoU"]["held-out"] == "44.8 (no)"
    assert rows["DeepLab on CNN pseudo-masks / their mIoU"]["held-out"] == "0.77 (no)"
    assert rows["DeepLab on CNN pseudo-masks / their mIoU"]["default data"] == "0.92 (yes)"
    table = operating_point.transfer_markdown({"default data": _summary(), "held-out": held})
    assert "| quantity | target | default data | held-out |" in table
