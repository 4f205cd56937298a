"""The CRI (runtime.v1) front door: pod sandboxes, CNI networking, streaming."""
