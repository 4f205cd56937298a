"""Generated Python bindings for the containerd-compatible liner API."""
