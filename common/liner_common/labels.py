"""Label names with a meaning to containerd (and so to linerd and its clients)."""

# On a lease: an RFC 3339 time after which the collector removes the lease.
GC_EXPIRE = "containerd.io/gc.expire"
# On an image: the signal its config names in StopSignal (containerd's `ctr run` reads it).
STOP_SIGNAL = "io.containerd.image.config.stop-signal"
