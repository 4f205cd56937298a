"""OCI runtime specs: secure defaults, and what an image's config adds to them."""
