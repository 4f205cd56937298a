"""The `liner` commands, one module per noun."""
