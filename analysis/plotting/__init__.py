"""Plotting: each ``plot_x(result_or_frame, *, ax=None, **kw)`` draws one Axes and returns a :class:`PlotArtists`.

:class:`PlotArtists` holds the Axes (``art.ax``), its Figure (``art.fig``)
and the artists drawn, by name (``art["image"]``, or ``art.image``); each
function's docstring lists its keys. No computation of metrics, no ``pyplot``
state, no ``show()`` or ``savefig``: pass an Axes (``fig.add_subplot()``) or
get one on a new ``Figure``. Safe with the Agg backend.
"""

from analysis.plotting.advice import plot_advised_rank
from analysis.plotting.collection import plot_collection_matrix, plot_trajectory
from analysis.plotting.common import PlotArtists
from analysis.plotting.heatmap import annotate_heatmap, plot_phi
from analysis.plotting.intruders import plot_intruders
from analysis.plotting.layers import plot_layer_profile
from analysis.plotting.overlap import plot_weight_overlap
from analysis.plotting.spectra import plot_energy_spectra, plot_spectra
from analysis.plotting.table import plot_table

__all__ = ["PlotArtists", "annotate_heatmap", "plot_phi", "plot_layer_profile", "plot_weight_overlap",
           "plot_spectra", "plot_energy_spectra", "plot_advised_rank", "plot_intruders", "plot_table",
           "plot_collection_matrix", "plot_trajectory"]
