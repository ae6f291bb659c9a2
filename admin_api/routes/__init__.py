"""Routes grouped by resource; each module exports `routes`."""
