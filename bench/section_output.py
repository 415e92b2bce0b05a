"""Writing one benchmark section run on its own (`python -m bench.<section> --output FILE.json`): the JSON and a
PNG of its panels beside it, the same way for every section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

#: resolution of every PNG the bench writes (bench/report.py uses it for the suite's figure too)
PNG_DPI = 110
#: width of one panel and height of a row of panels, inches
PANEL_WIDTH_IN = 6.5
PANEL_HEIGHT_IN = 4.8


def write_section(section: dict[str, Any], output: Path, draw: Callable[[list[Any]], None], panels: int = 1,
                  width_in: float | None = None) -> None:
    """`section` as indented JSON at `output`, and `draw(axes)` (one matplotlib axes per panel, in a row) as a
    PNG beside it (`output` with the suffix .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(section, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    fig, axes = plt.subplots(1, panels, figsize=(width_in or PANEL_WIDTH_IN * panels, PANEL_HEIGHT_IN))
    draw(list(axes) if panels > 1 else [axes])
    fig.tight_layout()
    fig.savefig(output.with_suffix(".png"), dpi=PNG_DPI)
    plt.close(fig)
