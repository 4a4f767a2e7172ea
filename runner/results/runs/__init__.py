"""A stored run read back: the run loader and hash resolver (`load`), the index of a store,
exports."""
