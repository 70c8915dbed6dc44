"""Artifact manifests live in edge_run/core/manifest.py (the bottom layer converters and runtime share);
this module re-exports them under the old name."""

from edge_run.core.manifest import (  # noqa: F401
    FIELD_TYPES,
    MAX_MANIFEST_BYTES,
    SCHEMA_VERSION,
    Manifest,
    _finite_float,
    _non_finite,
    _NonFinite,
    manifest_path_for,
    read_manifest,
    update_manifest,
    write_manifest,
)
