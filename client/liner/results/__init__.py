"""The client's result types, one module per area so a command loads only the ones it uses."""
