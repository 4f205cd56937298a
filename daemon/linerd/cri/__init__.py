"""The Kubernetes Container Runtime Interface (runtime.v1) served by linerd."""
