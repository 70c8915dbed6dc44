"""The error hierarchy lives in edge_run/core/errors.py (the bottom layer converters and runtime share);
this module re-exports it under its old name."""

from edge_run.core.errors import (
    ArtifactError,
    CheckpointError,
    CorpusError,
    EdgeRunError,
    InputError,
    InsufficientMemoryError,
    IntegrityError,
    Interrupted,
    NothingFitsError,
    OutputExistsError,
    ProfileError,
    ResourceError,
    UnsupportedArchitectureError,
    UsageError,
)

__all__ = ["ArtifactError", "CheckpointError", "CorpusError", "EdgeRunError", "InputError", "InsufficientMemoryError",
           "IntegrityError", "Interrupted", "NothingFitsError", "OutputExistsError", "ProfileError", "ResourceError",
           "UnsupportedArchitectureError", "UsageError"]
