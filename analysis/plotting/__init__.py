"""Plotting: each ``plot_x(result_or_frame, *, ax=None, **kw)`` draws one Axes and returns its artists.

No computation of metrics, no ``pyplot`` state, no ``show()`` or ``savefig``:
pass an Axes (``fig.add_subplot()``) or get one on a new ``Figure``
(``artists.ax.figure`` / ``line.axes.figure``). Safe with the Agg backend.
"""

from analysis.plotting.heatmap import HeatmapArtists, annotate_heatmap, plot_phi
from analysis.plotting.layers import plot_layer_profile
from analysis.plotting.overlap import plot_weight_overlap
from analysis.plotting.intruders import plot_intruders
from analysis.plotting.spectra import plot_spectra
from analysis.plotting.spectra_rank import plot_advised_rank, plot_energy_spectra
from analysis.plotting.table import plot_table

__all__ = ["HeatmapArtists", "annotate_heatmap", "plot_phi", "plot_layer_profile",
           "plot_weight_overlap", "plot_spectra", "plot_energy_spectra", "plot_advised_rank",
           "plot_intruders", "plot_table"]
