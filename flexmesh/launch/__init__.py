"""Starting a mesh: Ray (embedded or joined), the named actors, placement, the KV collective
groups, and the YAML config files that describe it."""
