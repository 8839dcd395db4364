"""The intruder curve figure: (fig, axes) from the long-format curve, never saved."""

import matplotlib

matplotlib.use("Agg")  # the test draws off-screen; the module itself leaves the backend alone

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lorascope.analysis.intruder_plot import plot_intruder_curve  # noqa: E402
from lorascope.analysis.intruders import EPS_GRID, intruder_curve  # noqa: E402


def _curve():
    rows = []
    for run, cos in (("r=4", [[0.2, 0.9], [0.6, 0.95]]), ("full", [[0.8, 0.9], [0.85, 0.99]])):
        for module, max_cos in zip(("q", "v"), cos, strict=True):
            eps, count = intruder_curve(max_cos)
            rows += [
                {"run": run, "module": module, "eps": e, "count": c} for e, c in zip(eps, count, strict=True)
            ]
    return pd.DataFrame(rows)


def test_one_line_per_run_aggregated_over_modules(tmp_path):
    fig, axes = plot_intruder_curve(_curve(), k=2, title="t")
    assert len(axes) == 1
    lines = {line.get_label(): line for line in axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"r=4", "full"}
    x, y = lines["r=4"].get_data()
    assert list(x) == pytest.approx(list(EPS_GRID))
    assert y[list(EPS_GRID).index(0.5)] == pytest.approx(0.5)  # mean over q (1) and v (0)
    assert not list(tmp_path.iterdir())  # nothing written


def test_panels_per_module_and_sum():
    fig, axes = plot_intruder_curve(_curve(), by_module=True)
    assert [ax.get_title() for ax in axes] == ["q", "v"]
    fig, axes = plot_intruder_curve(_curve(), agg="sum")
    y = {line.get_label(): line.get_data()[1] for line in axes[0].get_lines()}
    assert y["r=4"][-1] == 2  # at ε = 0.9: 0.2 and 0.6 are below it, one per module
    with pytest.raises(ValueError, match="agg"):
        plot_intruder_curve(_curve(), agg="max")
    with pytest.raises(ValueError, match="columns"):
        plot_intruder_curve(pd.DataFrame({"eps": [0.5]}))
