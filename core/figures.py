"""A finished matplotlib figure as PNG bytes, closed afterwards (reports write the bytes atomically)."""

from __future__ import annotations

import io
from typing import Any


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
