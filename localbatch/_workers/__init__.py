"""Worker processes: both ends of the wire, and the runtime that runs rows in them."""
