"""State a row imports at run time (never pickled with the service): what a worker sees
of it is what a fresh import gives, whatever the test process did to its own copy."""

VALUE = "fresh"
