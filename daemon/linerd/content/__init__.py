"""The content store: blobs addressed by digest, written through resumable ingests."""
