"""What a command that opens a model loads: the artifact it was given, or the pick for a device profile.

    ARTIFACT                       -> ARTIFACT
    --profile NAME --models DIR    -> the best pairing under DIR for NAME (converted first when it is planned),
                                      for a chat (instruction-tuned first) or for plain text
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_run.core.errors import UsageError


def resolve_artifact(artifact: Path | None, profile: str | None, models: Path | None, ctx: int,
                     purpose: str = "chat") -> tuple[Path, dict[str, Any] | None]:
    """``(path, pick info or None)``; ``purpose`` is ``chat`` (chat, serve, run --chat) or ``text``."""
    if profile is not None:
        from edge_run.runtime.pick import picker  # the picker's imports are paid only by a --profile run

        return picker.resolve_for_run(profile, models, artifact, ctx, purpose)
    if artifact is None:
        raise UsageError("no artifact given", "pass an artifact path or --profile NAME --models DIR")
    return Path(artifact), None
