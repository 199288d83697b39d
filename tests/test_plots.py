"""Figures whose layout is part of being readable."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from orandnet_lib.book import plots  # noqa: E402


def test_score_bars_put_one_legend_below_the_panels_not_over_the_bars():
    table = pd.DataFrame([{"variant": v, "refinement": r, "miou": 40.0 + i, "precision": 50.0, "recall": 60.0}
                          for i, (v, r) in enumerate((v, r) for v in ("cnn", "and") for r in ("CAM", "CRF", "walk"))])
    fig = plots.score_bars(table, x="variant", hue="refinement", seeds=False)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["CAM", "CRF", "walk"]
    assert legend.get_title().get_text() == "refinement"
    fig.canvas.draw()
    bottom = min(ax.get_position().y0 for ax in fig.axes)
    assert legend.get_window_extent().y1 <= bottom * fig.bbox.height  # below the lowest panel
    plt.close(fig)


def test_shaded_table_leaves_a_column_without_values_plain_and_warns_nothing():
    import warnings

    import numpy as np

    table = pd.DataFrame({"tshirt": [10.0, 30.0], "trouser": [np.nan, np.nan]}, index=["cnn", "and"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = plots.shaded_table(table).to_html()
    assert "30.0" in html and html.count("background-color") == 2  # the two tshirt cells only
    assert ">-<" in html.replace(" ", "")  # a missing value reads "-"
    assert plots.shaded_table(table, ["trouser"]).to_html().count("background-color") == 0
    # a missing value inside a shaded column is left plain, not painted the colour map's black
    partial = pd.DataFrame({"dress": [32.0, np.nan, 7.5]}, index=["cnn", "and", "vit"])
    html = plots.shaded_table(partial).to_html()
    rule = {r: html.split(f"_row{r}_col0 {{", 1)[1].split("}", 1)[0] for r in range(3)}  # each cell's CSS
    assert rule[1].strip().split(";")[-2].strip() == "color: inherit" and "background-color: transparent" in rule[1]
    assert all("transparent" not in rule[r] for r in (0, 2))
