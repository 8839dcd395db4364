"""Figures return (fig, axes) with the right orientation and scale; tables render and write."""

import numpy as np
import pandas as pd
import pytest

from lorascope import analysis as la
from lorascope import writers
from lorascope.analysis import plots
from lorascope.errors import LorascopeError


def test_phi_heatmap_orientation_scale_and_panels():
    g1 = np.linspace(0, 1, 8 * 16).reshape(8, 16)
    g2 = la.grid_frame(np.full((8, 16), 0.5))
    fig, axes = plots.plot_phi({"L0 query": g1, "L0 value": g2, "random": g1 * 0}, ncols=2, suptitle="t")
    assert axes.shape == (2, 2)
    ax = axes[0, 0]
    im = ax.get_images()[0]
    np.testing.assert_array_equal(im.get_array(), g1)
    assert im.get_clim() == (0.0, 1.0)
    bottom, top = ax.get_ylim()
    assert bottom > top and top == pytest.approx(0.5)  # i = 1 at the top
    assert list(ax.get_xticks()) == [1, 2, 4, 6, 8, 10, 12, 14, 16]
    assert ax.get_title() == "L0 query"
    assert not axes[1, 1].get_visible()
    fig.canvas.draw()  # renders without error


def test_ticks_stay_readable():
    assert plots._ticks(64) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    assert plots._ticks(4) == [1, 2, 3, 4]


def test_spectrum_plot_draws_normalized_spectra():
    fig, axes = plots.plot_spectrum({"q": np.array([4.0, 2.0, 1.0]), "v": np.array([1.0, 0.0, 0.0])})
    assert len(axes) == 2
    q_line = axes[0].get_lines()[0]
    np.testing.assert_allclose(q_line.get_ydata(), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(axes[0].get_lines()[1].get_xdata(), [1])  # zeros are not drawn on a log axis
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), np.cumsum([16, 4, 1]) / 21)


def test_number_formatting():
    assert writers.format_number(61.9512) == "61.95"
    assert writers.format_number(0.0123456) == "0.0123"
    assert writers.format_number(21.0) == "21"
    assert writers.format_number(3) == "3"
    assert writers.format_number(1.5e-7) == "1.50e-07"
    assert writers.format_number(float("nan")) == "--"


def _df():
    return pd.DataFrame(
        {"rank": [4, 64], "proj_dw": [0.32, 1.9012], "amplification": [21.5, 1.88]},
        index=pd.Index(["layer_48.q", "layer_48.v"], name="module"),
    )


def test_markdown_and_latex():
    md = writers.to_markdown(_df())
    assert "| module" in md and "21.50" in md and "1.90" in md
    tex = writers.to_latex(_df(), caption="Table 7")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"layer\_48.q" in tex and "proj\\_dw" in tex and "21.50" in tex
    assert r"\begin{tabular}{lrrr}" in tex


def test_write_table_and_figure(tmp_path):
    paths = writers.write_table(_df(), tmp_path / "sub" / "amp")
    assert [p.name for p in paths] == ["amp.csv", "amp.md", "amp.tex"]
    back = pd.read_csv(paths[0], index_col="module")
    pd.testing.assert_frame_equal(back, _df())
    fig, _ = plots.plot_phi({"x": np.eye(3)})
    data = pd.DataFrame({"i": [1, 2], "j": [1, 1], "phi": [1.0, 0.25]})
    written = writers.write_figure(fig, tmp_path / "fig", data, ["png", "pdf"])
    assert [p.name for p in written] == ["fig.png", "fig.pdf", "fig.csv"]
    assert written[0].read_bytes()[:4] == b"\x89PNG" and written[1].read_bytes()[:4] == b"%PDF"
    pd.testing.assert_frame_equal(pd.read_csv(written[2]), data)
    with pytest.raises(LorascopeError, match="--format"):
        writers.parse_formats("png,gif")
    assert writers.parse_formats("PNG, pdf") == ["png", "pdf"]


def test_markdown_of_a_multiindex_has_plain_columns():
    import pandas as pd

    from lorascope.writers import to_markdown

    df = pd.DataFrame({"module": ["q", "q"], "r": [1, 4], "amplification": [21.5, 1.9]})
    text = to_markdown(df.set_index(["module", "r"]))
    header, rule, first, second = text.splitlines()
    assert [c.strip() for c in header.strip("|").split("|")] == ["module", "r", "amplification"]
    assert [c.strip() for c in first.strip("|").split("|")] == ["q", "1", "21.50"]
    assert "(" not in text


def test_latex_of_a_multiindex_is_plain_columns_and_pdflatex_safe():
    import pandas as pd

    from lorascope.writers import to_latex

    df = pd.DataFrame({"module": ["q_proj"], "r": [4], "‖UᵀWV‖_F ΔW": [0.32]}).set_index(["module", "r"])
    text = to_latex(df)
    assert r"q\_proj & 4 & 0.320 \\" in text
    assert r"$\|$U$^\top$WV$\|_F$ $\Delta$W" in text
    assert all(ord(c) < 128 for c in text)  # nothing pdflatex would reject
