"""A lab's own extensions of raysplit, registered without editing raysplit (see docs/architecture.md)."""
