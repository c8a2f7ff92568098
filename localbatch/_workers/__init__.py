"""Worker processes: both ends of the wire, and what runs in them.

- shared by both ends: ``protocol`` (the messages), ``board`` (the running row),
  ``launch`` (how an interpreter is started);
- the owner's end: ``process`` (one worker), ``pool`` (warm workers);
- the worker's end: ``child`` (the program), ``runtime`` (running rows),
  ``loading`` (a service becomes a callable), ``vectorized`` (per-chunk calls);
- ``zygote``: the fork server, both of its halves.
"""
