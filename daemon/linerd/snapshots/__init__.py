"""Snapshotters: overlayfs (kernel overlay, layers side by side) and native (copies)."""
