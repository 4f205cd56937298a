"""The local services: what every caller of the core gets, whoever the caller is.

One module per kind (namespaces, content, images, snapshots, containers, tasks, leases,
transfer, diff), as containerd's `services/*/local`. A front door (the containerd API
servicers in `linerd.services`, the CRI, the CLI's own Transfer API) converts its messages
to calls here and back, and nothing more. Here lives everything a second front door must
not have to copy:

- validation of what is stored;
- events (published through `Publisher`, with containerd's topics and payloads);
- GC scheduling after a mutation that can leave garbage;
- leases (the caller passes the lease id it holds, or None);
- metrics and the order of exit events.

Calls take the namespace (and where it matters the lease) as arguments, never from a
request context: the CRI calls in `k8s.io` without any gRPC metadata. Nothing here imports
grpc or SQLAlchemy; errors are `linerd.errdefs` exceptions.
"""
