"""Bulk bytes: manifests, frame streams, sources, sinks and a content-addressed store."""
