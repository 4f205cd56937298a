"""The CRI (runtime.v1) front door: pod sandboxes, CNI networking, streaming."""

# containerd's namespace for everything the CRI makes (images, sandboxes, containers).
NAMESPACE = "k8s.io"
