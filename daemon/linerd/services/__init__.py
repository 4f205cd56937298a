"""gRPC servicers: translate messages to core calls and back, nothing more."""
