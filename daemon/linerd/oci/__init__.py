"""OCI runtime pieces only the daemon uses (seccomp profiles).

Spec generation, which the CLI needs too, is liner_common.ocispec.
"""
