"""Garbage collection on containerd's label conventions: mark from roots, sweep the rest."""
