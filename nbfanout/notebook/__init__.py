"""The notebook layer: ``%%fanout`` / ``%fanout`` magics, the live dashboard, the retry timeline, HTML views.

Nothing here is imported by the core. ipywidgets and matplotlib are imported only when a
dashboard or a timeline is drawn, with the install command in the ImportError otherwise.
"""

from __future__ import annotations

from nbfanout.notebook.magics import FanoutMagics, load_ipython_extension
from nbfanout.notebook.watch import watch

__all__ = ["FanoutMagics", "load_ipython_extension", "watch"]
