"""The pictures a run writes say what they show: nothing clipped, nothing on top of a curve."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tledge.training.fitting import PhaseResult  # noqa: E402
from tledge.training.history import plot_curves  # noqa: E402


def _phases():
    return [PhaseResult("frozen", {"accuracy": [.5, .7, .8], "val_accuracy": [.6, .75, .74],
                                   "loss": [1.2, .8, .6], "val_loss": [1, .7, .72]},
                        best_epoch=2),
            PhaseResult("finetune", {"accuracy": [.85, .9], "val_accuracy": [.8, .82],
                                     "loss": [.5, .4], "val_loss": [.6, .55]}, best_epoch=2),
            PhaseResult("qat", {"accuracy": [.9], "val_accuracy": [.81], "loss": [.4],
                                "val_loss": [.58]}, best_epoch=1)]


def test_curves_name_each_phase_inside_the_picture_and_mark_the_kept_epochs(tmp_path,
                                                                           monkeypatch):
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    plot_curves(_phases(), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    names = [t for ax in fig.axes for t in ax.texts]
    assert sorted(t.get_text() for t in names) == sorted(["frozen", "finetune", "qat"] * 2)
    legend = fig.legends[0]
    legend_box = legend.get_window_extent(renderer)
    for text in names + [legend]:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 \
            and box.y1 <= frame.y1, text  # inside the picture, not cut by its edge
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent(renderer))  # not over a curve
    for ax, metric in zip(fig.axes, ("val_accuracy", "val_loss")):
        stars = [line for line in ax.lines if line.get_marker() == "*"]
        points = sorted((float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars)
        # epoch 2 of frozen, epoch 2 of fine-tune (5 overall), epoch 1 of QAT (6 overall)
        expected = [(2, _phases()[0].history[metric][1]), (5, _phases()[1].history[metric][1]),
                    (6, _phases()[2].history[metric][0])]
        assert points == expected, points
    assert "kept epoch" in [t.get_text() for t in legend.get_texts()]


def test_curves_of_phases_without_history_are_drawn(tmp_path):
    """A run that starts from another's model (--init-from) has an empty first phase."""
    phases = [PhaseResult("frozen", {}), PhaseResult("finetune", {})] + _phases()[2:]
    plot_curves(phases, tmp_path / "c.png")
    plot_curves([PhaseResult("frozen", {})], tmp_path / "empty.png")
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "empty.png").is_file()
