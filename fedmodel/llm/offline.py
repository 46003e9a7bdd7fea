"""Offline mode for Hugging Face libraries, set before any of them is imported.

``fedmodel.llm`` only ever loads model folders from the local disk. The hub's offline switches
are read by ``huggingface_hub`` when it is first imported, so :func:`force_offline` runs from the
package's ``__init__`` before ``transformers`` or ``peft`` can be imported through it.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def force_offline() -> None:
    """Set ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` in this process (overriding other values)."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
