"""The value format: columns and the ``.lbp`` part container."""
